"""Deep RL returns against the thresholds: every algorithm on its benchmark, several seeds.

Each (algorithm, environment) trains from its preset (``driftlab.rl.deep.presets``) for the
budget below, one torch thread per run, runs spread over worker processes. Along the way it
is evaluated deterministically (``EVAL_POINTS`` times, 10 episodes each, on a fresh
environment) for the learning curve; at the end over 20 episodes, which is the number the
threshold is checked against. "reached at" is the first curve point at or above the
threshold. Learning curves (every seed, the mean in bold) are written to
``benchmarks/results/curves/<algo>_<env>.png``.

Prints one JSON line per (algorithm, environment, seed). ``--only ppo,dqn``, ``--env
HalfCheetah-v5`` and ``--seeds 0 1 2`` select runs; ``--jobs`` sets the number of worker
processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
CURVES = HERE / "results" / "curves"
EVAL_POINTS = 10

# (algorithm, environment, steps, threshold or None to report only)
CASES: list[tuple[str, str, int, float | None]] = [
    ("ppo", "CartPole-v1", 100_000, 475.0),
    ("dqn", "CartPole-v1", 50_000, 475.0),
    ("a2c", "CartPole-v1", 200_000, 475.0),
    ("trpo", "CartPole-v1", 100_000, 475.0),
    ("reinforce", "CartPole-v1", 100_000, 475.0),
    ("qac", "CartPole-v1", 200_000, None),
    ("off_policy_ac", "CartPole-v1", 200_000, None),
    ("ddpg", "Pendulum-v1", 20_000, -200.0),
    ("td3", "Pendulum-v1", 20_000, -200.0),
    ("ppo", "Pendulum-v1", 100_000, -250.0),
    ("trpo", "Pendulum-v1", 100_000, -250.0),
    # MuJoCo (optional extra ``mujoco``): a short TD3 run at the zoo preset, 10,000 random
    # steps then 15,000 learning steps (about 3 minutes of one core), far from solving the
    # task; and PPO on Hopper for the zoo's full budget of 1M steps (about 7 minutes of one
    # core per seed), whose result the zoo reports as 2410 +- 10 on Hopper-v3 (one run).
    ("td3", "HalfCheetah-v5", 25_000, None),
    ("ppo", "Hopper-v5", 1_000_000, None),
]


def available(env_id: str) -> bool:
    """False for a MuJoCo environment when the optional extra ``mujoco`` is not installed."""
    import importlib.util

    import gymnasium as gym

    entry_point = str(gym.spec(env_id).entry_point)
    return "mujoco" not in entry_point or importlib.util.find_spec("mujoco") is not None


def train(algo: str, env_id: str, steps: int, threshold: float | None, seed: int) -> dict:
    import torch

    from driftlab.rl.deep import get_algorithm

    torch.set_num_threads(1)
    learner = get_algorithm(algo)(env_id, seed=seed, total_steps=steps)
    curve: list[tuple[int, float]] = []
    seconds = 0.0
    chunk = max(1, steps // EVAL_POINTS)
    while learner.num_steps < steps:
        start = time.perf_counter()
        learner.learn(min(chunk, steps - learner.num_steps), show_progress=False, horizon=steps)
        seconds += time.perf_counter() - start
        curve.append((learner.num_steps, learner.evaluate(10)["mean_return"]))
    final = learner.evaluate(20)
    learner.close()
    reached = next((s for s, r in curve if threshold is not None and r >= threshold), None)
    return {
        "benchmark": "deep_rl_returns",
        "algo": algo,
        "env": env_id,
        "seed": seed,
        "steps": learner.num_steps,
        "threshold": threshold,
        "mean_return": round(final["mean_return"], 2),
        "std_return": round(final["std_return"], 2),
        "passed": None if threshold is None else final["mean_return"] >= threshold,
        "reached_at": reached,
        "train_s": round(seconds, 2),
        "curve": [[s, round(r, 2)] for s, r in curve],
    }


def plot(records: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    CURVES.mkdir(parents=True, exist_ok=True)
    for key in sorted({(r["algo"], r["env"]) for r in records}):
        runs = [r for r in records if (r["algo"], r["env"]) == key]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for r in runs:
            steps, returns = zip(*r["curve"], strict=True)
            ax.plot(steps, returns, alpha=0.5, label=f"seed {r['seed']}")
        # The mean over seeds, where the seeds were evaluated at the same steps.
        if all([s for s, _ in r["curve"]] == [s for s, _ in runs[0]["curve"]] for r in runs):
            steps = [s for s, _ in runs[0]["curve"]]
            mean = [statistics.fmean(r["curve"][i][1] for r in runs) for i in range(len(steps))]
            ax.plot(steps, mean, color="k", lw=2, label="mean")
        if runs[0]["threshold"] is not None:
            ax.axhline(runs[0]["threshold"], color="k", ls="--", lw=0.8, label="threshold")
        ax.set(xlabel="environment steps", ylabel="evaluation return", title=f"{key[0]} {key[1]}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(CURVES / f"{key[0]}_{key[1]}.png", dpi=100)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", default="", help="comma-separated algorithms (default: all)")
    parser.add_argument("--env", default="", help="comma-separated environments (default: all)")
    parser.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    envs = set(filter(None, args.env.split(",")))
    jobs = [
        (algo, env, steps, threshold, seed)
        for algo, env, steps, threshold in CASES
        if (not only or algo in only) and (not envs or env in envs) and available(env)
        for seed in args.seeds
    ]
    records = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for record in pool.map(train, *zip(*jobs, strict=True)):
            print(json.dumps(record), flush=True)
            print(
                f"{record['algo']} {record['env']} seed {record['seed']}: {record['mean_return']}",
                file=sys.stderr,
            )
            records.append(record)
    plot(records)


def markdown(records: list[dict]) -> str:
    lines = [
        "| algorithm | environment | steps | threshold | return per seed (20 eval episodes) "
        "| mean ± spread | every seed passed | reached threshold at | train s per seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for algo, env, _, threshold in CASES:
        runs = sorted(
            (r for r in records if r["algo"] == algo and r["env"] == env), key=lambda r: r["seed"]
        )
        if not runs:
            continue
        returns = [r["mean_return"] for r in runs]
        spread = statistics.pstdev(returns) if len(returns) > 1 else 0.0
        passed = (
            "report"
            if threshold is None
            else ("yes" if all(r["passed"] for r in runs) else "**no**")
        )
        reached = ", ".join(
            "-" if r["reached_at"] is None else f"{r['reached_at']:,}" for r in runs
        )
        lines.append(
            f"| {algo} | {env} | {runs[0]['steps']:,} | "
            f"{'-' if threshold is None else f'{threshold:g}'} | "
            f"{', '.join(f'{x:.0f}' for x in returns)} | "
            f"{statistics.mean(returns):.0f} ± {spread:.0f} | {passed} | "
            f"{reached if threshold is not None else '-'} | "
            f"{statistics.mean(r['train_s'] for r in runs):.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
