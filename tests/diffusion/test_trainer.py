"""Training: the loss by hand, exact resume, data parallelism, failures, and the CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from driftlab.cli import main
from driftlab.core import ConfigError, load_checkpoint
from driftlab.diffusion import GaussianMixture, get_formulation, sample
from driftlab.diffusion.runs import generate, train_run
from driftlab.diffusion.trainer import NonFiniteLossError, TrainConfig, Trainer, load_trained

SMALL = {"hidden": 32, "depth": 2}


def _config(**changes):
    base = dict(
        data="moons",
        n_train=512,
        steps=20,
        batch_size=64,
        warmup_steps=2,
        network_options=SMALL,
        tensorboard=False,
        log_every=5,
        checkpoint_every=10,
    )
    base.update(changes)
    return TrainConfig(**base)


def test_loss_is_the_weighted_denoiser_error():
    """EDM eq. 8: the trainer's loss equals lambda(sigma) ||D(x0 + sigma n) - x0||^2 / dim
    computed directly from the denoiser, for each formulation's preconditioning."""
    for name in ("edm", "vp", "ve", "fm"):
        trainer = Trainer(_config(formulation=name))
        x0, labels = next(trainer.batches)
        state = trainer.generator.get_state()
        loss, per_sample, sigma = trainer.loss(x0, labels)
        trainer.generator.set_state(state)
        assert float(loss.detach()) == pytest.approx(float(per_sample.mean()), rel=1e-6)
        sigma2 = trainer.formulation.sample_sigma(x0.shape[0], trainer.generator)
        noise = torch.randn(x0.shape, generator=trainer.generator)
        x_hat = x0.double() + sigma2[:, None] * noise.double()
        with torch.no_grad():
            D = trainer.denoiser(ema=False)(x_hat, sigma2)
        direct = trainer.formulation.loss_weight(sigma2) * ((D - x0.double()) ** 2).mean(1)
        torch.testing.assert_close(per_sample.double(), direct, rtol=2e-4, atol=1e-6)
        assert torch.equal(sigma, sigma2)


def test_resume_is_bit_identical(tmp_path):
    full = Trainer(_config(steps=24))
    full.train(show_progress=False)
    train_run(_config(steps=12), tmp_path / "run", show_progress=False)
    summary = train_run(
        _config(steps=12),
        tmp_path / "run",
        resume=True,
        overrides={"steps": 24},
        show_progress=False,
    )
    assert summary["resumed"] and summary["step"] == 24
    resumed = load_trained(tmp_path / "run")
    for (name, a), b in zip(
        full.net.state_dict().items(), resumed.net.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    for a, b in zip(full.ema.model.parameters(), resumed.ema.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_two_processes_equal_one(tmp_path):
    """torchrun with 2 CPU processes (gloo) and global batch 64 reproduces the
    single-process run with the same global batch, within float tolerance."""
    script = Path(__file__).with_name("_ddp_train.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one"), "6"], env=env, check=True
    )
    assert one.returncode == 0
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",  # torchrun binds its own free port
            str(script),
            str(tmp_path / "two"),
            "6",
        ],
        env=env,
        check=True,
        timeout=300,
    )
    a = load_checkpoint(tmp_path / "one")["net"]
    b = load_checkpoint(tmp_path / "two")["net"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_cli_under_torchrun(tmp_path):
    """``torchrun -m driftlab.cli diffusion train``: rank 0 owns the run directory, both ranks
    train in step, and the run completes with a checkpoint."""
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",  # torchrun binds its own free port
            "-m",
            "driftlab.cli",
            "diffusion",
            "train",
            "--data",
            "moons",
            "--n-train",
            "256",
            "--hidden",
            "16",
            "--depth",
            "1",
            "--batch-size",
            "32",
            "--steps",
            "8",
            "--no-tensorboard",
            "--run-dir",
            str(run),
        ],
        env=env,
        check=False,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert load_checkpoint(run / "checkpoint")["step"] == 8


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    original = Trainer.loss

    def poisoned(self, x0, labels):
        loss, per_sample, sigma = original(self, x0, labels)
        return (loss * float("nan") if self.step == 15 else loss), per_sample, sigma

    monkeypatch.setattr(Trainer, "loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="non-finite loss nan at step 15"):
        train_run(_config(steps=20), tmp_path / "run", show_progress=False)
    assert load_checkpoint(tmp_path / "run" / "checkpoint")["step"] == 10
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


def test_trained_model_sampled_in_another_formulation(tmp_path):
    """A small model trained as Flow Matching, sampled with Heun in EDM and VP coordinates
    and with DDIM: all land on the two moons, close to the FM samples."""
    train_run(
        _config(formulation="fm", steps=300, n_train=2048, batch_size=256),
        tmp_path / "fm",
        show_progress=False,
    )
    trainer = load_trained(tmp_path / "fm")
    x_fm, _ = generate(trainer, n=500, sampler="heun", steps=30)
    for formulation, sampler in (("edm", "heun"), ("vp", "ddim"), ("ve", "dpmpp-2m")):
        x, _ = generate(trainer, n=500, sampler=sampler, steps=60, formulation=formulation)
        assert torch.isfinite(x).all()
        gap = (x - x_fm).norm(dim=1).median()
        assert gap < 0.1, f"{formulation}/{sampler}: median gap {gap:.3f}"


def test_bad_training_settings():
    with pytest.raises(ConfigError, match="data must be one of"):
        _config(data="cifar").validate()
    with pytest.raises(ConfigError, match="lr must be > 0"):
        _config(lr=0.0).validate()
    with pytest.raises(ConfigError, match="class_conditional needs a labelled data set"):
        Trainer(_config(class_conditional=True))


def test_cli_train_sample_eval_and_interrupt(tmp_path):
    run = tmp_path / "moons"
    base = [
        "diffusion",
        "train",
        "--data",
        "moons",
        "--n-train",
        "1024",
        "--hidden",
        "32",
        "--depth",
        "2",
        "--batch-size",
        "128",
        "--no-tensorboard",
        "--run-dir",
        str(run),
    ]
    assert main([*base, "--steps", "40", "--log-every", "10"]) == 0
    for name in (
        "config.json",
        "metrics.jsonl",
        "checkpoint.safetensors",
        "samples.png",
        "loss.png",
    ):
        assert (run / name).exists(), name
    assert main([*base, "--steps", "40"]) == 2  # exists, neither --resume nor --overwrite
    assert (
        main(
            [
                "diffusion",
                "sample",
                "--run-dir",
                str(run),
                "--sampler",
                "euler",
                "--steps",
                "10",
                "--out",
                str(tmp_path / "s.safetensors"),
                "--n",
                "50",
            ]
        )
        == 0
    )
    assert load_checkpoint(tmp_path / "s")["samples"].shape == (50, 2)
    assert (
        main(
            [
                "diffusion",
                "sample",
                "--run-dir",
                str(run),
                "--sampler",
                "heun",
                "--steps",
                "8",
                "--formulation",
                "fm",
                "--out",
                str(tmp_path / "s.png"),
                "--trajectories",
                str(tmp_path / "paths.png"),
                "--n",
                "200",
            ]
        )
        == 0
    )
    assert (tmp_path / "s.png").exists() and (tmp_path / "paths.png").exists()
    assert (
        main(["diffusion", "sample", "--run-dir", str(run), "--out", str(tmp_path / "s.txt")]) == 2
    )
    assert main(["diffusion", "eval", "--run-dir", str(run), "--steps", "10", "--n", "300"]) == 0
    report = json.loads((run / "eval.json").read_text())
    for key in ("swd", "swd_floor", "mmd", "bits_per_dim"):
        assert isinstance(report[key], float), key

    # Ctrl-C: the run stops cleanly with a checkpoint and --resume finishes it.
    slow = tmp_path / "slow"
    cmd = [sys.executable, "-m", "driftlab.cli", *base[:-1], str(slow), "--steps", "100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Interrupt once training has logged a step (a loaded machine can take a while to start).
    metrics = slow / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert json.loads((slow / "run.json").read_text())["status"] == "interrupted"
    step = load_checkpoint(slow / "checkpoint")["step"]
    assert 0 < step < 100000
    assert main([*base[:-1], str(slow), "--resume", "--steps", str(step + 5)]) == 0
    assert load_checkpoint(slow / "checkpoint")["step"] == step + 5


def test_oracle_checks_still_hold_for_samplers_on_trained_denoisers():
    """Sanity: sampling machinery used by the trainer is the oracle-tested one."""
    gm = GaussianMixture.ring()
    noise = torch.randn(10, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert sample(gm, noise, get_formulation("edm"), "heun", 5).shape == (10, 2)


def test_image_folder_u_net_and_tensorboard(tmp_path):
    """A folder of the user's PNGs (two class subfolders) trains a class-conditional U-Net
    for a few steps; TensorBoard events are written beside metrics.jsonl."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for label in ("cats", "dogs"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(12):
            pixels = (torch.rand(12, 12, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.png")
    config = _config(
        data="folder",
        data_root=str(tmp_path / "images"),
        resolution=8,
        n_train=None,
        class_conditional=True,
        batch_size=8,
        steps=3,
        network_options={"channels": 8},
        tensorboard=True,
        log_every=1,
    )
    train_run(config, tmp_path / "run", show_progress=False)
    trainer = load_trained(tmp_path / "run")
    assert trainer.dataset.shape == (3, 8, 8) and trainer.num_classes == 2
    x, labels = generate(trainer, n=4, sampler="euler", steps=3, guidance=2.0)
    assert x.shape == (4, 3, 8, 8) and labels.tolist() == [0, 1, 0, 1]
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "samples.png").exists()


def test_digits_eval_writes_fd_and_class_accuracy(tmp_path, monkeypatch):
    """``driftlab diffusion eval`` on a (barely trained) class-conditional digits model writes
    the Frechet distance, its train-vs-test floor and per-class accuracy to eval.json."""
    monkeypatch.setenv("DRIFTLAB_CACHE", str(tmp_path / "cache"))
    config = _config(
        data="digits",
        n_train=None,
        class_conditional=True,
        batch_size=16,
        steps=2,
        network_options={"channels": 8},
    )
    train_run(config, tmp_path / "digits", show_progress=False)
    assert (
        main(
            [
                "diffusion",
                "eval",
                "--run-dir",
                str(tmp_path / "digits"),
                "--steps",
                "3",
                "--n",
                "40",
                "--guidance",
                "2",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "digits" / "eval.json").read_text())
    assert report["fd"] > report["fd_floor"] > 0  # two steps of training: far from the data
    assert set(report["class_accuracy"]["per_class"]) == {str(c) for c in range(10)}
    assert 0.0 <= report["class_accuracy"]["mean"] <= 1.0
    assert len(report["class_distribution"]) == 10
    assert report["classifier_test_accuracy"] > 0.95
