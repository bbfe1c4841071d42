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
- ``exploring_starts``: pick each episode's first action uniformly (Zhao ch. 5.3).
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
    ActingPolicy,
    EpisodeLog,
    Exploration,
    StepSize,
    check_step_size,
    cumulative_policy,
    rmse,
    sample_actions,
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


class _Runs(EpisodeLog):
    """The shared episode log plus the TD learners' estimate, visit counts, step size and
    error curve."""

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
        super().__init__(
            world, episodes, episode_length, n_runs, seed, start, reference, estimate_shape
        )
        self.exploring_starts = bool(exploring_starts)
        self.alpha = check_step_size("alpha", alpha)
        self.estimate = np.zeros((n_runs, *estimate_shape))
        self.counts = np.zeros((n_runs, *estimate_shape))
        # Flat views: a 1-d fancy index per step is much cheaper than a 3-d one.
        self.flat_estimate = self.estimate.reshape(-1)
        self.flat_counts = self.counts.reshape(-1)
        self.run_offset = self.runs * int(np.prod(estimate_shape))
        self.episodic = bool(world.terminal.any())
        self.episode_return = np.zeros(n_runs)
        self.episode_steps = np.zeros(n_runs, dtype=np.int64)
        self.errors = None if reference is None else np.zeros((episodes, n_runs))

    def start_episode(self) -> tuple[np.ndarray, np.ndarray]:
        self.episode_return[:] = 0.0
        self.episode_steps[:] = 0
        return super().start_episode()

    def first_actions(
        self, acting: ActingPolicy, greedy: np.ndarray, states: np.ndarray
    ) -> np.ndarray:
        """First action of each run: from the acting policy, or uniform under exploring starts.

        Exploring starts (Zhao ch. 5.3) make every state-action pair a possible first pair,
        so pairs the acting policy rarely picks still get visited.
        """
        if self.exploring_starts:
            return self.rng.integers(self.world.n_actions, size=self.n_runs)
        return acting.sample(0, greedy, states)

    def index(self, states: np.ndarray, actions: np.ndarray | None = None) -> np.ndarray:
        """Flat index of each run's entry ``(s)`` or ``(s, a)`` in ``flat_estimate``."""
        if actions is None:
            return self.run_offset + states
        return self.run_offset + states * self.world.n_actions + actions

    def update(self, index: np.ndarray, target: np.ndarray, mask: np.ndarray) -> None:
        """Move each run's entry ``index`` toward ``target`` where ``mask`` (Zhao ch. 7.1)."""
        if callable(self.alpha):
            self.flat_counts[index] += mask
            alpha = step_sizes(self.alpha, np.maximum(self.flat_counts[index], 1.0))
        else:
            alpha = self.alpha
        current = self.flat_estimate[index]
        step = target - current
        step *= alpha
        if self.episodic:  # in a continuing world every run is always live
            step *= mask
        current += step
        self.flat_estimate[index] = current

    def discount_to(self, states: np.ndarray) -> np.ndarray | float:
        """gamma, or 0 for runs whose next state is terminal."""
        return self.discount[states] if self.episodic else self.world.gamma

    def record(self, rewards: np.ndarray, mask: np.ndarray) -> None:
        if self.episodic:
            np.add(self.episode_return, rewards, out=self.episode_return, where=mask)
            self.episode_steps += mask
        else:
            self.episode_return += rewards
            self.episode_steps += 1

    def end_episode(self, episode: int) -> None:
        self.returns[episode] = self.episode_return
        self.lengths[episode] = self.episode_steps
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
    """TD(0) estimate of ``v_pi`` (Zhao ch. 7.1, the TD algorithm).

    ``v(s_t) <- v(s_t) - alpha [v(s_t) - (r_{t+1} + gamma v(s_{t+1}))]``, with
    ``v(s_{t+1}) = 0`` when ``s_{t+1}`` is terminal. ``reference`` is the exact ``v_pi``.
    """
    policy = world.check_policy(policy)
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
    cumulative = cumulative_policy(policy)
    for episode in range(episodes):
        states, alive = book.start_episode()
        uniforms = book.rng.random((episode_length, n_runs))
        for t in range(episode_length):
            actions = sample_actions(uniforms[t], cumulative[states])
            nxt, rewards, terminated = world.step_batch(states, actions)
            target = rewards + book.discount_to(nxt) * book.flat_estimate[book.index(nxt)]
            book.update(book.index(states), target, alive)
            book.record(rewards, alive)
            states = nxt
            if book.episodic:
                alive = alive & ~terminated
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
# The bootstrap maps (q rows at s_{t+1}, a_{t+1}, greedy actions at s_{t+1}, the acting
# policy, s_{t+1}) to the value that the target discounts, [n_runs].
Bootstrap = Callable[[np.ndarray, np.ndarray, np.ndarray, ActingPolicy, np.ndarray], np.ndarray]


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
    # Row ``run * S + s`` of ``q_rows`` is q(s, .) of that run; entry ``row * A + a`` of
    # ``book.flat_estimate`` is q(s, a).
    q_rows = book.estimate.reshape(-1, world.n_actions)
    row_offset = book.runs * world.n_states
    for episode in range(episodes):
        states, alive = book.start_episode()
        acting.begin_episode(episode, book.rng, episode_length + 1)
        rows = row_offset + states
        actions = book.first_actions(acting, q_rows.take(rows, axis=0).argmax(axis=1), states)
        for t in range(1, episode_length + 1):
            nxt, rewards, terminated = world.step_batch(states, actions)
            # Sarsa needs a_{t+1} before the update (Zhao ch. 7.2); the others use it
            # only to act, one step later.
            next_rows = row_offset + nxt
            next_q = q_rows.take(next_rows, axis=0)  # ``take``: several times faster here
            greedy = next_q.argmax(axis=1)
            next_actions = acting.sample(t, greedy, nxt)
            value = bootstrap(next_q, next_actions, greedy, acting, nxt)
            target = rewards + book.discount_to(nxt) * value
            book.update(rows * world.n_actions + actions, target, alive)
            book.record(rewards, alive)
            states, rows, actions = nxt, next_rows, next_actions
            if book.episodic:
                alive = alive & ~terminated
                if not alive.any():
                    break
        book.end_episode(episode)
    return TDResult(
        values=None,
        q_values=book.estimate,
        policy=greedy_policy(book.estimate),
        errors=book.errors,
        episode_returns=book.returns,
        episode_lengths=book.lengths,
    )


def _sampled_next(q, actions, greedy, acting: ActingPolicy, states) -> np.ndarray:
    """Sarsa: q(s_{t+1}, a_{t+1}) of the sampled next action."""
    return q.ravel()[acting.row_starts + actions]


def _expected_next(q, actions, greedy, acting: ActingPolicy, states) -> np.ndarray:
    """Expected Sarsa: sum_a pi(a | s_{t+1}) q(s_{t+1}, a)."""
    return (q * acting.probs(greedy, states)).sum(axis=1)


def _max_next(q, actions, greedy, acting: ActingPolicy, states) -> np.ndarray:
    """Q-learning: max_a q(s_{t+1}, a), read at the greedy action (a gather is several times
    faster than a max-reduction along a short axis)."""
    return q.ravel()[acting.row_starts + greedy]


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
    """Sarsa (Zhao ch. 7.2).

    Target ``r_{t+1} + gamma q(s_{t+1}, a_{t+1})``. With ``policy`` it evaluates that fixed
    policy and converges to ``q_pi``; without, it acts epsilon-greedily in its own estimate
    (policy improvement at every step) and ``policy`` of the result is the greedy one.
    """
    return _learn_q(
        world,
        ActingPolicy(world, policy, epsilon, n_runs),
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
    """Expected Sarsa (Zhao ch. 7.2, a variant of Sarsa).

    Target ``r_{t+1} + gamma sum_a pi(a | s_{t+1}) q(s_{t+1}, a)``: the expectation over the
    next action removes its sampling noise. ``policy`` / ``epsilon`` as in :func:`sarsa`.
    """
    return _learn_q(
        world,
        ActingPolicy(world, policy, epsilon, n_runs),
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
    """Q-learning (Zhao ch. 7.4), target ``r_{t+1} + gamma max_a q(s_{t+1}, a)``.

    Without ``behavior_policy`` it acts epsilon-greedily in its own estimate (on-policy
    version); with one it learns the greedy (optimal) policy from that
    policy's data (off-policy version). Both converge to ``q*``.
    """
    return _learn_q(
        world,
        ActingPolicy(world, behavior_policy, epsilon, n_runs),
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
    """n-step Sarsa (Zhao ch. 7.3).

    ``q(s_t, a_t)`` moves toward ``r_{t+1} + ... + gamma^{n-1} r_{t+n} +
    gamma^n q(s_{t+n}, a_{t+n})``, updated once ``s_{t+n}, a_{t+n}`` are known. The sum stops
    at termination (no bootstrap) and, at the episode's cut, bootstraps from the last pair.
    ``n = 1`` is Sarsa; ``policy`` / ``epsilon`` as in :func:`sarsa`.
    """
    check_int("n", n, minimum=1)
    acting = ActingPolicy(world, policy, epsilon, n_runs)
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
    q_rows = book.estimate.reshape(-1, world.n_actions)
    row_offset = book.runs * world.n_states

    def update(states, actions, rewards, alive, tau: int, end: int) -> None:
        """Update the pair of time ``tau`` with the return over ``tau..end-1``."""
        target = np.zeros(n_runs)
        for i in range(tau, end):
            target += gamma ** (i - tau) * rewards[i]
        last = book.flat_estimate[book.index(states[end], actions[end])]
        target += gamma ** (end - tau) * alive[end] * last
        book.update(book.index(states[tau], actions[tau]), target, alive[tau])

    for episode in range(episodes):
        first, first_alive = book.start_episode()
        acting.begin_episode(episode, book.rng, episode_length + 1)
        # Histories of this episode: entry t holds s_t, a_t, whether s_t is live, r_{t+1}.
        states, alive = [first], [first_alive]
        actions = [book.first_actions(acting, q_rows[row_offset + first].argmax(axis=1), first)]
        rewards = []
        for t in range(episode_length):
            nxt, reward, terminated = world.step_batch(states[t], actions[t])
            # After termination a run's rewards are 0 and its pairs are not updated.
            rewards.append(reward * alive[t])
            book.record(reward, alive[t])
            states.append(nxt)
            alive.append(alive[t] & ~terminated)
            actions.append(acting.sample(t + 1, q_rows[row_offset + nxt].argmax(axis=1), nxt))
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
        q_values=book.estimate,
        policy=greedy_policy(book.estimate),
        errors=book.errors,
        episode_returns=book.returns,
        episode_lengths=book.lengths,
    )
