"""Pure functions shared by policy-optimisation methods, deep RL and RL for language models.

Families, in order:

- Returns and advantages of a rollout: :func:`discounted_returns`, :func:`nstep_returns`,
  :func:`gae` (REINFORCE, A2C, PPO, TRPO).
- Policy and value objectives: :func:`clipped_surrogate_loss` with :func:`clip_fractions`
  (PPO, DAPO clip-higher), :func:`clipped_value_loss`, :func:`kl_estimate` (k1, k2, k3) and
  :func:`aggregate_loss` over the tokens of a batch (GRPO, DAPO, Dr. GRPO).
- Group-relative advantages for language models, one group of ``G`` completions per prompt:
  :func:`group_advantages` (GRPO, Dr. GRPO), :func:`rloo_advantages`,
  :func:`reinforce_pp_advantages`; reward shaping by length: :func:`kimi_length_reward`,
  :func:`dapo_overlong_penalty`.
- TD3: :func:`clipped_double_q_target`, :func:`smoothed_target_actions`; TRPO:
  :func:`conjugate_gradient`.

Conventions of the rollout functions (those of Gymnasium and of the rollout buffers in
``driftlab.rl.deep``):

- Arrays are time-major, ``[T, ...]``: index ``t`` is the transition
  ``(s_t, a_t, r_t, s_{t+1})``; any trailing dimensions (parallel environments) are a batch.
- ``terminated[t]`` says ``s_{t+1}`` is terminal: nothing is bootstrapped past it.
- ``truncated[t]`` says the episode was cut after step ``t`` (time limit): the return is
  bootstrapped from ``next_values[t] = v(s_{t+1})``, the value of the real final observation.
- The last step of the rollout is always a cut: it bootstraps from ``next_values[T - 1]``
  unless ``terminated[T - 1]``. Without ``next_values`` every bootstrap is 0, which is the
  Monte Carlo return of complete episodes (REINFORCE, Zhao ch. 9).

The rollout, group-advantage and length-reward functions accept NumPy arrays or torch tensors
and return the same kind; the objectives and the TD3/TRPO pieces work on torch tensors and
keep the autograd graph. Losses are per element unless the name says otherwise
(:func:`aggregate_loss` reduces).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

from driftlab.core.config import (
    check_choice,
    check_in_range,
    check_int,
    check_nonnegative,
    check_positive,
)

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


# ---------------------------------------------------------------------------------------------
# Policy and value objectives (PPO, TRPO, GRPO, DAPO, Dr. GRPO)
# ---------------------------------------------------------------------------------------------

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATE_MODES = ("token-mean", "sequence-mean", "token-sum-constant")


def _ratio_bounds(clip_eps: float, clip_eps_high: float | None) -> tuple[float, float]:
    """``(1 - eps_low, 1 + eps_high)``; ``eps_high = eps_low`` unless given (DAPO clip-higher)."""
    low = check_in_range("clip_eps", clip_eps, 0.0, 1.0)
    high = low if clip_eps_high is None else check_nonnegative("clip_eps_high", clip_eps_high)
    return 1.0 - low, 1.0 + high


def clipped_surrogate_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float,
    clip_eps_high: float | None = None,
) -> torch.Tensor:
    """Per-element PPO loss, the negated clipped surrogate (Schulman et al. 2017, eq. 7).

    ``-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)`` with ``r = exp(logp - old_logp)``.
    ``eps_low = clip_eps``; ``eps_high = clip_eps_high`` when given (DAPO "clip-higher",
    Yu et al. 2025 sec. 3.1), else ``clip_eps``. ``old_logp`` and ``advantages`` are constants
    of the update, so they are detached: gradients flow through ``logp`` only.
    """
    low, high = _ratio_bounds(clip_eps, clip_eps_high)
    advantages = advantages.detach()
    ratio = torch.exp(logp - old_logp.detach())
    return -torch.minimum(ratio * advantages, ratio.clamp(low, high) * advantages)


def clip_fractions(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float,
    clip_eps_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """0/1 masks of the elements where :func:`clipped_surrogate_loss` takes the clipped term.

    Low clip: ``r < 1 - eps_low`` and ``A < 0``; high clip: ``r > 1 + eps_high`` and ``A > 0``.
    There the gradient is zero. Masks are floats of ``logp``'s dtype, so their mean (or
    :func:`aggregate_loss` over them) is the clip fraction to log.
    """
    low, high = _ratio_bounds(clip_eps, clip_eps_high)
    ratio = torch.exp(logp - old_logp).detach()
    advantages = advantages.detach()
    low_clipped = (ratio < low) & (advantages < 0)
    high_clipped = (ratio > high) & (advantages > 0)
    return low_clipped.to(ratio.dtype), high_clipped.to(ratio.dtype)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    clip_eps: float | None = None,
) -> torch.Tensor:
    """Per-element value loss of PPO, optionally clipped around the rollout's values.

    ``0.5 max((v - R)^2, (v_old + clip(v - v_old, -eps, eps) - R)^2)`` as in OpenAI baselines'
    ppo2 (Huang et al. 2022, "The 37 implementation details of PPO", detail 9); plain
    ``0.5 (v - R)^2`` when ``clip_eps`` is None.
    """
    squared = (values - returns) ** 2
    if clip_eps is None:
        return 0.5 * squared
    eps = check_positive("clip_eps", clip_eps)
    clipped_values = old_values + (values - old_values).clamp(-eps, eps)
    return 0.5 * torch.maximum(squared, (clipped_values - returns) ** 2)


def kl_estimate(logp: torch.Tensor, logp_ref: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimators of ``KL(pi || pi_ref)`` from samples of ``pi``.

    Schulman 2020, "Approximating KL divergence", with ``log r = logp_ref - logp``:
    ``k1 = -log r`` (unbiased), ``k2 = (log r)^2 / 2`` (biased, low variance),
    ``k3 = (r - 1) - log r`` (unbiased and >= 0; GRPO's penalty, DeepSeekMath eq. 4).
    """
    check_choice("kind", kind, KL_ESTIMATORS)
    log_ratio = logp_ref - logp
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    return torch.expm1(log_ratio) - log_ratio


def aggregate_loss(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    constant: float | None = None,
) -> torch.Tensor:
    """Reduce a ``[batch, tokens]`` per-token loss over the tokens where ``mask`` is 1.

    - ``"token-mean"``: ``sum(loss mask) / sum(mask)``, every token weighs the same
      (DAPO, Yu et al. 2025 sec. 3.3).
    - ``"sequence-mean"``: the mean over sequences of each sequence's token mean
      (GRPO, DeepSeekMath eq. 3); long answers' tokens weigh less.
    - ``"token-sum-constant"``: ``sum(loss mask) / (batch constant)``, no length bias
      (Dr. GRPO, Liu et al. 2025); ``constant`` defaults to the tokens dimension.

    A sequence (or batch) with no unmasked token contributes 0 instead of dividing by 0.
    """
    check_choice("mode", mode, AGGREGATE_MODES)
    if loss.ndim != 2 or tuple(mask.shape) != tuple(loss.shape):
        raise ValueError(
            f"loss and mask must both be [batch, tokens], got {tuple(loss.shape)} "
            f"and {tuple(mask.shape)}"
        )
    if constant is not None and mode != "token-sum-constant":
        raise ValueError(f"constant is used only by mode 'token-sum-constant', got mode {mode!r}")
    mask = mask.to(loss.dtype)
    masked = loss * mask
    if mode == "token-mean":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if mode == "sequence-mean":
        return (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).mean()
    constant = loss.shape[1] if constant is None else check_positive("constant", constant)
    return masked.sum() / (loss.shape[0] * constant)


# ---------------------------------------------------------------------------------------------
# Group-relative advantages and length rewards (GRPO, Dr. GRPO, RLOO, REINFORCE++, Kimi, DAPO)
# ---------------------------------------------------------------------------------------------

GROUP_STD_EPS = 1e-4
"""Added to the std that divides GRPO advantages (as TRL does)."""

BATCH_STD_EPS = 1e-8
"""Added to the batch std that whitens REINFORCE++ advantages (as OpenRLHF does)."""


def _to_torch(x: Array) -> tuple[torch.Tensor, bool]:
    """``x`` as a floating tensor, and whether it came as NumPy (to give the result back so)."""
    if isinstance(x, torch.Tensor):
        return _as_float(x), False
    return torch.as_tensor(_as_float(np.asarray(x))), True


def _from_torch(x: torch.Tensor, was_numpy: bool) -> Array:
    return x.numpy() if was_numpy else x


def _groups(rewards: Array, group_size: int) -> tuple[torch.Tensor, bool]:
    """Rewards ordered group by group, as a ``[groups, group_size]`` float tensor."""
    check_int("group_size", group_size, minimum=2)
    flat, was_numpy = _to_torch(rewards)
    if flat.ndim != 1 or flat.numel() == 0 or flat.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be 1-D with a nonzero length divisible by group_size={group_size}, "
            f"got shape {tuple(flat.shape)}"
        )
    return flat.reshape(-1, group_size), was_numpy


def _constant_groups(grouped: torch.Tensor) -> torch.Tensor:
    """``[groups, 1]`` mask of the groups whose rewards are all equal.

    Their advantage is exactly 0: such a group carries no signal, and rounding in its mean,
    divided by a std of ~1e-4, must not invent one.
    """
    return (grouped == grouped[:, :1]).all(dim=1, keepdim=True)


def group_advantages(rewards: Array, group_size: int, scale: str = "group") -> Array:
    """Group-relative advantages of GRPO (Shao et al. 2024, DeepSeekMath sec. 4.1.2).

    ``A_i = (r_i - mean(group)) / (std + 1e-4)``. ``scale`` picks the std: ``"group"``, the
    group's own (unbiased, ``torch.std``, as TRL); ``"batch"``, the std of all rewards in the
    batch; ``"none"``, no division (Dr. GRPO, Liu et al. 2025). ``rewards`` is 1-D, ordered
    group by group. A group whose rewards are all equal gets 0.
    """
    check_choice("scale", scale, ("group", "batch", "none"))
    grouped, was_numpy = _groups(rewards, group_size)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + GROUP_STD_EPS)
    elif scale == "batch":
        advantages = advantages / (grouped.std() + GROUP_STD_EPS)
    advantages = advantages.masked_fill(_constant_groups(grouped), 0.0)
    return _from_torch(advantages.reshape(-1), was_numpy)


def rloo_advantages(rewards: Array, group_size: int) -> Array:
    """REINFORCE leave-one-out advantages (RLOO; Ahmadian et al. 2024, "Back to basics").

    ``A_i = r_i - mean_{j != i} r_j`` over the ``G`` samples of the same prompt, which equals
    ``G / (G - 1) (r_i - mean(group))``. ``rewards`` is 1-D, ordered group by group.
    """
    grouped, was_numpy = _groups(rewards, group_size)
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    advantages = (grouped - others_mean).masked_fill(_constant_groups(grouped), 0.0)
    return _from_torch(advantages.reshape(-1), was_numpy)


def reinforce_pp_advantages(rewards: Array, group_size: int) -> Array:
    """REINFORCE++-baseline advantages (Hu et al. 2025, "REINFORCE++").

    ``A_i = r_i - mean(group)``, then whitened over the whole batch:
    ``(A - mean(A)) / (std(A) + 1e-8)`` with the unbiased batch std. ``rewards`` is 1-D,
    ordered group by group.
    """
    grouped, was_numpy = _groups(rewards, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    centered = centered.masked_fill(_constant_groups(grouped), 0.0).reshape(-1)
    advantages = (centered - centered.mean()) / (centered.std() + BATCH_STD_EPS)
    return _from_torch(advantages, was_numpy)


def kimi_length_reward(lengths: Array, correct: Array) -> Array:
    """Length reward of Kimi k1.5 (Kimi Team 2025, sec. 2.3.3), per group of answers.

    ``lambda_i = 0.5 - (len_i - min_len) / (max_len - min_len)`` over the group; the reward
    is ``lambda_i`` for a correct answer and ``min(0, lambda_i)`` for a wrong one, and 0 for
    all when ``max_len == min_len``. ``lengths`` and ``correct`` are ``[G]`` (one group) or
    ``[..., G]``: the last dimension is the group.
    """
    lengths_t, was_numpy = _to_torch(lengths)
    correct_t = torch.as_tensor(correct, device=lengths_t.device).to(torch.bool)
    if lengths_t.ndim < 1 or lengths_t.shape[-1] == 0 or correct_t.shape != lengths_t.shape:
        raise ValueError(
            f"lengths and correct must have the same shape [..., G] with G >= 1, got "
            f"{tuple(lengths_t.shape)} and {tuple(correct_t.shape)}"
        )
    shortest = lengths_t.amin(dim=-1, keepdim=True)
    span = lengths_t.amax(dim=-1, keepdim=True) - shortest
    varied = span > 0
    lam = 0.5 - (lengths_t - shortest) / torch.where(varied, span, torch.ones_like(span))
    lam = torch.where(varied, lam, torch.zeros_like(lam))
    return _from_torch(torch.where(correct_t, lam, lam.clamp(max=0.0)), was_numpy)


def dapo_overlong_penalty(lengths: Array, max_length: int, cache_length: int) -> Array:
    """Soft overlong punishment of DAPO (Yu et al. 2025, eq. 13).

    With ``L_max = max_length`` and ``L_cache = cache_length``: 0 for
    ``L <= L_max - L_cache``, ``((L_max - L_cache) - L) / L_cache`` for
    ``L_max - L_cache < L <= L_max``, and -1 for ``L > L_max``; that is, the middle formula
    clipped to ``[-1, 0]``.
    """
    check_int("max_length", max_length, minimum=1)
    check_int("cache_length", cache_length, minimum=1)
    if cache_length > max_length:
        raise ValueError(f"cache_length must be <= max_length={max_length}, got {cache_length}")
    lengths_t, was_numpy = _to_torch(lengths)
    penalty = ((max_length - cache_length) - lengths_t) / cache_length
    return _from_torch(penalty.clamp(-1.0, 0.0), was_numpy)


# ---------------------------------------------------------------------------------------------
# TD3 targets and TRPO's natural-gradient solve
# ---------------------------------------------------------------------------------------------


def clipped_double_q_target(
    rewards: torch.Tensor,
    next_q1: torch.Tensor,
    next_q2: torch.Tensor,
    gamma: float,
    terminated: torch.Tensor,
) -> torch.Tensor:
    """Clipped double-Q target of TD3 (Fujimoto et al. 2018, eq. 10), detached.

    ``y = r + gamma (1 - terminated) min(Q1'(s', a'), Q2'(s', a'))``. There is no flag for
    truncation: a truncated transition carries its real next observation ``s'``, so it
    bootstraps like any other non-terminal one.
    """
    check_in_range("gamma", gamma, 0.0, 1.0)
    alive = 1.0 - torch.as_tensor(terminated, device=rewards.device).to(rewards.dtype)
    return (rewards + gamma * alive * torch.minimum(next_q1, next_q2)).detach()


def smoothed_target_actions(
    actions: torch.Tensor,
    noise_std: float,
    noise_clip: float,
    low: float | torch.Tensor,
    high: float | torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Target policy smoothing of TD3 (Fujimoto et al. 2018, eq. 14).

    ``a' = clip(a + clip(eps, -c, c), low, high)`` with ``eps ~ N(0, noise_std^2)``, drawn
    from ``generator``. ``low`` and ``high`` are floats or tensors broadcasting to ``actions``
    (per-dimension action bounds).
    """
    std = check_nonnegative("noise_std", noise_std)
    clip = check_nonnegative("noise_clip", noise_clip)
    if not isinstance(low, torch.Tensor) and not isinstance(high, torch.Tensor) and low > high:
        raise ValueError(f"low must be <= high, got low={low}, high={high}")
    noise = torch.randn(
        actions.shape, generator=generator, device=actions.device, dtype=actions.dtype
    )
    noisy = actions + (std * noise).clamp(-clip, clip)
    low_t = torch.as_tensor(low, device=actions.device, dtype=actions.dtype)
    high_t = torch.as_tensor(high, device=actions.device, dtype=actions.dtype)
    return torch.minimum(torch.maximum(noisy, low_t), high_t)


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    iterations: int = 10,
    residual_tol: float = 1e-10,
) -> torch.Tensor:
    """Solve ``A x = b`` for symmetric positive definite ``A`` given only ``x -> A x``.

    TRPO's natural-gradient step (Schulman et al. 2015, appendix C), with ``A`` the Fisher
    matrix through Fisher-vector products. Starts from ``x = 0``; stops after ``iterations``
    steps or once the squared residual norm ``|b - A x|^2`` is below ``residual_tol``.
    """
    check_int("iterations", iterations, minimum=1)
    check_nonnegative("residual_tol", residual_tol)
    x = torch.zeros_like(b)
    residual = b.clone()
    direction = b.clone()
    residual_sq = (residual * residual).sum()
    for _ in range(iterations):
        if residual_sq < residual_tol:
            break
        a_direction = matvec(direction)
        step = residual_sq / (direction * a_direction).sum()
        x = x + step * direction
        residual = residual - step * a_direction
        new_residual_sq = (residual * residual).sum()
        direction = residual + (new_residual_sq / residual_sq) * direction
        residual_sq = new_residual_sq
    return x
