"""Policy gradient with a tabular softmax policy on the grid world (Zhao ch. 9-10).

The policy is ``pi(a | s, theta) = exp(theta[s, a]) / sum_b exp(theta[s, b])``, for which
``grad_theta[s] ln pi(a | s) = e_a - pi(. | s)`` (and 0 for the other states' rows).
REINFORCE (ch. 9) weights that gradient with the Monte Carlo return ``g_t``; QAC (ch. 10.1)
with a Sarsa critic's ``q(s_t, a_t)``. Both advance ``n_runs`` independent runs in one NumPy
step, with synchronised episodes as in :mod:`driftlab.rl.tabular.td`.

The episodic world (``terminal_target=True``) suits these methods best: a Monte Carlo return
needs episodes that end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from driftlab.core.config import check_in_range, check_int
from driftlab.rl.losses import discounted_returns
from driftlab.rl.tabular.gridworld import GridWorld
from driftlab.rl.tabular.runs import (
    EpisodeLog,
    StepSize,
    check_step_size,
    rmse,
    sample_actions,
    step_sizes,
)


@dataclass
class PolicyGradientResult:
    """What a policy-gradient learner returns; arrays have a leading run axis.

    Attributes:
        theta: ``[n_runs, S, A]`` softmax preferences.
        policy: ``[n_runs, S, A]`` the learned stochastic policy ``softmax(theta)``.
        q_values: ``[n_runs, S, A]`` the critic (QAC), else ``None``.
        errors: ``[n_evals, n_runs]`` RMSE of the exact ``v_pi`` of the current policy to
            ``reference`` (e.g. ``v*``), recorded every ``eval_every`` episodes.
        eval_episodes: ``[n_evals]`` episode after which each row of ``errors`` was recorded.
        episode_returns, episode_lengths: ``[episodes, n_runs]`` per-episode totals.
    """

    theta: np.ndarray
    policy: np.ndarray
    q_values: np.ndarray | None
    errors: np.ndarray | None
    eval_episodes: np.ndarray
    episode_returns: np.ndarray
    episode_lengths: np.ndarray


def softmax(theta: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, shifted by the maximum so that it never overflows."""
    z = np.exp(theta - theta.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def policy_values(world: GridWorld, policies: np.ndarray) -> np.ndarray:
    """Exact ``v_pi`` of many policies ``[n, S, A]`` at once, ``[n, S]`` (Zhao ch. 2).

    The closed form of :func:`driftlab.rl.tabular.planning.evaluate_policy`, batched:
    ``(I - gamma P_pi) v = r_pi`` over the non-terminal states, terminal states at 0.
    """
    P = np.einsum("nsa,sat->nst", policies, world.transition)
    r = (policies * world.reward).sum(axis=-1)
    live = ~world.terminal
    system = np.eye(int(live.sum())) - world.gamma * P[:, live][:, :, live]
    values = np.zeros(r.shape)
    values[:, live] = np.linalg.solve(system, r[:, live, None])[..., 0]
    return values


class _Runs(EpisodeLog):
    """The shared episode log plus the softmax policy's parameters and its periodic
    evaluation against the exact answer."""

    def __init__(
        self,
        world: GridWorld,
        episodes: int,
        episode_length: int,
        n_runs: int,
        seed: int | None,
        start: str | int | None,
        reference: np.ndarray | None,
        eval_every: int,
    ) -> None:
        super().__init__(
            world, episodes, episode_length, n_runs, seed, start, reference, (world.n_states,)
        )
        self.eval_every = check_int("eval_every", eval_every, minimum=1)
        self.theta = np.zeros((n_runs, world.n_states, world.n_actions))
        self.errors: list[np.ndarray] = []
        self.eval_episodes: list[int] = []

    def act(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sampled actions and ``pi(. | s)`` of each run at its state."""
        probs = softmax(self.theta[self.runs, states])
        cumulative = probs.cumsum(axis=1)
        cumulative[:, -1] = 1.0
        return sample_actions(self.rng.random(self.n_runs), cumulative), probs

    def ascend(
        self,
        states: np.ndarray,
        actions: np.ndarray,
        probs: np.ndarray,
        weight: np.ndarray,
    ) -> None:
        """``theta[s] += weight (e_a - pi(. | s))``: a step along ``weight * grad ln pi``."""
        grad = -probs
        grad[self.runs, actions] += 1.0
        self.theta[self.runs, states] += weight[:, None] * grad

    def end_episode(self, episode: int, episodes: int) -> None:
        last = episode == episodes - 1
        if self.reference is not None and ((episode + 1) % self.eval_every == 0 or last):
            values = policy_values(self.world, softmax(self.theta))
            self.errors.append(rmse(values, self.reference))
            self.eval_episodes.append(episode + 1)

    def result(self, q_values: np.ndarray | None = None) -> PolicyGradientResult:
        return PolicyGradientResult(
            theta=self.theta,
            policy=softmax(self.theta),
            q_values=q_values,
            errors=np.stack(self.errors) if self.errors else None,
            eval_episodes=np.array(self.eval_episodes),
            episode_returns=self.returns,
            episode_lengths=self.lengths,
        )


def reinforce(
    world: GridWorld,
    alpha: StepSize = 0.1,
    baseline: float | None = None,
    episodes: int = 1000,
    episode_length: int = 100,
    n_runs: int = 1,
    seed: int | None = 0,
    start: str | int | None = None,
    reference: np.ndarray | None = None,
    eval_every: int = 50,
) -> PolicyGradientResult:
    """REINFORCE, policy gradient by Monte Carlo (Zhao ch. 9.4).

    Each episode is generated with the current policy ``pi_theta``, then
    ``theta <- theta + alpha sum_t grad ln pi(a_t | s_t, theta) (g_t - b(s_t))`` with ``g_t``
    the discounted return from ``t`` (:func:`driftlab.rl.losses.discounted_returns`). All
    terms are taken at the ``theta`` that generated the episode (an unbiased estimate of the
    gradient of the episode's objective); the book applies them one by one, which agrees to
    first order in ``alpha``.

    ``baseline=None`` is plain REINFORCE (``b = 0``). A number ``beta`` in ``(0, 1]`` turns on
    the baseline of Zhao ch. 10.2: ``b(s)`` is a running average of the returns seen from
    ``s``, ``b(s) += beta (g - b(s))``; it leaves the gradient unbiased and cuts its variance.
    ``alpha`` may be a schedule of the episode number (from 1); ``reference`` is ``v*``.
    """
    alpha = check_step_size("alpha", alpha)
    if baseline is not None:
        check_in_range("baseline", baseline, 0.0, 1.0)
    book = _Runs(world, episodes, episode_length, n_runs, seed, start, reference, eval_every)
    b = np.zeros((n_runs, world.n_states))
    A = world.n_actions
    for episode in range(episodes):
        states, alive = book.start_episode()
        probs_table = softmax(book.theta)  # theta is fixed while the episode is generated
        cumulative = probs_table.cumsum(axis=2)
        cumulative[..., -1] = 1.0
        uniforms = book.rng.random((episode_length, n_runs))
        visited, taken, rewards, live, ended = [], [], [], [], []
        for t in range(episode_length):
            actions = sample_actions(uniforms[t], cumulative[book.runs, states])
            nxt, reward, terminated = world.step_batch(states, actions)
            visited.append(states)
            taken.append(actions)
            rewards.append(reward * alive)
            live.append(alive)
            ended.append(terminated | ~alive)  # a finished run's later rewards are 0 anyway
            alive = alive & ~terminated
            states = nxt
            if not alive.any():
                break
        s, a, mask = np.stack(visited), np.stack(taken), np.stack(live)
        rewards = np.stack(rewards)
        returns = discounted_returns(rewards, world.gamma, np.stack(ended))
        runs = np.broadcast_to(book.runs, s.shape)
        weights = returns * mask
        if baseline is not None:
            weights = weights - b[runs, s] * mask
            # The baseline moves after the gradient is formed, so it never depends on a_t.
            for t in range(s.shape[0]):
                b[book.runs, s[t]] += baseline * mask[t] * (returns[t] - b[book.runs, s[t]])
        # sum over t of weight_t (e_{a_t} - pi(. | s_t)), accumulated per (run, state)
        grad = -weights[..., None] * probs_table[runs, s]
        grad[..., :] += weights[..., None] * (np.arange(A) == a[..., None])
        step = step_sizes(alpha, np.array(float(episode + 1)))
        np.add.at(book.theta, (runs, s), step * grad)
        book.returns[episode] = rewards.sum(axis=0)
        book.lengths[episode] = mask.sum(axis=0)
        book.end_episode(episode, episodes)
    return book.result()


def qac(
    world: GridWorld,
    alpha_theta: StepSize = 0.1,
    alpha_w: StepSize = 0.1,
    episodes: int = 1000,
    episode_length: int = 100,
    n_runs: int = 1,
    seed: int | None = 0,
    start: str | int | None = None,
    reference: np.ndarray | None = None,
    eval_every: int = 50,
) -> PolicyGradientResult:
    """QAC, the simplest actor-critic (Zhao ch. 10.1).

    At every step, with ``a_{t+1} ~ pi(. | s_{t+1})``:
    critic (Sarsa) ``q(s_t, a_t) += alpha_w [r_{t+1} + gamma q(s_{t+1}, a_{t+1}) -
    q(s_t, a_t)]`` (no bootstrap from a terminal state); actor ``theta += alpha_theta
    grad ln pi(a_t | s_t, theta) q(s_t, a_t)`` with the updated critic. Step sizes may be
    schedules of the step count (from 1).
    """
    alpha_theta = check_step_size("alpha_theta", alpha_theta)
    alpha_w = check_step_size("alpha_w", alpha_w)
    book = _Runs(world, episodes, episode_length, n_runs, seed, start, reference, eval_every)
    q = np.zeros_like(book.theta)
    discount = world.gamma * ~world.terminal
    runs, count = book.runs, 0
    for episode in range(episodes):
        states, alive = book.start_episode()
        actions, probs = book.act(states)
        for _ in range(episode_length):
            nxt, rewards, terminated = world.step_batch(states, actions)
            next_actions, _ = book.act(nxt)
            count += 1
            counts = np.full(n_runs, float(count))
            current = q[runs, states, actions]
            target = rewards + discount[nxt] * q[runs, nxt, next_actions]
            q[runs, states, actions] = current + step_sizes(alpha_w, counts) * alive * (
                target - current
            )
            weight = step_sizes(alpha_theta, counts) * alive * q[runs, states, actions]
            book.ascend(states, actions, probs, weight)
            book.returns[episode] += rewards * alive
            book.lengths[episode] += alive
            alive = alive & ~terminated
            if not alive.any():
                break
            states, actions = nxt, next_actions
            # a_{t+1} was drawn before this step's actor update; its gradient uses pi now.
            probs = softmax(book.theta[runs, states])
        book.end_episode(episode, episodes)
    return book.result(q_values=q)
