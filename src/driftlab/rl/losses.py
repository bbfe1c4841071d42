"""Pieces shared by every policy-gradient method: returns and advantages of a rollout.

Conventions (those of Gymnasium and of the rollout buffers in ``driftlab.rl.deep``):

- Arrays are time-major, ``[T, ...]``: index ``t`` is the transition
  ``(s_t, a_t, r_t, s_{t+1})``; any trailing dimensions (parallel environments) are a batch.
- ``terminated[t]`` says ``s_{t+1}`` is terminal: nothing is bootstrapped past it.
- ``truncated[t]`` says the episode was cut after step ``t`` (time limit): the return is
  bootstrapped from ``next_values[t] = v(s_{t+1})``, the value of the real final observation.
- The last step of the rollout is always a cut: it bootstraps from ``next_values[T - 1]``
  unless ``terminated[T - 1]``. Without ``next_values`` every bootstrap is 0, which is the
  Monte Carlo return of complete episodes (REINFORCE, Zhao ch. 9).

Every function accepts NumPy arrays or torch tensors and returns the same kind.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from driftlab.core.config import check_in_range, check_int

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def _as_float(x: Array) -> Array:
    """Integer or boolean rewards become floats, so that discounting never truncates."""
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.to(torch.get_default_dtype())
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def _zeros_like(x: Array) -> Array:
    if isinstance(x, torch.Tensor):
        return torch.zeros_like(x)
    return np.zeros_like(x, dtype=np.result_type(x, np.float64))


def _mask(flags: Array | None, like: Array) -> Array:
    """``flags`` as a fresh array of 0/1 floats of ``like``'s kind (zeros when absent).

    Always a copy: callers set the last step's cut in place, never in the caller's array.
    """
    if flags is None:
        return _zeros_like(like)
    if isinstance(like, torch.Tensor):
        return torch.as_tensor(flags, device=like.device).to(like.dtype).clone()
    return np.array(flags, dtype=np.result_type(like, np.float64))


def _check_shapes(rewards: Array, **others: Array | None) -> None:
    if rewards.ndim < 1 or rewards.shape[0] == 0:
        raise ValueError(f"rewards must be [T, ...] with T >= 1, got shape {tuple(rewards.shape)}")
    for name, value in others.items():
        if value is not None and tuple(value.shape) != tuple(rewards.shape):
            raise ValueError(
                f"{name} must have the shape of rewards {tuple(rewards.shape)}, "
                f"got {tuple(value.shape)}"
            )


def discounted_returns(
    rewards: Array,
    gamma: float,
    terminated: Array | None = None,
    truncated: Array | None = None,
    next_values: Array | None = None,
) -> Array:
    """Discounted reward-to-go ``G_t`` of every step.

    The Monte Carlo return of Zhao ch. 5, which REINFORCE (ch. 9) weights its gradient with:

    ``G_t = r_t + gamma * (1 - terminated_t) * [(1 - cut_t) G_{t+1} + cut_t v(s_{t+1})]``,
    where ``cut_t`` is ``truncated_t`` or ``t = T - 1``. With neither flags nor ``next_values``
    this is ``G_t = sum_k gamma^k r_{t+k}``.
    """
    check_in_range("gamma", gamma, 0.0, 1.0)
    _check_shapes(rewards, terminated=terminated, truncated=truncated, next_values=next_values)
    rewards = _as_float(rewards)
    alive = 1.0 - _mask(terminated, rewards)
    cut = _mask(truncated, rewards)
    cut[-1] = 1.0
    bootstrap = _zeros_like(rewards) if next_values is None else next_values
    returns = _zeros_like(rewards)
    following = _zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        continuation = (1.0 - cut[t]) * following + cut[t] * bootstrap[t]
        following = rewards[t] + gamma * alive[t] * continuation
        returns[t] = following
    return returns


def nstep_returns(
    rewards: Array,
    gamma: float,
    n: int,
    terminated: Array | None = None,
    truncated: Array | None = None,
    next_values: Array | None = None,
) -> Array:
    """n-step returns ``G_t^(n)`` (Zhao ch. 7.3, n-step Sarsa's target).

    ``G_t^(n) = r_t + gamma r_{t+1} + ... + gamma^{m-1} r_{t+m-1} + gamma^m v(s_{t+m})``, with
    ``m = min(n, steps left before the episode or the rollout ends)``; the bootstrap term is
    dropped when the episode terminated within those ``m`` steps. ``next_values[t]`` is
    ``v(s_{t+1})``. ``n = 1`` is the TD target; ``n >= T`` is :func:`discounted_returns`.
    """
    check_in_range("gamma", gamma, 0.0, 1.0)
    check_int("n", n, minimum=1)
    _check_shapes(rewards, terminated=terminated, truncated=truncated, next_values=next_values)
    rewards = _as_float(rewards)
    alive = 1.0 - _mask(terminated, rewards)
    cut = _mask(truncated, rewards)
    cut[-1] = 1.0
    bootstrap = _zeros_like(rewards) if next_values is None else next_values
    T = rewards.shape[0]
    returns = _zeros_like(rewards)
    for t in range(T):
        # ``open_`` is 1 while the sum from t is still running: neither terminated nor cut.
        total = _zeros_like(rewards[0])
        discount = 1.0
        open_ = _zeros_like(rewards[0]) + 1.0
        for k in range(min(n, T - t)):
            i = t + k
            total = total + open_ * discount * rewards[i]
            # Bootstrap where the sum stops here: after n steps, at a cut, or never if terminal.
            stops = cut[i] if k < n - 1 else _zeros_like(cut[i]) + 1.0
            total = total + open_ * stops * alive[i] * discount * gamma * bootstrap[i]
            open_ = open_ * alive[i] * (1.0 - stops)
            discount = discount * gamma
        returns[t] = total
    return returns


def gae(
    rewards: Array,
    values: Array,
    next_values: Array,
    gamma: float,
    lam: float,
    terminated: Array | None = None,
    truncated: Array | None = None,
) -> Array:
    """Generalized advantage estimates (Schulman et al. 2016, "High-dimensional continuous
    control using generalized advantage estimation", sec. 3).

    ``delta_t = r_t + gamma (1 - terminated_t) v(s_{t+1}) - v(s_t)`` and
    ``A_t = delta_t + gamma lam (1 - terminated_t)(1 - cut_t) A_{t+1}``. ``values[t]`` is
    ``v(s_t)``, ``next_values[t]`` is ``v(s_{t+1})``. ``lam = 0`` gives the TD error,
    ``lam = 1`` the discounted return minus ``v(s_t)``. The critic's target is
    ``advantages + values``.
    """
    check_in_range("gamma", gamma, 0.0, 1.0)
    check_in_range("lam", lam, 0.0, 1.0)
    _check_shapes(
        rewards,
        values=values,
        next_values=next_values,
        terminated=terminated,
        truncated=truncated,
    )
    rewards = _as_float(rewards)
    alive = 1.0 - _mask(terminated, rewards)
    cut = _mask(truncated, rewards)
    cut[-1] = 1.0
    deltas = rewards + gamma * alive * next_values - values
    advantages = _zeros_like(rewards)
    following = _zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        following = deltas[t] + gamma * lam * alive[t] * (1.0 - cut[t]) * following
        advantages[t] = following
    return advantages
