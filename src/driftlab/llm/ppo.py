"""PPO for language models with a value function (Ziegler et al. 2019, "Fine-tuning language
models from human preferences"; Stiennon et al. 2020; Ouyang et al. 2022, InstructGPT), in the
form TRL's and OpenRLHF's PPO trainers implement.

Each completion is an episode whose actions are its tokens: the state before token ``y_t`` is
``s_t = (x, y_<t)``. One iteration:

1. sample ``G`` completions for each prompt and score them with the task's verifiable reward
   ``r(x, y)`` (the outcome);
2. spread the KL-penalised reward of Ziegler et al. eq. 2 (InstructGPT eq. 2) over the tokens,
   the outcome on the last token and the k1 penalty on every token:
   ``r_t = [t = last] r(x, y) - beta (log pi_old(y_t|s_t) - log pi_ref(y_t|s_t))``;
3. estimate advantages by GAE over the tokens (Schulman et al. 2016) with ``gamma = 1`` and
   ``lambda = 0.95``, against the values ``V(s_t)`` of the value model at sampling time, and
   whiten them over the batch's tokens; the value targets are ``R_t = A_t + V(s_t)``;
4. take ``mu`` passes of minibatch steps on the clipped surrogate (PPO eq. 7) plus
   ``vf_coef`` times the clipped value loss, both token means over the whole batch;
5. adapt ``beta`` towards a target KL (Ziegler et al. sec. 2.2), or keep it fixed.

The value function is a head on the policy's backbone or a separate copy of it
(:mod:`driftlab.llm.value`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from driftlab.core.config import check_int, check_positive
from driftlab.rl.losses import gae, kl_estimate

# ---------------------------------------------------------------------------------------------
# Per-token rewards, GAE over tokens, whitening
# ---------------------------------------------------------------------------------------------


def last_token(mask: torch.Tensor) -> torch.Tensor:
    """``[rows, T]`` 0/1 mask of each row's last valid token (where the outcome reward goes);
    all zero for a row with no valid token."""
    mask = mask.to(torch.bool)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, torch.full_like(positions, -1)).amax(dim=1)
    return (positions == last[:, None]) & mask


def token_rewards(
    scores: torch.Tensor,
    mask: torch.Tensor,
    log_probs: torch.Tensor | None = None,
    ref_log_probs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards with the KL penalty in the reward (Ziegler et al. 2019 eq. 2;
    Stiennon et al. 2020 eq. 1; InstructGPT eq. 2).

    ``R(x, y) = r(x, y) - beta log(pi(y|x) / pi_ref(y|x))``, spread over the tokens of ``y``:
    ``r_t = [t = last] r(x, y) - beta k1_t`` with ``k1_t = log pi(y_t|s_t) - log pi_ref(y_t|s_t)``,
    the per-token log-ratio whose sum over the tokens is the sequence's log-ratio.

    ``scores`` is ``[rows]``; ``mask``, ``log_probs`` and ``ref_log_probs`` are ``[rows, T]``.
    Without a reference (``ref_log_probs=None``) the penalty is 0. Returns ``(rewards, kl)``,
    both ``[rows, T]`` and 0 on padding; ``kl`` is the unscaled ``k1_t``.
    """
    valid = mask.to(scores.dtype)
    if ref_log_probs is None or log_probs is None:
        kl = torch.zeros_like(valid)
    else:
        kl = kl_estimate(log_probs, ref_log_probs, kind="k1").to(scores.dtype) * valid
    outcome = last_token(mask).to(scores.dtype) * scores[:, None]
    return outcome - kl_coef * kl, kl


def token_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over the tokens of each completion (Schulman et al. 2016, eqs. 11-16), with
    :func:`driftlab.rl.losses.gae`.

    ``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)`` and ``A_t = delta_t + gamma lam A_{t+1}``;
    the episode ends after the last valid token (``V`` of the state after it is 0), so padding
    never reaches a real token's advantage. ``rewards``, ``values`` and ``mask`` are
    ``[rows, T]``. Returns ``(advantages, returns)``, ``returns = A + V`` the value targets,
    both 0 on padding.
    """
    valid = mask.to(rewards.dtype)
    # ``gae`` is time-major: token positions become time, rows the batch.
    rewards_t = (rewards * valid).T
    values_t = (values.to(rewards.dtype) * valid).T
    next_values = torch.cat((values_t[1:], torch.zeros_like(values_t[:1])))
    # s_{t+1} is terminal when token t + 1 is not part of the completion (after <eos>, after
    # max_new_tokens, or on padding): nothing is bootstrapped across it.
    following = torch.cat((valid.T[1:], torch.zeros_like(valid.T[:1])))
    advantages = gae(rewards_t, values_t, next_values, gamma, lam, terminated=1.0 - following).T
    advantages = advantages * valid
    return advantages, (advantages + values.to(rewards.dtype)) * valid


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    eps: float = 1e-8,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` over the elements where ``mask`` is 1 (0 elsewhere), with
    the unbiased std, as TRL's and OpenRLHF's ``masked_whiten`` whiten PPO's advantages.

    ``reduce`` sums a tensor over processes (an all-reduce) so that the statistics are those
    of the whole global batch, whichever rank holds which rows.
    """
    valid = mask.to(x.dtype)
    sums = torch.stack((valid.sum(), (x * valid).sum()))
    if reduce is not None:
        sums = reduce(sums)
    count, total = sums[0], sums[1]
    mean = total / count.clamp(min=1.0)
    squares = (((x - mean) ** 2) * valid).sum()
    if reduce is not None:
        squares = reduce(squares.reshape(1))[0]
    variance = squares / (count - 1.0).clamp(min=1.0)
    return (x - mean) / (variance.sqrt() + eps) * valid


# ---------------------------------------------------------------------------------------------
# The KL coefficient: fixed, or adapted towards a target (Ziegler et al. 2019 sec. 2.2)
# ---------------------------------------------------------------------------------------------


class FixedKLController:
    """A constant KL coefficient ``beta``."""

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def update(self, kl: float, n_steps: int) -> None:
        """Nothing to adapt."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """The proportional controller of Ziegler et al. 2019 (sec. 2.2) that steers the KL to the
    reference towards ``target``:

    ``e_t = clip(KL_t / KL_target - 1, -0.2, 0.2)``, ``beta_{t+1} = beta_t (1 + K_beta e_t)``,

    with ``K_beta = n_steps / horizon`` for a batch of ``n_steps`` episodes (as in their code and
    TRL's ``AdaptiveKLController``): ``horizon`` episodes of a steady error change ``beta`` by a
    factor of about ``e``. ``KL_t`` is the mean over the batch of each sequence's summed k1.
    """

    def __init__(self, value: float, target: float, horizon: int) -> None:
        super().__init__(value)
        self.target = check_positive("kl_target", target)
        self.horizon = check_int("kl_horizon", horizon, minimum=1)

    def update(self, kl: float, n_steps: int) -> None:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
