"""TD learning with linear function approximation (Zhao ch. 8.2-8.3), vectorised over runs.

Values are ``v(s) = phi(s)^T w`` and ``q(s, a) = phi(s, a)^T w`` with the features of
:mod:`driftlab.rl.tabular.features`; for action values ``phi(s, a)`` is one block of state
features per action, so ``w`` is stored as ``[A, n_features]``. Each learner runs ``n_runs``
independent runs in one NumPy step, with the episode conventions of
:mod:`driftlab.rl.tabular.td` (synchronised episodes, no bootstrap from a terminal state,
bootstrap at the ``episode_length`` cut). The step size is a constant or a schedule of the
number of updates so far.

Linear TD does not reach ``v_pi`` itself but the projected fixed point
``w* = (Phi^T D (I - gamma P_pi) Phi)^-1 Phi^T D r_pi`` (Zhao ch. 8.2), with ``D`` the
distribution of the states it updates; :func:`td_fixed_point` computes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from driftlab.rl.tabular.features import state_features
from driftlab.rl.tabular.gridworld import GridWorld
from driftlab.rl.tabular.planning import greedy_policy
from driftlab.rl.tabular.runs import (
    ActingPolicy,
    EpisodeLog,
    Exploration,
    StepSize,
    check_step_size,
    rmse,
    step_sizes,
)


@dataclass
class LinearResult:
    """What a linear TD learner returns; arrays have a leading run axis.

    Attributes:
        weights: ``[n_runs, n_features]`` (state values) or ``[n_runs, A, n_features]``.
        features: ``[n_states, n_features]`` state features ``phi(s)``.
        values: ``[n_runs, S]`` approximate state values ``Phi w`` (TD-linear), else ``None``.
        q_values: ``[n_runs, S, A]`` approximate action values, else ``None``.
        policy: ``[n_runs, S, A]`` greedy policy of ``q_values``; for TD-linear the evaluated one.
        errors: ``[episodes, n_runs]`` RMSE of the values to ``reference`` after each episode.
        episode_returns, episode_lengths: ``[episodes, n_runs]`` per-episode totals.
    """

    weights: np.ndarray
    features: np.ndarray
    values: np.ndarray | None
    q_values: np.ndarray | None
    policy: np.ndarray
    errors: np.ndarray | None
    episode_returns: np.ndarray
    episode_lengths: np.ndarray


def stationary_distribution(P: np.ndarray) -> np.ndarray:
    """``d`` with ``d^T P = d^T`` and ``sum d = 1`` (Zhao ch. 8.2): a least-squares solve."""
    n = P.shape[0]
    system = np.vstack([P.T - np.eye(n), np.ones((1, n))])
    rhs = np.concatenate([np.zeros(n), [1.0]])
    d = np.linalg.lstsq(system, rhs, rcond=None)[0]
    return np.clip(d, 0.0, None) / np.clip(d, 0.0, None).sum()


def td_fixed_point(
    phi: np.ndarray, P: np.ndarray, r: np.ndarray, gamma: float, d: np.ndarray
) -> np.ndarray:
    """The weights linear TD converges to (Zhao ch. 8.2, the TD-linear fixed point).

    ``w* = (Phi^T D (I - gamma P) Phi)^-1 Phi^T D r`` with ``D = diag(d)``: the solution of the
    projected Bellman equation ``Phi w = Proj_D (r + gamma P Phi w)``. Works for states
    (``P = P_pi``) and for state-action pairs alike.
    """
    D = np.diag(d)
    A = phi.T @ D @ (np.eye(P.shape[0]) - gamma * P) @ phi
    b = phi.T @ D @ r
    return np.linalg.solve(A, b)


class _Episodes(EpisodeLog):
    """The shared episode log plus an error curve against the exact answer."""

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
        super().__init__(world, episodes, episode_length, n_runs, seed, start, reference, shape)
        self.errors = None if reference is None else np.zeros((episodes, n_runs))

    def record(self, episode: int, rewards: np.ndarray, alive: np.ndarray) -> None:
        self.returns[episode] += rewards * alive
        self.lengths[episode] += alive

    def end_episode(self, episode: int, estimate: np.ndarray) -> None:
        if self.errors is not None:
            self.errors[episode] = rmse(estimate, self.reference)


def td_linear(
    world: GridWorld,
    policy: np.ndarray,
    features: str | np.ndarray = "polynomial",
    order: int = 1,
    alpha: StepSize = 0.0005,
    episodes: int = 500,
    episode_length: int = 500,
    n_runs: int = 1,
    seed: int | None = 0,
    start: str | int | None = "random",
    reference: np.ndarray | None = None,
) -> LinearResult:
    """TD-linear estimate of ``v_pi`` (Zhao ch. 8.2, the TD-linear algorithm).

    ``w <- w + alpha [r_{t+1} + gamma phi(s_{t+1})^T w - phi(s_t)^T w] phi(s_t)``. ``features``
    is ``"polynomial"``, ``"fourier"`` (of the given ``order``), ``"onehot"`` or an array
    ``[n_states, n_features]``. ``reference`` is the exact ``v_pi``; ``alpha`` may be a
    schedule of the update count. The defaults (500 episodes of 500 steps from random
    states, ``alpha = 0.0005``) are a long run with a small constant step; a decaying
    schedule reaches the fixed point with far fewer steps (see the tests).
    """
    policy = world.check_policy(policy)
    phi = state_features(world, features, order)
    alpha = check_step_size("alpha", alpha)
    log = _Episodes(
        world, episodes, episode_length, n_runs, seed, start, reference, (world.n_states,)
    )
    weights = np.zeros((n_runs, phi.shape[1]))
    runs = np.arange(n_runs)
    cumulative = np.cumsum(policy, axis=1)
    cumulative[:, -1] = 1.0
    count = 0
    for episode in range(episodes):
        states, alive = log.start_episode()
        uniforms = log.rng.random((episode_length, n_runs))
        for t in range(episode_length):
            actions = (uniforms[t][:, None] < cumulative[states]).argmax(axis=1)
            nxt, rewards, terminated = world.step_batch(states, actions)
            values = weights @ phi.T  # [n_runs, S]: cheap for a grid world
            td_error = rewards + log.discount[nxt] * values[runs, nxt] - values[runs, states]
            count += 1
            step = step_sizes(alpha, np.full(n_runs, float(count))) * td_error * alive
            weights += step[:, None] * phi[states]
            log.record(episode, rewards, alive)
            alive = alive & ~terminated
            states = nxt
            if not alive.any():
                break
        log.end_episode(episode, weights @ phi.T)
    return LinearResult(
        weights=weights,
        features=phi,
        values=weights @ phi.T,
        q_values=None,
        policy=np.broadcast_to(policy, (n_runs, *policy.shape)).copy(),
        errors=log.errors,
        episode_returns=log.returns,
        episode_lengths=log.lengths,
    )


def _linear_q(
    world: GridWorld,
    acting: ActingPolicy,
    off_policy_max: bool,
    features: str | np.ndarray,
    order: int,
    alpha: StepSize,
    episodes: int,
    episode_length: int,
    n_runs: int,
    seed: int | None,
    start: str | int | None,
    reference: np.ndarray | None,
) -> LinearResult:
    """Sarsa (``off_policy_max=False``) or Q-learning with linear action values.

    ``w <- w + alpha [r_{t+1} + gamma q(s_{t+1}, .) - q(s_t, a_t)] phi(s_t, a_t)`` where the
    bootstrap is ``q(s_{t+1}, a_{t+1})`` for Sarsa and ``max_a q(s_{t+1}, a)`` for Q-learning
    (Zhao ch. 8.3). With per-action blocks, ``phi(s, a)`` only touches the weights of ``a``.
    """
    phi = state_features(world, features, order)
    alpha = check_step_size("alpha", alpha)
    A = world.n_actions
    log = _Episodes(
        world, episodes, episode_length, n_runs, seed, start, reference, (world.n_states, A)
    )
    weights = np.zeros((n_runs, A, phi.shape[1]))
    flat_weights = weights.reshape(n_runs * A, -1)
    runs = np.arange(n_runs)

    def q_rows(states: np.ndarray) -> np.ndarray:
        """``q(s, .)`` of each run at its state, ``[n_runs, A]``."""
        return np.einsum("nd,nad->na", phi[states], weights)

    count = 0
    for episode in range(episodes):
        states, alive = log.start_episode()
        acting.begin_episode(episode, log.rng, episode_length + 1)
        actions = acting.sample(0, q_rows(states).argmax(axis=1), states)
        for t in range(1, episode_length + 1):
            nxt, rewards, terminated = world.step_batch(states, actions)
            next_q = q_rows(nxt)
            greedy = next_q.argmax(axis=1)
            next_actions = acting.sample(t, greedy, nxt)
            bootstrap = next_q[runs, greedy] if off_policy_max else next_q[runs, next_actions]
            current = np.einsum("nd,nd->n", phi[states], weights[runs, actions])
            td_error = rewards + log.discount[nxt] * bootstrap - current
            count += 1
            step = step_sizes(alpha, np.full(n_runs, float(count))) * td_error * alive
            flat_weights[runs * A + actions] += step[:, None] * phi[states]
            log.record(episode, rewards, alive)
            alive = alive & ~terminated
            states, actions = nxt, next_actions
            if not alive.any():
                break
        log.end_episode(episode, np.einsum("sd,nad->nsa", phi, weights))
    q_values = np.einsum("sd,nad->nsa", phi, weights)
    return LinearResult(
        weights=weights,
        features=phi,
        values=None,
        q_values=q_values,
        policy=greedy_policy(q_values),
        errors=log.errors,
        episode_returns=log.returns,
        episode_lengths=log.lengths,
    )


def sarsa_linear(
    world: GridWorld,
    policy: np.ndarray | None = None,
    features: str | np.ndarray = "fourier",
    order: int = 2,
    epsilon: Exploration = 0.1,
    alpha: StepSize = 0.001,
    episodes: int = 500,
    episode_length: int = 100,
    n_runs: int = 1,
    seed: int | None = 0,
    start: str | int | None = None,
    reference: np.ndarray | None = None,
) -> LinearResult:
    """Sarsa with linear function approximation (Zhao ch. 8.3.1).

    With ``policy`` it evaluates that policy (converging to the state-action TD fixed
    point); without, it acts epsilon-greedily in its own estimate.
    """
    return _linear_q(
        world,
        ActingPolicy(world, policy, epsilon, n_runs),
        False,
        features,
        order,
        alpha,
        episodes,
        episode_length,
        n_runs,
        seed,
        start,
        reference,
    )


def q_learning_linear(
    world: GridWorld,
    behavior_policy: np.ndarray | None = None,
    features: str | np.ndarray = "fourier",
    order: int = 2,
    epsilon: Exploration = 0.1,
    alpha: StepSize = 0.001,
    episodes: int = 500,
    episode_length: int = 100,
    n_runs: int = 1,
    seed: int | None = 0,
    start: str | int | None = None,
    reference: np.ndarray | None = None,
) -> LinearResult:
    """Q-learning with linear function approximation (Zhao ch. 8.3.2).

    Target ``r_{t+1} + gamma max_a phi(s_{t+1}, a)^T w``; acting epsilon-greedily in its own
    estimate, or on ``behavior_policy``'s data (off-policy).
    """
    return _linear_q(
        world,
        ActingPolicy(world, behavior_policy, epsilon, n_runs),
        True,
        features,
        order,
        alpha,
        episodes,
        episode_length,
        n_runs,
        seed,
        start,
        reference,
    )
