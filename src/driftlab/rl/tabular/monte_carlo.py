"""Monte Carlo control: MC Basic, MC Exploring Starts, MC epsilon-greedy (Zhao ch. 5).

Monte Carlo learning replaces the model in policy iteration by returns of sampled episodes:
``q_pi(s, a) = E[G_t | S_t = s, A_t = a]`` (Zhao ch. 5.1-5.2) is estimated by the mean of
observed returns, the incremental mean estimation of :mod:`stochastic_approximation`.

* :func:`mc_basic` is policy iteration with the model-based evaluation swapped for episodes of
  fixed length from every (s, a) (Zhao Algorithm 5.1).
* :func:`mc_exploring_starts` uses every step of each episode, first-visit or every-visit,
  with episodes started at a random (s, a) so every pair keeps being visited (Algorithm 5.2).
* :func:`mc_epsilon_greedy` drops exploring starts and explores with an epsilon-greedy policy
  (Algorithm 5.3); it finds the best epsilon-greedy policy.

The stochastic methods run ``n_runs`` independent learners at once: arrays carry a leading run
axis and one NumPy step advances every run. Each records a learning curve against the exact
answer from the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from driftlab.core.config import ConfigError, check_choice, check_in_range, check_int
from driftlab.rl.tabular.gridworld import GridWorld
from driftlab.rl.tabular.planning import (
    PlanningResult,
    epsilon_greedy_policy,
    greedy_policy,
    policy_iteration,
)
from driftlab.rl.tabular.runs import (
    StepSize,
    check_step_size,
    cumulative_policy,
    rmse,
    sample_actions,
    start_states,
    step_sizes,
)


@dataclass
class MonteCarloResult:
    """What ``n_runs`` independent Monte Carlo learners found, and how fast.

    Attributes:
        q_values: ``[n_runs, n_states, n_actions]`` learned action values.
        values: ``[n_runs, n_states]`` state values of the learned policy under ``q_values``
            (``sum_a pi(a|s) q(s, a)``).
        policy: ``[n_runs, n_states, n_actions]`` the learned policy (greedy for exploring
            starts, epsilon-greedy for :func:`mc_epsilon_greedy`).
        greedy: ``[n_runs, n_states, n_actions]`` the greedy policy of ``q_values``.
        episodes: ``[n_points]`` episodes seen at each point of the learning curve.
        value_error: ``[n_runs, n_points]`` RMS error of ``values`` over states against
            ``target_values``.
        optimal_fraction: ``[n_runs, n_points]`` fraction of states whose greedy action is
            optimal (best under ``q*``); the greedy policy is optimal from every state when
            this is 1.
        target_values: ``[n_states]`` the exact answer the learner estimates.
    """

    q_values: np.ndarray
    values: np.ndarray
    policy: np.ndarray
    greedy: np.ndarray
    episodes: np.ndarray
    value_error: np.ndarray
    optimal_fraction: np.ndarray
    target_values: np.ndarray

    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(episodes, mean, std)`` of the value error over runs, for plotting."""
        return self.episodes, self.value_error.mean(axis=0), self.value_error.std(axis=0)


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """``G_t = sum_{k >= t} gamma^(k - t) r_{k+1}`` along the last axis (Zhao ch. 5.2).

    Computed backwards as ``G_t = r_{t+1} + gamma G_{t+1}``, the recursion of Algorithm 5.2,
    by a linear filter so every run is done in one call.
    """
    reversed_rewards = rewards[..., ::-1]
    return lfilter([1.0], [1.0, -gamma], reversed_rewards, axis=-1)[..., ::-1]


def return_horizon(world: GridWorld, tol: float = 1e-4) -> int:
    """Steps beyond which a return changes by less than ``tol``.

    A return truncated after ``H`` steps misses at most ``gamma^H max|r| / (1 - gamma)``; the
    learners simulate this many extra steps after the steps they learn from, so truncating
    the episode biases no estimate by more than ``tol``.
    """
    r_max = float(np.abs(world.reward).max())
    if world.gamma == 0.0 or r_max == 0.0:
        return 0
    if world.gamma == 1.0:
        raise ConfigError(
            "the default horizon needs gamma < 1; pass horizon explicitly, got gamma 1.0"
        )
    return max(0, math.ceil(math.log(tol * (1.0 - world.gamma) / r_max) / math.log(world.gamma)))


def _first_visits(pairs: np.ndarray) -> np.ndarray:
    """Mask ``[n_runs, T]`` of the first occurrence of each (s, a) id in each run's episode."""
    order = np.argsort(pairs, axis=1, kind="stable")
    ordered = np.take_along_axis(pairs, order, axis=1)
    first_in_order = np.ones_like(ordered, dtype=bool)
    first_in_order[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    mask = np.empty_like(first_in_order)
    np.put_along_axis(mask, order, first_in_order, axis=1)
    return mask


def _run_episodes(
    world: GridWorld,
    choose: Callable[[np.ndarray], np.ndarray],
    states: np.ndarray,
    actions: np.ndarray | None,
    n_steps: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Roll out ``n_steps`` for each row: ``(states, actions, rewards)``, each ``[N, n_steps]``.

    ``choose`` maps the current states ``[N]`` to actions; the first action of each row is
    ``actions`` when given (exploring starts), else chosen too.
    """
    n = states.shape[0]
    all_states = np.empty((n, n_steps), dtype=np.int64)
    all_actions = np.empty((n, n_steps), dtype=np.int64)
    all_rewards = np.empty((n, n_steps))
    for t in range(n_steps):
        if t > 0 or actions is None:
            actions = choose(states)
        all_states[:, t], all_actions[:, t] = states, actions
        states, all_rewards[:, t], _ = world.step_batch(states, actions)
    return all_states, all_actions, all_rewards


def _policy_sampler(
    policy: np.ndarray, rng: np.random.Generator
) -> Callable[[np.ndarray], np.ndarray]:
    """Actions drawn from ``policy[S, A]``; a deterministic policy draws no random numbers."""
    if np.all((policy == 0.0) | (policy == 1.0)):
        best = policy.argmax(axis=1)
        return lambda states: best[states]
    cumulative = cumulative_policy(policy)
    return lambda states: sample_actions(rng.random(states.shape[0]), cumulative[states])


def mc_basic(
    world: GridWorld,
    episode_length: int = 100,
    iterations: int | None = None,
    episodes_per_pair: int = 1,
    initial_policy: np.ndarray | None = None,
    max_iterations: int = 1_000,
    seed: int | None = 0,
) -> PlanningResult:
    """MC Basic (Zhao ch. 5.2, Algorithm 5.1): policy iteration with Monte Carlo evaluation.

    Iteration k estimates ``q_{pi_k}(s, a)`` for every pair as the mean return of
    ``episodes_per_pair`` episodes of ``episode_length`` steps started at (s, a), then sets
    ``pi_{k+1}(s) = argmax_a q_k(s, a)``. In the grid world moves are deterministic, so with a
    deterministic policy one episode per pair gives the exact ``episode_length``-step return.
    Runs ``iterations`` iterations, or until the policy no longer changes when ``None``.
    The default ``pi_0`` stays everywhere. ``values[s] = max_a q(s, a)`` of the last
    estimate; ``value_history[k]`` is that of ``q_k`` (``value_history[0]`` is zero).
    """
    check_int("episode_length", episode_length, minimum=1)
    check_int("episodes_per_pair", episodes_per_pair, minimum=1)
    check_int("max_iterations", max_iterations, minimum=1)
    if iterations is not None:
        check_int("iterations", iterations, minimum=1)
    S, A = world.n_states, world.n_actions
    if initial_policy is None:
        policy = np.zeros((S, A))
        policy[:, A - 1] = 1.0
    else:
        policy = world.check_policy(initial_policy)
    rng = np.random.default_rng(seed)
    pairs = np.repeat(np.arange(S * A), episodes_per_pair)
    values, policies = [np.zeros(S)], [policy]
    q = np.zeros((S, A))
    converged = False
    for _ in range(iterations if iterations is not None else max_iterations):
        choose = _policy_sampler(policy, rng)
        _, _, rewards = _run_episodes(world, choose, pairs // A, pairs % A, episode_length)
        returns = discounted_returns(rewards, world.gamma)[:, 0]
        q = returns.reshape(S, A, episodes_per_pair).mean(axis=2)
        improved = greedy_policy(q)
        values.append(q.max(axis=1))
        policies.append(improved)
        stable = np.array_equal(improved, policy)
        policy = improved
        if stable and iterations is None:
            converged = True
            break
    return PlanningResult(
        values=q.max(axis=1),
        q_values=q,
        policy=policy,
        value_history=np.stack(values),
        policy_history=np.stack(policies),
        iterations=len(values) - 1,
        converged=converged or iterations is not None,
    )


def _epsilon_greedy_sampler(
    greedy_actions: np.ndarray, n_actions: int, epsilon: float, rng: np.random.Generator
) -> Callable[[np.ndarray], np.ndarray]:
    """Actions of each run's epsilon-greedy policy (ch. 5.4), ``greedy_actions[n_runs, S]``.

    With probability epsilon a uniform action (possibly the greedy one), else the greedy one.
    """
    n_runs, rows = greedy_actions.shape[0], np.arange(greedy_actions.shape[0])

    def choose(states: np.ndarray) -> np.ndarray:
        actions = greedy_actions[rows, states]
        if epsilon > 0:
            explore = rng.random(n_runs) < epsilon
            actions = np.where(explore, rng.integers(n_actions, size=n_runs), actions)
        return actions

    return choose


def _episode_update(
    q: np.ndarray,
    visits: np.ndarray,
    index: np.ndarray,
    returns: np.ndarray,
    step_size: StepSize | None,
) -> None:
    """Move ``q`` (flat ``[n_runs * S * A]``) towards this episode's returns, in place.

    A pair seen ``m`` times in the episode (every-visit) moves towards the mean of its ``m``
    returns with weight ``min(1, m alpha)``, ``alpha`` taken at its new visit count. With the
    default ``alpha = 1 / count`` this is exactly the running mean of all returns (Zhao
    eq. (6.4)), as in Algorithms 5.2-5.3.
    """
    seen = np.bincount(index, minlength=q.size)
    total = np.bincount(index, weights=returns, minlength=q.size)
    hit = seen > 0
    visits[hit] += seen[hit]
    alpha = 1.0 / visits[hit] if step_size is None else step_sizes(step_size, visits[hit])
    weight = np.minimum(1.0, alpha * seen[hit])
    q[hit] += weight * (total[hit] / seen[hit] - q[hit])


def _mc_control(
    world: GridWorld,
    episodes: int,
    episode_length: int,
    epsilon: float,
    exploring_starts: bool,
    visit: str,
    step_size: StepSize | None,
    n_runs: int,
    seed: int | None,
    eval_every: int,
    horizon: int | None,
    start: str | int | None,
) -> MonteCarloResult:
    """Shared loop of Algorithms 5.2 and 5.3: generate, average returns, improve the policy."""
    check_int("episodes", episodes, minimum=1)
    check_int("episode_length", episode_length, minimum=1)
    check_int("n_runs", n_runs, minimum=1)
    check_int("eval_every", eval_every, minimum=1)
    check_choice("visit", visit, ("first", "every"))
    if step_size is not None:
        step_size = check_step_size("step_size", step_size)
    horizon = return_horizon(world) if horizon is None else check_int("horizon", horizon, 0)
    S, A = world.n_states, world.n_actions

    # The exact answer: q* for exploring starts, the best epsilon-greedy policy's q otherwise
    # (policy iteration restricted to epsilon-greedy policies, Zhao ch. 5.4).
    target = policy_iteration(world, epsilon=epsilon)
    optimal_q = policy_iteration(world).q_values
    optimal_v = optimal_q.max(axis=1)

    rng = np.random.default_rng(seed)
    rows = np.arange(n_runs)
    q = np.zeros(n_runs * S * A)
    visits = np.zeros(n_runs * S * A)
    points, errors, fractions = [], [], []

    def record(done: int) -> None:
        q_runs = q.reshape(n_runs, S, A)
        greedy_actions = greedy_policy(q_runs).argmax(axis=2)
        chosen_q = np.take_along_axis(optimal_q[None], greedy_actions[..., None], axis=2)[..., 0]
        points.append(done)
        errors.append(rmse((policy_of(q_runs, epsilon) * q_runs).sum(axis=2), target.values))
        fractions.append((chosen_q >= optimal_v[None] - 1e-6).mean(axis=1))

    record(0)
    live_states = np.flatnonzero(~world.terminal)
    for episode in range(1, episodes + 1):
        greedy_actions = greedy_policy(q.reshape(n_runs, S, A)).argmax(axis=2)
        choose = _epsilon_greedy_sampler(greedy_actions, A, epsilon, rng)
        if exploring_starts:
            states = live_states[rng.integers(live_states.size, size=n_runs)]
            actions = rng.integers(A, size=n_runs)
        else:
            states, actions = start_states(world, rng, n_runs, start), None
        states, actions, rewards = _run_episodes(
            world, choose, states, actions, episode_length + horizon
        )
        # Learn from the first episode_length steps only: their returns see >= horizon steps.
        returns = discounted_returns(rewards, world.gamma)[:, :episode_length]
        pairs = states[:, :episode_length] * A + actions[:, :episode_length]
        used = _first_visits(pairs) if visit == "first" else np.ones(pairs.shape, dtype=bool)
        index = (rows[:, None] * S * A + pairs)[used]
        _episode_update(q, visits, index, returns[used], step_size)
        if episode % eval_every == 0 or episode == episodes:
            record(episode)

    q_runs = q.reshape(n_runs, S, A)
    policy = policy_of(q_runs, epsilon)
    return MonteCarloResult(
        q_values=q_runs,
        values=(policy * q_runs).sum(axis=2),
        policy=policy,
        greedy=greedy_policy(q_runs),
        episodes=np.array(points),
        value_error=np.stack(errors, axis=1),
        optimal_fraction=np.stack(fractions, axis=1),
        target_values=target.values,
    )


def policy_of(q: np.ndarray, epsilon: float) -> np.ndarray:
    """The greedy (``epsilon = 0``) or epsilon-greedy policy of ``q[..., S, A]``."""
    return epsilon_greedy_policy(q, epsilon) if epsilon > 0 else greedy_policy(q)


def mc_exploring_starts(
    world: GridWorld,
    episodes: int = 2_000,
    episode_length: int = 10,
    visit: str = "first",
    step_size: StepSize | None = None,
    n_runs: int = 1,
    seed: int | None = 0,
    eval_every: int = 50,
    horizon: int | None = None,
) -> MonteCarloResult:
    """MC Exploring Starts (Zhao ch. 5.3, Algorithm 5.2), ``n_runs`` runs at once.

    Each episode starts at a uniformly random non-terminal (s, a) and then follows the
    current greedy policy. Going backwards, ``g = gamma g + r_{t+1}`` is added to
    ``Returns(s_t, a_t)`` at the first visit of the pair (``visit="first"``) or at every
    visit (``"every"``); ``q(s_t, a_t)`` is their mean and the policy is greedy in ``q``.
    The learner uses the first ``episode_length`` steps; ``horizon`` more steps (default
    :func:`return_horizon`) are simulated so their returns are not cut short. The exact
    answer is ``v*``; the greedy policy should be optimal from every state.
    """
    return _mc_control(
        world,
        episodes,
        episode_length,
        epsilon=0.0,
        exploring_starts=True,
        visit=visit,
        step_size=step_size,
        n_runs=n_runs,
        seed=seed,
        eval_every=eval_every,
        horizon=horizon,
        start=None,
    )


def mc_epsilon_greedy(
    world: GridWorld,
    epsilon: float = 0.1,
    episodes: int = 2_000,
    episode_length: int = 100,
    visit: str = "every",
    step_size: StepSize | None = None,
    n_runs: int = 1,
    seed: int | None = 0,
    eval_every: int = 50,
    horizon: int | None = None,
    start: str | int | None = None,
) -> MonteCarloResult:
    """MC epsilon-greedy (Zhao ch. 5.4, Algorithm 5.3), ``n_runs`` runs at once.

    Episodes start at ``start`` (default: a random non-terminal state) and follow the
    epsilon-greedy policy of the current ``q``; returns are averaged as in
    :func:`mc_exploring_starts` (every-visit by default, as in the book). The exact answer is
    the value of the best epsilon-greedy policy (policy iteration over epsilon-greedy
    policies); for small epsilon its greedy policy is optimal.
    """
    check_in_range("epsilon", epsilon, 0.0, 1.0)
    if epsilon == 0.0:
        raise ConfigError("epsilon must be > 0 for MC epsilon-greedy (use exploring starts)")
    return _mc_control(
        world,
        episodes,
        episode_length,
        epsilon=epsilon,
        exploring_starts=False,
        visit=visit,
        step_size=step_size,
        n_runs=n_runs,
        seed=seed,
        eval_every=eval_every,
        horizon=horizon,
        start=start,
    )
