"""Training a diffusion model of any formulation: EDM eq. 8 on the formulation's own noise
distribution and loss weight, with the pieces a long job needs.

The loss (EDM eq. 8): draw ``sigma`` from the formulation's training distribution, noise the
data ``x_hat = x0 + sigma n``, and regress the network ``F`` on its target
``(x0 - c_skip x_hat) / c_out`` with weight ``lambda(sigma) c_out(sigma)^2``, which is the
denoiser loss ``lambda(sigma) ||D(x_hat; sigma) - x0||^2``. With each formulation's own
preconditioning (EDM Table 1) the weight is 1: EDM's loss, VP's epsilon loss, VE's score
loss, Flow Matching's velocity loss.

Around it: AdamW with linear learning-rate warm-up, gradient clipping, an EMA of the weights
(used for sampling), label dropout for classifier-free guidance, checkpoints (safetensors
weights, JSON state, optimiser and every RNG) at an interval and on Ctrl-C/SIGTERM, exact
resume, metrics to ``metrics.jsonl`` and TensorBoard, a progress bar, a stop on a non-finite
loss that keeps the last good checkpoint, and data-parallel training with
``torch.distributed`` under ``torchrun`` (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from driftlab.core import distributed
from driftlab.core.checkpoint import load_checkpoint, save_checkpoint
from driftlab.core.config import (
    ConfigError,
    check_choice,
    check_in_range,
    check_int,
    check_nonnegative,
    check_positive,
)
from driftlab.core.metrics import MetricsLogger
from driftlab.core.progress import progress
from driftlab.diffusion.denoisers import (
    PREDICTIONS,
    Denoiser,
    Preconditioning,
    get_preconditioning,
    prediction_preconditioning,
)
from driftlab.diffusion.formulations import FORMULATIONS, Formulation, _expand_like, get_formulation

CHECKPOINT = "checkpoint"


@dataclass
class TrainConfig:
    """Every setting of a training run; validated by :meth:`validate`."""

    data: str = "moons"
    data_root: str | None = None
    resolution: int | None = None
    n_train: int | None = None
    formulation: str = "edm"
    prediction: str | None = None  # None: the formulation's own preconditioning (EDM Table 1)
    network: str = "auto"  # "mlp" for vectors, "unet" for images
    network_options: dict[str, Any] = field(default_factory=dict)
    steps: int = 5000
    minutes: float | None = None
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    class_conditional: bool = False
    label_dropout: float = 0.1
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 100
    amp: bool = False
    device: str = "auto"
    tensorboard: bool = True

    def validate(self) -> TrainConfig:
        from driftlab.diffusion.data import DATASETS

        check_choice("data", self.data, DATASETS)
        check_choice("formulation", self.formulation, FORMULATIONS)
        if self.prediction is not None:
            check_choice("prediction", self.prediction, PREDICTIONS)
        check_choice("network", self.network, ("auto", "mlp", "unet"))
        check_int("steps", self.steps, minimum=1)
        if self.minutes is not None:
            check_positive("minutes", self.minutes)
        check_int("batch_size", self.batch_size, minimum=1)
        check_positive("lr", self.lr)
        check_nonnegative("weight_decay", self.weight_decay)
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        check_positive("grad_clip", self.grad_clip)
        check_in_range("ema_decay", self.ema_decay, 0.0, 1.0)
        check_in_range("label_dropout", self.label_dropout, 0.0, 1.0)
        check_int("seed", self.seed, minimum=0)
        check_int("checkpoint_every", self.checkpoint_every, minimum=1)
        check_int("log_every", self.log_every, minimum=1)
        check_choice("device", self.device, ("auto", "cpu", "cuda"))
        if self.n_train is not None:
            check_int("n_train", self.n_train, minimum=1)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown training settings {unknown}; allowed: {sorted(known)}")
        return cls(**values)


def default_preconditioning(formulation: Formulation, prediction: str | None) -> Preconditioning:
    """EDM Table 1's preconditioning for the formulation, or a prediction type in its
    coordinates (sub-VP uses VP's epsilon network on its own time)."""
    if prediction is not None:
        scale = 999.0 if formulation.name in ("vp", "subvp") else 1.0
        return prediction_preconditioning(formulation, prediction, time_scale=scale)
    if formulation.name == "edm":
        return get_preconditioning("edm", sigma_data=formulation.sigma_data)
    if formulation.name == "vp":
        return get_preconditioning("vp", formulation=formulation)
    if formulation.name == "subvp":
        return prediction_preconditioning(formulation, "eps", time_scale=999.0)
    return get_preconditioning(formulation.name)


class EMA:
    """Exponential moving average of parameters with the usual warm-up of the decay,
    ``min(decay, (1 + t) / (10 + t))``, so early averages are not dominated by the init."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        # One fused multi-tensor op instead of a Python loop over parameters.
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class Trainer:
    """Trains one model; ``run_dir`` receives checkpoints and metrics (rank 0 only)."""

    def __init__(self, config: TrainConfig, run_dir: str | Path | None = None) -> None:
        from driftlab.diffusion.data import BatchSampler, load_dataset
        from driftlab.diffusion.networks import build_network

        self.config = config.validate()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if config.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(config.device)
        if distributed.init_from_env(distributed.backend_for(self.device)):
            self._use_local_device()
        self.rank, self.world_size = distributed.rank(), distributed.world_size()

        self.dataset = load_dataset(
            config.data,
            split="train",
            n=config.n_train,
            seed=config.seed,
            root=config.data_root,
            resolution=config.resolution,
        )
        if config.class_conditional and self.dataset.num_classes == 0:
            raise ConfigError(
                f"class_conditional needs a labelled data set; {config.data!r} has none"
            )
        if config.batch_size % self.world_size:
            raise ConfigError(
                f"batch_size {config.batch_size} must be divisible by the number of "
                f"processes ({self.world_size})"
            )
        self.num_classes = self.dataset.num_classes if config.class_conditional else 0
        formulation_options = {}
        if config.formulation == "edm":
            # EDM's preconditioning expects the data's own std (EDM sec. 5).
            formulation_options["sigma_data"] = round(float(self.dataset.sigma_data), 4)
        self.formulation = get_formulation(config.formulation, **formulation_options)
        kind = config.network
        if kind == "auto":
            kind = "mlp" if len(self.dataset.shape) == 1 else "unet"
        torch.manual_seed(config.seed)  # network initialisation
        network_options = dict(config.network_options)
        if self.formulation.name in ("vp", "subvp"):
            # VP's c_noise is DDPM's time index 999 t (EDM Table 1): the sinusoidal embedding
            # made for it, not random Fourier features, whose scale suits log(sigma)/4.
            network_options.setdefault("embedding", "positional")
        self.net = build_network(
            kind, self.dataset.shape, num_classes=self.num_classes, **network_options
        ).to(self.device)
        self.preconditioning = default_preconditioning(self.formulation, config.prediction)
        self.ema = EMA(self.net, config.ema_decay)
        self.model: nn.Module = self.net
        if self.world_size > 1:
            self.model = nn.parallel.DistributedDataParallel(self.net)
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        # One generator for sigma, noise and label dropout, identical on every rank: each
        # rank draws the whole global batch and keeps its slice, so N processes reproduce
        # the single-process run.
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        self.batches = BatchSampler(self.dataset, config.batch_size, seed=config.seed + 2)
        self.step = 0
        self.samples_seen = 0
        self._stop_signal: int | None = None

    # ----- distributed -------------------------------------------------------------------
    def _use_local_device(self) -> None:
        """Under torchrun, each process's own GPU (``LOCAL_RANK``)."""
        if self.device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", 0))
            self.device = torch.device("cuda", local)
            torch.cuda.set_device(self.device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Drop the data-parallel wrapper and leave torchrun's process group. The wrapper's
        pending gloo work holds tensors that, destroyed during interpreter shutdown, abort
        the process; releasing them first makes every rank exit cleanly."""
        self.model = self.net
        gc.collect()
        distributed.shutdown()

    # ----- the loss ----------------------------------------------------------------------
    def denoiser(self, ema: bool = True) -> Denoiser:
        """The trained model as a denoiser ``D(x_hat, sigma, class_labels=...)``."""
        return Denoiser(self.ema.model if ema else self.net, self.preconditioning)

    def loss(
        self, x0: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """EDM eq. 8 on one global batch; returns this rank's mean loss, and the per-sample
        losses with their sigmas (for per-noise-level metrics)."""
        batch = x0.shape[0]
        sigma = self.formulation.sample_sigma(batch, self.generator)
        noise = torch.randn(x0.shape, generator=self.generator)
        cond: dict[str, torch.Tensor] = {}
        if self.num_classes:
            drop = torch.rand(batch, generator=self.generator) < self.config.label_dropout
            # The label num_classes is the null class of classifier-free guidance.
            cond["class_labels"] = torch.where(drop, self.num_classes, labels).to(self.device)
        lo, hi = self._slice(batch)
        x0, sigma, noise = x0[lo:hi], sigma[lo:hi], noise[lo:hi]
        cond = {k: v[lo:hi] for k, v in cond.items()}
        x0 = x0.to(self.device)
        noise = noise.to(self.device, x0.dtype)
        sigma64 = sigma.to(self.device)
        p = self.preconditioning
        c_skip, c_out = p.c_skip(sigma64), p.c_out(sigma64)
        c_in, c_noise = p.c_in(sigma64), p.c_noise(sigma64)
        weight = self.formulation.loss_weight(sigma64) * c_out**2
        x_hat = x0 + _expand_like(sigma64, x0) * noise
        target = (x0 - _expand_like(c_skip, x0) * x_hat) / _expand_like(c_out, x0)
        dtype = torch.bfloat16 if self.config.amp and self.device.type == "cuda" else None
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            out = self.model(_expand_like(c_in, x0) * x_hat, c_noise.to(x0.dtype), **cond)
        per_sample = (out.float() - target).pow(2).flatten(1).mean(1) * weight.to(x0.dtype)
        return per_sample.mean(), per_sample.detach(), sigma.detach()

    def _slice(self, batch: int) -> tuple[int, int]:
        local = batch // self.world_size
        return self.rank * local, (self.rank + 1) * local

    def learning_rate(self, step: int) -> float:
        """Linear warm-up to ``lr`` over ``warmup_steps``, then constant (as EDM)."""
        if self.config.warmup_steps == 0:
            return self.config.lr
        return self.config.lr * min(1.0, (step + 1) / self.config.warmup_steps)

    def train_step(self) -> float:
        x0, labels = next(self.batches)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        loss, per_sample, sigma = self.loss(x0, labels)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite loss {loss.item()} at step {self.step}")
        loss_value = loss.detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.ema.update(self.net, self.step)
        self.step += 1
        self.samples_seen += x0.shape[0]
        self._last = (per_sample, sigma)
        return loss_value.item()

    # ----- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "batches": self.batches.state_dict(),
            "step": self.step,
            "samples_seen": self.samples_seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.ema.model.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.batches.load_state_dict(state["batches"])
        self.step = int(state["step"])
        self.samples_seen = int(state["samples_seen"])

    def save(self) -> None:
        if self.run_dir is not None and self.is_main:
            save_checkpoint(self.run_dir / CHECKPOINT, self.state_dict())

    def resume(self) -> bool:
        """Load the run directory's checkpoint if there is one."""
        if self.run_dir is None or not (self.run_dir / f"{CHECKPOINT}.json").exists():
            return False
        self.load_state_dict(load_checkpoint(self.run_dir / CHECKPOINT))
        return True

    # ----- the loop ------------------------------------------------------------------------
    def _handle_signal(self, signum: int, frame: object) -> None:
        self._stop_signal = signum

    def train(self, show_progress: bool = True) -> dict[str, Any]:
        """Train until ``steps`` (or the ``minutes`` budget); checkpoint at the interval, at
        the end and on Ctrl-C/SIGTERM. Returns a summary."""
        cfg = self.config
        log = None
        if self.run_dir is not None and self.is_main:
            log = MetricsLogger(self.run_dir, tensorboard=cfg.tensorboard)
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        in_main_thread = True
        try:
            for s in previous:
                signal.signal(s, self._handle_signal)
        except ValueError:  # not the main thread: no signal handling
            in_main_thread = False
        start = time.perf_counter()
        window_start, window_samples, losses = start, 0, []
        bar = progress(total=cfg.steps, desc="train", disable=not (show_progress and self.is_main))
        bar.update(self.step)
        status = "complete"
        try:
            while self.step < cfg.steps:
                stop = self._should_stop(start)
                if stop:
                    status = "interrupted" if stop == 2 else "time budget reached"
                    break
                try:
                    losses.append(self.train_step())
                except NonFiniteLossError as err:
                    raise NonFiniteLossError(
                        f"{err}; training stopped, the last good checkpoint is kept"
                    ) from None
                window_samples += cfg.batch_size
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = time.perf_counter()
                    rate = window_samples / max(now - window_start, 1e-9)
                    mean_loss = sum(losses) / len(losses)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", samples_s=f"{rate:.0f}")
                    if log is not None:
                        log.log(
                            self.step,
                            loss=mean_loss,
                            lr=self.learning_rate(self.step - 1),
                            samples_per_s=rate,
                            **self._loss_by_noise_level(),
                        )
                    window_start, window_samples, losses = now, 0, []
                if self.step % cfg.checkpoint_every == 0:
                    self.save()
            self.save()
        finally:
            bar.close()
            if log is not None:
                log.close()
            if in_main_thread:
                for s, handler in previous.items():
                    signal.signal(s, handler)
        return {
            "status": status,
            "step": self.step,
            "seconds": time.perf_counter() - start,
            "signal": self._stop_signal,
        }

    def _should_stop(self, start: float) -> int:
        """0 to go on, 1 when the time budget is spent, 2 on Ctrl-C/SIGTERM. Under torchrun
        the ranks agree (the maximum over ranks), so that none waits forever in an
        all-reduce that the others have left."""
        stop = 2 if self._stop_signal is not None else 0
        minutes = self.config.minutes
        if not stop and minutes is not None and time.perf_counter() - start > 60 * minutes:
            stop = 1
        if self.world_size > 1:
            stop = int(distributed.all_reduce_(torch.tensor([stop], device=self.device), "max"))
        return stop

    def _loss_by_noise_level(self) -> dict[str, float]:
        """The last batch's loss in bins of log10(sigma) (EDM Fig. 5's view of training)."""
        per_sample, sigma = self._last
        bins = torch.log10(sigma.to(per_sample.device)).floor().clamp(-3, 2).long()
        out = {}
        for b in bins.unique().tolist():
            mask = bins == b
            out[f"loss_sigma_1e{b:+d}"] = float(per_sample[mask].mean())
        return out


def guided_denoiser(denoiser: Denoiser, labels: torch.Tensor, guidance: float, num_classes: int):
    """Classifier-free guidance (Ho & Salimans 2022): ``D = D_null + w (D_label - D_null)``;
    ``w = 1`` is the plain conditional model, ``w = 0`` the unconditional one."""
    check_nonnegative("guidance", guidance)
    null = torch.full_like(labels, num_classes)

    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        conditional = denoiser(x, sigma, class_labels=labels)
        if guidance == 1.0:
            return conditional
        unconditional = denoiser(x, sigma, class_labels=null)
        return unconditional + guidance * (conditional - unconditional)

    return guided


def load_trained(run_dir: str | Path) -> Trainer:
    """Rebuild a run's trainer (network, EMA, formulation) from its directory."""
    import json

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise ConfigError(f"{str(run_dir)!r} is not a training run directory (no config.json)")
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    config = TrainConfig.from_dict(saved.get("train", saved))
    trainer = Trainer(config, run_dir)
    if not trainer.resume():
        raise ConfigError(f"{str(run_dir)!r} has no checkpoint yet")
    return trainer


__all__ = [
    "EMA",
    "NonFiniteLossError",
    "TrainConfig",
    "Trainer",
    "default_preconditioning",
    "guided_denoiser",
    "load_trained",
]
