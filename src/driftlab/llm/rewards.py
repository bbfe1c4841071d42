"""Verifiable rewards: plain callables, parsed and never executed.

The calling convention is TRL's (``GRPOTrainer(reward_funcs=...)``): a reward function is
``f(prompts, completions, **task_fields) -> list[float | None]``, where ``completions`` are
decoded strings and every task field (``target``, ``numbers``, ...) comes as a list aligned
with them. ``None`` means the function abstains on that completion (a field it needs is
missing); a malformed completion gets ``0.0``, never an exception.

- :func:`format_reward`: 1 when the completion ends in exactly one well-formed
  ``<answer>...</answer>``.
- :func:`answer_reward`: 1 when the answer is the integer ``target`` (addition,
  multiplication).
- :func:`countdown_reward`: 1 when the answer is an expression that uses each of ``numbers``
  exactly once and equals ``target``. This is the rule of TinyZero's Countdown reward
  (``validate_equation``: the sorted numbers of the equation equal the sorted given numbers),
  checked here with the safe parser of :mod:`driftlab.llm.expression` instead of ``eval``.
- :func:`correctness_reward`: either of the two above per completion, Countdown when the row
  has ``numbers``; so one function scores a batch that mixes tasks.
- :func:`combine_rewards`: a weighted sum of reward functions in which abstentions are
  skipped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from driftlab.llm.expression import ExpressionError, parse_expression
from driftlab.llm.tokenizer import ANSWER_CLOSE, ANSWER_OPEN

RewardFunction = Callable[..., list[float | None]]

# One answer, at the end (trailing whitespace allowed), with no tag inside it.
_ANSWER = re.compile(
    re.escape(ANSWER_OPEN)
    + r"((?:(?!"
    + re.escape(ANSWER_OPEN)
    + "|"
    + re.escape(ANSWER_CLOSE)
    + r").)*)"
    + re.escape(ANSWER_CLOSE)
    + r"\s*\Z",
    re.DOTALL,
)
_INTEGER = re.compile(r"\s*(-?(?:0|[1-9]\d{0,30}))\s*")


def extract_answer(completion: str) -> str | None:
    """The text inside the completion's single final ``<answer>`` tag, else ``None``.

    Well formed means: exactly one opening and one closing tag, in that order, nothing but
    whitespace after the closing tag, and non-blank content.
    """
    if completion.count(ANSWER_OPEN) != 1 or completion.count(ANSWER_CLOSE) != 1:
        return None
    match = _ANSWER.search(completion)
    if match is None or not match.group(1).strip():
        return None
    return match.group(1)


def _field(fields: dict[str, Any], name: str, n: int) -> list[Any]:
    values = fields.get(name)
    if values is None:
        return [None] * n
    if len(values) != n:
        raise ValueError(f"task field {name!r} has {len(values)} values for {n} completions")
    return list(values)


def format_reward(
    prompts: Sequence[str], completions: Sequence[str], **task_fields: Any
) -> list[float | None]:
    """1.0 for a completion with one well-formed final ``<answer>`` tag, else 0.0."""
    return [1.0 if extract_answer(c) is not None else 0.0 for c in completions]


def _integer_score(answer: str | None, target: Any) -> float:
    if answer is None:
        return 0.0
    match = _INTEGER.fullmatch(answer)
    return 1.0 if match is not None and int(match.group(1)) == int(target) else 0.0


def _countdown_score(answer: str | None, numbers: Sequence[int], target: Any) -> float:
    if answer is None:
        return 0.0
    try:
        expression = parse_expression(answer)
    except ExpressionError:
        return 0.0
    # TinyZero's rule: every given number used exactly once (compared as sorted multisets).
    if sorted(expression.numbers) != sorted(int(x) for x in numbers):
        return 0.0
    return 1.0 if expression.value == int(target) else 0.0


def answer_reward(
    prompts: Sequence[str],
    completions: Sequence[str],
    target: Sequence[Any] | None = None,
    **task_fields: Any,
) -> list[float | None]:
    """1.0 when the answer is exactly the integer ``target``; abstains without a target."""
    targets = _field({"target": target}, "target", len(completions))
    return [
        None if t is None else _integer_score(extract_answer(c), t)
        for c, t in zip(completions, targets, strict=True)
    ]


def countdown_reward(
    prompts: Sequence[str],
    completions: Sequence[str],
    target: Sequence[Any] | None = None,
    numbers: Sequence[Sequence[int]] | None = None,
    **task_fields: Any,
) -> list[float | None]:
    """1.0 when the answer uses each of ``numbers`` exactly once and equals ``target``.

    Abstains on rows without ``target`` or ``numbers``.
    """
    fields = {"target": target, "numbers": numbers}
    targets = _field(fields, "target", len(completions))
    number_lists = _field(fields, "numbers", len(completions))
    return [
        None if t is None or ns is None else _countdown_score(extract_answer(c), ns, t)
        for c, t, ns in zip(completions, targets, number_lists, strict=True)
    ]


def correctness_reward(
    prompts: Sequence[str],
    completions: Sequence[str],
    target: Sequence[Any] | None = None,
    numbers: Sequence[Sequence[int] | None] | None = None,
    **task_fields: Any,
) -> list[float | None]:
    """:func:`countdown_reward` on rows with ``numbers``, :func:`answer_reward` on the others."""
    fields = {"target": target, "numbers": numbers}
    targets = _field(fields, "target", len(completions))
    number_lists = _field(fields, "numbers", len(completions))
    scores: list[float | None] = []
    for completion, t, ns in zip(completions, targets, number_lists, strict=True):
        if t is None:
            scores.append(None)
        elif ns is None:
            scores.append(_integer_score(extract_answer(completion), t))
        else:
            scores.append(_countdown_score(extract_answer(completion), ns, t))
    return scores


def combine_rewards(
    funcs: Sequence[RewardFunction], weights: Sequence[float] | None = None
) -> RewardFunction:
    """One reward function: ``sum_k w_k f_k`` over the functions that do not abstain.

    As TRL's ``GRPOTrainer`` does with ``reward_weights`` (a ``nansum``), an abstaining
    function adds nothing and the others are not renormalised. A completion on which every
    function abstains gets ``None``. ``weights`` default to 1.
    """
    funcs = list(funcs)
    if not funcs:
        raise ValueError("combine_rewards needs at least one reward function, got none")
    weights = [1.0] * len(funcs) if weights is None else list(weights)
    if len(weights) != len(funcs):
        raise ValueError(f"got {len(weights)} weights for {len(funcs)} reward functions")
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w):
            raise ValueError(f"weights[{i}] must be a finite number, got {w!r}")

    def combined(
        prompts: Sequence[str], completions: Sequence[str], **task_fields: Any
    ) -> list[float | None]:
        totals: list[float | None] = [None] * len(completions)
        for func, weight in zip(funcs, weights, strict=True):
            scores = func(prompts, completions, **task_fields)
            if len(scores) != len(completions):
                raise ValueError(
                    f"reward function {getattr(func, '__name__', func)!r} returned "
                    f"{len(scores)} scores for {len(completions)} completions"
                )
            for i, score in enumerate(scores):
                if score is not None:
                    totals[i] = (totals[i] or 0.0) + weight * float(score)
        return totals

    combined.__name__ = "combined(" + ", ".join(getattr(f, "__name__", "f") for f in funcs) + ")"
    return combined
