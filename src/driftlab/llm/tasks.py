"""Verifiable tasks: problems, prompts, reference chain-of-thought solutions, rewards.

Every task is chosen by name with :func:`get_task` (``"addition"``, ``"multiplication"``,
``"countdown"``) and gives problems as dicts with

- ``prompt``: the text the policy continues (one line, then a newline);
- ``solution``: a reference completion, a step-by-step derivation ending in
  ``<answer>...</answer>`` (what supervised warm-up trains on);
- ``answer``: the text inside the tag; ``target`` (and ``numbers`` for Countdown): the fields
  the rewards read, passed to them as TRL passes dataset columns.

Train and test splits never overlap and do not depend on how many problems are drawn: a
problem belongs to the test split when a hash of its canonical key (``split_seed``, the task
name and the problem with commuted operands sorted, so ``3+4`` and ``4+3`` fall together) is
below ``test_fraction``. Sampling a split is then rejection sampling with a seeded
``random.Random``.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from driftlab.core.config import check_choice, check_in_range, check_int
from driftlab.llm.expression import parse_expression
from driftlab.llm.rewards import RewardFunction, answer_reward, countdown_reward, format_reward
from driftlab.llm.tokenizer import ANSWER_CLOSE, ANSWER_OPEN

Problem = dict[str, Any]
SPLITS = ("train", "test")


def _tagged(answer: str) -> str:
    return f"{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


@dataclass(frozen=True, kw_only=True)
class Task(ABC):
    """Base of the tasks: splitting, seeded sampling and the reward interface.

    A task implements ``_draw(rng)`` (a random problem's defining fields), ``_key`` (its
    canonical identity) and ``_complete`` (prompt, solution, answer, target).
    """

    name: ClassVar[str] = ""
    reward_fields: ClassVar[tuple[str, ...]] = ("target",)

    test_fraction: float = 0.1
    split_seed: int = 0
    chain_of_thought: bool = True

    def __post_init__(self) -> None:
        check_in_range("test_fraction", self.test_fraction, 0.0, 1.0)
        check_int("split_seed", self.split_seed)

    def _solution(self, steps: Sequence[str], answer: str) -> str:
        """The reference completion: the steps, one a line, then the tagged answer; only the
        tagged answer when ``chain_of_thought`` is off."""
        lines = "".join(line + "\n" for line in steps) if self.chain_of_thought else ""
        return lines + _tagged(answer)

    # -- what each task defines ---------------------------------------------------------------
    @abstractmethod
    def _draw(self, rng: random.Random) -> Problem: ...

    @abstractmethod
    def _key(self, problem: Problem) -> str: ...

    @abstractmethod
    def _complete(self, problem: Problem) -> Problem | None:
        """The full problem dict, or ``None`` to reject the draw (an unsolvable one)."""
        ...

    @property
    @abstractmethod
    def reward_functions(self) -> list[RewardFunction]:
        """The task's reward functions: correctness first, then format."""
        ...

    # -- shared mechanics ---------------------------------------------------------------------
    def split_of(self, problem: Problem) -> str:
        """``"test"`` or ``"train"``, fixed by the problem's key and ``split_seed``."""
        text = f"{self.split_seed}|{self.name}|{self._key(problem)}".encode()
        digest = hashlib.blake2b(text, digest_size=8).digest()
        return "test" if int.from_bytes(digest, "big") / 2**64 < self.test_fraction else "train"

    def problems(
        self, n: int, split: str = "train", seed: int = 0, allow_fewer: bool = False
    ) -> list[Problem]:
        """``n`` distinct problems of ``split``, the same list for the same ``seed``.

        When the split seems to hold fewer than ``n`` distinct problems (small difficulty
        levels have few; ``200 n + 10000`` draws found no more), this raises, or with
        ``allow_fewer`` returns those found.
        """
        check_int("n", n, minimum=0)
        check_choice("split", split, SPLITS)
        rng = random.Random(f"{self.name}|{split}|{seed}")
        found: dict[str, Problem] = {}
        attempts, limit = 0, 200 * n + 10_000
        while len(found) < n:
            attempts += 1
            if attempts > limit:
                if allow_fewer:
                    break
                raise ValueError(
                    f"{self.name} {split} split: found only {len(found)} distinct problems in "
                    f"{limit} draws, fewer than n={n}; ask for fewer or raise the difficulty"
                )
            problem = self._draw(rng)
            key = self._key(problem)
            if key in found or self.split_of(problem) != split:
                continue
            completed = self._complete(problem)
            if completed is not None:
                found[key] = completed
        return list(found.values())

    def fields(self, problems: Sequence[Problem]) -> dict[str, list[Any]]:
        """The reward functions' keyword arguments: one list per field, aligned with
        ``problems`` (what TRL passes from the dataset's columns)."""
        return {name: [p.get(name) for p in problems] for name in self.reward_fields}

    def score(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[float]:
        """Correctness (the first reward function) of each completion, abstentions as 0."""
        prompts = [p["prompt"] for p in problems]
        scores = self.reward_functions[0](prompts, completions, **self.fields(problems))
        return [0.0 if s is None else float(s) for s in scores]


def _number(rng: random.Random, min_digits: int, max_digits: int) -> int:
    """A number whose digit count is uniform in ``[min_digits, max_digits]`` (0 has 1 digit)."""
    digits = rng.randint(min_digits, max_digits)
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


@dataclass(frozen=True, kw_only=True)
class _TwoOperandTask(Task, ABC):
    """``a op b`` with operands of ``min_digits`` to ``digits`` digits each."""

    symbol: ClassVar[str] = ""

    digits: int = 2
    min_digits: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("digits", self.digits, minimum=1)
        check_int("min_digits", self.min_digits, minimum=1)
        if self.min_digits > self.digits:
            raise ValueError(f"min_digits must be <= digits={self.digits}, got {self.min_digits}")

    def _draw(self, rng: random.Random) -> Problem:
        return {
            "a": _number(rng, self.min_digits, self.digits),
            "b": _number(rng, self.min_digits, self.digits),
        }

    def _key(self, problem: Problem) -> str:
        a, b = sorted((problem["a"], problem["b"]))
        return f"{a}{self.symbol}{b}"

    def _complete(self, problem: Problem) -> Problem:
        a, b = problem["a"], problem["b"]
        target = self._apply(a, b)
        steps = self._steps(a, b)
        return {
            "prompt": f"{a}{self.symbol}{b}=\n",
            "solution": self._solution(steps, str(target)),
            "answer": str(target),
            "target": target,
            "a": a,
            "b": b,
        }

    @abstractmethod
    def _apply(self, a: int, b: int) -> int: ...

    @abstractmethod
    def _steps(self, a: int, b: int) -> list[str]: ...

    @property
    def reward_functions(self) -> list[RewardFunction]:
        return [answer_reward, format_reward]


@dataclass(frozen=True, kw_only=True)
class Addition(_TwoOperandTask):
    """Addition, solved column by column from the units with carries.

    ``47+85`` gives the lines ``7+5+0=12`` and ``4+8+1=13``: each line adds the column's two
    digits (a missing digit is 0) and the incoming carry; the last digit of the sum is the
    result's digit and the leading one the next carry.
    """

    name: ClassVar[str] = "addition"
    symbol: ClassVar[str] = "+"

    def _apply(self, a: int, b: int) -> int:
        return a + b

    def _steps(self, a: int, b: int) -> list[str]:
        lines, carry = [], 0
        for column in range(max(len(str(a)), len(str(b)))):
            da, db = a // 10**column % 10, b // 10**column % 10
            total = da + db + carry
            lines.append(f"{da}+{db}+{carry}={total}")
            carry = total // 10
        return lines


@dataclass(frozen=True, kw_only=True)
class Multiplication(_TwoOperandTask):
    """Long multiplication: one partial product per digit of ``b`` (units first), then their
    running sum. ``47*15`` gives ``47*5=235``, ``47*10=470``, ``235+470=705``."""

    name: ClassVar[str] = "multiplication"
    symbol: ClassVar[str] = "*"

    def _apply(self, a: int, b: int) -> int:
        return a * b

    def _steps(self, a: int, b: int) -> list[str]:
        partials, lines = [], []
        for place, digit in enumerate(reversed(str(b))):
            factor = int(digit) * 10**place
            partials.append(a * factor)
            lines.append(f"{a}*{factor}={a * factor}")
        total = partials[0]
        for partial in partials[1:]:
            lines.append(f"{total}+{partial}={total + partial}")
            total += partial
        return lines


# --- Countdown ----------------------------------------------------------------------------------

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3


@dataclass(frozen=True)
class _Node:
    """An intermediate result of the search: its value and its expression text."""

    value: int
    text: str
    precedence: int


def _combine(left: _Node, op: str, right: _Node, value: int) -> _Node:
    """``left op right`` with only the parentheses the precedence rules need."""
    p = _PRECEDENCE[op]
    lt = f"({left.text})" if left.precedence < p else left.text
    wrap_right = right.precedence < p or (right.precedence == p and op in "-/")
    rt = f"({right.text})" if wrap_right else right.text
    return _Node(value, f"{lt}{op}{rt}", p)


def solve_countdown(numbers: Sequence[int], target: int) -> tuple[str, list[str]] | None:
    """An expression that uses every number exactly once and equals ``target``, with its
    steps (``"25-3=22"``), or ``None`` when there is none.

    Depth-first search over the pairs of remaining values, as the game is played: two
    values are replaced by their sum, product, positive difference or exact quotient, so
    every intermediate result is a positive integer (the classic Countdown rule; the reward
    itself accepts any exact rational arithmetic). Dead multisets are memoised.
    """
    dead: set[tuple[int, ...]] = set()

    def search(nodes: list[_Node], steps: list[str]) -> tuple[str, list[str]] | None:
        if len(nodes) == 1:
            return (nodes[0].text, steps) if nodes[0].value == target else None
        state = tuple(sorted(n.value for n in nodes))
        if state in dead:
            return None
        for i in range(len(nodes)):
            for j in range(i + 1, len(nodes)):
                x, y = nodes[i], nodes[j]
                if x.value < y.value:
                    x, y = y, x
                rest = [n for k, n in enumerate(nodes) if k not in (i, j)]
                candidates = [("+", x.value + y.value), ("*", x.value * y.value)]
                if x.value > y.value:
                    candidates.append(("-", x.value - y.value))
                if y.value > 0 and x.value % y.value == 0:
                    candidates.append(("/", x.value // y.value))
                for op, value in candidates:
                    step = f"{x.value}{op}{y.value}={value}"
                    found = search([*rest, _combine(x, op, y, value)], [*steps, step])
                    if found is not None:
                        return found
        dead.add(state)
        return None

    return search([_Node(n, str(n), _ATOM) for n in numbers], [])


@dataclass(frozen=True, kw_only=True)
class Countdown(Task):
    """Countdown (the TinyZero task): combine ``count`` numbers drawn from
    ``[1, max_number]``, each exactly once, with ``+ - * /`` and parentheses to reach a
    target drawn from ``[1, max_target]``. Only solvable problems are kept (a draw without a
    solution is rejected). The prompt is ``"3 7 25 50=100"``; the reference solution lists
    the steps its search found, then the expression."""

    name: ClassVar[str] = "countdown"
    reward_fields: ClassVar[tuple[str, ...]] = ("target", "numbers")

    count: int = 4
    max_number: int = 99
    max_target: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("count", self.count, minimum=2)
        check_int("max_number", self.max_number, minimum=1)
        check_int("max_target", self.max_target, minimum=1)

    def _draw(self, rng: random.Random) -> Problem:
        numbers = [rng.randint(1, self.max_number) for _ in range(self.count)]
        return {"numbers": numbers, "target": rng.randint(1, self.max_target)}

    def _key(self, problem: Problem) -> str:
        return f"{sorted(problem['numbers'])}={problem['target']}"

    def _complete(self, problem: Problem) -> Problem | None:
        numbers, target = problem["numbers"], problem["target"]
        solved = solve_countdown(numbers, target)
        if solved is None:
            return None
        expression, steps = solved
        # The search builds its text alongside the values; the parser must agree with it.
        if parse_expression(expression).value != target:
            raise AssertionError(f"countdown solution {expression!r} does not equal {target}")
        return {
            "prompt": " ".join(str(n) for n in numbers) + f"={target}\n",
            "solution": self._solution(steps, expression),
            "answer": expression,
            "target": target,
            "numbers": list(numbers),
        }

    @property
    def reward_functions(self) -> list[RewardFunction]:
        return [countdown_reward, format_reward]


TASKS: dict[str, type[Task]] = {task.name: task for task in (Addition, Multiplication, Countdown)}


def get_task(name: str, **options: Any) -> Task:
    """The task called ``name`` with its difficulty ``options`` (e.g. ``digits=3``;
    Countdown: ``count``, ``max_number``, ``max_target``), plus ``test_fraction``,
    ``split_seed`` and ``chain_of_thought`` (off: the reference solution is the tagged answer
    alone)."""
    check_choice("task", name, TASKS)
    return TASKS[name](**options)
