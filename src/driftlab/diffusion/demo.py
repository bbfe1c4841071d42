"""The diffusion part of ``make demo``: the 8-Gaussian oracle through every sampler."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from driftlab.diffusion.analytic import GaussianMixture
from driftlab.diffusion.metrics import mixture_report
from driftlab.diffusion.plots import plot_sample_grid, plot_trajectories
from driftlab.diffusion.samplers import evaluations_per_sample, sample

# (sampler, formulation, steps, options): one line per sampler of the library.
DEMO_RUNS = [
    ("euler", "edm", 35, {}),
    ("heun", "edm", 18, {}),
    ("heun", "fm", 18, {}),
    ("dpmpp-2m", "ve", 18, {}),
    ("edm-stochastic", "edm", 40, {"S_churn": 30.0, "S_min": 0.05, "S_max": 50.0}),
    ("ddim", "vp", 50, {"eta": 0.0}),
    ("ddpm", "vp", 100, {}),
    ("euler-maruyama", "vp", 200, {}),
    ("pc", "ve", 100, {}),
    ("annealed-langevin", "ve", 20, {"n_inner": 20}),
]


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def run_diffusion_demo(out_dir: Path, seed: int = 0, n: int = 10000) -> str:
    """Sample the oracle with every sampler, tabulate quality and ODE error versus
    evaluations, and draw samples and trajectories. Returns the printed report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mixture = GaussianMixture.ring(n_modes=8, radius=2.0, std=0.2)
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    panels, rows = {}, []
    for sampler, name, steps, options in DEMO_RUNS:
        generator = torch.Generator().manual_seed(seed + 1)
        start = time.perf_counter()
        x = sample(mixture, noise, name, sampler, steps, generator=generator, **options)
        seconds = time.perf_counter() - start
        report = mixture_report(mixture, x, seed=seed + 2)
        nfe = evaluations_per_sample(sampler, steps, **options)
        panels[f"{sampler} / {name} ({nfe} NFE)"] = x
        rows.append(
            [
                sampler,
                name,
                str(nfe),
                f"{report['swd']:.4f}",
                f"{report['swd_floor']:.4f}",
                f"{report['weight_error']:.4f}",
                f"{seconds:.2f}",
            ]
        )
    plot_sample_grid(
        panels,
        out_dir / "diffusion_samples.png",
        reference=mixture.sample(n, torch.Generator().manual_seed(seed + 3)),
        columns=4,
    )
    quality = _table(
        rows, ["sampler", "formulation", "NFE", "SWD", "SWD floor", "weight err", "seconds"]
    )

    # ODE error against a 1000-step Heun reference from the same noise (EDM coordinates).
    small = noise[:1000]
    reference = sample(mixture, small, "edm", "heun", 1000)
    error_rows = []
    for sampler, steps_list in (
        ("euler", (10, 18, 35, 50)),
        ("heun", (6, 10, 18, 26)),
        ("dpmpp-2m", (10, 18, 35, 50)),
    ):
        for steps in steps_list:
            x = sample(mixture, small, "edm", sampler, steps)
            err = float((x - reference).norm(dim=1).mean())
            error_rows.append([sampler, str(evaluations_per_sample(sampler, steps)), f"{err:.4f}"])
    errors = _table(error_rows, ["sampler", "NFE", "mean L2 error vs reference"])

    # Probability-flow ODE paths, each in its formulation's own coordinates x = s(t) x_hat.
    few = noise[:60]
    trajectories = {}
    for name in ("fm", "vp", "subvp"):
        _, traj = sample(mixture, few, name, "heun", 40, return_trajectory=True)
        trajectories[f"{name}: x_t in its own coordinates"] = traj
    plot_trajectories(trajectories, out_dir / "diffusion_trajectories.png")

    return (
        "Diffusion: 8 Gaussians sampled through their exact denoiser "
        f"({n} samples; SWD = sliced Wasserstein to fresh exact samples)\n"
        f"{quality}\n\nODE error versus denoiser evaluations (EDM formulation)\n{errors}\n"
        f"pictures: {out_dir / 'diffusion_samples.png'}, "
        f"{out_dir / 'diffusion_trajectories.png'}"
    )


__all__ = ["run_diffusion_demo"]


# (sampler, formulation to sample in, steps): the model is trained as EDM.
TRAINED_RUNS = [
    ("heun", "edm", 18),
    ("euler", "edm", 35),
    ("dpmpp-2m", "edm", 20),
    ("heun", "fm", 18),
    ("ddim", "vp", 50),
    ("euler-maruyama", "vp", 200),
]


def run_training_demo(out_dir: Path, seed: int = 0, minutes: float = 1.0) -> str:
    """Train an EDM model on two moons for about ``minutes``, then sample it with several
    samplers and formulations beside the data. Returns the printed report."""
    from driftlab.diffusion.data import load_dataset
    from driftlab.diffusion.metrics import sliced_wasserstein
    from driftlab.diffusion.runs import generate, train_run
    from driftlab.diffusion.trainer import TrainConfig, load_trained

    config = TrainConfig(
        data="moons",
        formulation="edm",
        steps=20_000,
        minutes=minutes,
        seed=seed,
        tensorboard=False,
        checkpoint_every=1000,
    )
    summary = train_run(config, out_dir / "moons", overwrite=True)
    trainer = load_trained(out_dir / "moons")
    test = load_dataset("moons", split="test", seed=seed)
    n = len(test)
    # The floor: a random subset of the training data against the same held-out data.
    order = torch.randperm(len(trainer.dataset), generator=torch.Generator().manual_seed(seed))
    floor = sliced_wasserstein(
        trainer.dataset.x[order[:n]], test.x, generator=torch.Generator().manual_seed(seed)
    )
    panels, rows = {}, []
    for sampler, formulation, steps in TRAINED_RUNS:
        x, _ = generate(
            trainer, n=n, sampler=sampler, steps=steps, formulation=formulation, seed=seed
        )
        nfe = evaluations_per_sample(sampler, steps)
        panels[f"{sampler} / {formulation} ({nfe} NFE)"] = x
        swd = sliced_wasserstein(x, test.x, generator=torch.Generator().manual_seed(seed))
        rows.append([sampler, formulation, str(nfe), f"{swd:.4f}", f"{swd / floor:.2f}"])
    limit = float(test.x.abs().max()) + 0.3
    plot_sample_grid(
        panels,
        out_dir / "moons_samples.png",
        reference=test.x,
        limit=limit,
        reference_title="held-out data",
    )
    table = _table(rows, ["sampler", "sampled as", "NFE", "SWD to test", "x floor"])
    return (
        f"Two moons: EDM model trained for {summary['step']} steps "
        f"({summary['seconds']:.0f} s); SWD floor (train vs test) {floor:.4f}\n{table}\n"
        f"pictures: {out_dir / 'moons_samples.png'}, {out_dir / 'moons' / 'loss.png'}"
    )
