"""RL for language models, learning on a CPU: supervised warm-up, then GRPO, PPO or Kimi k1.5.

A small :class:`~driftlab.llm.model.TransformerLM` is trained from scratch by SFT on the
reference chain-of-thought solutions of an addition task, in chunks of ``SFT["steps"]``
steps until its greedy accuracy on 200 *training* problems reaches ``SFT_TARGET`` (the step
at which a seed's model "clicks" varies a lot, 150 to 400 steps, so a fixed step count
would start the seeds anywhere from 20% to 85%), then by the algorithm for a wall-clock
budget. Held-out greedy accuracy (the test split, never trained on) is measured
before and after, and along the way for the learning curve. One torch thread per run.

The algorithm's settings are its config class's defaults with the preset
``PRESETS["llm_learning"]`` of its module on top (each algorithm tunes there), then the
``--set key=value`` overrides (values parsed as JSON when they parse, else strings).

Prints one JSON line per run and appends it to ``benchmarks/results/llm_learning.jsonl``.
Usage: ``python benchmarks/llm_learning.py --algo grpo --seed 0 [--set lr=3e-4 ...]``;
``--seeds 0 1 2`` runs several in turn. Without ``--algo`` (what ``run_all.py`` runs) every
algorithm runs on seeds 0, 1 and 2 at the budget of its README row (``BUDGETS``), two runs
at a time: about 75 minutes on 2 cores. The SFT model of each seed is cached in the
system's temporary directory, so reruns (and other algorithms) start from the same one.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "llm_learning.jsonl"

# The warm-up: 2-digit addition with chain of thought, a 2-layer d=64 model.
TASK = "addition"
TASK_OPTIONS = {"digits": 2}
MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 48}
SFT = {"steps": 25, "batch_size": 32, "lr": 1e-2, "warmup_steps": 5, "min_lr_ratio": 1.0}
SFT_TARGET = 0.3
SFT_MAX_CHUNKS = 24
# What every algorithm shares in this benchmark (a preset or --set may change it).
COMMON = {
    "task": TASK,
    "task_options": TASK_OPTIONS,
    "max_new_tokens": 28,
    "eval_size": 200,
    "steps": 10_000,  # the wall-clock budget stops the run first
}
# The budgets of the README's rows (the default run reproduces them): seconds per run.
BUDGETS = {"grpo": 1200.0, "ppo": 600.0, "kimi": 1200.0}
ALGOS = tuple(BUDGETS)
EVAL_EVERY_S = 60.0
GOAL_POINTS = 25.0


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``key=value`` strings as a dict; values are JSON when they parse, else strings."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def warm_model(seed: int):
    """The SFT-trained model of ``seed`` (cached), its tokenizer and task."""
    import torch

    from driftlab.llm.model import TransformerConfig, TransformerLM, load_model, save_model
    from driftlab.llm.sft import SFTConfig, greedy_accuracy, sft
    from driftlab.llm.tasks import get_task
    from driftlab.llm.tokenizer import CharTokenizer

    tokenizer = CharTokenizer()
    task = get_task(TASK, **TASK_OPTIONS)
    key = json.dumps([TASK, TASK_OPTIONS, MODEL, SFT, SFT_TARGET, seed], sort_keys=True)
    digest = hashlib.blake2b(key.encode(), digest_size=6).hexdigest()
    path = Path(tempfile.gettempdir()) / "driftlab_llm_learning" / f"sft_{digest}"
    if path.with_suffix(".json").exists():
        return load_model(path), tokenizer, task, 0.0
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = TransformerLM(TransformerConfig(vocab_size=tokenizer.vocab_size, **MODEL))
    check = task.problems(200, "train", seed=10_000 + seed)
    for chunk in range(SFT_MAX_CHUNKS):
        sft(model, tokenizer, task, SFTConfig(seed=seed * 1000 + chunk, **SFT))
        if greedy_accuracy(model, tokenizer, task, check) >= SFT_TARGET:
            break
    seconds = time.perf_counter() - start
    save_model(path, model)
    return model.eval(), tokenizer, task, seconds


def run(algo: str, seed: int, overrides: dict[str, Any], budget_s: float) -> dict:
    import torch

    from driftlab.llm.trainer import TRAINERS, get_trainer

    torch.set_num_threads(1)
    model, tokenizer, task, sft_s = warm_model(seed)
    trainer_cls = get_trainer(algo)
    preset = getattr(importlib.import_module(TRAINERS[algo][0]), "PRESETS", {})
    settings = {**COMMON, **preset.get("llm_learning", {}), "seed": seed, **overrides}
    config = trainer_cls.config_class.from_dict(settings)
    torch.manual_seed(seed)
    trainer = trainer_cls(model, tokenizer, config, task=task)
    before = trainer.evaluate()
    curve = [(0, 0.0, before["eval_accuracy"])]
    train_s, next_eval = 0.0, EVAL_EVERY_S
    metrics: list[dict] = []
    while trainer.step_count < config.steps and train_s < budget_s:
        start = time.perf_counter()
        metrics.extend(trainer.train(steps=1, show_progress=False))
        train_s += time.perf_counter() - start
        if train_s >= next_eval:
            curve.append(
                (trainer.step_count, round(train_s, 1), trainer.evaluate()["eval_accuracy"])
            )
            next_eval += EVAL_EVERY_S
    after = trainer.evaluate()
    if curve[-1][0] != trainer.step_count:
        curve.append((trainer.step_count, round(train_s, 1), after["eval_accuracy"]))
    gain = 100 * (after["eval_accuracy"] - before["eval_accuracy"])
    reached = next(
        (s for _, s, a in curve if 100 * (a - before["eval_accuracy"]) >= GOAL_POINTS), None
    )
    return {
        "benchmark": "llm_learning",
        "algo": algo,
        "seed": seed,
        "task": f"{TASK} {TASK_OPTIONS}",
        "overrides": overrides,
        "steps": trainer.step_count,
        "accuracy_before": before["eval_accuracy"],
        "accuracy_after": after["eval_accuracy"],
        "gain_points": round(gain, 1),
        "goal_reached_s": reached,
        "length_before": round(before["eval_length"], 2),
        "length_after": round(after["eval_length"], 2),
        "train_reward_last": round(
            statistics.mean(m["reward_mean"] for m in metrics[-10:]) if metrics else 0.0, 3
        ),
        "train_s": round(train_s, 1),
        "sft_s": round(sft_s, 1),
        "curve": curve,
        "samples": after["samples"][:2],
    }


def run_all_in_subprocesses(jobs: int) -> None:
    """Every algorithm on seeds 0, 1, 2 at its README budget, ``jobs`` runs at a time, each
    in its own process (one torch thread each); the records go to stdout."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    def one(algo: str, seed: int) -> str:
        command = [sys.executable, __file__, "--algo", algo, "--seed", str(seed), "--no-save"]
        command += ["--budget", str(BUDGETS[algo])]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        return next(line for line in done.stdout.splitlines() if line.startswith("{"))

    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(one, algo, seed) for algo in ALGOS for seed in (0, 1, 2)]
        for future in futures:
            print(future.result(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--algo",
        default=None,
        choices=ALGOS,
        help="one algorithm; without it, all three on seeds 0-2 at their README budgets",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--budget", type=float, default=None, help="training seconds per run")
    parser.add_argument("--jobs", type=int, default=2, help="parallel runs without --algo")
    parser.add_argument("--no-save", action="store_true", help="do not append to the results")
    args = parser.parse_args()
    if args.algo is None:
        run_all_in_subprocesses(args.jobs)
        return
    budget = BUDGETS[args.algo] if args.budget is None else args.budget
    seeds = args.seeds or [0 if args.seed is None else args.seed]
    overrides = parse_sets(args.set)
    for seed in seeds:
        record = run(args.algo, seed, overrides, budget)
        line = json.dumps(record)
        print(line, flush=True)
        print(
            f"{args.algo} seed {seed}: {record['accuracy_before']:.3f} -> "
            f"{record['accuracy_after']:.3f} ({record['gain_points']:+.1f} points, "
            f"{record['steps']} steps, {record['train_s']:.0f} s)",
            file=sys.stderr,
        )
        if not args.no_save:
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            with RESULTS.open("a", encoding="utf-8") as f:
                f.write(line + "\n")


def markdown(records: list[dict]) -> str:
    """The README table: the latest run per (algorithm, seed) without overrides."""
    latest: dict[tuple[str, int], dict] = {}
    for r in records:
        if not r.get("overrides"):
            latest[(r["algo"], r["seed"])] = r
    lines = [
        "| algorithm | task | seeds | greedy accuracy before -> after (per seed) "
        "| gain, points (mean) | +25 points reached at (s) | train s per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for algo in ("grpo", "ppo", "kimi"):
        runs = [latest[k] for k in sorted(latest) if k[0] == algo]
        if not runs:
            continue
        pairs = ", ".join(f"{r['accuracy_before']:.2f} -> {r['accuracy_after']:.2f}" for r in runs)
        reached = ", ".join(
            "-" if r["goal_reached_s"] is None else f"{r['goal_reached_s']:.0f}" for r in runs
        )
        lines.append(
            f"| {algo} | {runs[0]['task']} | {', '.join(str(r['seed']) for r in runs)} | {pairs} "
            f"| {statistics.mean(r['gain_points'] for r in runs):+.1f} | {reached} "
            f"| {statistics.mean(r['train_s'] for r in runs):.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
