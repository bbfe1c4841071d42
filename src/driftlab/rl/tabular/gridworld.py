"""The grid world of Zhao, "Mathematical Foundations of Reinforcement Learning" (ch. 1-2).

States ``s1..s_{rows*cols}`` are numbered row by row from the top-left; index ``i`` here is
``s_{i+1}``. Cells are given 1-indexed as ``(row, column)``, as in the book. Actions, in
order: up, right, down, left, stay. Moves are deterministic.

Rewards follow the book: trying to leave the grid keeps the agent in place with
``r_boundary``; entering (or staying in) a forbidden cell gives ``r_forbidden`` (the agent does
enter it); entering or staying at the target gives ``r_target``; every other move ``r_other``.
By default the task is continuing (the target is not terminal). With ``terminal_target=True``
the target ends the episode: its value is 0 and the model makes it absorbing with reward 0.

The explicit model (``next_state``, ``reward``, ``transition``) lets every learner be checked
against the exact solution of the Bellman equation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

import gymnasium as gym
import numpy as np

from driftlab.core.config import ConfigError, check_in_range, check_int

ACTIONS = ("up", "right", "down", "left", "stay")
# (row, column) displacement of each action.
MOVES = np.array([(-1, 0), (0, 1), (1, 0), (0, -1), (0, 0)])

DEFAULT_FORBIDDEN = ((2, 2), (2, 3), (3, 3), (4, 2), (4, 4), (5, 2))
DEFAULT_TARGET = (4, 3)


def _check_cell(name: str, cell: Sequence[int], rows: int, cols: int) -> tuple[int, int]:
    if len(cell) != 2:
        raise ConfigError(f"{name} must be a (row, column) pair, got {cell!r}")
    r, c = int(cell[0]), int(cell[1])
    if not (1 <= r <= rows and 1 <= c <= cols):
        raise ConfigError(
            f"{name} {tuple(cell)!r} is outside the {rows}x{cols} grid (cells are 1-indexed)"
        )
    return r, c


class GridWorld(gym.Env):
    """The book's grid world with its explicit model and a Gymnasium interface.

    Attributes:
        n_states, n_actions: sizes of the state and action sets.
        next_state: ``[n_states, n_actions]`` int array, the deterministic successor.
        reward: ``[n_states, n_actions]`` float array, the immediate reward.
        transition: ``[n_states, n_actions, n_states]`` probabilities p(s' | s, a).
        terminal: ``[n_states]`` bool array (only the target, and only if ``terminal_target``).
    """

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(
        self,
        rows: int = 5,
        cols: int = 5,
        forbidden: Iterable[Sequence[int]] = DEFAULT_FORBIDDEN,
        target: Sequence[int] = DEFAULT_TARGET,
        r_boundary: float = -1.0,
        r_forbidden: float = -1.0,
        r_target: float = 1.0,
        r_other: float = 0.0,
        gamma: float = 0.9,
        terminal_target: bool = False,
        start: Sequence[int] | None = None,
        max_episode_steps: int | None = None,
    ) -> None:
        self.rows = check_int("rows", rows, minimum=1)
        self.cols = check_int("cols", cols, minimum=1)
        self.forbidden = tuple(_check_cell("forbidden cell", c, rows, cols) for c in forbidden)
        self.target = _check_cell("target", target, rows, cols)
        if self.target in self.forbidden:
            raise ConfigError(f"target {self.target!r} must not be a forbidden cell")
        self.r_boundary = float(r_boundary)
        self.r_forbidden = float(r_forbidden)
        self.r_target = float(r_target)
        self.r_other = float(r_other)
        self.gamma = check_in_range("gamma", gamma, 0.0, 1.0)
        if self.gamma == 1.0 and not terminal_target:
            raise ConfigError("gamma must be < 1 for the continuing task, got 1.0")
        self.terminal_target = bool(terminal_target)
        self.start = None if start is None else _check_cell("start", start, rows, cols)
        if max_episode_steps is not None:
            check_int("max_episode_steps", max_episode_steps, minimum=1)
        self.max_episode_steps = max_episode_steps

        self.n_states = rows * cols
        self.n_actions = len(ACTIONS)
        self.observation_space = gym.spaces.Discrete(self.n_states)
        self.action_space = gym.spaces.Discrete(self.n_actions)
        self._build_model()
        self._state = 0
        self._steps = 0

    # ----- coordinates ---------------------------------------------------------------------
    def state_index(self, row: int, col: int) -> int:
        """Index of the 1-indexed cell ``(row, col)``."""
        return (row - 1) * self.cols + (col - 1)

    def cell(self, state: int) -> tuple[int, int]:
        """1-indexed ``(row, col)`` of a state index."""
        return state // self.cols + 1, state % self.cols + 1

    @property
    def target_state(self) -> int:
        return self.state_index(*self.target)

    @property
    def forbidden_states(self) -> np.ndarray:
        return np.array([self.state_index(*c) for c in self.forbidden], dtype=int)

    # ----- model ---------------------------------------------------------------------------
    def _build_model(self) -> None:
        S, A = self.n_states, self.n_actions
        forbidden = set(self.forbidden)
        self.next_state = np.zeros((S, A), dtype=np.int64)
        self.reward = np.zeros((S, A), dtype=np.float64)
        self.terminal = np.zeros(S, dtype=bool)
        if self.terminal_target:
            self.terminal[self.target_state] = True
        for s in range(S):
            r, c = self.cell(s)
            for a in range(A):
                nr, nc = r + MOVES[a, 0], c + MOVES[a, 1]
                if self.terminal[s]:
                    self.next_state[s, a], self.reward[s, a] = s, 0.0
                elif not (1 <= nr <= self.rows and 1 <= nc <= self.cols):
                    self.next_state[s, a], self.reward[s, a] = s, self.r_boundary
                else:
                    self.next_state[s, a] = self.state_index(nr, nc)
                    if (nr, nc) == self.target:
                        self.reward[s, a] = self.r_target
                    elif (nr, nc) in forbidden:
                        self.reward[s, a] = self.r_forbidden
                    else:
                        self.reward[s, a] = self.r_other
        self._next_flat = self.next_state.ravel()
        self._reward_flat = self.reward.ravel()
        self.transition = np.zeros((S, A, S))
        self.transition[np.arange(S)[:, None], np.arange(A)[None, :], self.next_state] = 1.0

    def check_policy(self, policy: np.ndarray) -> np.ndarray:
        """Validate a stochastic policy ``[n_states, n_actions]`` (rows sum to 1)."""
        policy = np.asarray(policy, dtype=np.float64)
        if policy.shape != (self.n_states, self.n_actions):
            raise ConfigError(
                f"policy must have shape {(self.n_states, self.n_actions)}, got {policy.shape}"
            )
        if (policy < -1e-12).any() or not np.allclose(policy.sum(axis=1), 1.0, atol=1e-8):
            raise ConfigError("policy rows must be probability vectors (>= 0, summing to 1)")
        return policy

    def policy_model(self, policy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(P_pi, r_pi)``: the state transition matrix and expected reward under ``policy``."""
        policy = self.check_policy(policy)
        r_pi = (policy * self.reward).sum(axis=1)
        P_pi = np.einsum("sa,sat->st", policy, self.transition)
        return P_pi, r_pi

    def uniform_policy(self) -> np.ndarray:
        return np.full((self.n_states, self.n_actions), 1.0 / self.n_actions)

    def step_batch(
        self, states: np.ndarray, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance many independent agents at once: ``(next_states, rewards, terminated)``."""
        # Flat indexing: one gather per array instead of 2-D fancy indexing, which dominates
        # the cost of a vectorised step.
        flat = states * self.n_actions + actions
        nxt = self._next_flat[flat]
        return nxt, self._reward_flat[flat], self.terminal[nxt]

    # ----- Gymnasium interface -------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[int, dict]:
        """Start at ``options["state"]``, else the configured start, else a random state."""
        super().reset(seed=seed)
        if options and "state" in options:
            self._state = int(options["state"])
        elif self.start is not None:
            self._state = self.state_index(*self.start)
        else:
            self._state = int(self.np_random.integers(self.n_states))
        self._steps = 0
        return self._state, {}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
        if not 0 <= int(action) < self.n_actions:
            raise ConfigError(f"action must be in 0..{self.n_actions - 1}, got {action!r}")
        s = self._state
        self._state = int(self.next_state[s, action])
        self._steps += 1
        terminated = bool(self.terminal[self._state])
        truncated = self.max_episode_steps is not None and self._steps >= self.max_episode_steps
        return self._state, float(self.reward[s, action]), terminated, bool(truncated), {}
