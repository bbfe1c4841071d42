"""The loop every RL trainer for language models shares; an algorithm file writes its pieces.

One iteration (:meth:`RLTrainer.step`), as in DeepSeekMath's Algorithm 1 (iterative GRPO)
and the Kimi k1.5 and PPO trainers built on it:

1. :meth:`~RLTrainer.select_problems` draws ``prompts_per_step`` training problems;
2. :meth:`~RLTrainer.collect` samples ``group_size`` completions of each with the current
   policy (recording per-token log-probs), scores them with the task's reward functions
   and, when the algorithm uses one, computes the reference model's log-probs;
3. :meth:`~RLTrainer.prepare` (the algorithm's) computes advantages, without gradients;
4. ``mu`` passes over the batch, in minibatches of ``minibatch_size`` rows (whole groups),
   each an AdamW step on :meth:`~RLTrainer.loss` (the algorithm's), with gradient clipping.

An algorithm subclasses :class:`RLTrainer` with its config class and writes ``prepare`` and
``loss``; it may override the hooks (``select_problems``, ``collect``,
``parameters_to_train``, ``modules``, ``extra_state``).

Loss normalisation does not depend on how a batch is split. :meth:`RLTrainer.aggregate`
divides a minibatch's token sum by the *whole* batch's denominator (its tokens, sequences,
or sequences times a constant, summed over all processes before the update) and multiplies
by the number of minibatches and processes; so the mean of the minibatch gradients is the
whole batch's gradient, and a 2-process run takes the same steps as a 1-process one.

Randomness: every random draw of iteration ``k`` comes from a generator seeded by
``(seed, k, purpose, draw)``, and the sampling uniforms are drawn for the whole global batch
(see :func:`driftlab.llm.generation.generate`); so no sample depends on which process
samples which group, and a resumed run continues exactly.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from driftlab.core import distributed
from driftlab.core.checkpoint import load_checkpoint, save_checkpoint
from driftlab.core.config import (
    ConfigError,
    check_choice,
    check_in_range,
    check_int,
    check_nonnegative,
    check_positive,
)
from driftlab.core.interrupt import DeferredInterrupt
from driftlab.core.metrics import MetricsLogger
from driftlab.core.progress import progress
from driftlab.llm.generation import decode_completions, generate, sequence_log_probs
from driftlab.llm.rewards import RewardFunction, combine_rewards
from driftlab.llm.sft import greedy_completions
from driftlab.llm.tasks import TASKS, Problem, Task, get_task
from driftlab.rl.losses import AGGREGATE_MODES, kl_estimate

TRAINERS: dict[str, tuple[str, str]] = {
    "grpo": ("driftlab.llm.grpo", "GRPOTrainer"),
    "ppo": ("driftlab.llm.ppo", "PPOTrainer"),
    "kimi": ("driftlab.llm.kimi", "KimiTrainer"),
}
"""Trainer name -> (module, class), imported on demand by :func:`get_trainer`."""

CHECKPOINT_NAME = "checkpoint"

STANDARD_METRICS = (
    "reward_mean",
    "reward_std",
    "accuracy",
    "zero_std_fraction",
    "kl",
    "clip_low",
    "clip_high",
    "entropy",
    "response_length",
    "generation_tokens_per_s",
    "training_tokens_per_s",
)
"""What every trainer logs each iteration (algorithms add their own)."""


def get_trainer(name: str) -> type[RLTrainer]:
    """The trainer class called ``name`` (``"grpo"``, ``"ppo"``, ``"kimi"``), imported now."""
    check_choice("trainer", name, TRAINERS)
    module, cls_name = TRAINERS[name]
    return getattr(importlib.import_module(module), cls_name)


@dataclass(kw_only=True)
class RLConfig:
    """What every trainer shares, validated on creation (one-line :class:`ConfigError`).

    - ``task`` / ``task_options``: the training task, ``get_task(task, **task_options)``;
      ``train_size`` training problems are drawn once (seeded by ``seed``) and each
      iteration samples ``prompts_per_step`` of them; evaluation uses ``eval_size`` problems
      of the held-out test split.
    - ``group_size`` completions per prompt (GRPO's ``G``), at most ``max_new_tokens`` each,
      at ``temperature`` and ``top_p``.
    - ``mu`` optimisation passes over each batch (GRPO's ``mu``) in minibatches of
      ``minibatch_size`` rows (a multiple of ``group_size``; ``None``: the whole batch).
    - AdamW with ``lr`` (linear warm-up over ``warmup_steps`` iterations, then constant),
      ``weight_decay``; gradients clipped to norm ``grad_clip``.
    - ``beta``: the KL coefficient; 0 turns the reference model off (no forward pass).
    - ``length_chunks``: the reference and policy log-prob passes run the batch's rows in
      this many passes of similar completion length, each trimmed to its own longest prompt
      and completion (:func:`~driftlab.llm.generation.sequence_log_probs`); the loss and
      gradient are unchanged up to float rounding (1, the default, is one pass). 2 saves
      10-20% of a step on Hugging Face models of some width; since a row's rounding depends
      on its chunk's width, runs on different numbers of processes then agree to about
      1e-5 instead of 1e-7.
    - ``reward_weights``: one weight per task reward function (correctness, then format);
      ``None`` is correctness alone.
    - ``eval_every``, ``log_every``, ``checkpoint_every``: iterations between evaluations,
      metric records and checkpoints (0: never, except the checkpoint at the end).
    """

    task: str = "addition"
    task_options: dict[str, Any] = field(default_factory=dict)
    steps: int = 100
    prompts_per_step: int = 16
    group_size: int = 8
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    lr: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    mu: int = 1
    minibatch_size: int | None = None
    beta: float = 0.0
    length_chunks: int = 1
    reward_weights: list[float] | None = None
    train_size: int = 2000
    eval_every: int = 0
    eval_size: int = 200
    eval_samples: int = 4
    log_every: int = 1
    checkpoint_every: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("task", self.task, TASKS)
        if not isinstance(self.task_options, dict):
            raise ConfigError(f"task_options must be a dict, got {self.task_options!r}")
        try:
            get_task(self.task, **self.task_options)
        except TypeError as error:
            allowed = ", ".join(f.name for f in fields(TASKS[self.task]))
            raise ConfigError(
                f"task_options {self.task_options!r} are not options of task {self.task!r} "
                f"(allowed: {allowed})"
            ) from error
        check_int("steps", self.steps, minimum=1)
        check_int("prompts_per_step", self.prompts_per_step, minimum=1)
        check_int("group_size", self.group_size, minimum=2)
        check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        check_positive("temperature", self.temperature)
        check_in_range("top_p", self.top_p, 0.0, 1.0)
        check_positive("top_p", self.top_p)
        check_positive("lr", self.lr)
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        check_nonnegative("weight_decay", self.weight_decay)
        check_positive("grad_clip", self.grad_clip)
        check_int("mu", self.mu, minimum=1)
        if self.minibatch_size is not None:
            check_int("minibatch_size", self.minibatch_size, minimum=self.group_size)
            if self.minibatch_size % self.group_size:
                raise ConfigError(
                    f"minibatch_size must be a multiple of group_size={self.group_size} "
                    f"(groups stay whole), got {self.minibatch_size}"
                )
        check_nonnegative("beta", self.beta)
        check_int("length_chunks", self.length_chunks, minimum=1)
        if self.reward_weights is not None:
            if not isinstance(self.reward_weights, list | tuple) or not self.reward_weights:
                raise ConfigError(
                    f"reward_weights must be a non-empty list, got {self.reward_weights!r}"
                )
            for i, w in enumerate(self.reward_weights):
                check_nonnegative(f"reward_weights[{i}]", w)
            self.reward_weights = list(self.reward_weights)
        check_int("train_size", self.train_size, minimum=1)
        check_int("eval_every", self.eval_every, minimum=0)
        check_int("eval_size", self.eval_size, minimum=1)
        check_int("eval_samples", self.eval_samples, minimum=0)
        check_int("log_every", self.log_every, minimum=1)
        check_int("checkpoint_every", self.checkpoint_every, minimum=0)
        check_int("seed", self.seed, minimum=0)

    @property
    def batch_rows(self) -> int:
        """Completions per iteration: ``prompts_per_step * group_size``."""
        return self.prompts_per_step * self.group_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RLConfig:
        """A config from ``values``; an unknown key is a one-line error naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**values)


def _index(rows: torch.Tensor | Sequence[int]) -> torch.Tensor:
    return torch.as_tensor(rows, dtype=torch.long).reshape(-1)


@dataclass
class Experience:
    """One iteration's batch (this process's share), rows ordered group by group.

    Token tensors are as in :class:`driftlab.llm.generation.Rollout`: ``prompt_*``
    ``[rows, P]`` left-padded, ``completion_*`` and the log-probs ``[rows, T]``.
    ``rewards`` are the combined task rewards and ``correct`` the 0/1 correctness, ``[rows]``;
    ``advantages`` (``[rows]`` or ``[rows, T]``) are filled by the algorithm's ``prepare``.
    ``extras`` holds per-row tensors of the algorithm and the trainer (``group_id``, the
    group's index in the global batch); ``totals`` the whole batch's loss denominators, set
    before the update.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    old_log_probs: torch.Tensor
    ref_log_probs: torch.Tensor | None
    rewards: torch.Tensor
    correct: torch.Tensor
    problems: list[Problem]
    group_size: int
    advantages: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def groups(self) -> int:
        return self.rows // self.group_size

    @property
    def lengths(self) -> torch.Tensor:
        """Tokens of each completion, the ``<eos>`` included."""
        return self.completion_mask.sum(dim=1)

    def select(self, rows: torch.Tensor | Sequence[int]) -> Experience:
        """The rows ``rows`` (whole groups, each in order) as a new experience."""
        index = _index(rows)
        g = self.group_size
        if index.numel() % g:
            raise ValueError(f"select needs whole groups of {g} rows, got {index.numel()} rows")
        blocks = index.reshape(-1, g)
        firsts = blocks[:, :1]
        if (firsts % g).any() or not torch.equal(blocks, firsts + torch.arange(g)):
            raise ValueError(f"select needs whole groups of {g} consecutive rows, got {rows}")

        def take(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[index]

        return Experience(
            prompt_ids=self.prompt_ids[index],
            prompt_mask=self.prompt_mask[index],
            completion_ids=self.completion_ids[index],
            completion_mask=self.completion_mask[index],
            old_log_probs=self.old_log_probs[index],
            ref_log_probs=take(self.ref_log_probs),
            rewards=self.rewards[index],
            correct=self.correct[index],
            problems=[self.problems[int(i) // g] for i in firsts[:, 0]],
            group_size=g,
            advantages=take(self.advantages),
            extras={k: v[index] for k, v in self.extras.items()},
            totals=dict(self.totals),
        )

    @staticmethod
    def concatenate(parts: Sequence[Experience], pad_id: int = 0) -> Experience:
        """One experience of ``parts`` in order, prompts re-padded on the left and
        completions on the right to the widest (with ``pad_id``, masked out)."""
        if not parts:
            raise ValueError("concatenate needs at least one experience, got none")
        g = parts[0].group_size
        prompt_width = max(p.prompt_ids.shape[1] for p in parts)
        completion_width = max(p.completion_ids.shape[1] for p in parts)

        def pad(x: torch.Tensor | None, width: int, left: bool, value: float = 0) -> Any:
            if x is None:
                return None
            extra = width - x.shape[1]
            return nn.functional.pad(x, (extra, 0) if left else (0, extra), value=value)

        def cat(name: str, width: int | None = None, left: bool = False, value: float = 0):
            values = [getattr(p, name) for p in parts]
            if any(v is None for v in values):
                return None
            if width is not None:
                values = [pad(v, width, left, value) for v in values]
            return torch.cat(values)

        return Experience(
            prompt_ids=cat("prompt_ids", prompt_width, left=True, value=pad_id),
            prompt_mask=cat("prompt_mask", prompt_width, left=True),
            completion_ids=cat("completion_ids", completion_width, value=pad_id),
            completion_mask=cat("completion_mask", completion_width),
            old_log_probs=cat("old_log_probs", completion_width),
            ref_log_probs=cat("ref_log_probs", completion_width),
            rewards=cat("rewards"),
            correct=cat("correct"),
            problems=[q for p in parts for q in p.problems],
            group_size=g,
            advantages=None,
            extras={
                k: torch.cat([pad(p.extras[k], completion_width, False) for p in parts])
                if parts[0].extras[k].ndim == 2
                else torch.cat([p.extras[k] for p in parts])
                for k in parts[0].extras
            },
        )


def _seed_of(*parts: Any) -> int:
    """A 63-bit seed from a tuple of values (stable across runs and processes)."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class RLTrainer(ABC):
    """Base of the RL trainers for language models (see the module docstring).

    ``policy`` is a :class:`~driftlab.llm.model.TransformerLM` or
    :class:`~driftlab.llm.hf.HFPolicy`; ``tokenizer`` follows the driftlab tokenizer
    protocol. ``reference`` is the frozen model of the KL penalty (default: a copy of the
    policy as it is now, made only when the algorithm uses one). ``task`` replaces the
    config's task (pass it again to :meth:`resume`); ``reward_functions`` replace the task's
    (TRL's convention, weighted by ``reward_weights``). With ``run_dir`` the trainer writes
    ``metrics.jsonl`` (unless a ``logger`` is given), ``samples.md`` and checkpoints there.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[RLConfig]] = RLConfig

    def __init__(
        self,
        policy: nn.Module,
        tokenizer: Any,
        config: RLConfig,
        *,
        reference: nn.Module | None = None,
        task: Task | None = None,
        reward_functions: Sequence[RewardFunction] | None = None,
        run_dir: str | Path | None = None,
        logger: MetricsLogger | None = None,
    ) -> None:
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        self.policy = policy
        self.tokenizer = tokenizer
        self.config = config
        self.task = task if task is not None else get_task(config.task, **config.task_options)
        funcs = list(reward_functions or self.task.reward_functions)
        weights = config.reward_weights or [1.0] + [0.0] * (len(funcs) - 1)
        if len(weights) != len(funcs):
            raise ConfigError(
                f"reward_weights must have one weight per reward function ({len(funcs)}), "
                f"got {len(weights)}"
            )
        # A function with weight 0 is not called at all.
        kept = [(f, w) for f, w in zip(funcs, weights, strict=True) if w != 0]
        self.reward_function = combine_rewards([f for f, _ in kept], [w for _, w in kept])
        self.train_problems = self.task.problems(
            config.train_size, "train", config.seed, allow_fewer=True
        )
        self._eval_problems: list[Problem] | None = None
        if reference is None and self.uses_reference:
            reference = copy.deepcopy(policy)
        if reference is not None:
            reference.eval()
            reference.requires_grad_(False)
        self.reference = reference
        self.step_count = 0
        self.history: list[dict[str, Any]] = []
        self.run_dir = None if run_dir is None else Path(run_dir)
        if logger is None and self.run_dir is not None and distributed.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            logger = MetricsLogger(self.run_dir)
        self.logger = logger
        self._optimizer: torch.optim.Optimizer | None = None
        self._draws: dict[str, int] = {}
        self._sampled: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._generation_time = 0.0

    # -- what an algorithm writes -------------------------------------------------------------

    @property
    def uses_reference(self) -> bool:
        """Whether a reference model is kept (``beta > 0``; PPO's KL-in-reward too)."""
        return self.config.beta > 0

    @abstractmethod
    def prepare(self, exp: Experience) -> None:
        """Fill ``exp.advantages`` (and any extras) from the collected batch; no gradients."""

    @abstractmethod
    def loss(
        self, exp: Experience, new_log_probs: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The minibatch loss (aggregated with :meth:`aggregate`) and its metrics."""

    def parameters_to_train(self) -> list[nn.Parameter]:
        """What the optimiser updates (PPO adds its value model's parameters)."""
        return [p for p in self.policy.parameters() if p.requires_grad]

    def modules(self) -> dict[str, nn.Module]:
        """Every model saved in a checkpoint, by name."""
        found = {"policy": self.policy}
        if self.reference is not None:
            found["reference"] = self.reference
        return found

    def extra_state(self) -> dict[str, Any]:
        """Algorithm state to checkpoint (sampler statistics, coefficients, ...)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore what :meth:`extra_state` saved (nothing by default)."""

    # -- randomness ---------------------------------------------------------------------------

    def generator(self, purpose: str) -> torch.Generator:
        """A fresh generator for the next draw of ``purpose`` in this iteration, seeded by
        ``(seed, iteration, purpose, draw number)``: the same on every process, and the same
        after a resume."""
        draw = self._draws.get(purpose, 0)
        self._draws[purpose] = draw + 1
        return torch.Generator().manual_seed(
            _seed_of(self.config.seed, self.step_count, purpose, draw)
        )

    # -- the hooks of one iteration -----------------------------------------------------------

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """AdamW over :meth:`parameters_to_train`, built on first use (so that an algorithm
        may create its extra models after ``__init__``)."""
        if self._optimizer is None:
            c = self.config
            # fused: one kernel for all parameters (transformers' default adamw_torch_fused).
            self._optimizer = torch.optim.AdamW(
                self.parameters_to_train(), lr=c.lr, weight_decay=c.weight_decay, fused=True
            )
        return self._optimizer

    def select_problems(self, n: int) -> list[Problem]:
        """``n`` training problems for this iteration, the global batch: drawn without
        replacement from the training pool (with replacement if the pool is smaller)."""
        g = self.generator("problems")
        pool = len(self.train_problems)
        if n <= pool:
            picks = torch.randperm(pool, generator=g)[:n]
        else:
            picks = torch.randint(pool, (n,), generator=g)
        return [self.train_problems[int(i)] for i in picks]

    def score(
        self, problems: Sequence[Problem], completions: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rewards, correct)`` of completions aligned with ``problems``."""
        prompts = [p["prompt"] for p in problems]
        fields_ = self.task.fields(problems)
        rewards = self.reward_function(prompts, completions, **fields_)
        rewards_t = torch.tensor([0.0 if r is None else float(r) for r in rewards])
        correct = torch.tensor(self.task.score(problems, completions))
        return rewards_t, correct

    def decode(self, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[str]:
        return decode_completions(self.tokenizer, completion_ids, completion_mask)

    @torch.no_grad()
    def collect(self, problems: list[Problem]) -> Experience:
        """Sample, score and (with a reference model) compute reference log-probs for this
        process's share of the global batch ``problems``.

        Uniforms are drawn for all ``len(problems) * group_size`` rows and sliced, so a
        row's completion does not depend on the sharding. ``extras["group_id"]`` is each
        row's group index in ``problems``.
        """
        c, g = self.config, self.config.group_size
        start = time.perf_counter()
        uniforms = torch.rand(len(problems) * g, c.max_new_tokens, generator=self.generator("u"))
        groups = list(distributed.shard(list(range(len(problems)))))
        local = [problems[i] for i in groups]
        rows = torch.tensor([i * g + j for i in groups for j in range(g)], dtype=torch.long)
        prompt_ids, prompt_mask = self.tokenizer.batch_encode([p["prompt"] for p in local], "left")
        self.policy.eval()
        rollout = generate(
            self.policy,
            prompt_ids,
            prompt_mask,
            eos_id=self.tokenizer.eos_id,
            pad_id=self.tokenizer.pad_id,
            max_new_tokens=c.max_new_tokens,
            group_size=g,
            temperature=c.temperature,
            top_p=c.top_p,
            uniforms=uniforms[rows],
        )
        repeated = [p for p in local for _ in range(g)]
        rewards, correct = self.score(
            repeated, self.decode(rollout.completion_ids, rollout.completion_mask)
        )
        ref_log_probs = None
        if self.reference is not None and self.uses_reference:
            ref_log_probs = sequence_log_probs(
                self.reference,
                rollout.prompt_ids,
                rollout.prompt_mask,
                rollout.completion_ids,
                rollout.completion_mask,
                temperature=c.temperature,
                chunks=c.length_chunks,
            )
        self._generation_time += time.perf_counter() - start
        self._sampled.append((rewards, correct, rollout.lengths))
        return Experience(
            prompt_ids=rollout.prompt_ids,
            prompt_mask=rollout.prompt_mask,
            completion_ids=rollout.completion_ids,
            completion_mask=rollout.completion_mask,
            old_log_probs=rollout.log_probs,
            ref_log_probs=ref_log_probs,
            rewards=rewards,
            correct=correct,
            problems=local,
            group_size=g,
            extras={"group_id": torch.tensor(groups, dtype=torch.long).repeat_interleave(g)},
        )

    # -- the update ---------------------------------------------------------------------------

    def aggregate(
        self,
        values: torch.Tensor,
        exp: Experience,
        mode: str = "token-mean",
        constant: float | None = None,
    ) -> torch.Tensor:
        """Reduce per-token ``values`` ``[rows, T]`` of a minibatch over its completion tokens
        with the whole batch's denominator (the modes of
        :func:`driftlab.rl.losses.aggregate_loss`):

        - ``"token-mean"``: ``sum / (tokens in the batch)`` (DAPO eq. 12);
        - ``"sequence-mean"``: ``sum_i mean_t / (sequences in the batch)`` (DeepSeekMath eq. 3);
        - ``"token-sum-constant"``: ``sum / (sequences * constant)``, ``constant`` defaulting
          to ``max_new_tokens`` (Dr. GRPO, Liu et al. 2025).

        The result is multiplied by the number of minibatches and processes, so the mean of
        the minibatch gradients (over passes of one batch, and after
        :func:`~driftlab.core.distributed.average_gradients_`) is the whole batch's gradient.
        On a single whole batch it equals :func:`~driftlab.rl.losses.aggregate_loss`.
        """
        check_choice("mode", mode, AGGREGATE_MODES)
        totals = exp.totals or self._totals(exp, minibatches=1)
        mask = exp.completion_mask.to(values.dtype)
        masked = values * mask
        scale = totals["minibatches"] * distributed.world_size()
        if mode == "token-mean":
            return masked.sum() * scale / max(totals["tokens"], 1.0)
        if mode == "sequence-mean":
            per_sequence = masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            return per_sequence.sum() * scale / totals["sequences"]
        constant = self.config.max_new_tokens if constant is None else constant
        return masked.sum() * scale / (totals["sequences"] * constant)

    def _totals(self, exp: Experience, minibatches: int) -> dict[str, float]:
        """The whole batch's denominators, summed over processes."""
        local = torch.tensor(
            [float(exp.completion_mask.sum()), float(exp.rows)], dtype=torch.float64
        )
        distributed.all_reduce_(local)
        return {"tokens": float(local[0]), "sequences": float(local[1]), "minibatches": minibatches}

    def learning_rate(self) -> float:
        """Linear warm-up over ``warmup_steps`` iterations, then constant."""
        c = self.config
        if c.warmup_steps == 0:
            return c.lr
        return c.lr * min(1.0, (self.step_count + 1) / c.warmup_steps)

    def forward(self, exp: Experience) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs (with gradients) and entropies of the policy on ``exp``.

        The policy runs in eval mode: dropout stays off (as TRL's ``disable_dropout``), so the
        ratio compares the policy with itself, not with a randomly thinned copy."""
        self.policy.eval()
        return sequence_log_probs(
            self.policy,
            exp.prompt_ids,
            exp.prompt_mask,
            exp.completion_ids,
            exp.completion_mask,
            temperature=self.config.temperature,
            return_entropy=True,
            chunks=self.config.length_chunks,
        )

    def update(self, exp: Experience, global_groups: int | None = None) -> dict[str, float]:
        """``mu`` passes over ``exp`` in minibatches of whole groups, an optimiser step each.

        Minibatch ``k`` of a pass is the set of global groups ``perm[k m : (k + 1) m]`` for a
        permutation ``perm`` drawn per pass (the identity with one minibatch); each process
        trains on its own rows of it, possibly none (it still joins the gradient average).
        Before the first optimiser step of the iteration the policy is the one that sampled,
        so the ``old_log_probs`` of that step are its own detached log-probs (ratio exactly
        1; the recorded ones agree up to rounding); later steps use the recorded ones.
        """
        c, g = self.config, exp.group_size
        n_groups = int(exp.extras["group_id"].max()) + 1 if global_groups is None else global_groups
        per_minibatch = n_groups if c.minibatch_size is None else c.minibatch_size // g
        minibatches = math.ceil(n_groups / per_minibatch)
        exp.totals = self._totals(exp, minibatches)
        params = self.parameters_to_train()
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        group_id = exp.extras["group_id"]
        records: list[dict[str, float]] = []
        entropy_sum, entropy_tokens = 0.0, 0.0
        trained_tokens, moved = 0, False
        start = time.perf_counter()
        for epoch in range(c.mu):
            if minibatches > 1:
                order = torch.randperm(n_groups, generator=self.generator("minibatches"))
            else:
                order = torch.arange(n_groups)
            for k in range(minibatches):
                chosen = order[k * per_minibatch : (k + 1) * per_minibatch]
                # Rows of this process in the chosen groups, group by group in chosen order.
                position = torch.full((n_groups,), -1, dtype=torch.long)
                position[chosen] = torch.arange(chosen.numel())
                local_rank = position[group_id]
                rows = torch.nonzero(local_rank >= 0).squeeze(1)
                rows = rows[torch.argsort(local_rank[rows], stable=True)]
                self.optimizer.zero_grad(set_to_none=True)
                if rows.numel() > 0:
                    mb = exp.select(rows)
                    new_log_probs, entropy = self.forward(mb)
                    if not moved:
                        mb.old_log_probs = new_log_probs.detach()
                    loss, metrics = self.loss(mb, new_log_probs)
                    loss.backward()
                    metrics = {"loss": float(loss.detach()), **metrics}
                    if mb.ref_log_probs is not None and "kl" not in metrics:
                        kl = kl_estimate(new_log_probs.detach(), mb.ref_log_probs, "k3")
                        mask = mb.completion_mask.to(kl.dtype)
                        metrics["kl"] = float((kl * mask).sum() / mask.sum().clamp(min=1.0))
                    records.append(metrics)
                    if epoch == 0:
                        entropy_sum += float(entropy.sum())
                        entropy_tokens += float(mb.completion_mask.sum())
                    trained_tokens += int(mb.prompt_mask.sum() + mb.completion_mask.sum())
                distributed.average_gradients_(params)
                grad_norm = nn.utils.clip_grad_norm_(params, c.grad_clip)
                self.optimizer.step()
                moved = True
                if records:
                    records[-1]["grad_norm"] = float(grad_norm)
        elapsed = time.perf_counter() - start
        keys = {key for r in records for key in r}
        out = {key: sum(r.get(key, 0.0) for r in records) / max(len(records), 1) for key in keys}
        out["entropy"] = entropy_sum / max(entropy_tokens, 1.0)
        out["training_tokens_per_s"] = trained_tokens / max(elapsed, 1e-9)
        out["lr"] = lr
        out["minibatches"] = minibatches
        return out

    def _sampling_metrics(self) -> dict[str, float]:
        """Reward, accuracy, zero-std groups and length over everything sampled this
        iteration, on all processes."""
        local = [
            triple
            for rewards, correct, lengths in self._sampled
            for triple in zip(
                rewards.tolist(), correct.tolist(), lengths.double().tolist(), strict=True
            )
        ]
        gathered = distributed.gather_objects(local)
        total_time = torch.tensor([self._generation_time], dtype=torch.float64)
        distributed.all_reduce_(total_time, "max")
        if not gathered:  # nothing was scored (e.g. every partial rollout was carried over)
            return {}
        r, a, n = torch.tensor(gathered, dtype=torch.float64).unbind(dim=1)
        grouped = r.reshape(-1, self.config.group_size)
        return {
            "reward_mean": float(r.mean()),
            "reward_std": float(r.std()) if r.numel() > 1 else 0.0,
            "accuracy": float(a.mean()),
            "zero_std_fraction": float((grouped == grouped[:, :1]).all(dim=1).double().mean()),
            "response_length": float(n.mean()),
            "generation_tokens_per_s": float(n.sum()) / max(float(total_time), 1e-9),
        }

    def step(self) -> dict[str, float]:
        """One iteration: select problems, collect, prepare, update. Returns its metrics."""
        self._draws = {}
        self._sampled = []
        self._generation_time = 0.0
        start = time.perf_counter()
        problems = self.select_problems(self.config.prompts_per_step)
        exp = self.collect(problems)
        self.prepare(exp)
        metrics = {name: 0.0 for name in STANDARD_METRICS}
        metrics.update(self._sampling_metrics())
        metrics.update(self.update(exp, self.global_groups(exp, len(problems))))
        self.step_count += 1
        metrics["step_time"] = time.perf_counter() - start
        return metrics

    def global_groups(self, exp: Experience, sampled: int) -> int:
        """Groups in the global batch that ``update`` trains on (all those sampled, unless
        an algorithm filtered them)."""
        return sampled

    # -- training loop ------------------------------------------------------------------------

    def train(self, steps: int | None = None, show_progress: bool = True) -> list[dict]:
        """Run ``steps`` more iterations (default: up to ``config.steps`` in all), with a
        progress bar, metrics every ``log_every``, evaluation every ``eval_every`` and
        checkpoints every ``checkpoint_every`` iterations, at the end and on Ctrl-C (the
        current iteration finishes first). Returns the metrics of these iterations."""
        c = self.config
        target = c.steps if steps is None else self.step_count + check_int("steps", steps, 1)
        records: list[dict] = []
        bar = progress(
            total=max(0, target - self.step_count),
            desc=self.name or "rl",
            disable=not (show_progress and distributed.is_main()),
            unit="step",
        )
        interrupt = DeferredInterrupt()
        try:
            while self.step_count < target:
                metrics = self.step()
                if c.eval_every and self.step_count % c.eval_every == 0:
                    metrics.update(self._evaluate_and_record())
                record = {"step": self.step_count, **metrics}
                records.append(record)
                self.history.append(record)
                if self.logger is not None and (
                    self.step_count % c.log_every == 0 or self.step_count == target
                ):
                    self.logger.log(self.step_count, **metrics)
                bar.update(1)
                bar.set_postfix(
                    reward=f"{metrics['reward_mean']:.2f}",
                    acc=f"{metrics['accuracy']:.2f}",
                    refresh=False,
                )
                if c.checkpoint_every and self.step_count % c.checkpoint_every == 0:
                    self._checkpoint()
                if interrupt.requested:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            self._checkpoint()
            raise
        finally:
            interrupt.restore()
            bar.close()
        self._checkpoint()
        return records

    def _checkpoint(self) -> None:
        if self.run_dir is not None and distributed.is_main():
            self.save(self.run_dir)

    # -- evaluation ---------------------------------------------------------------------------

    @property
    def eval_problems(self) -> list[Problem]:
        """``eval_size`` problems of the held-out test split (the same for every seed)."""
        if self._eval_problems is None:
            self._eval_problems = self.task.problems(
                self.config.eval_size, "test", seed=0, allow_fewer=True
            )
        return self._eval_problems

    @torch.no_grad()
    def evaluate(self, problems: Sequence[Problem] | None = None) -> dict[str, Any]:
        """Greedy decoding of held-out problems: accuracy, mean reward and completion length,
        and the first ``eval_samples`` completions (``samples``; see :func:`samples_table`).
        Training randomness is untouched (greedy decoding draws nothing)."""
        problems = list(self.eval_problems if problems is None else problems)
        if not problems:
            raise ValueError("evaluate needs at least one problem, got none")
        completions = greedy_completions(
            self.policy,
            self.tokenizer,
            [p["prompt"] for p in problems],
            self.config.max_new_tokens,
        )
        rewards, correct = self.score(problems, completions)
        lengths = [len(self.tokenizer.encode(text, add_eos=True)) for text in completions]
        samples = [
            {"prompt": p["prompt"], "completion": text, "reward": float(r), "correct": float(a)}
            for p, text, r, a in zip(problems, completions, rewards, correct, strict=True)
        ][: self.config.eval_samples]
        return {
            "eval_accuracy": float(correct.mean()),
            "eval_reward": float(rewards.mean()),
            "eval_length": sum(lengths) / len(lengths),
            "samples": samples,
        }

    def _evaluate_and_record(self) -> dict[str, float]:
        result = self.evaluate()
        if self.run_dir is not None and distributed.is_main() and result["samples"]:
            with (self.run_dir / "samples.md").open("a", encoding="utf-8") as f:
                f.write(f"\n## step {self.step_count}\n\n{samples_table(result['samples'])}\n")
        return {k: v for k, v in result.items() if k != "samples"}

    # -- saving -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs: models, optimiser, RNG, iteration, extras."""
        state: dict[str, Any] = {
            "trainer": self.name,
            "config": self.config.to_dict(),
            "step": self.step_count,
            "modules": {name: m.state_dict() for name, m in self.modules().items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "extra": self.extra_state(),
        }
        model_config = getattr(self.policy, "config", None)
        if hasattr(model_config, "to_dict"):
            state["model_config"] = model_config.to_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("trainer") != self.name:
            raise ConfigError(
                f"checkpoint holds a {state.get('trainer')!r} trainer, not {self.name!r}"
            )
        for name, module in self.modules().items():
            if name not in state["modules"]:
                raise ConfigError(f"checkpoint has no {name!r} model")
            module.load_state_dict(state["modules"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = int(state["step"])
        torch.set_rng_state(state["rng"]["torch"])
        self.load_extra_state(state["extra"])

    def save(self, path: str | Path) -> Path:
        """Write the full training state to ``path/checkpoint.{safetensors,json}`` (nothing
        pickled); returns the stem."""
        stem = Path(path) / CHECKPOINT_NAME
        save_checkpoint(stem, self.state_dict())
        return stem

    @classmethod
    def resume(
        cls,
        path: str | Path,
        policy: nn.Module | None = None,
        tokenizer: Any = None,
        **kwargs: Any,
    ) -> RLTrainer:
        """The trainer saved in ``path`` by :meth:`save`, ready to :meth:`train` on exactly as
        if it had never stopped. A built-in :class:`~driftlab.llm.model.TransformerLM` and the
        character tokenizer are rebuilt from the checkpoint; any other policy (a Hugging Face
        model) and its tokenizer are passed in. ``kwargs`` go to the constructor
        (``task``, ``reward_functions``, ``run_dir``, ``logger``)."""
        stem = Path(path) / CHECKPOINT_NAME
        state = load_checkpoint(stem)
        trainer_cls = get_trainer(state["trainer"]) if cls is RLTrainer else cls
        if state["trainer"] != trainer_cls.name:
            raise ConfigError(f"{str(path)!r} holds a {state['trainer']} trainer, not {cls.name}")
        config = trainer_cls.config_class.from_dict(state["config"])
        if policy is None:
            if "model_config" not in state:
                raise ConfigError(
                    f"{str(path)!r} holds a policy that is not a built-in TransformerLM; "
                    f"pass policy and tokenizer"
                )
            from driftlab.llm.model import TransformerConfig, TransformerLM
            from driftlab.llm.tokenizer import CharTokenizer

            policy = TransformerLM(TransformerConfig(**state["model_config"]))
            tokenizer = CharTokenizer() if tokenizer is None else tokenizer
        reference = None
        if "reference" in state["modules"]:
            reference = copy.deepcopy(policy)
        kwargs.setdefault("run_dir", path)
        trainer = trainer_cls(policy, tokenizer, config, reference=reference, **kwargs)
        trainer.load_state_dict(state)
        return trainer


def samples_table(samples: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of sample completions (prompt, completion, reward, correct), newlines
    shown as ``\\n``."""

    def cell(text: Any) -> str:
        return str(text).replace("\n", "\\n").replace("|", "\\|")

    lines = ["| prompt | completion | reward | correct |", "|---|---|---|---|"]
    for s in samples:
        lines.append(
            f"| {cell(s['prompt'])} | {cell(s['completion'])} | {s['reward']:.2f} "
            f"| {int(s['correct'])} |"
        )
    return "\n".join(lines)
