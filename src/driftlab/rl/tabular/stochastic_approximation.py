"""Stochastic approximation: mean estimation and Robbins-Monro (Zhao ch. 6).

Monte Carlo and temporal-difference learning are both stochastic approximation: they estimate
an expectation from samples, one sample at a time. The two pieces here are the foundation:

* incremental mean estimation, ``w_{k+1} = w_k - alpha_k (w_k - x_k)`` (Zhao ch. 6.1,
  eq. (6.4)); with ``alpha_k = 1/k`` it is exactly the sample mean of ``x_1..x_k``;
* the Robbins-Monro algorithm, ``w_{k+1} = w_k - a_k g~(w_k, eta_k)`` (Zhao ch. 6.2),
  which finds the root of ``g(w) = 0`` from noisy observations
  ``g~(w, eta) = g(w) + eta``. It converges when ``sum a_k = inf`` and
  ``sum a_k^2 < inf`` (Theorem 6.1), e.g. ``a_k = 1/k``.

Both run many independent runs at once: arrays carry a leading ``[n_runs]`` axis, so one NumPy
step advances every run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from driftlab.core.config import ConfigError, check_int, check_positive

StepSize = float | str | Callable[[int], float]


def step_sizes(step_size: StepSize, n: int) -> np.ndarray:
    """The step sizes ``a_1..a_n``.

    ``step_size`` is ``"1/k"`` (the sample mean; satisfies Theorem 6.1), a constant float
    (tracks a moving target but keeps a residual variance), or a callable ``k -> a_k`` with
    ``k`` starting at 1.
    """
    check_int("n", n, minimum=1)
    k = np.arange(1, n + 1)
    if isinstance(step_size, str):
        if step_size != "1/k":
            raise ConfigError(f"step_size must be '1/k', a number or a callable; got {step_size!r}")
        return 1.0 / k
    if callable(step_size):
        return np.array([float(step_size(int(i))) for i in k])
    return np.full(n, check_positive("step_size", step_size))


def incremental_mean(
    samples: np.ndarray, step_size: StepSize = "1/k", w0: float | np.ndarray = 0.0
) -> np.ndarray:
    """Estimates ``w_1..w_n`` of incremental mean estimation (Zhao ch. 6.1, eq. (6.4)).

    ``samples`` is ``[n_runs, n]`` (or ``[n]`` for one run); the result has the same shape,
    entry ``k - 1`` being ``w_{k+1} = w_k - a_k (w_k - x_k)``, the estimate after ``k``
    samples. With ``a_k = 1/k`` it equals the running sample mean whatever ``w0`` is.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim not in (1, 2) or samples.shape[-1] == 0:
        raise ConfigError(f"samples must be [n] or [n_runs, n] with n >= 1, got {samples.shape}")
    a = step_sizes(step_size, samples.shape[-1])
    w = np.broadcast_to(np.asarray(w0, dtype=np.float64), samples.shape[:-1]).copy()
    estimates = np.empty_like(samples)
    for k in range(samples.shape[-1]):
        w = w - a[k] * (w - samples[..., k])
        estimates[..., k] = w
    return estimates


def robbins_monro(
    g: Callable[[np.ndarray], np.ndarray],
    w0: float | np.ndarray,
    n_iterations: int,
    step_size: StepSize = "1/k",
    noise_std: float = 0.0,
    n_runs: int = 1,
    seed: int | None = 0,
) -> np.ndarray:
    """The Robbins-Monro algorithm (Zhao ch. 6.2) on ``n_runs`` runs at once.

    Iterates ``w_{k+1} = w_k - a_k (g(w_k) + eta_k)`` with ``eta_k ~ N(0, noise_std^2)``
    independent per run and step. ``g`` maps a ``[n_runs]`` array to ``[n_runs]``; it must be
    increasing with bounded slope for Theorem 6.1 to apply. Returns ``[n_runs, n_iterations +
    1]``: column ``k`` is ``w_k`` (column 0 is ``w0``).
    """
    check_int("n_iterations", n_iterations, minimum=1)
    check_int("n_runs", n_runs, minimum=1)
    if noise_std < 0:
        raise ConfigError(f"noise_std must be >= 0, got {noise_std}")
    a = step_sizes(step_size, n_iterations)
    rng = np.random.default_rng(seed)
    w = np.broadcast_to(np.asarray(w0, dtype=np.float64), (n_runs,)).copy()
    history = np.empty((n_runs, n_iterations + 1))
    history[:, 0] = w
    for k in range(n_iterations):
        observation = np.asarray(g(w), dtype=np.float64) + noise_std * rng.standard_normal(n_runs)
        w = w - a[k] * observation
        history[:, k + 1] = w
    return history
