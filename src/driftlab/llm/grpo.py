"""Group Relative Policy Optimization (GRPO; Shao et al. 2024, DeepSeekMath, sec. 4.1), with
the Dr. GRPO, DAPO, RLOO and REINFORCE++ variants selected by config.

For each question ``q`` the old policy samples a group of ``G`` outputs ``o_1 ... o_G``;
GRPO maximises (DeepSeekMath eq. 3)

    J(theta) = E[ 1/G sum_i 1/|o_i| sum_t { min(r_it A_it, clip(r_it, 1 - eps, 1 + eps) A_it)
                                            - beta D_KL[pi_theta || pi_ref] } ],
    r_it = pi_theta(o_it | q, o_i,<t) / pi_theta_old(o_it | q, o_i,<t),

with the unbiased, non-negative KL estimator of eq. 4 (``k3``)

    D_KL = pi_ref / pi_theta - log(pi_ref / pi_theta) - 1,

and, under outcome supervision (sec. 4.1.2), every token of output ``i`` gets the
group-normalised reward ``A_it = (r_i - mean(r)) / std(r)``. Process supervision (sec.
4.1.3) rewards each reasoning step instead: the step rewards of the whole group are
normalised together and a token's advantage is the sum of the normalised rewards of the
steps that end at or after it. DeepSeekMath's step rewards come from a trained process
reward model; here a step is a line of the chain of thought and its reward is verified:
1 when it equals the reference solution's line at that position, and the outcome's
correctness for the final answer line (:meth:`GRPOTrainer.step_rewards`). That needs tasks
whose correct steps are unique (addition, multiplication; not Countdown).

The policy takes ``mu`` optimisation steps per batch, and iterative GRPO (sec. 4.1.4,
Algorithm 1) resets the reference model to the policy every ``ref_reset_every``
iterations.

Options (all validated by :class:`GRPOConfig`; the named combinations are in ``PRESETS``):

- ``scale="none"`` with ``aggregation="token-sum-constant"``: Dr. GRPO (Liu et al. 2025,
  "Understanding R1-Zero-like training"), no std division and no length normalisation;
- ``clip_eps_high`` (clip-higher), ``dynamic_sampling``, ``aggregation="token-mean"`` and
  ``overlong_penalty``: DAPO (Yu et al. 2025, eqs. 8-13);
- ``advantage="rloo"`` (Ahmadian et al. 2024) or ``"reinforce++"`` (REINFORCE++-baseline,
  Hu et al. 2025) instead of the group-normalised advantage;
- ``kl_in="reward"``: the k1 KL estimate subtracted from the reward (as PPO-RLHF does)
  instead of a ``k1``/``k2``/``k3`` term in the loss.

Advantages are computed over the *global* batch (rewards gathered from every process), so
batch-level statistics (REINFORCE++'s whitening, ``scale="batch"``) do not depend on the
number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from driftlab.core import distributed
from driftlab.core.config import (
    ConfigError,
    check_choice,
    check_in_range,
    check_int,
    check_nonnegative,
    check_positive,
)
from driftlab.llm.tasks import Problem
from driftlab.llm.trainer import Experience, RLConfig, RLTrainer
from driftlab.rl.losses import (
    AGGREGATE_MODES,
    GROUP_STD_EPS,
    KL_ESTIMATORS,
    clip_fractions,
    clipped_surrogate_loss,
    dapo_overlong_penalty,
    group_advantages,
    kl_estimate,
    reinforce_pp_advantages,
    rloo_advantages,
)

ADVANTAGES = ("grpo", "rloo", "reinforce++")
SCALES = ("group", "batch", "none")
KL_PLACES = ("loss", "reward")
SUPERVISION = ("outcome", "process")
PROCESS_TASKS = ("addition", "multiplication")
"""Tasks whose reference steps are the only correct ones (Countdown has many solutions),
so a step can be checked against the reference line."""


@dataclass(kw_only=True)
class GRPOConfig(RLConfig):
    """GRPO's hyperparameters (DeepSeekMath sec. 4.1 and the variants in the module
    docstring), on top of :class:`~driftlab.llm.trainer.RLConfig`.

    The defaults are DeepSeekMath's (beta 0.04, eps 0.2, k3 in the loss, mu 1) except the
    learning rate and batch, which suit the small models trained here (theirs: lr 1e-6, G 64,
    1024 prompts per step); ``PRESETS["llm_learning"]`` is what the learning benchmark runs.

    - ``clip_eps`` (eps, or DAPO's eps_low) and ``clip_eps_high`` (DAPO's eps_high; ``None``
      is ``clip_eps``);
    - ``kl_estimator`` and ``kl_in``: ``"k3"`` in the loss is DeepSeekMath's eq. 4;
      ``kl_in="reward"`` takes ``k1`` only;
    - ``advantage`` and ``scale`` (``scale`` applies to ``"grpo"`` advantages);
    - ``aggregation`` and ``loss_constant`` (``token-sum-constant``'s constant, default
      ``max_new_tokens``);
    - ``supervision``: ``"outcome"`` or ``"process"``;
    - ``ref_reset_every``: iterations between reference resets (0: never);
    - ``dynamic_sampling`` with at most ``max_sampling_rounds`` sampling rounds per step;
    - ``overlong_penalty`` with ``overlong_cache`` (DAPO's L_cache; L_max is
      ``max_new_tokens``).
    """

    lr: float = 5e-4
    beta: float = 0.04
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    kl_estimator: str = "k3"
    kl_in: str = "loss"
    advantage: str = "grpo"
    scale: str = "group"
    aggregation: str = "sequence-mean"
    loss_constant: float | None = None
    supervision: str = "outcome"
    ref_reset_every: int = 0
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 3
    overlong_penalty: bool = False
    overlong_cache: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_in_range("clip_eps", self.clip_eps, 0.0, 1.0)
        if self.clip_eps_high is not None:
            check_nonnegative("clip_eps_high", self.clip_eps_high)
        check_choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        check_choice("kl_in", self.kl_in, KL_PLACES)
        if self.kl_in == "reward" and self.kl_estimator != "k1":
            raise ConfigError(
                f"kl_in='reward' uses the k1 estimator; got kl_estimator={self.kl_estimator!r}"
            )
        check_choice("advantage", self.advantage, ADVANTAGES)
        check_choice("scale", self.scale, SCALES)
        if self.advantage != "grpo" and self.scale != "group":
            raise ConfigError(
                f"scale applies to advantage='grpo' only; got scale={self.scale!r} "
                f"with advantage={self.advantage!r}"
            )
        check_choice("aggregation", self.aggregation, AGGREGATE_MODES)
        if self.loss_constant is not None:
            check_positive("loss_constant", self.loss_constant)
            if self.aggregation != "token-sum-constant":
                raise ConfigError(
                    f"loss_constant is used by aggregation='token-sum-constant' only; "
                    f"got aggregation={self.aggregation!r}"
                )
        check_choice("supervision", self.supervision, SUPERVISION)
        if self.supervision == "process":
            if self.task not in PROCESS_TASKS:
                raise ConfigError(
                    f"supervision='process' needs a task with unique reference steps "
                    f"({', '.join(PROCESS_TASKS)}); got task={self.task!r}"
                )
            if self.advantage != "grpo":
                raise ConfigError(
                    f"supervision='process' uses GRPO's normalised step rewards; "
                    f"got advantage={self.advantage!r}"
                )
            if self.kl_in == "reward":
                raise ConfigError("supervision='process' needs kl_in='loss'; got 'reward'")
        check_int("ref_reset_every", self.ref_reset_every, minimum=0)
        if self.ref_reset_every and self.beta == 0:
            raise ConfigError(
                f"ref_reset_every={self.ref_reset_every} needs a reference model (beta > 0); "
                f"got beta=0"
            )
        if not isinstance(self.dynamic_sampling, bool):
            raise ConfigError(
                f"dynamic_sampling must be true or false, got {self.dynamic_sampling!r}"
            )
        check_int("max_sampling_rounds", self.max_sampling_rounds, minimum=1)
        if not isinstance(self.overlong_penalty, bool):
            raise ConfigError(
                f"overlong_penalty must be true or false, got {self.overlong_penalty!r}"
            )
        check_int("overlong_cache", self.overlong_cache, minimum=1)
        if self.overlong_cache > self.max_new_tokens:
            raise ConfigError(
                f"overlong_cache must be <= max_new_tokens={self.max_new_tokens}, "
                f"got {self.overlong_cache}"
            )


PRESETS: dict[str, dict[str, Any]] = {
    # DeepSeekMath's GRPO: group std, per-sequence token mean, k3 KL in the loss.
    "grpo": {},
    # Dr. GRPO: no std division, token sum over a constant (the generation budget).
    "dr_grpo": {"scale": "none", "aggregation": "token-sum-constant"},
    # DAPO: clip-higher (0.2, 0.28), dynamic sampling, token-mean loss, soft overlong
    # penalty, and no KL term.
    "dapo": {
        "clip_eps": 0.2,
        "clip_eps_high": 0.28,
        "dynamic_sampling": True,
        "aggregation": "token-mean",
        "overlong_penalty": True,
        "beta": 0.0,
    },
    "rloo": {"advantage": "rloo"},
    "reinforce++": {"advantage": "reinforce++"},
    # benchmarks/llm_learning.py: 16 prompts x 8 completions, lr 5e-4 and a weaker KL pull.
    # On seed 0 (greedy accuracy 0.24 after SFT) this reached 0.43-0.46 after 80-100
    # iterations where lr 2e-4 with beta 0.04 reached 0.36-0.43; lr 1e-3, a batch of 32
    # prompts or temperature 1.3 were no faster per second.
    "llm_learning": {"lr": 5e-4, "beta": 0.01},
}


def process_advantages(
    step_rewards: list[list[float]], step_ends: list[list[int]], group_size: int, length: int
) -> torch.Tensor:
    """Process-supervision advantages (DeepSeekMath sec. 4.1.3), ``[rows, length]``.

    Row ``i`` has step rewards ``step_rewards[i][j]`` for steps ending at token
    ``step_ends[i][j]``. Within each group of ``group_size`` rows all step rewards are
    normalised together, ``(r - mean) / (std + 1e-4)`` (0 when they are all equal), and token
    ``t`` gets ``sum_{j: end_j >= t} r~_j``.
    """
    rows = len(step_rewards)
    advantages = torch.zeros(rows, length)
    for start in range(0, rows, group_size):
        members = range(start, start + group_size)
        flat = torch.tensor([r for i in members for r in step_rewards[i]], dtype=torch.float64)
        if flat.numel() == 0 or bool((flat == flat[0]).all()):
            continue
        std = flat.std() if flat.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
        normalised = (flat - flat.mean()) / (std + GROUP_STD_EPS)
        k = 0
        for i in members:
            for end in step_ends[i]:
                # The step's reward goes to every token up to and including its last token.
                advantages[i, : end + 1] += float(normalised[k])
                k += 1
    return advantages


class GRPOTrainer(RLTrainer):
    """GRPO and its variants (see the module docstring and :class:`GRPOConfig`)."""

    name: ClassVar[str] = "grpo"
    config_class: ClassVar[type[RLConfig]] = GRPOConfig
    config: GRPOConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kept_groups = 0
        self._sampling_rounds = 0

    # -- sampling (DAPO's dynamic sampling) ---------------------------------------------------

    def collect(self, problems: list[Problem]) -> Experience:
        """Sample the batch; with ``dynamic_sampling`` (DAPO eq. 11, ``0 < |{correct}| < G``)
        drop the groups that are all correct or all wrong and sample more prompts until
        ``prompts_per_step`` groups are kept or ``max_sampling_rounds`` rounds are spent; the
        kept groups are renumbered in the order they were kept and the surplus dropped. When
        no group at all is kept, the last round trains as sampled (its advantages are 0)."""
        c = self.config
        exp = super().collect(problems)
        self._sampling_rounds = 1
        if not c.dynamic_sampling:
            self._kept_groups = len(problems)
            return exp
        g, parts, kept_total = c.group_size, [], 0
        while True:
            correct = exp.correct.reshape(-1, g)
            mixed = ~(correct == correct[:, :1]).all(dim=1)
            local_ids = exp.extras["group_id"][::g].tolist()
            flags = distributed.gather_objects(list(zip(local_ids, mixed.tolist(), strict=True)))
            kept_ids = sorted(i for i, keep in flags if keep)
            new_id = {old: kept_total + k for k, old in enumerate(kept_ids)}
            rows = [i * g + j for i, old in enumerate(local_ids) if old in new_id for j in range(g)]
            part = exp.select(rows)
            part.extras["group_id"] = torch.tensor(
                [new_id[int(old)] for old in part.extras["group_id"]], dtype=torch.long
            )
            parts.append(part)
            kept_total += len(kept_ids)
            if kept_total >= c.prompts_per_step or self._sampling_rounds >= c.max_sampling_rounds:
                break
            exp = super().collect(self.select_problems(c.prompts_per_step))
            self._sampling_rounds += 1
        if kept_total == 0:
            self._kept_groups = len(problems) if self._sampling_rounds == 1 else c.prompts_per_step
            return exp
        merged = Experience.concatenate(parts, pad_id=self.tokenizer.pad_id)
        keep = torch.nonzero(merged.extras["group_id"] < c.prompts_per_step).squeeze(1)
        self._kept_groups = min(kept_total, c.prompts_per_step)
        return merged.select(keep)

    def global_groups(self, exp: Experience, sampled: int) -> int:
        return self._kept_groups

    # -- advantages ---------------------------------------------------------------------------

    def shaped_rewards(self, exp: Experience) -> torch.Tensor:
        """The rewards the advantages use: the task rewards, plus DAPO's overlong penalty
        (eq. 13), minus ``beta`` times the k1 KL of the whole completion when
        ``kl_in="reward"``."""
        c = self.config
        rewards = exp.rewards.clone().to(torch.float32)
        if c.overlong_penalty:
            rewards += dapo_overlong_penalty(exp.lengths, c.max_new_tokens, c.overlong_cache)
        if c.kl_in == "reward" and exp.ref_log_probs is not None:
            kl = kl_estimate(exp.old_log_probs, exp.ref_log_probs, "k1")
            rewards -= c.beta * (kl * exp.completion_mask).sum(dim=1)
        return rewards

    def _global(self, exp: Experience, values: torch.Tensor) -> torch.Tensor:
        """Per-row ``values`` of every process, in global group order."""
        g = exp.group_size
        ids = exp.extras["group_id"][::g].tolist()
        per_group = values.reshape(-1, g).tolist() if exp.rows else []
        gathered = sorted(distributed.gather_objects(list(zip(ids, per_group, strict=True))))
        return torch.tensor([v for _, group in gathered for v in group], dtype=values.dtype)

    @staticmethod
    def _local_rows(exp: Experience, global_values: torch.Tensor) -> torch.Tensor:
        """This process's rows of a per-row tensor in global group order (group ids are
        ``0 ... groups - 1``)."""
        g = exp.group_size
        return global_values.reshape(-1, g)[exp.extras["group_id"], torch.arange(exp.rows) % g]

    @torch.no_grad()
    def prepare(self, exp: Experience) -> None:
        """Advantages: outcome (DeepSeekMath sec. 4.1.2, or RLOO / REINFORCE++ over the
        global batch) or process supervision (sec. 4.1.3)."""
        c = self.config
        rewards = self.shaped_rewards(exp)
        exp.extras["shaped_rewards"] = rewards
        if c.supervision == "process":
            exp.advantages = self._process_advantages(exp)
            return
        everything = self._global(exp, rewards)
        if everything.numel() == 0:
            exp.advantages = torch.zeros(exp.rows)
            return
        if c.advantage == "grpo":
            advantages = group_advantages(everything, exp.group_size, c.scale)
        elif c.advantage == "rloo":
            advantages = rloo_advantages(everything, exp.group_size)
        else:
            advantages = reinforce_pp_advantages(everything, exp.group_size)
        exp.advantages = self._local_rows(exp, advantages)

    def step_rewards(self, problem: Problem, completion: str, correct: float) -> list[float]:
        """One reward per line of ``completion``: 1 for a line equal to the reference
        solution's line at that position, the outcome correctness for the last line."""
        reference = problem["solution"].split("\n")
        lines = completion.split("\n")
        rewards = [
            1.0 if k < len(reference) - 1 and line == reference[k] else 0.0
            for k, line in enumerate(lines[:-1])
        ]
        return [*rewards, float(correct)]

    def _process_advantages(self, exp: Experience) -> torch.Tensor:
        g, width = exp.group_size, exp.completion_ids.shape[1]
        all_rewards, all_ends = [], []
        for i in range(exp.rows):
            ids = exp.completion_ids[i][exp.completion_mask[i].bool()].tolist()
            # Where each step ends, in tokens: the token that completes its line.
            pieces = [self.tokenizer.decode([t]) for t in ids]
            text = "".join(pieces)
            ends_chars, position = [], 0
            for line in text.split("\n")[:-1]:
                position += len(line) + 1
                ends_chars.append(position)
            ends, total, k = [], 0, 0
            for t, piece in enumerate(pieces):
                total += len(piece)
                while k < len(ends_chars) and total >= ends_chars[k]:
                    ends.append(t)
                    k += 1
            ends.append(max(len(ids) - 1, 0))
            problem = exp.problems[i // g]
            all_rewards.append(self.step_rewards(problem, text, float(exp.correct[i])))
            all_ends.append(ends)
        return process_advantages(all_rewards, all_ends, g, width)

    # -- the objective ------------------------------------------------------------------------

    def loss(
        self, exp: Experience, new_log_probs: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Negated DeepSeekMath eq. 3 (with the configured clip range, KL term and
        aggregation) on a minibatch."""
        c = self.config
        advantages = exp.advantages
        if advantages.ndim == 1:
            advantages = advantages[:, None].expand_as(new_log_probs)
        per_token = clipped_surrogate_loss(
            new_log_probs, exp.old_log_probs, advantages, c.clip_eps, c.clip_eps_high
        )
        mask = exp.completion_mask.to(new_log_probs.dtype)
        tokens = mask.sum().clamp(min=1.0)
        metrics: dict[str, float] = {}
        if exp.ref_log_probs is not None:
            kl = kl_estimate(new_log_probs, exp.ref_log_probs, c.kl_estimator)
            if c.kl_in == "loss" and c.beta > 0:
                per_token = per_token + c.beta * kl
            metrics["kl"] = float((kl.detach() * mask).sum() / tokens)
        loss = self.aggregate(per_token, exp, c.aggregation, c.loss_constant)
        low, high = clip_fractions(
            new_log_probs, exp.old_log_probs, advantages, c.clip_eps, c.clip_eps_high
        )
        ratio = torch.exp(new_log_probs.detach() - exp.old_log_probs)
        metrics.update(
            clip_low=float((low * mask).sum() / tokens),
            clip_high=float((high * mask).sum() / tokens),
            ratio_mean=float((ratio * mask).sum() / tokens),
            advantage_abs_mean=float((advantages.abs() * mask).sum() / tokens),
        )
        return loss, metrics

    # -- iterative GRPO -----------------------------------------------------------------------

    def step(self) -> dict[str, float]:
        """One iteration; every ``ref_reset_every`` iterations the reference model becomes
        the current policy (DeepSeekMath Algorithm 1, iterative GRPO)."""
        metrics = super().step()
        metrics["kept_groups"] = float(self._kept_groups)
        metrics["sampling_rounds"] = float(self._sampling_rounds)
        c = self.config
        if c.ref_reset_every and self.step_count % c.ref_reset_every == 0:
            self.reference.load_state_dict(self.policy.state_dict())
        return metrics


def grpo_config(preset: str = "grpo", **overrides: Any) -> GRPOConfig:
    """A :class:`GRPOConfig` from a named preset (``PRESETS``) with ``overrides`` on top."""
    check_choice("preset", preset, PRESETS)
    return GRPOConfig.from_dict({**PRESETS[preset], **overrides})
