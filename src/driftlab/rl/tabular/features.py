"""Feature vectors of grid-world states for linear value approximation (Zhao ch. 8.2).

A state is its cell's normalised coordinates: ``x`` from the column and ``y`` from the row.
Polynomial features use ``x, y`` in ``[-1, 1]`` (centred, so that the powers are less
collinear); Fourier features use ``x, y`` in ``[0, 1]``, where ``cos(pi c x)`` for ``c = 0..q``
is the usual Fourier basis (Konidaris et al. 2011).
"""

from __future__ import annotations

import numpy as np

from driftlab.core.config import check_choice, check_int
from driftlab.rl.tabular.gridworld import GridWorld

FEATURE_KINDS = ("polynomial", "fourier", "onehot")


def normalised_coordinates(world: GridWorld, low: float = 0.0) -> np.ndarray:
    """``[n_states, 2]`` array of ``(x, y)`` = (column, row) mapped linearly onto ``[low, 1]``."""
    rows, cols = np.divmod(np.arange(world.n_states), world.cols)

    def scale(index: np.ndarray, size: int) -> np.ndarray:
        unit = index / (size - 1) if size > 1 else np.zeros(index.shape)
        return low + (1.0 - low) * unit

    return np.stack([scale(cols, world.cols), scale(rows, world.rows)], axis=1)


def polynomial_features(world: GridWorld, order: int) -> np.ndarray:
    """All monomials ``x^i y^j`` with ``i + j <= order`` (Zhao ch. 8.2).

    Order 1 is ``[1, x, y]``, order 2 adds ``[x^2, xy, y^2]``, and so on: ``(order + 1)
    (order + 2) / 2`` features, grouped by degree. Returns ``[n_states, n_features]``.
    """
    check_int("order", order, minimum=0)
    x, y = normalised_coordinates(world, low=-1.0).T
    columns = [x ** (degree - j) * y**j for degree in range(order + 1) for j in range(degree + 1)]
    return np.stack(columns, axis=1)


def fourier_features(world: GridWorld, order: int) -> np.ndarray:
    """``cos(pi (c1 x + c2 y))`` for ``c1, c2 in 0..order`` (Zhao ch. 8.2).

    ``(order + 1)^2`` features; on a ``rows x cols`` grid, ``order >= max(rows, cols) - 1``
    spans every function of the state (the discrete cosine basis).
    """
    check_int("order", order, minimum=0)
    xy = normalised_coordinates(world, low=0.0)
    c = np.array([(c1, c2) for c1 in range(order + 1) for c2 in range(order + 1)])
    return np.cos(np.pi * xy @ c.T)


def onehot_features(world: GridWorld) -> np.ndarray:
    """The tabular case: ``phi(s) = e_s``, with which linear TD is tabular TD."""
    return np.eye(world.n_states)


def state_features(world: GridWorld, kind: str | np.ndarray, order: int = 1) -> np.ndarray:
    """Features ``[n_states, n_features]`` by name, or a given array checked for its shape."""
    if isinstance(kind, np.ndarray):
        phi = np.asarray(kind, dtype=np.float64)
        if phi.ndim != 2 or phi.shape[0] != world.n_states:
            raise ValueError(
                f"features must be an array [n_states={world.n_states}, n_features], "
                f"got shape {phi.shape}"
            )
        return phi
    check_choice("features", kind, FEATURE_KINDS)
    if kind == "polynomial":
        return polynomial_features(world, order)
    if kind == "fourier":
        return fourier_features(world, order)
    return onehot_features(world)


def state_action_features(phi: np.ndarray, n_actions: int) -> np.ndarray:
    """``phi(s, a) = e_a (kron) phi(s)``: one block of state features per action.

    Returns ``[n_states, n_actions, n_actions * n_features]``; ``q(s, a) = phi(s, a)^T w``
    then uses its own weights per action, the usual choice for a small discrete action set.
    """
    n_states, n_features = phi.shape
    out = np.zeros((n_states, n_actions, n_actions * n_features))
    for a in range(n_actions):
        out[:, a, a * n_features : (a + 1) * n_features] = phi
    return out
