"""MuJoCo environments (the optional extra ``mujoco``): a learner on HalfCheetah-v5 and
Hopper-v5, termination on Hopper, save/load, and the exact environment state behind resume.
Skipped when MuJoCo is not installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("mujoco")

from driftlab.rl.deep import TD3
from driftlab.rl.deep.envs import VecEnv

SMALL = {"hidden_sizes": (32, 32), "batch_size": 32, "learning_starts": 50, "buffer_size": 2000}


@pytest.fixture(autouse=True)
def _mujoco_log_in_tmp(tmp_path, monkeypatch) -> None:
    # MuJoCo writes its warnings to MUJOCO_LOG.TXT in the working directory.
    monkeypatch.chdir(tmp_path)


def test_td3_on_halfcheetah_saves_and_resumes_exactly(tmp_path) -> None:
    algo = TD3("HalfCheetah-v5", seed=0, **SMALL)
    algo.learn(300, show_progress=False)
    assert algo.num_steps == 300
    assert algo.replay_buffer().size == 300
    # HalfCheetah never terminates: episodes end only by the 1000-step time limit.
    assert algo.replay_buffer().terminated.sum() == 0
    algo.save(tmp_path / "td3", include_buffer=True)
    loaded = TD3.load(tmp_path / "td3")
    obs = np.random.default_rng(0).normal(size=(4, 17)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(obs), algo.predict(obs))
    # Continuing both from the same physical state, RNGs and buffer gives the same networks.
    algo.learn(40, show_progress=False)
    loaded.learn(40, show_progress=False)
    for name, module in algo.modules().items():
        for p, q in zip(module.parameters(), loaded.modules()[name].parameters(), strict=True):
            assert torch.equal(p, q), name
    result = algo.evaluate(episodes=1)
    assert result["mean_length"] == 1000
    assert np.isfinite(result["mean_return"])


def test_td3_on_hopper_stores_terminations_with_the_real_final_observation() -> None:
    algo = TD3("Hopper-v5", seed=0, **SMALL)
    algo.learn(300, show_progress=False)
    buffer = algo.replay_buffer()
    terminated = buffer.terminated[: buffer.size].numpy().astype(bool)
    next_obs = buffer.next_obs[: buffer.size].numpy()
    # Hopper-v5 ends an episode (terminated, never truncated before 1000 steps) when the
    # torso height z = obs[0] leaves (0.7, inf) or its angle obs[1] leaves (-0.2, 0.2). A
    # stored s' that is the next episode's reset state would be healthy, so the flag must
    # match the health of s' exactly.
    unhealthy = (next_obs[:, 0] <= 0.7) | (np.abs(next_obs[:, 1]) >= 0.2)
    assert terminated.sum() >= 3  # random actions topple the hopper within tens of steps
    np.testing.assert_array_equal(terminated, unhealthy)


@pytest.mark.parametrize("env_id", ["HalfCheetah-v5", "Hopper-v5"])
def test_vecenv_state_restores_mujoco_exactly(env_id: str) -> None:
    rng = np.random.default_rng(0)
    source = VecEnv(env_id, n_envs=2, seed=0)
    source.reset()
    size = source.single_action_space.shape[0]
    for _ in range(30):
        source.step(rng.uniform(-1, 1, (2, size)).astype(np.float32))
    state = source.state_dict()
    assert state["exact"]
    actions = rng.uniform(-1, 1, (200, 2, size)).astype(np.float32)
    expected = [source.step(a) for a in actions]

    restored = VecEnv(env_id, n_envs=2, seed=0)
    restored.load_state_dict(state)
    steps = [restored.step(a) for a in actions]
    # 200 steps: contact-rich HalfCheetah turns any difference in the solver's warm start
    # into whole units, and Hopper passes through resets (whose noise comes from the RNG).
    if env_id == "Hopper-v5":
        assert sum(int(s.terminated.sum()) for s in expected) >= 2
    for want, got in zip(expected, steps, strict=True):
        for field in ("obs", "final_obs", "raw_rewards", "terminated", "truncated"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field), field)
    restored.close()
    source.close()
