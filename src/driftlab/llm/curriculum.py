"""Which training problems an RL iteration sees: curriculum and prioritised sampling.

Kimi k1.5 (Kimi Team 2025, sec. 2.3.4 "Sampling Strategies") uses two strategies together:

- **Curriculum sampling**: start on easier problems and move to harder ones. Here the levels
  are task option sets ordered easy to hard (e.g. addition ``digits`` 1, 2, 3 or Countdown
  ``count`` 3, 4); each has a fixed pool of training problems. The rule to move on, checked
  after every iteration: the mean training accuracy of the last ``window`` iterations at the
  current level reaches ``threshold`` (the window must be full), *or* the level has been
  trained on for ``every`` iterations (a fixed schedule; ``None`` turns it off). The last level
  is kept to the end.
- **Prioritised sampling**: track each problem's success rate ``s_i`` and draw problem ``i``
  with probability proportional to ``1 - s_i``, so the model practises what it fails at.
  ``s_i`` is the fraction of correct answers over every completion sampled for the problem so
  far; a problem never seen has ``s_i = 0``. The weight is ``max(1 - s_i, floor)``: with
  ``floor > 0`` a solved problem keeps a small chance (and a pool that is all solved still
  has a distribution). Draws are with replacement, so the probabilities are exactly the
  normalised weights.

The draw of iteration ``step`` uses a generator seeded from ``(seed, step)``, so the sampler's
state is only its statistics (success counts, level, accuracy window): that state, saved with
the trainer, makes a resumed run draw the same problems as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from driftlab.core.config import check_in_range, check_int
from driftlab.llm.tasks import Problem, Task


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for iteration ``step``, independent of every other iteration's (the
    triple is mixed by a fixed odd multiplier so nearby seeds and steps do not collide)."""
    mixed = (seed * 1_000_003 + step) * 7_919 + stream
    return torch.Generator().manual_seed(mixed % (2**63 - 1))


class ProblemSampler:
    """Curriculum plus prioritised sampling over fixed pools of training problems.

    ``levels`` are tasks ordered easy to hard; level ``l``'s pool is
    ``levels[l].problems(pool_size, "train", seed, allow_fewer=True)``. A problem met in
    several levels' pools (the same prompt) has one success record.
    """

    def __init__(
        self,
        levels: Sequence[Task],
        *,
        pool_size: int = 1000,
        seed: int = 0,
        prioritized: bool = True,
        floor: float = 0.05,
        threshold: float = 0.8,
        window: int = 5,
        every: int | None = None,
    ) -> None:
        if not levels:
            raise ValueError("levels must hold at least one task")
        check_int("pool_size", pool_size, minimum=1)
        check_int("seed", seed)
        check_in_range("floor", floor, 0.0, 1.0)
        check_in_range("threshold", threshold, 0.0, 1.0)
        check_int("window", window, minimum=1)
        if every is not None:
            check_int("every", every, minimum=1)
        self.seed, self.prioritized, self.floor = seed, prioritized, floor
        self.threshold, self.window, self.every = threshold, window, every
        self.problems: list[Problem] = []
        index_of: dict[str, int] = {}
        self.members: list[list[int]] = []
        for task in levels:
            members = []
            for problem in task.problems(pool_size, "train", seed=seed, allow_fewer=True):
                if problem["prompt"] not in index_of:
                    index_of[problem["prompt"]] = len(self.problems)
                    self.problems.append(problem)
                members.append(index_of[problem["prompt"]])
            if not members:
                raise ValueError(f"curriculum level {len(self.members)} has no training problem")
            self.members.append(members)
        self._index_of = index_of
        self.attempts = torch.zeros(len(self.problems), dtype=torch.float64)
        self.successes = torch.zeros(len(self.problems), dtype=torch.float64)
        self.level = 0
        self.level_steps = 0
        self.recent: list[float] = []

    @property
    def num_levels(self) -> int:
        return len(self.members)

    def success_rates(self) -> torch.Tensor:
        """``s_i`` of every pooled problem (0 for a problem never attempted)."""
        return self.successes / self.attempts.clamp(min=1.0)

    def probabilities(self) -> torch.Tensor:
        """The draw probabilities over the current level's pool (aligned with
        ``members[level]``): ``max(1 - s_i, floor)`` normalised, or uniform when not
        prioritised."""
        members = torch.tensor(self.members[self.level])
        if self.prioritized:
            weights = (1.0 - self.success_rates()[members]).clamp(min=self.floor)
            if float(weights.sum()) <= 0.0:  # floor 0 and every problem solved
                weights = torch.ones_like(weights)
        else:
            weights = torch.ones(len(members), dtype=torch.float64)
        return weights / weights.sum()

    def sample(self, n: int, step: int) -> list[Problem]:
        """``n`` problems for iteration ``step`` (with replacement), from the current level."""
        check_int("n", n, minimum=0)
        if n == 0:
            return []
        draws = torch.multinomial(
            self.probabilities(), n, replacement=True, generator=step_generator(self.seed, step)
        )
        members = self.members[self.level]
        return [self.problems[members[int(i)]] for i in draws]

    def update(self, problems: Sequence[Problem], correct: Sequence[Sequence[float]]) -> None:
        """Record one iteration: ``correct[g]`` are the 0/1 outcomes of the completions of
        ``problems[g]``. Updates the success rates, then applies the curriculum rule."""
        if len(problems) != len(correct):
            raise ValueError(f"{len(problems)} problems but {len(correct)} outcome groups")
        total, right = 0, 0.0
        for problem, outcomes in zip(problems, correct, strict=True):
            index = self._index_of.get(problem["prompt"])
            outcomes = [float(c) for c in outcomes]
            total, right = total + len(outcomes), right + sum(outcomes)
            if index is not None:  # a problem from outside the pools (given by hand) is skipped
                self.attempts[index] += len(outcomes)
                self.successes[index] += sum(outcomes)
        if total == 0:
            return
        self.level_steps += 1
        self.recent = [*self.recent, right / total][-self.window :]
        if self.level + 1 < self.num_levels and self._advance():
            self.level += 1
            self.level_steps = 0
            self.recent = []

    def _advance(self) -> bool:
        full = len(self.recent) == self.window
        passed = full and sum(self.recent) / self.window >= self.threshold
        scheduled = self.every is not None and self.level_steps >= self.every
        return passed or scheduled

    def state_dict(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts.clone(),
            "successes": self.successes.clone(),
            "level": self.level,
            "level_steps": self.level_steps,
            "recent": list(self.recent),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["attempts"].shape) != tuple(self.attempts.shape):
            raise ValueError(
                f"sampler state holds {state['attempts'].shape[0]} problems, this pool "
                f"{self.attempts.shape[0]}: the task, pool_size or seed differ"
            )
        self.attempts = state["attempts"].to(torch.float64).clone()
        self.successes = state["successes"].to(torch.float64).clone()
        self.level = int(state["level"])
        self.level_steps = int(state["level_steps"])
        self.recent = [float(x) for x in state["recent"]]
