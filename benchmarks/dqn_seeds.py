"""DQN at the RL Zoo's CartPole-v1 settings over many seeds, Stable-Baselines3 against driftlab.

At these settings (rl_zoo3's CartPole entry; our own preset departs from it, see
``driftlab.rl.deep.presets``) the greedy return after 50,000 steps is bimodal in both
libraries: 500 on about three seeds in five, a collapse to 20-300 on the rest. Which seeds
collapse depends on float rounding (``dqn_lockstep.py``: two runs that share their weights and
every random number part ways within a few thousand steps), so telling two return
distributions apart takes a hundred seeds or more, not the twenty of ``deep_rl_speed.py``.

Each run is one library at one seed, on the code path of ``deep_rl_speed.py`` (the same
settings, seeding and 20 evaluation episodes from the same initial states). Three variants:
``sb3``, ``driftlab`` (its float32 matrix products on oneDNN where large enough,
:mod:`driftlab.core.matmul`) and ``driftlab-torch`` (``DRIFTLAB_MATMUL=torch``: PyTorch's own
products, the ones SB3 uses). Runs are spread over worker processes, so no times are kept;
``deep_rl_speed.py`` measures those.

Prints one JSON line per (variant, seed); ``--only``, ``--seeds FIRST LAST`` and ``--jobs``
select the runs. All three variants over the default seeds 0-599 take about five and a half
hours on two cores (per seed, SB3 about 35 s of one core, driftlab 14-16 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from scipy.stats import mannwhitneyu

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deep_rl_speed import CASES

VARIANTS = {"sb3": None, "driftlab": "auto", "driftlab-torch": "torch"}  # -> DRIFTLAB_MATMUL
SEEDS = (0, 599)
STEPS = CASES["dqn"][2]  # the speed benchmark's budget
# Seed blocks of the table, in the order they were run: the first hundred, the second hundred
# to check the gap seen on the first, then two blocks of two hundred, each fixed in advance.
BLOCKS = ((0, 99), (100, 199), (200, 399), (400, 599))
# Pooled rows: every seed run after the first block raised the question, and all of them.
POOLED = ((100, 599), (0, 599))


def set_products(choice: str | None) -> None:
    """Pool initializer: the product backend is read once per process, before any run."""
    if choice is not None:
        os.environ["DRIFTLAB_MATMUL"] = choice


def zoo_settings() -> dict:
    """DQN's hyperparameters at the zoo's CartPole-v1 entry (our preset's departures undone)."""
    from driftlab.rl.deep.presets import ZOO_DEPARTURES, hyperparameters

    zoo = ZOO_DEPARTURES[("dqn", "CartPole-v1")]
    return hyperparameters("dqn", "CartPole-v1", {**zoo, "total_steps": STEPS})


def run(variant: str, seed: int) -> dict:
    import torch

    from deep_rl_speed import run_driftlab, run_sb3

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    hp = zoo_settings()
    if variant == "sb3":
        result = run_sb3("dqn", "CartPole-v1", hp, STEPS, seed)
    else:
        result = run_driftlab("DQN", "CartPole-v1", hp, STEPS, seed)
    record = {"benchmark": "dqn_seeds", "variant": variant, "seed": seed}
    return {**record, "return": round(result["mean_return"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default=",".join(VARIANTS), help="subset of " + ",".join(VARIANTS)
    )
    parser.add_argument("--seeds", type=int, nargs=2, default=SEEDS, metavar=("FIRST", "LAST"))
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    args = parser.parse_args()
    only = [v.strip() for v in args.only.split(",") if v.strip()]
    unknown = sorted(set(only) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; available: {', '.join(VARIANTS)}")
    first, last = args.seeds
    if not 0 <= first <= last:
        parser.error(f"--seeds must be 0 <= FIRST <= LAST, got {first} {last}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    for variant in only:
        # One pool per variant: DRIFTLAB_MATMUL must be set before a worker's first product.
        choice = VARIANTS[variant]
        with ProcessPoolExecutor(args.jobs, initializer=set_products, initargs=(choice,)) as pool:
            seeds = range(first, last + 1)
            for record in pool.map(run, [variant] * len(seeds), seeds):
                print(json.dumps(record), flush=True)


def markdown(records: list[dict]) -> str:
    """Per seed block and variant: mean return (± its standard error), seeds at >= 475, and
    against SB3 on those seeds the mean difference with its 95% interval (normal
    approximation, unequal variances) and the Mann-Whitney U test's p-value."""
    returns: dict[tuple[str, int], float] = {
        (r["variant"], r["seed"]): r["return"] for r in records
    }
    lines = [
        "| seeds | variant | runs | mean return | seeds >= 475 "
        "| difference from SB3 (95% interval) | p (against SB3) |",
        "|---|---|---|---|---|---|---|",
    ]
    blocks = [*BLOCKS, *POOLED]
    for first, last in blocks:
        for variant in VARIANTS:
            seeds = [s for s in range(first, last + 1) if (variant, s) in returns]
            if not seeds:
                continue
            values = [returns[(variant, s)] for s in seeds]
            # SB3 on the seeds this variant ran, so a variant run on fewer blocks is still
            # compared seed for seed.
            sb3 = [returns[("sb3", s)] for s in seeds if ("sb3", s) in returns]
            se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
            p = difference = ""
            if variant != "sb3" and len(sb3) > 1:
                p = f"{mannwhitneyu(values, sb3).pvalue:.2f}"
                delta = statistics.mean(values) - statistics.mean(sb3)
                half = 1.96 * (se**2 + statistics.variance(sb3) / len(sb3)) ** 0.5
                difference = f"{delta:+.1f} ({delta - half:+.1f} to {delta + half:+.1f})"
            solved = sum(v >= 475 for v in values)
            lines.append(
                f"| {first}-{last} | {variant} | {len(values)} | "
                f"{statistics.mean(values):.1f} ± {se:.1f} | {solved} | {difference} | {p} |"
            )
    lines.append(
        "\nFinal greedy return over 20 episodes after 50,000 steps at the zoo's settings, one run "
        "per seed and variant; ± is the standard error of the mean. Against SB3's returns on the "
        "seeds that variant ran: the difference of the means with its 95% interval (normal "
        "approximation) and p, the two-sided Mann-Whitney U test. `driftlab-torch` is "
        "driftlab with `DRIFTLAB_MATMUL=torch`."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
