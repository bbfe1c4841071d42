"""Temporal-difference learning on the grid world (Zhao ch. 7), vectorised over runs.

Every learner advances ``n_runs`` independent runs in one NumPy step (``world.step_batch``)
and returns a :class:`TDResult`. Episodes are synchronised across runs: a run whose episode
terminated waits (no update) until every run has terminated or ``episode_length`` steps
have passed. An episode cut by ``episode_length`` is a truncation, so its last update still
bootstraps; a step into a terminal state never does (its value is 0 by definition).

Arguments shared by every learner:

- ``alpha``: step size, a constant or a schedule of the visit count of the updated entry
  (:func:`driftlab.rl.tabular.runs.decaying_step_size`).
- ``episodes``, ``episode_length``: the budget; each run takes at most their product steps.
- ``n_runs``, ``seed``: independent runs, all drawn from one ``numpy`` generator of ``seed``.
- ``start``: ``None`` (the world's start cell, else a random non-terminal state),
  ``"random"`` or a state index.
- ``exploring_starts``: pick each episode's first action uniformly (Zhao ch. 5.2).
- ``reference``: the exact answer (``v_pi``, ``q_pi`` or ``q*``) to record ``errors`` against.
- ``epsilon`` (control): exploration rate, constant or a schedule of the episode index
  (:func:`driftlab.rl.tabular.runs.linear_schedule`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from driftlab.core.config import check_int
from driftlab.rl.tabular.gridworld import GridWorld
from driftlab.rl.tabular.planning import greedy_policy
from driftlab.rl.tabular.runs import (
    Exploration,
    StepSize,
    check_reference,
    check_runs,
    check_step_size,
    epsilon_greedy_rows,
    exploration_at,
    rmse,
    sample_actions,
    start_states,
    step_sizes,
)


@dataclass
class TDResult:
    """What a TD learner returns; arrays have a leading run axis.

    Attributes:
        values: ``[n_runs, S]`` state values (TD(0)), else ``None``.
        q_values: ``[n_runs, S, A]`` action values (Sarsa family, Q-learning), else ``None``.
        policy: ``[n_runs, S, A]`` greedy policy of ``q_values``; for TD(0) the evaluated one.
        errors: ``[episodes, n_runs]`` RMSE to ``reference`` after each episode, if given.
        episode_returns: ``[episodes, n_runs]`` undiscounted sum of rewards of each episode.
        episode_lengths: ``[episodes, n_runs]`` steps taken before termination or the cut.
    """

    values: np.ndarray | None
    q_values: np.ndarray | None
    policy: np.ndarray
    errors: np.ndarray | None
    episode_returns: np.ndarray
    episode_lengths: np.ndarray


class _Runs:
    """Per-episode bookkeeping shared by the learners: the step size, errors, returns."""

    def __init__(
        self,
        world: GridWorld,
        estimate_shape: tuple[int, ...],
        alpha: StepSize,
        episodes: int,
        episode_length: int,
        n_runs: int,
        seed: int | None,
        start: str | int | None,
        reference: np.ndarray | None,
        exploring_starts: bool,
    ) -> None:
        check_runs(n_runs, episodes, episode_length)
        self.exploring_starts = bool(exploring_starts)
        self.world = world
        self.alpha = check_step_size("alpha", alpha)
        self.episodes, self.episode_length, self.n_runs = episodes, episode_length, n_runs
        self.start = start
        self.reference = check_reference(reference, estimate_shape)
        self.rng = np.random.default_rng(seed)
        self.runs = np.arange(n_runs)
        self.estimate = np.zeros((n_runs, *estimate_shape))
        self.counts = np.zeros((n_runs, *estimate_shape))
        self.errors = None if reference is None else np.zeros((episodes, n_runs))
        self.returns = np.zeros((episodes, n_runs))
        self.lengths = np.zeros((episodes, n_runs), dtype=np.int64)

    def start_episode(self) -> tuple[np.ndarray, np.ndarray]:
        states = start_states(self.world, self.rng, self.n_runs, self.start)
        return states, ~self.world.terminal[states]

    def first_actions(self, probs: np.ndarray) -> np.ndarray:
        """First action of each run: from ``probs``, or uniform under exploring starts.

        Exploring starts (Zhao ch. 5.2) make every state-action pair a possible first pair,
        so pairs the acting policy rarely picks still get visited.
        """
        if self.exploring_starts:
            return self.rng.integers(probs.shape[1], size=probs.shape[0])
        return sample_actions(self.rng, probs)

    def update(self, index: tuple[np.ndarray, ...], target: np.ndarray, mask: np.ndarray) -> None:
        """Move ``estimate[runs, *index]`` toward ``target`` where ``mask`` (Zhao eq. (7.1))."""
        if callable(self.alpha):
            self.counts[(self.runs, *index)] += mask
            alpha = step_sizes(self.alpha, np.maximum(self.counts[(self.runs, *index)], 1.0))
        else:
            alpha = self.alpha
        current = self.estimate[(self.runs, *index)]
        self.estimate[(self.runs, *index)] = current + mask * alpha * (target - current)

    def record(self, episode: int, rewards: np.ndarray, mask: np.ndarray) -> None:
        self.returns[episode] += rewards * mask
        self.lengths[episode] += mask

    def end_episode(self, episode: int) -> None:
        if self.errors is not None:
            self.errors[episode] = rmse(self.estimate, self.reference)


def td0(
    world: GridWorld,
    policy: np.ndarray,
    alpha: StepSize = 0.1,
    episodes: int = 500,
    episode_length: int = 100,
    n_runs: int = 1,
    seed: int | None = 0,
    start: str | int | None = None,
    reference: np.ndarray | None = None,
) -> TDResult:
    """TD(0) estimate of ``v_pi`` (Zhao ch. 7, eq. (7.1)).

    ``v(s_t) <- v(s_t) - alpha [v(s_t) - (r_{t+1} + gamma v(s_{t+1}))]``, with
    ``v(s_{t+1}) = 0`` when ``s_{t+1}`` is terminal. ``reference`` is the exact ``v_pi``.
    """
    policy = world.check_policy(policy)
    gamma = world.gamma
    book = _Runs(
        world,
        (world.n_states,),
        alpha,
        episodes,
        episode_length,
        n_runs,
        seed,
        start,
        reference,
        False,
    )
    for episode in range(episodes):
        states, alive = book.start_episode()
        for _ in range(episode_length):
            actions = sample_actions(book.rng, policy[states])
            nxt, rewards, terminated = world.step_batch(states, actions)
            target = rewards + gamma * ~terminated * book.estimate[book.runs, nxt]
            book.update((states,), target, alive)
            book.record(episode, rewards, alive)
            alive = alive & ~terminated
            states = nxt
            if not alive.any():
                break
        book.end_episode(episode)
    return TDResult(
        values=book.estimate,
        q_values=None,
        policy=np.broadcast_to(policy, (n_runs, *policy.shape)).copy(),
        errors=book.errors,
        episode_returns=book.returns,
        episode_lengths=book.lengths,
    )


# ----- one-step action-value learners ----------------------------------------------------------
# The acting policy maps (q of each run, states, episode) to action probabilities [n_runs, A].
ActingPolicy = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
# The bootstrap maps (q, next states, next actions, probabilities at next states) to [n_runs].
Bootstrap = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _acting_policy(
    world: GridWorld, policy: np.ndarray | None, epsilon: Exploration
) -> ActingPolicy:
    """A fixed policy (evaluation), or epsilon-greedy in the current estimate (control)."""
    if policy is not None:
        fixed = world.check_policy(policy)
        return lambda q, states, episode: fixed[states]
    exploration_at(epsilon, 0)

    def act(q: np.ndarray, states: np.ndarray, episode: int) -> np.ndarray:
        runs = np.arange(q.shape[0])
        return epsilon_greedy_rows(q[runs, states], exploration_at(epsilon, episode))

    return act


def _learn_q(
    world: GridWorld,
    acting: ActingPolicy,
    bootstrap: Bootstrap,
    alpha: StepSize,
    episodes: int,
    episode_length: int,
    n_runs: int,
    seed: int | None,
    start: str | int | None,
    reference: np.ndarray | None,
    exploring_starts: bool,
) -> TDResult:
    """The loop shared by Sarsa, Expected Sarsa and Q-learning: they differ in ``bootstrap``.

    ``q(s_t, a_t) <- q(s_t, a_t) - alpha [q(s_t, a_t) - (r_{t+1} + gamma * bootstrap)]``.
    """
    gamma = world.gamma
    book = _Runs(
        world,
        (world.n_states, world.n_actions),
        alpha,
        episodes,
        episode_length,
        n_runs,
        seed,
        start,
        reference,
        exploring_starts,
    )
    q = book.estimate
    for episode in range(episodes):
        states, alive = book.start_episode()
        actions = book.first_actions(acting(q, states, episode))
        for _ in range(episode_length):
            nxt, rewards, terminated = world.step_batch(states, actions)
            # Sarsa needs a_{t+1} before the update (Zhao Algorithm 7.1); the others use it
            # only to act, one step later.
            next_probs = acting(q, nxt, episode)
            next_actions = sample_actions(book.rng, next_probs)
            target = rewards + gamma * ~terminated * bootstrap(q, nxt, next_actions, next_probs)
            book.update((states, actions), target, alive)
            book.record(episode, rewards, alive)
            alive = alive & ~terminated
            states, actions = nxt, next_actions
            if not alive.any():
                break
        book.end_episode(episode)
    return TDResult(
        values=None,
        q_values=q,
        policy=greedy_policy(q),
        errors=book.errors,
        episode_returns=book.returns,
        episode_lengths=book.lengths,
    )


def _sampled_next(
    q: np.ndarray, nxt: np.ndarray, next_actions: np.ndarray, _: np.ndarray
) -> np.ndarray:
    return q[np.arange(q.shape[0]), nxt, next_actions]


def _expected_next(
    q: np.ndarray, nxt: np.ndarray, _: np.ndarray, next_probs: np.ndarray
) -> np.ndarray:
    return (q[np.arange(q.shape[0]), nxt] * next_probs).sum(axis=1)


def _max_next(q: np.ndarray, nxt: np.ndarray, _: np.ndarray, __: np.ndarray) -> np.ndarray:
    return q[np.arange(q.shape[0]), nxt].max(axis=1)


def sarsa(
    world: GridWorld,
    policy: np.ndarray | None = None,
    epsilon: Exploration = 0.1,
    alpha: StepSize = 0.1,
    episodes: int = 500,
    episode_length: int = 100,
    n_runs: int = 1,
    seed: int | None = 0,
    start: str | int | None = None,
    exploring_starts: bool = False,
    reference: np.ndarray | None = None,
) -> TDResult:
    """Sarsa (Zhao ch. 7.2, eq. (7.12), Algorithm 7.1).

    Target ``r_{t+1} + gamma q(s_{t+1}, a_{t+1})``. With ``policy`` it evaluates that fixed
    policy and converges to ``q_pi``; without, it acts epsilon-greedily in its own estimate
    (policy improvement at every step) and ``policy`` of the result is the greedy one.
    """
    return _learn_q(
        world,
        _acting_policy(world, policy, epsilon),
        _sampled_next,
        alpha,
        episodes,
        episode_length,
        n_runs,
        seed,
        start,
        reference,
        exploring_starts,
    )


def expected_sarsa(
    world: GridWorld,
    policy: np.ndarray | None = None,
    epsilon: Exploration = 0.1,
    alpha: StepSize = 0.1,
    episodes: int = 500,
    episode_length: int = 100,
    n_runs: int = 1,
    seed: int | None = 0,
    start: str | int | None = None,
    exploring_starts: bool = False,
    reference: np.ndarray | None = None,
) -> TDResult:
    """Expected Sarsa (Zhao ch. 7.3, eq. (7.14)).

    Target ``r_{t+1} + gamma sum_a pi(a | s_{t+1}) q(s_{t+1}, a)``: the expectation over the
    next action removes its sampling noise. ``policy`` / ``epsilon`` as in :func:`sarsa`.
    """
    return _learn_q(
        world,
        _acting_policy(world, policy, epsilon),
        _expected_next,
        alpha,
        episodes,
        episode_length,
        n_runs,
        seed,
        start,
        reference,
        exploring_starts,
    )


def q_learning(
    world: GridWorld,
    behavior_policy: np.ndarray | None = None,
    epsilon: Exploration = 0.1,
    alpha: StepSize = 0.1,
    episodes: int = 500,
    episode_length: int = 100,
    n_runs: int = 1,
    seed: int | None = 0,
    start: str | int | None = None,
    exploring_starts: bool = False,
    reference: np.ndarray | None = None,
) -> TDResult:
    """Q-learning (Zhao ch. 7.4, eq. (7.18)), target ``r_{t+1} + gamma max_a q(s_{t+1}, a)``.

    Without ``behavior_policy`` it acts epsilon-greedily in its own estimate (on-policy
    version, Algorithm 7.2); with one it learns the greedy (optimal) policy from that
    policy's data (off-policy version, Algorithm 7.3). Both converge to ``q*``.
    """
    return _learn_q(
        world,
        _acting_policy(world, behavior_policy, epsilon),
        _max_next,
        alpha,
        episodes,
        episode_length,
        n_runs,
        seed,
        start,
        reference,
        exploring_starts,
    )


def nstep_sarsa(
    world: GridWorld,
    n: int = 3,
    policy: np.ndarray | None = None,
    epsilon: Exploration = 0.1,
    alpha: StepSize = 0.1,
    episodes: int = 500,
    episode_length: int = 100,
    n_runs: int = 1,
    seed: int | None = 0,
    start: str | int | None = None,
    exploring_starts: bool = False,
    reference: np.ndarray | None = None,
) -> TDResult:
    """n-step Sarsa (Zhao ch. 7.5, eq. (7.16)).

    ``q(s_t, a_t)`` moves toward ``r_{t+1} + ... + gamma^{n-1} r_{t+n} +
    gamma^n q(s_{t+n}, a_{t+n})``, updated once ``s_{t+n}, a_{t+n}`` are known. The sum stops
    at termination (no bootstrap) and, at the episode's cut, bootstraps from the last pair.
    ``n = 1`` is Sarsa; ``policy`` / ``epsilon`` as in :func:`sarsa`.
    """
    check_int("n", n, minimum=1)
    acting = _acting_policy(world, policy, epsilon)
    gamma = world.gamma
    book = _Runs(
        world,
        (world.n_states, world.n_actions),
        alpha,
        episodes,
        episode_length,
        n_runs,
        seed,
        start,
        reference,
        exploring_starts,
    )
    q, runs = book.estimate, book.runs

    def update(states, actions, rewards, alive, tau: int, end: int) -> None:
        """Update the pair of time ``tau`` with the return over ``tau..end-1``."""
        target = np.zeros(n_runs)
        for i in range(tau, end):
            target += gamma ** (i - tau) * rewards[i]
        target += gamma ** (end - tau) * alive[end] * q[runs, states[end], actions[end]]
        book.update((states[tau], actions[tau]), target, alive[tau])

    for episode in range(episodes):
        first, first_alive = book.start_episode()
        # Histories of this episode: entry t holds s_t, a_t, whether s_t is live, r_{t+1}.
        states, alive = [first], [first_alive]
        actions, rewards = [book.first_actions(acting(q, first, episode))], []
        for t in range(episode_length):
            nxt, reward, terminated = world.step_batch(states[t], actions[t])
            # After termination a run's rewards are 0 and its pairs are not updated.
            rewards.append(reward * alive[t])
            book.record(episode, reward, alive[t])
            states.append(nxt)
            alive.append(alive[t] & ~terminated)
            actions.append(sample_actions(book.rng, acting(q, nxt, episode)))
            if t + 1 >= n:
                update(states, actions, rewards, alive, t + 1 - n, t + 1)
            if not alive[-1].any():
                break
        end = len(rewards)
        for tau in range(max(0, end - n + 1), end):
            update(states, actions, rewards, alive, tau, end)
        book.end_episode(episode)
    return TDResult(
        values=None,
        q_values=q,
        policy=greedy_policy(q),
        errors=book.errors,
        episode_returns=book.returns,
        episode_lengths=book.lengths,
    )
