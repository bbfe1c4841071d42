"""DDPG: its critic target, the deterministic policy gradient step, exploration noise (the
Ornstein-Uhlenbeck recurrence and its per-environment reset), acting in the rescaled action
box, determinism and save/load."""

from __future__ import annotations

import math

import numpy as np
import torch

from driftlab.rl.deep import DDPG
from driftlab.rl.deep.buffers import Transitions
from driftlab.rl.deep.noise import NormalNoise, OrnsteinUhlenbeckNoise, make_action_noise

SMALL = {"hidden_sizes": (32, 32), "batch_size": 16, "learning_starts": 50, "buffer_size": 1000}


def test_critic_target_bootstraps_unless_terminated() -> None:
    algo = DDPG("Pendulum-v1", seed=0, gamma=0.9, **SMALL)
    algo.actor_target = lambda s: torch.tensor([[0.5], [-1.0], [0.25]])
    algo.critic_target = lambda s, a: (s.sum(-1) * a[:, 0]).unsqueeze(0)  # one critic
    batch = Transitions(
        obs=torch.zeros(3, 3),
        actions=torch.zeros(3, 1),
        rewards=torch.tensor([1.0, 2.0, -1.0]),
        next_obs=torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 4.0]]),
        terminated=torch.tensor([0.0, 0.0, 1.0]),
    )
    # Q'(s', mu'(s')) = 2 * 0.5 = 1,  3 * -1 = -3,  4 * 0.25 = 1
    # y = 1 + 0.9 * 1 = 1.9,  2 + 0.9 * -3 = -0.7,  -1 (terminated: no bootstrap)
    y = algo.critic_target_values(batch)
    torch.testing.assert_close(y, torch.tensor([1.9, -0.7, -1.0]))


def test_ornstein_uhlenbeck_matches_the_recurrence() -> None:
    noise = OrnsteinUhlenbeckNoise(0.5, (2, 1), np.random.default_rng(3), theta=0.15, dt=0.01)
    z = np.random.default_rng(3).standard_normal((2, 2, 1))
    # x1 = 0 + 0.15 (0 - 0) 0.01 + 0.5 sqrt(0.01) z0 = 0.05 z0
    # x2 = x1 + 0.15 (0 - x1) 0.01 + 0.05 z1 = 0.9985 x1 + 0.05 z1
    x1 = 0.05 * z[0]
    x2 = 0.9985 * x1 + 0.05 * z[1]
    np.testing.assert_allclose(noise.sample(), x1, rtol=1e-6)
    np.testing.assert_allclose(noise.sample(), x2, rtol=1e-6)
    noise.reset(np.array([1]))  # only environment 1's episode ended
    np.testing.assert_allclose(noise.x[:, 0], [x2[0, 0], 0.0])


def test_ornstein_uhlenbeck_reverts_to_its_mean() -> None:
    # Without diffusion, x_t = (1 - theta dt)^t x_0 exactly.
    noise = OrnsteinUhlenbeckNoise(0.0, (1, 1), np.random.default_rng(0))
    noise.x[:] = 1.0
    for _ in range(100):
        x = noise.sample()
    np.testing.assert_allclose(x, (1 - 0.15 * 0.01) ** 100, rtol=1e-6)
    # With it, 4000 processes after 4000 steps (6 time constants) are near the stationary
    # law: mean 0, std sigma sqrt(dt / (1 - (1 - theta dt)^2)) = 0.5 / sqrt(0.2997750) = 0.913
    noise = OrnsteinUhlenbeckNoise(0.5, (4000, 1), np.random.default_rng(1))
    for _ in range(4000):
        x = noise.sample()
    stationary_std = 0.5 * math.sqrt(0.01 / (1 - (1 - 0.0015) ** 2))
    assert abs(stationary_std - 0.9132) < 1e-3
    assert abs(x.mean()) < 3 * stationary_std / math.sqrt(4000)
    assert abs(x.std() / stationary_std - 1) < 0.05


def test_normal_noise_scale() -> None:
    noise = make_action_noise("normal", 0.1, 20_000, 1, np.random.default_rng(0))
    assert isinstance(noise, NormalNoise)
    x = noise.sample()
    assert abs(x.mean()) < 0.003 and abs(x.std() - 0.1) < 0.003


def test_ou_noise_restarts_when_an_episode_ends() -> None:
    algo = DDPG("Pendulum-v1", seed=0, action_noise="ornstein-uhlenbeck", learning_starts=0)
    algo.reset_envs()
    for _ in range(199):
        algo.collect_step()
    assert algo.noise.x[0, 0] != 0.0
    algo.collect_step()  # Pendulum truncates after 200 steps
    assert algo.noise.x[0, 0] == 0.0


def test_actions_are_rescaled_into_the_box() -> None:
    algo = DDPG("Pendulum-v1", seed=0, **SMALL)  # Pendulum's torque is in [-2, 2]
    assert algo.env_actions(np.array([[-1.0], [0.25], [1.0]])).tolist() == [[-2.0], [0.5], [2.0]]
    obs = torch.randn(4, 3)
    torch.testing.assert_close(algo.act(obs), 2.0 * algo.actor(obs))
    # The buffer holds actions in [-1, 1]: uniform before learning_starts.
    algo.learn(50, show_progress=False)
    actions = algo.buffer.actions[:50]
    assert actions.abs().max() <= 1.0 and actions.std() > 0.4  # U(-1, 1) has std 0.577


def test_actor_step_follows_the_critic_and_leaves_it_alone() -> None:
    algo = DDPG("Pendulum-v1", seed=0, **SMALL)
    algo.learn(60, show_progress=False)
    obs = algo.buffer.sample(64, algo.generator).obs
    critic_before = algo.critic_flat.param.detach().clone()
    with torch.no_grad():
        q_before = algo.critic.member(0, obs, algo.actor(obs)).mean()
    algo.critic_flat.zero_grad()
    algo.update_actor(obs)
    with torch.no_grad():
        q_after = algo.critic.member(0, obs, algo.actor(obs)).mean()
    assert torch.equal(algo.critic_flat.param, critic_before)
    assert torch.count_nonzero(algo.critic_flat.param.grad) == 0  # no critic gradient at all
    assert q_after > q_before  # a small step up the deterministic policy gradient


def test_same_seed_same_parameters_and_save_load(tmp_path) -> None:
    def run(seed: int) -> DDPG:
        return DDPG("Pendulum-v1", seed=seed, **SMALL).learn(100, show_progress=False)

    a, b = run(0), run(0)
    assert torch.equal(a.actor_flat.param, b.actor_flat.param)
    assert torch.equal(a.critic_flat.param, b.critic_flat.param)
    assert not torch.equal(a.actor_flat.param, run(1).actor_flat.param)
    a.save(tmp_path / "ddpg", include_buffer=True)
    loaded = DDPG.load(tmp_path / "ddpg")
    a.learn(30, show_progress=False)
    loaded.learn(30, show_progress=False)
    assert torch.equal(a.actor_flat.param, loaded.actor_flat.param)
    assert torch.equal(a.critic_target_flat.param, loaded.critic_target_flat.param)
