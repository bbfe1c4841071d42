"""Two moons: train each formulation on 2 CPU cores and measure its samples.

1. EDM, at most 3 minutes: sliced Wasserstein distance (SWD) at 35 evaluations of Heun,
   against the two-sample floor (training data versus the held-out test set).
2. VP, VE, EDM and Flow Matching, each trained for the same budget: a table of
   formulation x sampler x evaluations (about 10, 20, 35, 100) -> SWD, and the exact test
   log-likelihood through the probability-flow ODE in bits per dimension.

Prints one JSON line per measurement. ``BUDGET_MINUTES`` environment variable overrides the
per-formulation budget (default 3).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from driftlab.diffusion.data import load_dataset
from driftlab.diffusion.metrics import sliced_wasserstein
from driftlab.diffusion.runs import evaluate_run, generate, train_run
from driftlab.diffusion.samplers import evaluations_per_sample
from driftlab.diffusion.trainer import TrainConfig, load_trained

MINUTES = float(os.environ.get("BUDGET_MINUTES", "3"))
N = 5000  # samples per measurement, the size of the held-out test set
FORMULATIONS = ("edm", "vp", "ve", "fm")
# (sampler, steps) giving about 10, 20, 35 and 100 denoiser evaluations.
GRID = {
    "euler": (10, 20, 35, 100),
    "heun": (6, 10, 18, 50),
    "dpmpp-2m": (10, 20, 35, 100),
}


def main() -> None:
    torch.set_num_threads(2)
    root = Path(tempfile.mkdtemp(prefix="driftlab-moons-"))
    for name in FORMULATIONS:
        config = TrainConfig(
            data="moons",
            formulation=name,
            steps=1_000_000,
            minutes=MINUTES,
            batch_size=512,
            lr=2e-3,
            warmup_steps=200,
            tensorboard=False,
            log_every=200,
            checkpoint_every=100_000,
        )
        run_dir = root / name
        summary = train_run(config, run_dir, show_progress=False)
        print(f"{name}: {summary['step']} steps in {summary['seconds']:.0f} s", file=sys.stderr)
        # The full evaluation (SWD, MMD, test bits/dim) once, at 35 Heun evaluations...
        full = evaluate_run(run_dir, sampler="heun", steps=18, n=N, likelihood_points=500)
        trainer = load_trained(run_dir)
        test = load_dataset("moons", split="test", seed=config.seed)
        base = {
            "benchmark": "diffusion_moons",
            "formulation": name,
            "train_steps": summary["step"],
            "train_seconds": round(summary["seconds"], 1),
            "swd_floor": full["swd_floor"],
        }
        # ...and the SWD of every sampler and budget from the same trained model.
        for sampler, steps_list in GRID.items():
            for steps in steps_list:
                x, _ = generate(trainer, n=N, sampler=sampler, steps=steps, seed=0)
                record = {
                    **base,
                    "sampler": sampler,
                    "steps": steps,
                    "nfe": evaluations_per_sample(sampler, steps),
                    "swd": sliced_wasserstein(
                        x, test.x[:N], generator=torch.Generator().manual_seed(0)
                    ),
                }
                if (sampler, steps) == ("heun", 18):
                    record.update(
                        swd=full["swd"],
                        mmd=full["mmd"],
                        mmd_floor=full["mmd_floor"],
                        bits_per_dim=full["bits_per_dim"],
                    )
                print(json.dumps(record), flush=True)


def markdown(records: list[dict]) -> str:
    """The 3-minute EDM result, then formulation x sampler x NFE -> SWD and test bpd."""
    if not records:
        return ""
    lines = []
    edm = [r for r in records if r["formulation"] == "edm" and r["sampler"] == "heun"]
    edm35 = next(r for r in edm if r["nfe"] == 35)
    lines.append(
        f"EDM, {edm35['train_steps']} steps in {edm35['train_seconds']:.0f} s on 2 CPU cores: "
        f"SWD **{edm35['swd']:.4f}** at 35 Heun evaluations against a two-sample floor of "
        f"{edm35['swd_floor']:.4f} (**{edm35['swd'] / edm35['swd_floor']:.2f}x** the floor); "
        f"test likelihood {edm35['bits_per_dim']:.3f} bits/dim.\n"
    )
    nfes = ["~10", "~20", "35", "~100"]
    lines.append(
        "| formulation | train steps | sampler | "
        + " | ".join(f"SWD @ {n} NFE" for n in nfes)
        + " | test bits/dim |"
    )
    lines.append("|---|---|---|" + "---|" * (len(nfes) + 1))
    for name in FORMULATIONS:
        rows = [r for r in records if r["formulation"] == name]
        if not rows:
            continue
        bpd = next((r["bits_per_dim"] for r in rows if "bits_per_dim" in r), float("nan"))
        for sampler in GRID:
            cells = sorted((r for r in rows if r["sampler"] == sampler), key=lambda r: r["nfe"])
            values = " | ".join(f"{r['swd']:.4f} ({r['nfe']})" for r in cells)
            lines.append(
                f"| {name} | {rows[0]['train_steps']} | {sampler} | {values} | {bpd:.3f} |"
            )
    lines.append(
        f"\nTwo-sample floor (train vs test, 5000 points): {records[0]['swd_floor']:.4f}. "
        "Cells show SWD (exact number of evaluations)."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
