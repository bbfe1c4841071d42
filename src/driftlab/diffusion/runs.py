"""Training, sampling and evaluating a run directory: what ``driftlab diffusion train |
sample | eval`` do, callable from Python."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from driftlab.core import distributed
from driftlab.core.checkpoint import save_checkpoint
from driftlab.core.config import ConfigError, check_choice, check_int
from driftlab.core.rundir import RunDir, write_json
from driftlab.diffusion.formulations import get_formulation
from driftlab.diffusion.samplers import SAMPLERS, evaluations_per_sample, sample
from driftlab.diffusion.trainer import TrainConfig, Trainer, guided_denoiser, load_trained

OUTPUT_SUFFIXES = (".png", ".safetensors", ".npy")


def train_run(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    overrides: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train into ``run_dir``; with ``resume`` continue its checkpoint (``overrides`` may
    extend ``steps`` or ``minutes``). Returns the trainer's summary."""
    config.validate()
    distributed.init_from_env(distributed.backend_for(config.device))
    if not distributed.is_main():
        # Under torchrun only rank 0 owns the run directory; the others wait until it is
        # ready, then train in step (checkpoints and metrics are written by rank 0).
        distributed.barrier()
        if resume:
            config = _resumed_config(Path(run_dir), overrides)
        trainer = None
        try:
            trainer = Trainer(config, run_dir)
            if resume:
                trainer.resume()
            return trainer.train(show_progress=False)
        finally:
            if trainer is not None:
                trainer.close()
            else:
                distributed.shutdown()
    with RunDir.create(
        run_dir, {"train": config.to_dict()}, resume=resume, overwrite=overwrite
    ) as run:
        if resume:
            config = _resumed_config(run.path, overrides)
            write_json(run.path / "config.json", {"train": config.to_dict()})
        distributed.barrier()
        trainer = None
        try:
            trainer = Trainer(config, run.path)
            resumed = trainer.resume() if resume else False
            summary = trainer.train(show_progress=show_progress)
            summary["resumed"] = resumed
            _pictures_after_training(trainer, run.path)
        finally:
            if trainer is not None:
                trainer.close()
            else:
                distributed.shutdown()
        if summary["status"] == "interrupted":
            raise KeyboardInterrupt
        return summary


def _resumed_config(path: Path, overrides: dict[str, Any] | None) -> TrainConfig:
    """The run's saved configuration with ``steps`` / ``minutes`` overrides applied."""
    import json

    saved = json.loads((path / "config.json").read_text(encoding="utf-8"))
    config = TrainConfig.from_dict(saved["train"])
    for key, value in (overrides or {}).items():
        setattr(config, key, value)
    return config.validate()


def _pictures_after_training(trainer: Trainer, path: Path) -> None:
    from driftlab.core.metrics import read_metrics
    from driftlab.diffusion.plots import plot_loss_curve

    records = read_metrics(path / "metrics.jsonl") if (path / "metrics.jsonl").exists() else []
    if records:
        plot_loss_curve(records, path / "loss.png")
    out = path / "samples.png"
    generate(trainer, n=64 if trainer.dataset.x.ndim > 2 else 2000, seed=0, out=out)


def generate(
    trainer: Trainer,
    *,
    n: int,
    sampler: str = "heun",
    steps: int = 18,
    formulation: str | None = None,
    seed: int = 0,
    class_label: int | None = None,
    guidance: float = 1.0,
    out: str | Path | None = None,
    trajectory_out: str | Path | None = None,
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample ``n`` items from a trained model (EMA weights) with any sampler and formulation;
    class-conditional models sample the classes in turn (or ``class_label``) with guidance.
    ``trajectory_out`` (2-D data) draws the paths of the first 100 samples in the
    formulation's coordinates. Returns ``(samples, labels)``, labels ``None`` for
    unconditional models."""
    check_int("n", n, minimum=1)
    check_choice("sampler", sampler, SAMPLERS)
    check_int("steps", steps, minimum=1)
    form = trainer.formulation
    if formulation and formulation != form.name:
        # Another formulation's coordinates, on the noise interval the model was trained on:
        # its own default range (FM reaches sigma = 999) may lie outside it.
        form = get_formulation(formulation, sigma_min=form.sigma_min, sigma_max=form.sigma_max)
    denoiser = trainer.denoiser(ema=True)
    labels = None
    if trainer.num_classes:
        if class_label is not None:
            check_int("class_label", class_label, minimum=0)
            if class_label >= trainer.num_classes:
                raise ConfigError(
                    f"class_label must be in 0..{trainer.num_classes - 1}, got {class_label}"
                )
            labels = torch.full((n,), class_label, dtype=torch.long)
        else:
            labels = torch.arange(n) % trainer.num_classes
        denoiser = guided_denoiser(denoiser, labels, guidance, trainer.num_classes)
    elif class_label is not None:
        raise ConfigError("class_label needs a class-conditional model; this run has none")
    if trajectory_out is not None and len(trainer.dataset.shape) != 1:
        raise ConfigError("trajectory pictures are drawn for 2-D data only")
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, *trainer.dataset.shape), generator=generator)
    with torch.no_grad():
        result = sample(
            denoiser,
            noise,
            form,
            sampler,
            steps,
            generator=generator,
            return_trajectory=trajectory_out is not None,
            **options,
        )
    x, trajectory = result if trajectory_out is not None else (result, None)
    if out is not None:
        write_samples(x, out, trainer, labels)
    if trajectory is not None:
        from driftlab.diffusion.plots import plot_trajectories

        title = f"{sampler} / {form.name}, {steps} steps: x_t in {form.name} coordinates"
        plot_trajectories(
            {title: trajectory[:, :100]}, trajectory_out, limit=_limit(trainer.dataset.x)
        )
    return x, labels


def write_samples(
    x: torch.Tensor, out: str | Path, trainer: Trainer, labels: torch.Tensor | None = None
) -> Path:
    out = Path(out)
    if out.suffix not in OUTPUT_SUFFIXES:
        allowed = ", ".join(OUTPUT_SUFFIXES)
        raise ConfigError(f"--out must end in one of {allowed}; got {out.name!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        tensors = {"samples": x.float()}
        if labels is not None:
            tensors["labels"] = labels
        save_checkpoint(out.with_suffix(""), tensors)
    elif out.suffix == ".npy":
        import numpy as np

        np.save(out, x.float().numpy())
    elif x.ndim == 2:
        from driftlab.diffusion.plots import plot_sample_grid

        reference = trainer.dataset.x[: x.shape[0]]
        plot_sample_grid(
            {"samples": x},
            out,
            reference=reference,
            limit=_limit(reference),
            reference_title="training data",
        )
    else:
        from driftlab.diffusion.plots import plot_image_grid

        plot_image_grid(x, out, labels=labels)
    return out


def _limit(points: torch.Tensor) -> float:
    return float(points.abs().quantile(0.995)) * 1.15


def evaluate_run(
    run_dir: str | Path,
    *,
    sampler: str = "heun",
    steps: int = 18,
    formulation: str | None = None,
    n: int | None = None,
    seed: int = 0,
    guidance: float = 1.0,
    likelihood_points: int = 500,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate a trained run and write ``run_dir/eval.json``.

    2-D data: sliced Wasserstein distance and MMD to held-out data with the two-sample floor
    beside each (train versus test), and the exact test log-likelihood through the
    probability-flow ODE in bits per dimension. Digits: the Frechet distance in a digits
    classifier's feature space with the train-versus-test floor, the class distribution of
    the samples, and for class-conditional models the classifier's accuracy on the requested
    classes.
    """
    from driftlab.diffusion.data import load_dataset

    trainer = load_trained(run_dir)
    cfg = trainer.config
    test = load_dataset(
        cfg.data, split="test", seed=cfg.seed, root=cfg.data_root, resolution=cfg.resolution
    )
    n = n or len(test)
    start = time.perf_counter()
    x, labels = generate(
        trainer,
        n=n,
        sampler=sampler,
        steps=steps,
        formulation=formulation,
        seed=seed,
        guidance=guidance,
        **options,
    )
    report: dict[str, Any] = {
        "sampler": sampler,
        "steps": steps,
        "nfe": evaluations_per_sample(sampler, steps, **options),
        "formulation": formulation or cfg.formulation,
        "n": n,
        "sampling_seconds": time.perf_counter() - start,
    }
    if x.ndim == 2:
        report.update(_evaluate_vectors(trainer, x, test, likelihood_points, seed))
    else:
        report.update(_evaluate_digits(trainer, x, labels, test))
    write_json(Path(run_dir) / "eval.json", report)
    return report


def _evaluate_vectors(trainer: Trainer, x, test, likelihood_points: int, seed: int) -> dict:
    from driftlab.diffusion.likelihood import bits_per_dim, log_likelihood
    from driftlab.diffusion.metrics import mmd, sliced_wasserstein

    n = min(x.shape[0], len(test))
    x, ref = x[:n], test.x[:n]
    # The floor: training data against the same held-out data, at the same sample size.
    order = torch.randperm(len(trainer.dataset), generator=torch.Generator().manual_seed(seed))
    train = trainer.dataset.x[order[:n]]
    m = min(n, 2000)  # MMD is quadratic in the sample size
    bpd = None
    points = test.x[:likelihood_points].double()
    if len(points):
        logp = log_likelihood(
            trainer.denoiser(ema=True), points, trainer.formulation, rtol=1e-5, atol=1e-5
        )
        bpd = float(bits_per_dim(logp, points.shape[1]).mean())
    return {
        "swd": sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(seed)),
        "swd_floor": sliced_wasserstein(train, ref, generator=torch.Generator().manual_seed(seed)),
        "mmd": mmd(x[:m], ref[:m]),
        "mmd_floor": mmd(train[:m], ref[:m]),
        "bits_per_dim": bpd,
        "likelihood_points": int(points.shape[0]),
    }


def _evaluate_digits(trainer: Trainer, x, labels, test) -> dict:
    from driftlab.diffusion.classifier import (
        class_accuracy,
        class_distribution,
        digits_fd,
        load_digits_classifier,
    )

    classifier, info = load_digits_classifier()
    report = {
        "fd": digits_fd(x, test.x, classifier),
        "fd_floor": digits_fd(trainer.dataset.x, test.x, classifier),
        "class_distribution": class_distribution(x, classifier),
        "classifier_test_accuracy": info.get("test_accuracy"),
    }
    if labels is not None:
        report["class_accuracy"] = class_accuracy(x, labels, classifier)
    return report


__all__ = ["evaluate_run", "generate", "train_run", "write_samples"]
