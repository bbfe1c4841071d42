"""The Kimi k1.5 length reward (sec. 2.3.3): how much shorter correct answers get, at what cost.

For each seed, the SFT-warmed model of ``benchmarks/llm_learning.py`` is trained twice with
Kimi (its ``PRESETS["llm_learning"]`` settings), for the same number of iterations and the
same randomness: once without the length reward (``length_weight=0``) and once with it
(``--weight``, after ``--warmup`` iterations). Held-out greedy completions are then scored:
accuracy, and the mean length in tokens (``<eos>`` included) of the *correct* ones.

Prints one JSON line per seed and appends it to ``benchmarks/results/kimi_length_reward.jsonl``.
Usage: ``python benchmarks/kimi_length_reward.py --seeds 0 1 2 --steps 200 --weight 0.5
--warmup 50``.

Measured (3 seeds, 200 iterations, weight 0.5 after 50), against the run without: correct
answers 0.8% longer, 0.6% and 4.0% shorter, with accuracy +7, -1 and -14 points; far from
the issue's 20% shorter for at most 2 points lost. A likely reason: the warm-up taught one deterministic step-by-step format, so the
correct answers to a problem all have the same length unless the policy samples a different
format, and the length reward then separates mainly the wrong answers of a group (long,
malformed ones get ``min(0, lambda) < 0``): it shortened all answers (mean length 22.3 ->
18.3 on seed 2) far more than the correct ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results" / "kimi_length_reward.jsonl"


def greedy_report(trainer: Any) -> dict[str, float]:
    """Held-out greedy accuracy and the mean token length of correct and of all answers."""
    from driftlab.llm.sft import greedy_completions

    problems = trainer.eval_problems
    completions = greedy_completions(
        trainer.policy,
        trainer.tokenizer,
        [p["prompt"] for p in problems],
        trainer.config.max_new_tokens,
    )
    correct = trainer.task.score(problems, completions)
    lengths = [len(trainer.tokenizer.encode(c, add_eos=True)) for c in completions]
    right = [n for n, c in zip(lengths, correct, strict=True) if c == 1.0]
    return {
        "accuracy": round(sum(correct) / len(correct), 4),
        "correct_length": round(sum(right) / max(len(right), 1), 3),
        "length": round(sum(lengths) / len(lengths), 3),
    }


def train(seed: int, steps: int, overrides: dict[str, Any]) -> tuple[dict, float]:
    import torch

    from driftlab.llm.kimi import PRESETS, KimiConfig, KimiTrainer
    from llm_learning import COMMON, warm_model

    torch.set_num_threads(1)
    model, tokenizer, task, _ = warm_model(seed)
    settings = {**COMMON, **PRESETS["llm_learning"], "seed": seed, "steps": steps, **overrides}
    torch.manual_seed(seed)
    trainer = KimiTrainer(model, tokenizer, KimiConfig.from_dict(settings), task=task)
    start = time.perf_counter()
    trainer.train(show_progress=False)
    return greedy_report(trainer), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--weight", type=float, default=None, help="default: the preset's")
    parser.add_argument("--warmup", type=int, default=None, help="default: the preset's")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    from driftlab.llm.kimi import PRESETS
    from llm_learning import warm_model

    preset = PRESETS["llm_learning"]
    weight = preset.get("length_weight", 0.0) if args.weight is None else args.weight
    warmup = preset.get("length_warmup_steps", 0) if args.warmup is None else args.warmup
    if weight <= 0:
        raise SystemExit("--weight must be > 0 (the preset has no length reward)")
    for seed in args.seeds:
        warm_model(seed)  # trains and caches the SFT model once for both runs
        without, s0 = train(seed, args.steps, {"length_weight": 0.0})
        with_, s1 = train(
            seed, args.steps, {"length_weight": weight, "length_warmup_steps": warmup}
        )
        shorter = 1 - with_["correct_length"] / without["correct_length"]
        record = {
            "benchmark": "kimi_length_reward",
            "seed": seed,
            "steps": args.steps,
            "length_weight": weight,
            "length_warmup_steps": warmup,
            "without": without,
            "with": with_,
            "correct_shorter_pct": round(100 * shorter, 1),
            "accuracy_cost_points": round(100 * (without["accuracy"] - with_["accuracy"]), 1),
            "train_s": [round(s0, 1), round(s1, 1)],
        }
        line = json.dumps(record)
        print(line, flush=True)
        if not args.no_save:
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            with RESULTS.open("a", encoding="utf-8") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
