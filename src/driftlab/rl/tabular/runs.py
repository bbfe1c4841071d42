"""Mechanics shared by the learners that advance many independent runs in one NumPy step.

Every learner keeps its estimate with a leading run axis (``q[n_runs, S, A]``) and moves all
runs together: ``states[n_runs]`` -> actions sampled per run -> ``world.step_batch``. Runs are
independent because each draws its own actions from a shared, seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from driftlab.core.config import ConfigError, check_in_range, check_int, check_positive
from driftlab.rl.tabular.gridworld import GridWorld

# A step size is a constant, or a function of how many times the updated entry (or, for
# function approximation, the run) has been updated so far, counting from 1.
StepSize = float | Callable[[np.ndarray], np.ndarray]


def decaying_step_size(alpha0: float, power: float = 1.0, offset: float = 0.0) -> StepSize:
    """``alpha_k = alpha0 / ((k + offset) / (1 + offset)) ** power``, ``alpha_1 = alpha0``.

    With ``0.5 < power <= 1`` the Robbins-Monro conditions hold (Zhao ch. 6, Robbins-Monro theorem):
    ``sum alpha_k = inf`` and ``sum alpha_k^2 < inf``, so stochastic approximation converges.
    """
    check_positive("alpha0", alpha0)
    check_in_range("power", power, 0.0, 1.0)
    if offset < 0:
        raise ConfigError(f"offset must be >= 0, got {offset}")

    def schedule(count: np.ndarray) -> np.ndarray:
        return alpha0 / ((count + offset) / (1.0 + offset)) ** power

    return schedule


# An exploration rate is a constant or a function of the episode index (from 0).
Exploration = float | Callable[[int], float]


def linear_schedule(start: float, end: float, duration: int) -> Callable[[int], float]:
    """``start`` moving linearly to ``end`` over ``duration`` episodes, then ``end``.

    Letting epsilon go to 0 makes an epsilon-greedy learner greedy in the limit (GLIE), which
    is what lets Sarsa reach an optimal policy rather than the best epsilon-greedy one.
    """
    check_in_range("start", start, 0.0, 1.0)
    check_in_range("end", end, 0.0, 1.0)
    check_int("duration", duration, minimum=1)

    def schedule(episode: int) -> float:
        return start + (end - start) * min(episode / duration, 1.0)

    return schedule


def exploration_at(epsilon: Exploration, episode: int) -> float:
    """The exploration rate of ``episode``, checked to be a probability."""
    value = epsilon(episode) if callable(epsilon) else epsilon
    return check_in_range("epsilon", value, 0.0, 1.0)


def check_step_size(name: str, alpha: StepSize) -> StepSize:
    if callable(alpha):
        return alpha
    return check_in_range(name, alpha, 0.0, 1.0)


def step_sizes(alpha: StepSize, count: np.ndarray) -> np.ndarray | float:
    """The step size of each update, given its visit count (>= 1)."""
    return alpha(count) if callable(alpha) else alpha


def check_runs(n_runs: int, episodes: int, episode_length: int) -> None:
    check_int("n_runs", n_runs, minimum=1)
    check_int("episodes", episodes, minimum=1)
    check_int("episode_length", episode_length, minimum=1)


def cumulative_policy(policy: np.ndarray) -> np.ndarray:
    """Cumulative action probabilities of each row, the last set to exactly 1."""
    cumulative = np.cumsum(policy, axis=-1)
    cumulative[..., -1] = 1.0  # so that every u in [0, 1) falls below some entry
    return cumulative


def sample_actions(uniforms: np.ndarray, cumulative: np.ndarray) -> np.ndarray:
    """One action per row by inverting the cumulative distribution ``cumulative[n, A]``.

    ``uniforms[n]`` are draws on [0, 1); the action is the first with ``u < F(a)``.
    (``argmax`` on the booleans is much faster than counting them with a sum.)
    """
    return (uniforms[:, None] < cumulative).argmax(axis=1)


class ActingPolicy:
    """The policy that picks actions: fixed (evaluation) or epsilon-greedy in q (control).

    It works from each run's greedy action at its state (``greedy[n_runs]``), which the loop
    computes once per step and Q-learning's target reuses.
    """

    def __init__(
        self, world: GridWorld, policy: np.ndarray | None, epsilon: Exploration, n_runs: int
    ) -> None:
        self.fixed = None if policy is None else world.check_policy(policy)
        if self.fixed is not None:
            self.cumulative = cumulative_policy(self.fixed)
        self.schedule = epsilon
        self.epsilon = exploration_at(epsilon, 0)
        self.n_actions = world.n_actions
        self.runs = np.arange(n_runs)
        # start of each run's row in a flattened ``[n_runs, A]`` array
        self.row_starts = self.runs * self.n_actions

    def begin_episode(self, episode: int, rng: np.random.Generator, draws: int) -> None:
        """Draw the episode's uniforms at once (``[draws, n_runs]``), not one call per step."""
        self.epsilon = exploration_at(self.schedule, episode)
        self.uniforms = rng.random((draws, self.runs.size))
        if self.fixed is None and self.epsilon > 0.0:
            # explore when u < epsilon; then u / epsilon is uniform on [0, 1) and picks the
            # random action, so one draw decides both.
            self.explore = self.uniforms < self.epsilon
            scaled = (self.uniforms * (self.n_actions / self.epsilon)).astype(np.int64)
            self.random_actions = np.minimum(scaled, self.n_actions - 1)

    def probs(self, greedy: np.ndarray, states: np.ndarray) -> np.ndarray:
        """``pi(. | s)`` of each run, ``[n_runs, A]`` (epsilon-greedy as in Zhao ch. 5.4)."""
        if self.fixed is not None:
            return self.fixed[states]
        probs = np.full((self.runs.size, self.n_actions), self.epsilon / self.n_actions)
        probs[self.runs, greedy] += 1.0 - self.epsilon
        return probs

    def sample(self, draw: int, greedy: np.ndarray, states: np.ndarray) -> np.ndarray:
        """One action per run from the episode's ``draw``-th uniforms."""
        if self.fixed is not None:
            return sample_actions(self.uniforms[draw], self.cumulative[states])
        if self.epsilon == 0.0:
            return greedy
        return np.where(self.explore[draw], self.random_actions[draw], greedy)


def start_states(
    world: GridWorld, rng: np.random.Generator, n_runs: int, start: str | int | None
) -> np.ndarray:
    """Start state of each run for one episode.

    ``start=None`` uses the world's ``start`` cell when it has one, else a uniformly random
    non-terminal state per run; ``"random"`` forces the latter; an int is a fixed state.
    """
    if start is None and world.start is not None:
        start = world.state_index(*world.start)
    if start is None or start == "random":
        candidates = np.flatnonzero(~world.terminal)
        return candidates[rng.integers(candidates.size, size=n_runs)]
    if isinstance(start, str) or not 0 <= int(start) < world.n_states:
        raise ConfigError(
            f"start must be None, 'random' or a state in 0..{world.n_states - 1}, got {start!r}"
        )
    return np.full(n_runs, int(start))


def rmse(estimates: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Root-mean-square error of each run's estimate ``[n_runs, ...]`` against ``reference``."""
    errors = (estimates - reference[None]).reshape(estimates.shape[0], -1)
    return np.sqrt((errors**2).mean(axis=1))


def check_reference(reference: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if reference is None:
        return None
    reference = np.asarray(reference, dtype=np.float64)
    if reference.shape != shape:
        raise ConfigError(f"reference must have shape {shape}, got {reference.shape}")
    return reference


class EpisodeLog:
    """What every vectorised learner keeps: a seeded generator, the start states of each
    episode, and each run's return and length per episode.

    Learners add their own estimates and error curves on top (see ``td``, ``linear`` and
    ``policy_gradient``); the generator is made here and consumed only by them, so the
    random stream of a learner is fixed by its seed alone.
    """

    def __init__(
        self,
        world: GridWorld,
        episodes: int,
        episode_length: int,
        n_runs: int,
        seed: int | None,
        start: str | int | None,
        reference: np.ndarray | None,
        shape: tuple[int, ...],
    ) -> None:
        check_runs(n_runs, episodes, episode_length)
        self.world, self.n_runs, self.start = world, n_runs, start
        self.rng = np.random.default_rng(seed)
        self.runs = np.arange(n_runs)
        self.reference = check_reference(reference, shape)
        # gamma where s' is live, 0 where it is terminal: never bootstrap past termination.
        self.discount = world.gamma * ~world.terminal
        self.returns = np.zeros((episodes, n_runs))
        self.lengths = np.zeros((episodes, n_runs), dtype=np.int64)

    def start_episode(self) -> tuple[np.ndarray, np.ndarray]:
        """Each run's start state, and whether it is live (not terminal)."""
        states = start_states(self.world, self.rng, self.n_runs, self.start)
        return states, ~self.world.terminal[states]
