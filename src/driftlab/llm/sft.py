"""Supervised warm-up on a task's reference solutions, and greedy accuracy.

Before RL, a policy that never produces a well-formed answer gets no reward signal; a short
supervised phase on the reference chain-of-thought solutions (the "cold start" of DeepSeek-R1
and Kimi k1.5) teaches the format. The loss is the token-mean cross-entropy over completion
tokens only (the prompt is context, not a target), the ``<eos>`` included so the model learns
to stop.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from driftlab.core.config import check_int, check_nonnegative, check_positive
from driftlab.core.metrics import MetricsLogger
from driftlab.core.progress import progress
from driftlab.llm.generation import generate
from driftlab.llm.tasks import Problem, Task
from driftlab.llm.tokenizer import Tokenizer, pad_sequences


@dataclass
class SFTConfig:
    """Hyperparameters of :func:`sft`, validated on creation.

    The learning rate warms up linearly over ``warmup_steps``, then follows a cosine to
    ``min_lr_ratio * lr`` at ``steps``.
    """

    steps: int = 500
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    train_size: int = 2000
    seed: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        check_int("steps", self.steps, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        check_positive("lr", self.lr)
        check_nonnegative("weight_decay", self.weight_decay)
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        check_nonnegative("min_lr_ratio", self.min_lr_ratio)
        check_positive("grad_clip", self.grad_clip)
        check_int("train_size", self.train_size, minimum=1)
        check_int("seed", self.seed)
        check_int("log_every", self.log_every, minimum=1)


def completion_batch(
    tokenizer: Tokenizer, prompts: Sequence[str], completions: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask, loss_mask)`` of ``<bos> prompt completion
    <eos>``; ``loss_mask`` is 1 on the completion tokens and the ``<eos>``."""
    sequences, targets = [], []
    for prompt, completion in zip(prompts, completions, strict=True):
        head = tokenizer.encode(prompt, add_bos=True)
        tail = tokenizer.encode(completion, add_eos=True)
        sequences.append(head + tail)
        targets.append([0] * len(head) + [1] * len(tail))
    ids, mask = pad_sequences(sequences, tokenizer.pad_id, "right")
    loss_mask, _ = pad_sequences(targets, 0, "right")
    return ids, mask, loss_mask


def completion_loss(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    """Token-mean cross-entropy of the tokens where ``loss_mask`` is 1, teacher-forced."""
    logits, _ = model(ids[:, :-1], attention_mask=mask[:, :-1])
    targets = loss_mask[:, 1:].float()
    losses = functional.cross_entropy(logits.transpose(1, 2).float(), ids[:, 1:], reduction="none")
    return (losses * targets).sum() / targets.sum().clamp(min=1.0)


def _lr_factor(step: int, config: SFTConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress_ = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine


def sft(
    model: nn.Module,
    tokenizer: Tokenizer,
    task: Task,
    config: SFTConfig | None = None,
    problems: Sequence[Problem] | None = None,
    logger: MetricsLogger | None = None,
) -> nn.Module:
    """Train ``model`` in place on reference solutions and return it.

    ``problems`` default to ``config.train_size`` problems of the task's train split (fewer
    when the split is smaller); batches are drawn from them with a generator seeded by
    ``config.seed``. ``logger`` receives the loss every ``log_every`` steps.
    """
    config = SFTConfig() if config is None else config
    if problems is None:
        problems = task.problems(config.train_size, "train", config.seed, allow_fewer=True)
    rng = random.Random(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))
    model.train()
    for step in progress(range(config.steps), desc="sft", unit="step"):
        batch = [rng.choice(problems) for _ in range(config.batch_size)]
        ids, mask, loss_mask = completion_batch(
            tokenizer, [p["prompt"] for p in batch], [p["solution"] for p in batch]
        )
        loss = completion_loss(model, ids, mask, loss_mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        if logger is not None and (step % config.log_every == 0 or step == config.steps - 1):
            logger.log(step, sft_loss=loss.item(), lr=scheduler.get_last_lr()[0])
    model.eval()
    return model


@torch.no_grad()
def greedy_completions(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 256,
) -> list[str]:
    """Greedy-decoded completions of ``prompts``, decoded without special tokens."""
    was_training = model.training
    model.eval()
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = tokenizer.batch_encode(prompts[start : start + batch_size], "left")
        rollout = generate(
            model,
            ids,
            mask,
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
            max_new_tokens=max_new_tokens,
            temperature=0.0,
        )
        for row, row_mask in zip(rollout.completion_ids, rollout.completion_mask, strict=True):
            texts.append(tokenizer.decode(row[row_mask.bool()]))
    model.train(was_training)
    return texts


def greedy_accuracy(
    model: nn.Module,
    tokenizer: Tokenizer,
    task: Task,
    problems: Sequence[Problem],
    max_new_tokens: int | None = None,
    batch_size: int = 256,
) -> float:
    """Fraction of ``problems`` whose greedy completion the task's correctness reward scores
    1. ``max_new_tokens`` defaults to the longest reference solution plus 8 tokens."""
    if not problems:
        raise ValueError("greedy_accuracy needs at least one problem, got none")
    if max_new_tokens is None:
        longest = max(len(tokenizer.encode(p["solution"], add_eos=True)) for p in problems)
        max_new_tokens = longest + 8
    completions = greedy_completions(
        model, tokenizer, [p["prompt"] for p in problems], max_new_tokens, batch_size
    )
    scores = task.score(problems, completions)
    return sum(scores) / len(scores)
