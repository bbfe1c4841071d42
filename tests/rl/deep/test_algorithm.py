"""The shared learner mechanics (seeding, exact resume, save/load, Ctrl-C, evaluate, config
errors), exercised through PPO with a tiny rollout."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch

from driftlab.core.checkpoint import save_checkpoint
from driftlab.core.config import ConfigError
from driftlab.core.metrics import MetricsLogger, read_metrics
from driftlab.rl.deep import PPO, Algorithm, get_algorithm

# 2 envs x 16 steps = 32 environment steps per iteration.
SMALL = {"n_envs": 2, "n_steps": 16, "batch_size": 16, "n_epochs": 2}


def _params(algo: Algorithm) -> torch.Tensor:
    return torch.cat(
        [p.detach().reshape(-1) for m in algo.modules().values() for p in m.parameters()]
    )


def _assert_same_training_state(a: Algorithm, b: Algorithm) -> None:
    torch.testing.assert_close(_params(a), _params(b), rtol=0, atol=0)
    state_a, state_b = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(state_a[0][key], state_b[0][key], rtol=0, atol=0)
    assert a.num_steps == b.num_steps and a.num_updates == b.num_updates
    np.testing.assert_array_equal(a.obs, b.obs)
    assert list(a.recent_returns) == list(b.recent_returns)


def test_same_seed_gives_identical_parameters():
    runs = [PPO("CartPole-v1", seed=s, **SMALL).learn(160, show_progress=False) for s in (0, 0, 1)]
    _assert_same_training_state(runs[0], runs[1])
    assert not torch.equal(_params(runs[0]), _params(runs[2]))
    assert runs[0].num_steps == 160 and runs[0].num_updates == 5 * 2 * 2


def test_save_load_learn_equals_learning_in_one_process(tmp_path):
    straight = PPO("CartPole-v1", seed=3, **SMALL)
    straight.learn(96, show_progress=False)
    straight.learn(64, show_progress=False)

    first = PPO("CartPole-v1", seed=3, **SMALL)
    first.learn(96, show_progress=False)
    first.save(tmp_path / "model")
    resumed = PPO.load(tmp_path / "model")
    assert resumed.num_steps == 96
    resumed.learn(64, show_progress=False)
    _assert_same_training_state(straight, resumed)


def test_ctrl_c_writes_checkpoint_and_resume_reaches_the_same_parameters(tmp_path, monkeypatch):
    # Linear schedules decay to the end of the interrupted learn() call, so the resumed run
    # must keep that end: learn(total - num_steps) after loading.
    config = {**SMALL, "lr_schedule": "linear", "clip_schedule": "linear"}
    total = 192
    straight = PPO("CartPole-v1", seed=1, **config).learn(total, show_progress=False)

    algo = PPO("CartPole-v1", seed=1, **config)
    calls = {"n": 0}
    original = algo.iteration

    def interrupted() -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original()

    monkeypatch.setattr(algo, "iteration", interrupted)
    with pytest.raises(KeyboardInterrupt):
        algo.learn(total, show_progress=False, checkpoint=tmp_path / "model")
    saved = json.loads((tmp_path / "model.json").read_text())
    assert saved["s:counters"]["s:num_steps"] == 64  # two complete iterations

    resumed = Algorithm.load(tmp_path / "model")
    assert isinstance(resumed, PPO) and resumed.num_steps == 64
    resumed.learn(total - resumed.num_steps, show_progress=False)
    _assert_same_training_state(straight, resumed)


def test_periodic_checkpoints_and_metrics(tmp_path):
    algo = PPO("CartPole-v1", seed=0, **SMALL)
    with MetricsLogger(tmp_path) as logger:
        algo.learn(
            320, show_progress=False, logger=logger, log_every=100,
            checkpoint=tmp_path / "model", checkpoint_every=128,
        )  # fmt: skip
    records = read_metrics(tmp_path / "metrics.jsonl")
    episodes = [r for r in records if "episode_return" in r]
    updates = [r for r in records if "policy_loss" in r]
    assert len(episodes) >= 5
    assert all(r["episode_return"] == r["episode_length"] for r in episodes)  # CartPole: +1/step
    # first iteration boundary at or past 100, then at or past 128 + 100
    assert [r["step"] for r in updates] == [128, 256]
    assert PPO.load(tmp_path / "model").num_steps == 320


def test_save_load_predicts_the_same_actions(tmp_path):
    algo = PPO("CartPole-v1", seed=0, **SMALL).learn(96, show_progress=False)
    algo.save(tmp_path / "model")
    loaded = PPO.load(tmp_path / "model")
    obs = np.random.default_rng(0).normal(0, 0.5, size=(64, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(obs), algo.predict(obs))
    assert loaded.predict(obs[0]).shape == ()
    assert loaded.evaluate(3) == algo.evaluate(3)


def test_observation_statistics_are_saved_with_the_model(tmp_path):
    algo = PPO("CartPole-v1", seed=0, normalize_obs=True, **SMALL).learn(96, show_progress=False)
    stats = algo.envs.obs_normalizer.stats
    assert stats.count > 96  # every observation seen in training updated the statistics
    algo.save(tmp_path / "model")
    loaded = PPO.load(tmp_path / "model")
    loaded_stats = loaded.envs.obs_normalizer.stats
    np.testing.assert_array_equal(loaded_stats.mean, stats.mean)
    np.testing.assert_array_equal(loaded_stats.var, stats.var)
    obs = np.random.default_rng(0).normal(0, 1.0, size=(32, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.envs.normalize(obs), algo.envs.normalize(obs))
    np.testing.assert_array_equal(loaded.predict(obs), algo.predict(obs))
    # predict and evaluate never move the statistics
    loaded.evaluate(2)
    np.testing.assert_array_equal(loaded_stats.mean, stats.mean)


def test_evaluate_returns_documented_keys():
    algo = PPO("CartPole-v1", seed=0, **SMALL)
    report = algo.evaluate(episodes=4)
    assert set(report) >= {"mean_return", "std_return", "mean_length", "returns"}
    assert len(report["returns"]) == 4
    assert report["mean_return"] == pytest.approx(np.mean(report["returns"]))
    assert report["std_return"] == pytest.approx(np.std(report["returns"]))
    assert algo.evaluate(episodes=4) == report  # seeded: the same episodes again
    stochastic = algo.evaluate(episodes=4, deterministic=False, seed=5)
    assert stochastic["returns"] != report["returns"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"clip_range": 1.5}, "clip_range must be in .*1.5"),
        ({"n_steps": 0}, "n_steps .*0"),
        ({"learning_rate": -1.0}, "learning_rate .*-1.0"),
        ({"activation": "gelu"}, "activation .*gelu"),
        ({"no_such_key": 1}, "unknown hyperparameter 'no_such_key' for ppo"),
        ({"seed": -1}, "seed .*-1"),
    ],
)
def test_bad_hyperparameters_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        PPO("CartPole-v1", **overrides)


def test_bad_names_and_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="sac"):
        get_algorithm("sac")
    with pytest.raises(ConfigError, match="NoSuchEnv-v0"):
        PPO("NoSuchEnv-v0")
    with pytest.raises(ConfigError, match="total_steps"):
        PPO("CartPole-v1", **SMALL).learn(0)
    save_checkpoint(tmp_path / "other", {"weights": torch.zeros(2)})
    with pytest.raises(ConfigError, match="not a saved driftlab RL model"):
        Algorithm.load(tmp_path / "other")


def test_real_ctrl_c_mid_iteration_finishes_it_before_the_checkpoint(tmp_path, monkeypatch):
    # SIGINT arrives in the middle of the 2nd rollout; learn() completes that iteration,
    # saves, then raises, and the resumed run equals an uninterrupted one.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        total = 192
        straight = PPO("CartPole-v1", seed=2, **SMALL).learn(total, show_progress=False)
        algo = PPO("CartPole-v1", seed=2, **SMALL)
        step = algo.envs.step
        calls = {"n": 0}

        def step_with_ctrl_c(actions: np.ndarray):
            calls["n"] += 1
            if calls["n"] == 16 + 5:  # the 6th step of the 2nd rollout of 16 steps
                signal.raise_signal(signal.SIGINT)
            return step(actions)

        monkeypatch.setattr(algo.envs, "step", step_with_ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            algo.learn(total, show_progress=False, checkpoint=tmp_path / "model")
        assert algo.num_steps == 64 and calls["n"] == 32
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
        resumed = Algorithm.load(tmp_path / "model")
        assert resumed.num_steps == 64
        resumed.learn(total - resumed.num_steps, show_progress=False)
        _assert_same_training_state(straight, resumed)
    finally:
        signal.signal(signal.SIGINT, previous)
