"""Run directories, checkpoints, metrics, config validation and seeding."""

import json
import random

import numpy as np
import pytest
import torch

from driftlab.core import (
    ConfigError,
    MetricsLogger,
    RunDir,
    check_choice,
    check_in_range,
    check_int,
    check_positive,
    load_checkpoint,
    make_generator,
    save_checkpoint,
    seed_everything,
)
from driftlab.core.metrics import read_metrics


def test_run_dir_refuses_existing_and_records_status(tmp_path):
    path = tmp_path / "run"
    with RunDir.create(path, {"lr": 0.1}) as run:
        assert json.loads((path / "config.json").read_text()) == {"lr": 0.1}
        assert run.status() == "running"
    assert run.status() == "complete"
    with pytest.raises(ConfigError, match="already exists; pass --resume"):
        RunDir.create(path, {"lr": 0.2})
    resumed = RunDir.create(path, {"lr": 0.2}, resume=True)
    assert resumed.config == {"lr": 0.1}  # the saved config wins on resume
    fresh = RunDir.create(path, {"lr": 0.3}, overwrite=True)
    assert json.loads((fresh.path / "config.json").read_text()) == {"lr": 0.3}


def test_run_dir_marks_failures_and_interrupts(tmp_path):
    with pytest.raises(RuntimeError), RunDir.create(tmp_path / "a", {}) as run:
        raise RuntimeError("boom")
    assert run.status() == "failed"
    with pytest.raises(KeyboardInterrupt), RunDir.create(tmp_path / "b", {}) as run:
        raise KeyboardInterrupt
    assert run.status() == "interrupted"


def test_run_dir_never_deletes_foreign_directories(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="not a driftlab run directory"):
        RunDir.create(tmp_path / "mine", {}, overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").exists()
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        RunDir.create(tmp_path / "none", {}, resume=True)


def test_checkpoint_round_trip_with_optimizer_and_rng(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": torch.get_rng_state(),
        "step": 7,
        "pair": (1, 2.5),
    }
    save_checkpoint(tmp_path / "ckpt", state)
    assert (tmp_path / "ckpt.safetensors").exists() and (tmp_path / "ckpt.json").exists()
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded["step"] == 7 and loaded["pair"] == (1, 2.5)
    assert torch.equal(loaded["rng"], state["rng"])
    model2 = torch.nn.Linear(3, 2)
    model2.load_state_dict(loaded["model"])
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])
    assert torch.equal(
        opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing")


def test_metrics_jsonl(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log(1, loss=torch.tensor(0.5), lr=1e-3)
        log.log(2, loss=float("nan"))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["loss"] == 0.5 and rows[1]["loss"] == "nan"


def test_validators_name_value_and_allowed():
    with pytest.raises(ConfigError, match=r"sampler must be one of 'a', 'b'; got 'c'"):
        check_choice("sampler", "c", ["a", "b"])
    with pytest.raises(ConfigError, match="steps must be >= 1, got 0"):
        check_int("steps", 0, minimum=1)
    with pytest.raises(ConfigError, match=r"steps must be an integer, got 1\.5"):
        check_int("steps", 1.5)
    with pytest.raises(ConfigError, match=r"lr must be > 0, got -1\.0"):
        check_positive("lr", -1)
    with pytest.raises(ConfigError, match=r"eta must be in \[0, 1\], got 2.0"):
        check_in_range("eta", 2, 0, 1)
    with pytest.raises(ConfigError, match="must be a number, got nan"):
        check_positive("lr", float("nan"))


def test_seeding_is_deterministic():
    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    seed_everything(3)
    a = draw()
    seed_everything(3)
    assert draw() == a
    assert make_generator(None) is None
    g1, g2 = make_generator(5), make_generator(5)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))
