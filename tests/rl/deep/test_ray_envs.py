"""RayVecEnv on a local Ray instance: the same transitions as VecEnv for a seeded action sequence
(terminations, truncations, autoreset and final_obs), an exact state round trip through the
actors, and a short PPO run selected by ``vec_env="ray"``. Skipped without the ``ray`` extra."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from driftlab.core.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from driftlab.core.config import ConfigError  # noqa: E402
from driftlab.rl.deep import PPO  # noqa: E402
from driftlab.rl.deep.envs import VecEnv  # noqa: E402
from driftlab.rl.deep.presets import hyperparameters  # noqa: E402
from driftlab.rl.deep.ray_envs import RayVecEnv  # noqa: E402

FIELDS = ("obs", "final_obs", "rewards", "raw_rewards", "terminated", "truncated")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def _actions(env: VecEnv, rng: np.random.Generator) -> np.ndarray:
    space = env.single_action_space
    if hasattr(space, "n"):
        return rng.integers(0, space.n, size=env.num_envs)
    return rng.uniform(space.low, space.high, size=(env.num_envs, *space.shape))


def _run(env: VecEnv, rng: np.random.Generator, steps: int) -> list:
    return [env.step(_actions(env, rng)) for _ in range(steps)]


def _assert_same(steps_a: list, steps_b: list) -> None:
    for a, b in zip(steps_a, steps_b, strict=True):
        for field in FIELDS:
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


@pytest.fixture(scope="module")
def cartpole():
    """Three CartPole copies on two actors (two copies, then one), shared by the tests."""
    env = RayVecEnv("CartPole-v1", n_envs=3, seed=5, envs_per_actor=2)
    yield env
    env.close()


def _compare(local: VecEnv, remote: RayVecEnv, steps: int, ending: str) -> None:
    np.testing.assert_array_equal(local.reset(), remote.reset())
    steps_local = _run(local, np.random.default_rng(1), steps)
    steps_remote = _run(remote, np.random.default_rng(1), steps)
    _assert_same(steps_local, steps_remote)
    ends = sum(int(getattr(s, ending).sum()) for s in steps_local)
    assert ends >= (5 if ending == "terminated" else local.num_envs)
    # Where an episode ended, obs is the next episode's first observation, not final_obs.
    ended = next(s for s in steps_remote if getattr(s, ending).any())
    i = int(np.flatnonzero(getattr(ended, ending))[0])
    assert not np.array_equal(ended.obs[i], ended.final_obs[i])
    assert local.pop_episodes() == remote.pop_episodes()


def test_terminations_and_autoreset_match_vec_env(cartpole):
    # Random pushes topple CartPole in ~20 steps: many terminations in 120 steps.
    assert len(cartpole.actors) == 2
    local = VecEnv("CartPole-v1", n_envs=3, seed=5)
    _compare(local, cartpole, 120, "terminated")


def test_truncations_match_vec_env():
    # Pendulum never terminates; its 200-step limit truncates both copies at once.
    # Normalisation happens in the driver, on the same statistics as in-process.
    kwargs = {"n_envs": 2, "seed": 5, "normalize_obs": True, "normalize_reward": True}
    remote = RayVecEnv("Pendulum-v1", **kwargs)
    try:
        assert len(remote.actors) == 2
        _compare(VecEnv("Pendulum-v1", **kwargs), remote, 205, "truncated")
    finally:
        remote.close()


def test_state_round_trip_through_the_actors_resumes_the_same_episodes(cartpole, tmp_path):
    reference = VecEnv("CartPole-v1", n_envs=3, seed=5)
    reference.reset()
    cartpole.reset()
    rng = np.random.default_rng(3)
    _assert_same(_run(cartpole, copy.deepcopy(rng), 13), _run(reference, rng, 13))
    save_checkpoint(tmp_path / "envs", {"envs": cartpole.state_dict()})
    state = load_checkpoint(tmp_path / "envs")["envs"]
    assert state["exact"] and len(state["envs"]) == 3
    # 60 more steps cross several resets; then the actors go back to the saved state and
    # take the same 60 steps again.
    replay = copy.deepcopy(rng)
    steps_ref = _run(reference, rng, 60)
    _assert_same(_run(cartpole, copy.deepcopy(replay), 60), steps_ref)
    assert sum(int(s.done.sum()) for s in steps_ref) >= 2
    np.testing.assert_array_equal(cartpole.load_state_dict(state), state["raw_obs"].numpy())
    _assert_same(_run(cartpole, replay, 60), steps_ref)


def test_ppo_learns_briefly_on_ray_actors():
    torch.manual_seed(0)
    algo = PPO("CartPole-v1", seed=0, vec_env="ray", n_envs=2, n_steps=32, batch_size=64,
               n_epochs=2, total_steps=256)  # fmt: skip
    try:
        assert isinstance(algo.envs, RayVecEnv)
        before = algo.flat.param.clone() if hasattr(algo, "flat") else None
        algo.learn(256, show_progress=False)
        assert algo.num_steps == 256
        assert len(algo.recent_returns) >= 5  # random CartPole episodes end within ~20 steps
        if before is not None:
            assert not torch.equal(before, algo.flat.param)
        # The same seed on in-process environments takes the same steps and updates.
        same = PPO("CartPole-v1", seed=0, n_envs=2, n_steps=32, batch_size=64, n_epochs=2,
                   total_steps=256).learn(256, show_progress=False)  # fmt: skip
        for (name, p), q in zip(
            algo.policy.state_dict().items(), same.policy.state_dict().values(), strict=True
        ):
            torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    finally:
        algo.close()


def test_vec_env_choice_is_validated_and_async_envs_still_reads():
    with pytest.raises(ConfigError, match="vec_env"):
        hyperparameters("ppo", "CartPole-v1", {"vec_env": "dask"})
    assert hyperparameters("ppo", "CartPole-v1", {"async_envs": True})["vec_env"] == "async"
    with pytest.raises(ConfigError, match="environment id"):
        RayVecEnv(VecEnv("CartPole-v1").envs[0])
