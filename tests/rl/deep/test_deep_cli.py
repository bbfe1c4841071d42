"""``driftlab rl train / eval / record``: run directories, exact resume after Ctrl-C, one-line
errors with exit code 2, evaluation and GIF recording."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from driftlab.cli import main
from driftlab.core.metrics import read_metrics
from driftlab.rl.deep import PPO, Algorithm
from driftlab.rl.deep.cli import parse_overrides, parse_value

# The CartPole zoo preset collects 8 envs x 32 steps = 256 steps per iteration.
TRAIN = ["rl", "train", "ppo", "--env", "CartPole-v1", "--steps", "1024", "--eval-episodes", "2"]


def _params(algo: Algorithm) -> torch.Tensor:
    return torch.cat(
        [p.detach().reshape(-1) for m in algo.modules().values() for p in m.parameters()]
    )


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_parse_values_without_evaluating():
    assert parse_value("1e-3") == 0.001
    assert parse_value("8") == 8 and isinstance(parse_value("8"), int)
    assert parse_value("[128, 128]") == [128, 128]
    assert parse_value("True") is True and parse_value("false") is False
    assert parse_value("None") is None and parse_value("null") is None
    assert parse_value("relu") == "relu"
    assert parse_value("__import__('os').getcwd()") == "__import__('os').getcwd()"
    assert parse_overrides(["gamma=0.9", " n_epochs = 5"]) == {"gamma": 0.9, "n_epochs": 5}


def test_train_writes_the_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, "--run-dir", str(run), "--set", "n_epochs=5"]) == 0
    out = capsys.readouterr().out
    assert "ppo on CartPole-v1 after 1024 steps" in out and "learning_curve.png" in out
    for name in ("config.json", "metrics.jsonl", "model.json", "model.safetensors",
                 "learning_curve.png", "eval.json", "run.json"):  # fmt: skip
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    config = json.loads((run / "config.json").read_text())
    assert config["algorithm"] == "ppo" and config["env"] == "CartPole-v1"
    assert config["overrides"] == {"n_epochs": 5, "total_steps": 1024, "eval_episodes": 2}
    assert config["hyperparameters"]["n_envs"] == 8  # the preset fills the rest
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    report = json.loads((run / "eval.json").read_text())
    assert report["steps"] == 1024 and len(report["returns"]) == 2
    assert {"mean_return", "std_return"} <= set(report)
    episodes = [r for r in read_metrics(run / "metrics.jsonl") if "episode_return" in r]
    assert len(episodes) > 10
    with Image.open(run / "learning_curve.png") as image:
        assert image.size[0] > 300
    assert PPO.load(run / "model").num_steps == 1024


def test_interrupted_run_resumes_to_the_same_parameters(tmp_path, capsys, monkeypatch):
    straight = tmp_path / "straight"
    assert main([*TRAIN, "--run-dir", str(straight)]) == 0

    calls = {"n": 0}
    iteration = PPO.iteration

    def interrupted(self: PPO) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return iteration(self)

    run = tmp_path / "run"
    monkeypatch.setattr(PPO, "iteration", interrupted)
    assert main([*TRAIN, "--run-dir", str(run)]) == 130
    assert "interrupted at step 512 of 1024" in capsys.readouterr().out
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert PPO.load(run / "model").num_steps == 512
    assert (run / "learning_curve.png").is_file()
    monkeypatch.setattr(PPO, "iteration", iteration)

    # A run dir is never reused by accident.
    assert main([*TRAIN, "--run-dir", str(run)]) == 2
    assert "already exists; pass --resume" in _error_line(capsys)
    assert main([*TRAIN, "--run-dir", str(run), "--resume"]) == 2
    assert "drop --steps, --eval-episodes" in _error_line(capsys)

    resume = ["rl", "train", "ppo", "--env", "CartPole-v1", "--run-dir", str(run), "--resume"]
    assert main(resume) == 0
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    torch.testing.assert_close(
        _params(PPO.load(run / "model")), _params(PPO.load(straight / "model")), rtol=0, atol=0
    )
    # The steps trained twice are logged once.
    logged = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "episode_return" in r]
    expected = [
        r["step"] for r in read_metrics(straight / "metrics.jsonl") if "episode_return" in r
    ]
    assert logged == expected

    assert main([*TRAIN, "--run-dir", str(run), "--overwrite", "--steps", "256"]) == 0
    assert PPO.load(run / "model").num_steps == 256


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rl", "train", "sac", "--env", "CartPole-v1"], "unknown algorithm 'sac'; allowed: dqn"),
        ([*TRAIN, "--set", "clip_range=2"], "clip_range must be in [0.0, 1.0], got 2.0"),
        ([*TRAIN, "--set", "clip_range"], "--set takes key=value, got 'clip_range'"),
        ([*TRAIN, "--set", "no_such_key=1"], "unknown hyperparameter 'no_such_key' for ppo"),
        (["rl", "train", "ppo", "--env", "NoSuchEnv-v0"], "unknown environment 'NoSuchEnv-v0'"),
        ([*TRAIN, "--threads", "0"], "threads must be >= 1, got 0"),
    ],
)
def test_config_errors_are_one_line_and_leave_no_run_dir(tmp_path, capsys, argv, message):
    run = tmp_path / "run"
    assert main([*argv, "--run-dir", str(run)]) == 2
    line = _error_line(capsys)
    assert line.startswith("driftlab: error: ") and message in line, line
    assert not run.exists()


def test_eval_and_record(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, "--run-dir", str(run), "--steps", "512"]) == 0
    capsys.readouterr()
    assert main(["rl", "eval", str(run), "--episodes", "3"]) == 0
    assert "over 3 deterministic episodes" in capsys.readouterr().out
    report = json.loads((run / "eval.json").read_text())
    assert report["episodes"] == 3 and len(report["returns"]) == 3
    assert report["mean_return"] == PPO.load(run / "model").evaluate(3)["mean_return"]
    assert main(["rl", "eval", str(run), "--episodes", "3", "--stochastic"]) == 0
    assert json.loads((run / "eval.json").read_text())["deterministic"] is False

    gif = tmp_path / "cartpole.gif"
    assert main(["rl", "record", str(run), "--out", str(gif), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    with Image.open(gif) as image:
        assert image.n_frames > 5 and image.size == (600, 400)
    # the reset frame and one per step (+1 reward each); Pillow merges repeated frames
    match = re.search(r"(\d+) frames, return (\d+)\.0", out)
    assert match and int(match[1]) == int(match[2]) + 1 >= image.n_frames

    assert main(["rl", "eval", str(tmp_path / "missing")]) == 2
    assert "no saved model" in _error_line(capsys)
    assert main(["rl", "record", str(run), "--out", str(tmp_path / "x.png")]) == 2
    assert "--out must be a .gif file" in _error_line(capsys)


def test_demo_stage_trains_evaluates_and_draws(tmp_path):
    from driftlab.rl.deep.demo import run_demo

    summary = run_demo(tmp_path, seed=0, steps=512)
    assert "PPO on CartPole-v1, 512 steps" in summary
    assert str(tmp_path / "learning_curve.png") in summary
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["steps"] == 512 and len(report["returns"]) == 20
    assert (tmp_path / "learning_curve.png").stat().st_size > 10_000
    assert PPO.load(tmp_path / "model").num_steps == 512


def test_rolling_mean_of_the_learning_curve():
    from driftlab.rl.deep.plots import rolling_mean

    # window 2: [1], [1, 2], [2, 3], [3, 5]
    np.testing.assert_allclose(rolling_mean(np.array([1.0, 2.0, 3.0, 5.0]), 2), [1, 1.5, 2.5, 4])
    assert rolling_mean(np.array([]), 3).shape == (0,)
