"""``driftlab diffusion ...``: diffusion subcommands.

``driftlab diffusion oracle`` samples the exact denoiser of a 2-D Gaussian mixture with any
sampler in any formulation, and reports how well the samples reproduce the mixture.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from driftlab.core.config import check_int, check_positive


def add_parser(families: argparse._SubParsersAction, formatter: type) -> None:
    from driftlab.diffusion.formulations import FORMULATIONS
    from driftlab.diffusion.samplers import SAMPLERS

    diffusion = families.add_parser(
        "diffusion",
        help="diffusion models",
        description="Diffusion models unified under EDM.",
        formatter_class=formatter,
    )
    verbs = diffusion.add_subparsers(dest="verb", required=True, metavar="VERB")
    oracle = verbs.add_parser(
        "oracle",
        help="sample the exact denoiser of a 2-D Gaussian mixture",
        description="Sample a ring of Gaussians through its exact denoiser with any sampler in "
        "any formulation; write samples, metrics and pictures to a run directory.",
        formatter_class=formatter,
    )
    oracle.add_argument(
        "--formulation", default="edm", choices=sorted(FORMULATIONS), help="noising process"
    )
    oracle.add_argument("--sampler", default="heun", choices=sorted(SAMPLERS), help="sampler")
    oracle.add_argument("--steps", type=int, default=18, help="number of sampler steps")
    oracle.add_argument("--n", type=int, default=4000, help="number of samples")
    oracle.add_argument("--seed", type=int, default=0, help="seed of the noise and the sampler")
    oracle.add_argument("--modes", type=int, default=8, help="Gaussians on the ring")
    oracle.add_argument("--radius", type=float, default=2.0, help="radius of the ring")
    oracle.add_argument("--std", type=float, default=0.2, help="std of each Gaussian")
    oracle.add_argument(
        "--sigma-min", type=float, default=None, help="lowest noise level (default: EDM Table 1)"
    )
    oracle.add_argument(
        "--sigma-max", type=float, default=None, help="highest noise level (default: EDM Table 1)"
    )
    group = oracle.add_argument_group(
        "sampler options (only for the samplers that take them; default: the sampler's own)"
    )
    group.add_argument("--eta", type=float, default=None, help="ddim: stochasticity in [0, 1]")
    group.add_argument("--s-churn", type=float, default=None, help="edm-stochastic: S_churn")
    group.add_argument("--s-min", type=float, default=None, help="edm-stochastic: S_min")
    group.add_argument("--s-max", type=float, default=None, help="edm-stochastic: S_max")
    group.add_argument("--s-noise", type=float, default=None, help="edm-stochastic: S_noise")
    group.add_argument("--beta", type=float, default=None, help="euler-maruyama: EDM eq. 6 beta")
    group.add_argument("--snr", type=float, default=None, help="pc: corrector signal-to-noise")
    group.add_argument("--n-corrector", type=int, default=None, help="pc: corrector steps")
    group.add_argument("--n-inner", type=int, default=None, help="annealed-langevin: steps/level")
    group.add_argument("--step-lr", type=float, default=None, help="annealed-langevin: epsilon")
    oracle.add_argument(
        "--run-dir", default=None, help="output directory (default runs/oracle-FORM-SAMPLER)"
    )
    oracle.add_argument("--overwrite", action="store_true", help="replace an existing run dir")
    oracle.set_defaults(handler=run_oracle)


_OPTION_NAMES = {
    "eta": "eta",
    "s_churn": "S_churn",
    "s_min": "S_min",
    "s_max": "S_max",
    "s_noise": "S_noise",
    "beta": "beta",
    "snr": "snr",
    "n_corrector": "n_corrector",
    "n_inner": "n_inner",
    "step_lr": "step_lr",
}


def run_oracle(args: argparse.Namespace) -> None:
    import torch

    from driftlab.core import RunDir, save_checkpoint
    from driftlab.diffusion import GaussianMixture, get_formulation, sample
    from driftlab.diffusion.metrics import mixture_report
    from driftlab.diffusion.plots import plot_sample_grid
    from driftlab.diffusion.samplers import evaluations_per_sample

    check_int("n", args.n, minimum=2)
    check_int("modes", args.modes, minimum=1)
    check_positive("radius", args.radius)
    check_positive("std", args.std)
    ranges = {k: v for k, v in (("sigma_min", args.sigma_min), ("sigma_max", args.sigma_max)) if v}
    for key, value in ranges.items():
        check_positive(key.replace("_", "-"), value)
    formulation = get_formulation(args.formulation, **ranges)
    options: dict[str, Any] = {
        name: getattr(args, attr)
        for attr, name in _OPTION_NAMES.items()
        if getattr(args, attr) is not None
    }
    mixture = GaussianMixture.ring(args.modes, args.radius, args.std)
    generator = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.n, 2, generator=generator, dtype=torch.float64)
    # Validate everything on a tiny batch before anything is written to disk.
    sample(mixture, noise[:2], formulation, args.sampler, args.steps, **options)

    config = {
        "command": "diffusion oracle",
        "formulation": formulation.config(),
        "sampler": args.sampler,
        "steps": args.steps,
        "options": options,
        "n": args.n,
        "seed": args.seed,
        "mixture": {"modes": args.modes, "radius": args.radius, "std": args.std},
    }
    run_dir = args.run_dir or f"runs/oracle-{args.formulation}-{args.sampler}"
    with RunDir.create(run_dir, config, overwrite=args.overwrite, resumable=False) as run:
        start = time.perf_counter()
        samples = sample(
            mixture, noise, formulation, args.sampler, args.steps, generator=generator, **options
        )
        seconds = time.perf_counter() - start
        report = mixture_report(mixture, samples, seed=args.seed + 1)
        report.update(
            nfe=evaluations_per_sample(args.sampler, args.steps, **options), seconds=seconds
        )
        with (run.path / "metrics.jsonl").open("w", encoding="utf-8") as f:
            f.write(json.dumps({"step": 0, **report}) + "\n")
        save_checkpoint(run.path / "samples", {"samples": samples})
        title = f"{args.sampler} / {args.formulation}, {args.steps} steps"
        plot_sample_grid(
            {title: samples},
            run.path / "samples.png",
            reference=mixture.sample(args.n, generator),
            limit=args.radius + 4 * args.std + 0.5,
        )
        print(f"{title}: {report['nfe']} evaluations in {seconds:.2f} s")
        print(
            f"sliced Wasserstein {report['swd']:.4f} (two-sample floor "
            f"{report['swd_floor']:.4f}); mixture-weight error {report['weight_error']:.4f}"
        )
        print(f"wrote {run.path}/samples.png, samples.safetensors, metrics.jsonl")
