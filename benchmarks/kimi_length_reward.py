"""The Kimi k1.5 length reward (sec. 2.3.3): how much shorter correct answers get, at what cost.

The length reward is meant to shorten *overlong* reasoning: among a group's correct answers
it favours the shorter ones. That needs a policy whose correct answers to one problem come
in different lengths; a model warmed up on one deterministic chain-of-thought format gives
every correct answer the same length, and the reward can then only shorten the wrong ones
(measured that way, 200 iterations, weight 0.5 after 50: correct answers 0.8% longer, 0.6%
and 4.0% shorter). So the warm-up here is a mixture, ``MIXTURE``:

- the SFT data are ``SFT_PROBLEMS`` training problems of 1-2 digit addition, each once
  with the concise reference solution (the column lines, then the tagged answer) and
  ``VERBOSE_COPIES`` = 2 times with a verbose one that writes the column lines a second
  time, a redundant verification pass, before the answer (``"1+5+0=6\\n9+0+0=9\\n"``
  twice, then ``<answer>96</answer>``): 21 against 37 tokens on that problem. Both forms are equally
  solvable (the second pass is a copy), so the policy samples both and both are right
  about as often; the length reward can move it to the concise one. Verbose is the
  majority, as overthinking is the habit of the long-CoT models the paper shortens: with a
  1:1 mixture the SFT models (1500 steps, seeds 0-2) already answered greedily in the
  verbose form only 28-36% of the time (sampled: 45-48%), at 99-99.5% held-out accuracy.
- a bare tagged answer (``chain_of_thought=False``) as the short form was tried first and
  set aside: SFT on a 1:1 mixture of bare and chain-of-thought solutions (4000 problems,
  batch 64, lr 3e-3, seed 0) left the bare answers right only 61-79% of the time after
  1750-3000 steps, against 89-99% with the column lines (lr 1e-2: 13-65%), so moving the
  policy to the short form would cost accuracy by construction.

The model (``MODEL``: ``benchmarks/llm_learning.py``'s 2-layer d=64 transformer, with room
for the verbose form) is trained by SFT for ``SFT["steps"]`` steps, cached per seed. Then
for each seed it is trained twice with Kimi (``PRESETS["llm_learning"]`` of
:mod:`driftlab.llm.kimi`, ``max_new_tokens`` raised to ``MAX_NEW_TOKENS``, the learning
rate ``--lr``, default 1e-4, the config's default), for the same
number of iterations and the same randomness: once without the length reward
(``length_weight=0``) and once with it (``--weight``, after ``--warmup`` iterations, the
paper's "standard policy optimization without length penalty, followed by a constant length
penalty"). Held-out greedy completions are then scored: accuracy, the mean length in tokens
(``<eos>`` included) of the *correct* ones and of all, and the fraction in the verbose form.

Why not the preset's lr 5e-4 (tuned to raise a 30% model): from these 97.5-99.5% SFT
models it drifted, with or without the length reward (likely: most groups are all correct, and
AdamW's steps keep their size on what little signal is left). Measured that way (200
iterations, weight 0.5 after 50, seeds 0, 1, 2): held-out accuracy 0.99, 0.995, 0.975
after SFT fell to 0.69, 0.82, 0.765 without the length reward and 0.77, 0.89, 0.51 with it;
the verbose share of correct answers went from 0.90, 0.84, 0.88 to 0.007, 0.48, 0.007
without and 0, 0.006, 0 with, so correct answers were 2.1%, 42.9% and -0.8% shorter with
the reward than without, at -8, -7 and +25.5 points: the policy left the verbose form by
itself on two seeds.

Measured with lr 1e-4 (200 iterations, weight 0.5 after 50, seeds 0, 1, 2; about 80 + 60 s
of training per seed, three seeds at once on 2 cores): held-out accuracy without -> with
0.99 -> 0.995, 0.985 -> 0.995, 1.0 -> 0.96; verbose share of correct answers 0.56, 0.59,
0.59 without and 0.005 with; correct answers 30.1%, 31.0% and 30.8% shorter (31.6 -> 22.1,
32.1 -> 22.1, 31.9 -> 22.1 tokens) at -0.5, -1.0 and +4.0 points: seed 2 lost 8 of the 200
held-out problems.

Hence the default weight 0.25, half of that: the reward's push to the concise form is still
decisive (the verbose share of correct answers falls to 0.005 all the same) and each step
moves the policy less. Measured (200 iterations, weight 0.25 after 50, lr 1e-4): seeds 0-5
all meet the issue's goal (>= 20% shorter for <= 2 points): correct answers 30.1%, 31.0%,
30.8%, 37.4%, 26.5% and 29.1% shorter at -1.0, -0.5, 0.0, +1.5, -1.0 and 0.0 points.

Prints one JSON line per seed and appends it to ``benchmarks/results/kimi_length_reward.jsonl``.
Usage: ``python benchmarks/kimi_length_reward.py --seeds 0 1 2 --steps 200 --weight 0.25
--warmup 50 --lr 1e-4``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results" / "kimi_length_reward.jsonl"

TASK_OPTIONS = {"digits": 2}
MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 64}
SFT = {"steps": 1500, "batch_size": 64, "lr": 3e-3, "warmup_steps": 20, "min_lr_ratio": 0.1}
SFT_PROBLEMS = 4000
MAX_NEW_TOKENS = 48
VERBOSE_COPIES = 2  # verbose : concise = 2 : 1 in the SFT data
MIXTURE = "1-2 digit addition, verbose (column lines twice) : concise solutions = 2:1"


def verbose(solution: str) -> str:
    """The verbose form of a concise reference solution: its column lines written twice."""
    head, tag, tail = solution.partition("<answer>")
    return head + head + tag + tail


def is_verbose(completion: str) -> bool:
    """Whether a completion's lines before the answer are one block written twice."""
    lines = completion.partition("<answer>")[0].splitlines()
    half = len(lines) // 2
    return bool(lines) and len(lines) % 2 == 0 and lines[:half] == lines[half:]


def warm_model(seed: int):
    """The SFT model of ``seed`` on the concise/verbose mixture (cached), tokenizer, task."""
    import torch

    from driftlab.llm.model import TransformerConfig, TransformerLM, load_model, save_model
    from driftlab.llm.sft import SFTConfig, sft
    from driftlab.llm.tasks import get_task
    from driftlab.llm.tokenizer import CharTokenizer

    tokenizer = CharTokenizer()
    task = get_task("addition", **TASK_OPTIONS)
    key = json.dumps(
        [MIXTURE, VERBOSE_COPIES, TASK_OPTIONS, MODEL, SFT, SFT_PROBLEMS, seed], sort_keys=True
    )
    digest = hashlib.blake2b(key.encode(), digest_size=6).hexdigest()
    path = Path(tempfile.gettempdir()) / "driftlab_kimi_length" / f"sft_{digest}"
    if path.with_suffix(".json").exists():
        return load_model(path), tokenizer, task
    problems = task.problems(SFT_PROBLEMS, "train", seed)
    long_form = [{**p, "solution": verbose(p["solution"])} for p in problems]
    mixture = problems + VERBOSE_COPIES * long_form
    torch.manual_seed(seed)
    model = TransformerLM(TransformerConfig(vocab_size=tokenizer.vocab_size, **MODEL))
    sft(model, tokenizer, task, SFTConfig(seed=seed, **SFT), problems=mixture)
    save_model(path, model)
    return model.eval(), tokenizer, task


def greedy_report(policy: Any, tokenizer: Any, task: Any, problems: list) -> dict[str, float]:
    """Held-out greedy accuracy, the mean token length of correct and of all answers, and
    the fraction of answers (all, correct) in the verbose form."""
    from driftlab.llm.sft import greedy_completions

    completions = greedy_completions(
        policy, tokenizer, [p["prompt"] for p in problems], MAX_NEW_TOKENS
    )
    correct = task.score(problems, completions)
    lengths = [len(tokenizer.encode(c, add_eos=True)) for c in completions]
    right = [n for n, c in zip(lengths, correct, strict=True) if c == 1.0]
    forms = [is_verbose(c) for c in completions]
    right_forms = [v for v, c in zip(forms, correct, strict=True) if c == 1.0]
    return {
        "accuracy": round(sum(correct) / len(correct), 4),
        "correct_length": round(sum(right) / max(len(right), 1), 3),
        "length": round(sum(lengths) / len(lengths), 3),
        "verbose_fraction": round(sum(forms) / len(forms), 4),
        "correct_verbose_fraction": round(sum(right_forms) / max(len(right_forms), 1), 4),
    }


def train(seed: int, steps: int, lr: float, overrides: dict[str, Any]) -> tuple[dict, float]:
    import torch

    from driftlab.llm.kimi import PRESETS, KimiConfig, KimiTrainer

    torch.set_num_threads(1)
    model, tokenizer, task = warm_model(seed)
    settings = {
        "task": "addition",
        "task_options": TASK_OPTIONS,
        "eval_size": 200,
        **PRESETS["llm_learning"],
        "max_new_tokens": MAX_NEW_TOKENS,
        "lr": lr,
        "seed": seed,
        "steps": steps,
        **overrides,
    }
    torch.manual_seed(seed)
    trainer = KimiTrainer(model, tokenizer, KimiConfig.from_dict(settings), task=task)
    start = time.perf_counter()
    trainer.train(show_progress=False)
    seconds = time.perf_counter() - start
    return greedy_report(trainer.policy, tokenizer, task, trainer.eval_problems), seconds


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--weight", type=float, default=0.25)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-4, help="Kimi's learning rate")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.weight <= 0:
        raise SystemExit(f"--weight must be > 0, got {args.weight}")
    torch.set_num_threads(1)
    for seed in args.seeds:
        model, tokenizer, task = warm_model(seed)  # trained once, cached for both runs
        held_out = task.problems(200, "test", seed=0, allow_fewer=True)
        warm = greedy_report(model, tokenizer, task, held_out)
        without, s0 = train(seed, args.steps, args.lr, {"length_weight": 0.0})
        with_, s1 = train(
            seed,
            args.steps,
            args.lr,
            {"length_weight": args.weight, "length_warmup_steps": args.warmup},
        )
        shorter = 1 - with_["correct_length"] / without["correct_length"]
        record = {
            "benchmark": "kimi_length_reward",
            "seed": seed,
            "warmup_mixture": MIXTURE,
            "steps": args.steps,
            "lr": args.lr,
            "length_weight": args.weight,
            "length_warmup_steps": args.warmup,
            "sft": warm,
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


def markdown(records: list[dict]) -> str:
    """The README table: the latest record per seed, and whether the issue's goal is met."""
    latest = {r["seed"]: r for r in records}
    mixtures = sorted({r.get("warmup_mixture", "chain of thought only") for r in latest.values()})
    lines = [
        f"Warm-up (SFT): {'; '.join(mixtures)}.",
        "",
        "| seed | iterations (length reward from, weight; lr) | accuracy: SFT; without -> with "
        "| correct length without -> with (tokens) | verbose share of correct: SFT; without "
        "-> with | correct answers shorter | accuracy cost (points) | goal (>= 20%, <= 2) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seed in sorted(latest):
        r = latest[seed]
        a, b, w = r["without"], r["with"], r.get("sft", {})
        met = r["correct_shorter_pct"] >= 20 and r["accuracy_cost_points"] <= 2
        share = (
            f"{w['correct_verbose_fraction']:.2f}; {a['correct_verbose_fraction']:.2f} -> "
            f"{b['correct_verbose_fraction']:.2f}"
            if "correct_verbose_fraction" in a
            else "-"
        )
        warm = f"{w['accuracy']:.3f}; " if "accuracy" in w else ""
        lines.append(
            f"| {seed} | {r['steps']} ({r['length_warmup_steps']}, {r['length_weight']}; "
            f"{r.get('lr', 5e-4):g}) "
            f"| {warm}{a['accuracy']:.3f} -> {b['accuracy']:.3f} "
            f"| {a['correct_length']:.1f} -> {b['correct_length']:.1f} | {share} "
            f"| {r['correct_shorter_pct']:+.1f}% | {r['accuracy_cost_points']:+.1f} "
            f"| {'met' if met else 'not met'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
