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

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from driftlab.core import distributed
from driftlab.core.config import (
    ConfigError,
    check_choice,
    check_in_range,
    check_int,
    check_nonnegative,
    check_positive,
)
from driftlab.llm.trainer import Experience, RLConfig, RLTrainer
from driftlab.llm.value import ValueModel
from driftlab.rl.losses import (
    clip_fractions,
    clipped_surrogate_loss,
    clipped_value_loss,
    gae,
    kl_estimate,
)

VALUE_MODELS = ("separate", "head")
KL_CONTROLLERS = ("fixed", "adaptive")

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


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


class _ScaledAdamW(torch.optim.AdamW):
    """AdamW whose groups step at the first group's learning rate times their ``lr_scale``.

    The shared loop sets one learning rate (warm-up included) on every group; the value
    model's group then steps at ``value_lr`` scaled by the same warm-up.
    """

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        base = self.param_groups[0]["lr"]
        for group in self.param_groups:
            group["lr"] = base * group.get("lr_scale", 1.0)
        return super().step(closure)


@dataclass(kw_only=True)
class PPOConfig(RLConfig):
    """PPO's options on top of :class:`~driftlab.llm.trainer.RLConfig`, validated on creation.

    - ``beta``: the KL coefficient in the reward (its initial value with the adaptive
      controller); ``kl_controller`` ``"fixed"`` or ``"adaptive"`` (Ziegler et al. sec. 2.2)
      towards ``kl_target`` (nats per sequence) over ``kl_horizon`` episodes.
    - ``value_model``: ``"separate"`` (a copy of the policy's backbone with a scalar head) or
      ``"head"`` (a scalar head on the policy's own backbone); ``value_lr`` its learning
      rate (``None``: ``lr``), ``vf_coef`` the value loss's weight, ``value_clip`` the range
      of the clipped value loss (``None``: unclipped).
    - ``clip_eps``: the ratio clip of the surrogate (PPO eq. 7); ``gamma`` and ``lam`` of GAE
      over tokens; ``whiten_advantages`` over the batch's tokens.
    """

    beta: float = 0.05
    kl_controller: str = "fixed"
    kl_target: float = 6.0
    kl_horizon: int = 10_000
    value_model: str = "separate"
    value_lr: float | None = None
    vf_coef: float = 0.1
    value_clip: float | None = 0.2
    clip_eps: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("kl_controller", self.kl_controller, KL_CONTROLLERS)
        check_positive("kl_target", self.kl_target)
        check_int("kl_horizon", self.kl_horizon, minimum=1)
        if self.kl_controller == "adaptive" and self.beta == 0:
            raise ConfigError(
                "kl_controller 'adaptive' needs beta > 0 (its initial coefficient), got 0.0"
            )
        check_choice("value_model", self.value_model, VALUE_MODELS)
        if self.value_lr is not None:
            check_positive("value_lr", self.value_lr)
        check_nonnegative("vf_coef", self.vf_coef)
        if self.value_clip is not None:
            check_positive("value_clip", self.value_clip)
        check_in_range("clip_eps", self.clip_eps, 0.0, 1.0)
        check_positive("clip_eps", self.clip_eps)
        check_in_range("gamma", self.gamma, 0.0, 1.0)
        check_in_range("lam", self.lam, 0.0, 1.0)
        if not isinstance(self.whiten_advantages, bool):
            raise ConfigError(
                f"whiten_advantages must be true or false, got {self.whiten_advantages!r}"
            )


PRESETS: dict[str, dict[str, Any]] = {
    # PPOConfig's defaults.
    "ppo": {},
    # InstructGPT (Ouyang et al. 2022, appendix C.4): a fixed KL coefficient of 0.02 and a
    # separate value model.
    "instructgpt": {"beta": 0.02, "kl_controller": "fixed", "value_model": "separate"},
    # Ziegler et al. 2019 / TRL's defaults: a value head on the policy, the adaptive KL
    # controller from 0.2 towards 6 nats over a horizon of 10,000 episodes.
    "ziegler": {
        "beta": 0.2,
        "kl_controller": "adaptive",
        "kl_target": 6.0,
        "kl_horizon": 10_000,
        "value_model": "head",
    },
    # What benchmarks/llm_learning.py trains with (2-digit addition after SFT, a 2-layer
    # d=64 model, 16 prompts x 8 completions), tuned on seed 0 with 150 s runs: a value head
    # (+32 points; a separate value model +22, at two thirds of the steps per second), two
    # passes of two minibatches.
    "llm_learning": {
        "lr": 5e-4,
        "beta": 0.02,
        "value_model": "head",
        "value_lr": 1e-3,
        "mu": 2,
        "minibatch_size": 64,
    },
}
"""Named settings, applied on top of :class:`PPOConfig`'s defaults."""


def ppo_config(preset: str = "ppo", **overrides: Any) -> PPOConfig:
    """A :class:`PPOConfig` from a named preset (``PRESETS``) with ``overrides`` on top."""
    check_choice("preset", preset, PRESETS)
    return PPOConfig.from_dict({**PRESETS[preset], **overrides})


class PPOTrainer(RLTrainer):
    """PPO with a value function for language models (see the module docstring).

    ``value_model`` (``self.value_model``, a :class:`~driftlab.llm.value.ValueModel`) is
    built from the policy: a separate deep copy of it, or a head on it. The optimiser has two
    parameter groups, the policy's and the value model's (``lr_scale = value_lr / lr``).
    """

    name = "ppo"
    config_class = PPOConfig
    config: PPOConfig

    def __init__(self, policy: nn.Module, tokenizer: Any, config: PPOConfig, **kwargs: Any):
        super().__init__(policy, tokenizer, config, **kwargs)
        shared = config.value_model == "head"
        backbone = policy if shared else copy.deepcopy(policy)
        self.value_model = ValueModel(backbone, shared=shared)
        self.value_model.requires_grad_(True)
        self.value_model.eval()
        if config.kl_controller == "adaptive":
            self.kl_controller: FixedKLController = AdaptiveKLController(
                config.beta, config.kl_target, config.kl_horizon
            )
        else:
            self.kl_controller = FixedKLController(config.beta)
        self._head_values: torch.Tensor | None = None
        self._prepared: dict[str, float] = {}

    # -- what the optimiser trains and the checkpoint holds -----------------------------------

    def value_parameters(self) -> list[nn.Parameter]:
        """The value model's own parameters (the head alone when it shares the policy's)."""
        return list(self.value_model.parameters())

    def parameters_to_train(self) -> list[nn.Parameter]:
        return super().parameters_to_train() + self.value_parameters()

    def param_groups(self) -> list[dict[str, Any]]:
        """The policy's parameters at ``lr``; the value model's at ``value_lr``."""
        c = self.config
        value_lr = c.lr if c.value_lr is None else c.value_lr
        return [
            {"params": super().parameters_to_train()},
            {"params": self.value_parameters(), "lr": value_lr, "lr_scale": value_lr / c.lr},
        ]

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """AdamW over :meth:`param_groups`, built on first use."""
        if self._optimizer is None:
            c = self.config
            self._optimizer = _ScaledAdamW(
                self.param_groups(), lr=c.lr, weight_decay=c.weight_decay
            )
        return self._optimizer

    def modules(self) -> dict[str, nn.Module]:
        return {**super().modules(), "value_model": self.value_model}

    def extra_state(self) -> dict[str, Any]:
        return {"kl_controller": self.kl_controller.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.kl_controller.load_state_dict(state["kl_controller"])

    # -- the algorithm ------------------------------------------------------------------------

    def values(self, exp: Experience) -> torch.Tensor:
        """``V(s_t)`` of every completion token of ``exp`` ``[rows, T]`` (with gradients)."""
        return self.value_model(
            exp.prompt_ids, exp.prompt_mask, exp.completion_ids, exp.completion_mask
        )

    @torch.no_grad()
    def prepare(self, exp: Experience) -> None:
        """Per-token rewards with the KL penalty, GAE over tokens, whitened advantages; the
        value targets and the values at sampling go to ``exp.extras`` (``"returns"``,
        ``"values"``). Then the KL coefficient adapts to this batch's KL."""
        c = self.config
        mask = exp.completion_mask
        self.value_model.eval()
        values = self.values(exp).float()
        beta = self.kl_controller.value
        rewards, kl = token_rewards(
            exp.rewards.float(), mask, exp.old_log_probs.float(), exp.ref_log_probs, beta
        )
        advantages, returns = token_advantages(rewards, values, mask, c.gamma, c.lam)
        raw_advantages = advantages
        if c.whiten_advantages:
            advantages = masked_whiten(advantages, mask, reduce=distributed.all_reduce_)
        exp.advantages = advantages
        exp.extras["values"] = values
        exp.extras["returns"] = returns
        # The controller sees the whole batch's mean sequence KL, sum_t k1_t per completion.
        valid = mask.to(torch.float64)
        totals = torch.tensor(
            [
                float(exp.rows),
                float(valid.sum()),
                float(kl.double().sum()),
                float((values.double() * valid).sum()),
                float((returns.double() * valid).sum()),
                float((raw_advantages.double() * valid).sum()),
            ],
            dtype=torch.float64,
        )
        distributed.all_reduce_(totals)
        rows, tokens = float(totals[0]), max(float(totals[1]), 1.0)
        sequence_kl = float(totals[2]) / rows
        self._prepared = {
            "kl_coef": beta,
            "sequence_kl": sequence_kl,
            "value_mean": float(totals[3]) / tokens,
            "return_mean": float(totals[4]) / tokens,
            "advantage_mean": float(totals[5]) / tokens,
        }
        self.kl_controller.update(sequence_kl, n_steps=int(rows))

    def forward(self, exp: Experience) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's log-probs and entropies; with a value head, from the same backbone
        pass that gives the values :meth:`loss` then uses."""
        if not self.value_model.shared:
            return super().forward(exp)
        log_probs, entropy, values = self.value_model.log_probs_and_values(
            exp.prompt_ids,
            exp.prompt_mask,
            exp.completion_ids,
            exp.completion_mask,
            temperature=self.config.temperature,
        )
        self._head_values = values
        return log_probs, entropy

    def loss(
        self, exp: Experience, new_log_probs: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``L = L_clip + vf_coef L_V``: the clipped surrogate (PPO eq. 7) over tokens and the
        clipped value loss against the GAE returns, token means over the whole batch."""
        c = self.config
        if exp.advantages is None or "returns" not in exp.extras:
            raise ValueError("loss needs prepared experience: call prepare(exp) first")
        values, self._head_values = self._head_values, None
        if values is None or values.shape != new_log_probs.shape:
            self.value_model.train(self.policy.training)
            values = self.values(exp)
        policy_loss = self.aggregate(
            clipped_surrogate_loss(new_log_probs, exp.old_log_probs, exp.advantages, c.clip_eps),
            exp,
        )
        old_values, returns = exp.extras["values"], exp.extras["returns"]
        value_loss = self.aggregate(
            clipped_value_loss(values.float(), old_values, returns, c.value_clip), exp
        )
        with torch.no_grad():
            mask = exp.completion_mask.bool()
            low, high = clip_fractions(new_log_probs, exp.old_log_probs, exp.advantages, c.clip_eps)
            ratio = torch.exp(new_log_probs - exp.old_log_probs)[mask]
            value_clipped = ((values - old_values).abs() > (c.value_clip or float("inf")))[mask]
            errors = (returns - values)[mask]
            explained = 1.0 - errors.var(correction=0) / returns[mask].var(correction=0).clamp(
                min=1e-8
            )
        metrics = {
            "policy_loss": float(policy_loss.detach()),
            "value_loss": float(value_loss.detach()),
            "clip_low": float(low[mask].mean()),
            "clip_high": float(high[mask].mean()),
            "ratio_min": float(ratio.min()),
            "ratio_max": float(ratio.max()),
            "value_clip_fraction": float(value_clipped.float().mean()),
            "explained_variance": float(explained),
        }
        return policy_loss + c.vf_coef * value_loss, metrics

    def step(self) -> dict[str, float]:
        metrics = super().step()
        metrics.update(self._prepared)
        return metrics
