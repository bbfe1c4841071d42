"""VecEnv: the SAME_STEP autoreset convention, seeding, episode bookkeeping, normalisation
statistics, exact state round trips, and the asynchronous variant against the in-process one."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from driftlab.core.checkpoint import load_checkpoint, save_checkpoint
from driftlab.core.config import ConfigError
from driftlab.rl.deep.envs import AsyncVecEnv, VecEnv, make_env
from driftlab.rl.deep.normalization import ObservationNormalizer, RewardScaler, RunningMeanStd


def test_terminated_step_returns_reset_obs_and_real_final_obs():
    # Pushing left every step topples the pole within a few steps (termination, not the limit).
    vec = VecEnv("CartPole-v1", n_envs=1, seed=7)
    reference = gym.make("CartPole-v1")
    obs = vec.reset()
    ref_obs, _ = reference.reset(seed=7)
    np.testing.assert_array_equal(obs[0], ref_obs.astype(np.float32))
    for t in range(100):  # noqa: B007 (t counts the steps to termination)
        step = vec.step(np.array([0]))
        ref_obs, ref_reward, ref_term, _, _ = reference.step(0)
        np.testing.assert_array_equal(step.final_obs[0], ref_obs.astype(np.float32))
        assert step.raw_rewards[0] == ref_reward
        if ref_term:
            assert step.terminated[0] and not step.truncated[0]
            # The obs to act on is the next episode's first obs (the env's RNG continues).
            ref_next, _ = reference.reset()
            np.testing.assert_array_equal(step.obs[0], ref_next.astype(np.float32))
            assert not np.array_equal(step.obs[0], step.final_obs[0])
            break
        np.testing.assert_array_equal(step.obs[0], step.final_obs[0])
    else:
        pytest.fail("CartPole never terminated under constant left pushes")
    assert t < 20
    returns, lengths = vec.pop_episodes()
    assert returns == [float(t + 1)] and lengths == [t + 1]
    assert vec.pop_episodes() == ([], [])


def test_truncation_by_time_limit_with_copies_of_an_instance():
    env = gym.make("CartPole-v1", max_episode_steps=5)
    # An instance is used as copy 0 and re-made from its spec (keeping the limit) for the rest.
    vec = VecEnv(env, n_envs=2, seed=3)
    limit = 5
    vec.reset()
    # Alternating pushes keep the pole up, so only the time limit ends the episode.
    for t in range(limit):
        step = vec.step(np.array([t % 2, (t + 1) % 2]))
        assert not step.terminated.any()
        if t < limit - 1:
            assert not step.truncated.any()
            np.testing.assert_array_equal(step.obs, step.final_obs)
    assert step.truncated.all()
    assert not np.array_equal(step.obs, step.final_obs)
    # final_obs continues the episode: |x| grows little in 5 alternating pushes, while the
    # reset obs is drawn uniformly in [-0.05, 0.05].
    assert np.all(np.abs(step.obs) <= 0.05)
    returns, lengths = vec.pop_episodes()
    assert returns == [float(limit)] * 2 and lengths == [limit] * 2


def test_copy_i_is_seeded_with_seed_plus_i_and_streams_repeat():
    vec = VecEnv("CartPole-v1", n_envs=3, seed=11)
    obs = vec.reset()
    for i in range(3):
        expected, _ = gym.make("CartPole-v1").reset(seed=11 + i)
        np.testing.assert_array_equal(obs[i], expected.astype(np.float32))

    def stream(seed: int) -> np.ndarray:
        vec = VecEnv("CartPole-v1", n_envs=2, seed=seed)
        rng = np.random.default_rng(0)
        out = [vec.reset()]
        for _ in range(60):  # random actions end several episodes
            out.append(vec.step(rng.integers(0, 2, size=2)).obs)
        return np.stack(out)

    np.testing.assert_array_equal(stream(5), stream(5))
    assert not np.array_equal(stream(5), stream(6))


def test_episode_returns_are_raw_under_reward_scaling():
    vec = VecEnv("CartPole-v1", n_envs=2, seed=0, normalize_reward=True, gamma=0.9)
    vec.reset()
    rng = np.random.default_rng(1)
    lengths = []
    for _ in range(80):
        step = vec.step(rng.integers(0, 2, size=2))
        assert np.all(step.raw_rewards == 1.0)
        assert not np.allclose(step.rewards, 1.0)  # scaled
        lengths += vec.pop_episodes()[1]
    assert len(lengths) >= 3
    returns, _ = vec.pop_episodes()
    assert returns == []


def test_running_mean_std_matches_numpy_over_all_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (1, 7, 50, 3)]
    stats = RunningMeanStd((4,))
    for batch in batches:
        stats.update(batch)
    data = np.concatenate(batches)
    # The prior (mean 0, var 1, count 1e-4) shifts the result by ~1e-4 / 61 relative.
    np.testing.assert_allclose(stats.mean, data.mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(stats.var, data.var(axis=0), rtol=1e-4)
    assert stats.count == pytest.approx(61 + 1e-4)

    normalizer = ObservationNormalizer((4,), clip=1.5)
    normalizer.stats = stats
    x = data[:5]
    expected = np.clip((x - stats.mean) / np.sqrt(stats.var + 1e-8), -1.5, 1.5)
    np.testing.assert_allclose(normalizer(x), expected, rtol=1e-6)


def test_reward_scaler_divides_by_std_of_discounted_returns():
    # One env, gamma = 0.5, rewards 1, 2, 4 with the episode ending at the 2nd step:
    #   running returns R: 1, 0.5*1 + 2 = 2.5 (then reset to 0), 0*0.5 + 4 = 4
    #   var of {1, 2.5, 4} (population) = 1.5; rewards are divided by sqrt(var + 1e-8).
    scaler = RewardScaler(1, gamma=0.5)
    outputs = [
        scaler(np.array([1.0]), np.array([False])),
        scaler(np.array([2.0]), np.array([True])),
        scaler(np.array([4.0]), np.array([False])),
    ]
    # (up to the prior of count 1e-4, mean 0 and var 1)
    assert scaler.stats.mean == pytest.approx(2.5, rel=1e-3)
    assert scaler.stats.var == pytest.approx(1.5, rel=1e-3)
    assert scaler.returns[0] == 4.0
    assert outputs[2][0] == pytest.approx(4.0 / np.sqrt(1.5), rel=1e-3)
    # The first reward saw only R = 1: var = prior mix (count 1e-4, var 1) ~ 1e-4.
    assert outputs[0][0] == pytest.approx(10.0)  # 1 / sqrt(~1e-4) = ~100, clipped to 10


def test_state_dict_round_trip_restores_physics_and_rng(tmp_path):
    def run(vec: VecEnv, rng: np.random.Generator, n: int) -> list[np.ndarray]:
        out = []
        for _ in range(n):
            step = vec.step(rng.integers(0, 2, size=vec.num_envs))
            out += [step.obs, step.final_obs, step.rewards, step.terminated, step.truncated]
        return out

    env = gym.make("CartPole-v1", max_episode_steps=30)
    a = VecEnv(env, n_envs=2, seed=4, normalize_obs=True, normalize_reward=True)
    a.reset()
    rng = np.random.default_rng(2)
    run(a, rng, 13)
    save_checkpoint(tmp_path / "envs", {"envs": a.state_dict()})
    state = load_checkpoint(tmp_path / "envs")["envs"]
    assert state["exact"]
    b = VecEnv(gym.make("CartPole-v1", max_episode_steps=30), n_envs=2, seed=4,
               normalize_obs=True, normalize_reward=True)  # fmt: skip
    restored = b.load_state_dict(state)
    np.testing.assert_array_equal(restored, a.normalize(a._raw_obs))
    # 80 more steps cross several resets (termination and the 30-step limit).
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    steps_a, steps_b = run(a, rng_a, 80), run(b, rng_b, 80)
    for x, y in zip(steps_a, steps_b, strict=True):
        np.testing.assert_array_equal(x, y)
    returns_a, returns_b = a.pop_episodes()[0], b.pop_episodes()[0]
    assert returns_a[-3:] == returns_b[-3:] and len(returns_a) >= 3


def test_async_vec_env_gives_the_same_transitions():
    sync = VecEnv("CartPole-v1", n_envs=2, seed=9)
    workers = AsyncVecEnv("CartPole-v1", n_envs=2, seed=9)
    try:
        np.testing.assert_array_equal(sync.reset(), workers.reset())
        rng = np.random.default_rng(0)
        ends = 0
        for _ in range(80):
            actions = rng.integers(0, 2, size=2)
            a, b = sync.step(actions), workers.step(actions)
            for field in ("obs", "final_obs", "rewards", "terminated", "truncated"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
            ends += int(a.done.sum())
        assert ends >= 3
        assert sync.pop_episodes() == workers.pop_episodes()
    finally:
        workers.close()


def test_bad_env_id_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="NoSuchEnv-v0") as info:
        VecEnv("NoSuchEnv-v0")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="no_such_module"):
        make_env("no_such_module:Env-v0")
    with pytest.raises(ConfigError, match="unregistered _Unregistered"):
        VecEnv(_Unregistered(), n_envs=2)


class _Unregistered(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,))
    action_space = gym.spaces.Discrete(2)
