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
    _add_train(verbs, formatter)
    _add_sample_and_eval(verbs, formatter)


def _add_train(verbs: argparse._SubParsersAction, formatter: type) -> None:
    from driftlab.diffusion.denoisers import PREDICTIONS
    from driftlab.diffusion.formulations import FORMULATIONS
    from driftlab.diffusion.trainer import TrainConfig

    d = TrainConfig()
    train = verbs.add_parser(
        "train",
        help="train a diffusion model",
        description="Train a diffusion model of any formulation (EDM eq. 8 with the "
        "formulation's noise distribution and loss weight). Checkpoints at an interval and on "
        "Ctrl-C; --resume continues exactly where the run stopped.",
        formatter_class=formatter,
    )
    train.add_argument(
        "--data",
        default=d.data,
        help="moons, swissroll, 8gaussians, checkerboard, pinwheel, digits, or folder",
    )
    train.add_argument("--data-root", default=None, help="image folder for --data folder")
    train.add_argument("--resolution", type=int, default=None, help="image size for a folder")
    train.add_argument("--n-train", type=int, default=None, help="training set size (2-D sets)")
    train.add_argument(
        "--formulation", default=d.formulation, choices=sorted(FORMULATIONS), help="noising"
    )
    train.add_argument(
        "--prediction",
        default=None,
        choices=PREDICTIONS,
        help="network output type (default: the formulation's own preconditioning)",
    )
    train.add_argument(
        "--network", default=d.network, choices=("auto", "mlp", "unet"), help="architecture"
    )
    train.add_argument("--hidden", type=int, default=None, help="MLP width (default: 256)")
    train.add_argument("--depth", type=int, default=None, help="MLP hidden layers (default: 3)")
    train.add_argument("--channels", type=int, default=None, help="U-Net base channels")
    train.add_argument(
        "--steps", type=int, default=None, help=f"optimiser steps (default: {d.steps})"
    )
    train.add_argument("--minutes", type=float, default=None, help="wall-time budget")
    train.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch")
    train.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    train.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW decay")
    train.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="lr warm-up")
    train.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max grad norm")
    train.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA decay")
    train.add_argument(
        "--class-conditional", action="store_true", help="condition on labels (digits)"
    )
    train.add_argument(
        "--label-dropout", type=float, default=d.label_dropout, help="null-label rate (CFG)"
    )
    train.add_argument("--seed", type=int, default=d.seed, help="random seed")
    train.add_argument(
        "--checkpoint-every", type=int, default=d.checkpoint_every, help="steps per checkpoint"
    )
    train.add_argument("--log-every", type=int, default=d.log_every, help="steps per log line")
    train.add_argument("--amp", action="store_true", help="bf16 autocast on a GPU")
    train.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"))
    train.add_argument("--no-tensorboard", action="store_true", help="only metrics.jsonl")
    train.add_argument("--run-dir", required=True, help="output directory")
    train.add_argument("--resume", action="store_true", help="continue an existing run")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run dir")
    train.set_defaults(handler=run_train)


def _add_sample_and_eval(verbs: argparse._SubParsersAction, formatter: type) -> None:
    from driftlab.diffusion.formulations import FORMULATIONS
    from driftlab.diffusion.samplers import SAMPLERS

    for verb, text in (
        ("sample", "sample a trained run (any sampler and formulation)"),
        ("eval", "sample a trained run and write DIR/eval.json with its metrics"),
    ):
        p = verbs.add_parser(verb, help=text, description=text, formatter_class=formatter)
        p.add_argument("--run-dir", required=True, help="a training run directory")
        p.add_argument("--sampler", default="heun", choices=sorted(SAMPLERS), help="sampler")
        p.add_argument("--steps", type=int, default=18, help="sampler steps")
        p.add_argument(
            "--formulation",
            default=None,
            choices=sorted(FORMULATIONS),
            help="coordinates to sample in (default: the run's)",
        )
        p.add_argument("--seed", type=int, default=0, help="seed of the noise")
        p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance")
        p.add_argument("--n", type=int, default=None, help="samples (default: 2000 / test size)")
        if verb == "sample":
            p.add_argument("--out", required=True, help="output .png, .safetensors or .npy")
            p.add_argument(
                "--class-label", type=int, default=None, help="class to sample (default: all)"
            )
            p.add_argument(
                "--trajectories",
                default=None,
                help="also draw the paths of 100 samples to this PNG (2-D data)",
            )
            p.set_defaults(handler=run_sample)
        else:
            p.set_defaults(handler=run_eval)


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


def run_train(args: argparse.Namespace) -> None:
    from driftlab.diffusion.runs import train_run
    from driftlab.diffusion.trainer import TrainConfig

    network_options = {
        key: value
        for key, value in (
            ("hidden", args.hidden),
            ("depth", args.depth),
            ("channels", args.channels),
        )
        if value is not None
    }
    overrides = {k: getattr(args, k) for k in ("steps", "minutes") if getattr(args, k) is not None}
    config = TrainConfig(
        data=args.data,
        data_root=args.data_root,
        resolution=args.resolution,
        n_train=args.n_train,
        formulation=args.formulation,
        prediction=args.prediction,
        network=args.network,
        network_options=network_options,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        grad_clip=args.grad_clip,
        ema_decay=args.ema_decay,
        class_conditional=args.class_conditional,
        label_dropout=args.label_dropout,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        amp=args.amp,
        device=args.device,
        tensorboard=not args.no_tensorboard,
        **overrides,
    )
    try:
        summary = train_run(
            config, args.run_dir, resume=args.resume, overwrite=args.overwrite, overrides=overrides
        )
    except KeyboardInterrupt:
        print(f"interrupted; checkpoint saved in {args.run_dir}; continue with --resume")
        raise
    print(
        f"trained to step {summary['step']} ({summary['status']}) in {summary['seconds']:.1f} s; "
        f"outputs in {args.run_dir}"
    )


def run_sample(args: argparse.Namespace) -> None:
    from driftlab.diffusion.runs import generate
    from driftlab.diffusion.trainer import load_trained

    trainer = load_trained(args.run_dir)
    n = args.n or (2000 if len(trainer.dataset.shape) == 1 else 100)
    generate(
        trainer,
        n=n,
        sampler=args.sampler,
        steps=args.steps,
        formulation=args.formulation,
        seed=args.seed,
        class_label=args.class_label,
        guidance=args.guidance,
        out=args.out,
        trajectory_out=args.trajectories,
    )
    print(f"wrote {n} samples to {args.out}")
    if args.trajectories:
        print(f"wrote their paths to {args.trajectories}")


def run_eval(args: argparse.Namespace) -> None:
    from driftlab.diffusion.runs import evaluate_run

    report = evaluate_run(
        args.run_dir,
        sampler=args.sampler,
        steps=args.steps,
        formulation=args.formulation,
        n=args.n,
        seed=args.seed,
        guidance=args.guidance,
    )
    shown = {k: v for k, v in report.items() if not isinstance(v, dict | list)}
    print(json.dumps(shown, indent=2))
    print(f"wrote {args.run_dir}/eval.json")
