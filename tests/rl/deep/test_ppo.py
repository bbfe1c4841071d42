"""PPO: the update's loss on a hand-computed 3-element batch, continuous actions, and a short
deterministic learning run on CartPole."""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from driftlab.rl.deep import PPO


def test_update_loss_on_a_hand_computed_batch():
    ppo = PPO(
        "CartPole-v1", seed=0, n_envs=1, n_steps=3, batch_size=3, n_epochs=1,
        normalize_advantage=False, max_grad_norm=None, ent_coef=0.1, vf_coef=0.5,
        clip_range=0.2, learning_rate=1e-5,
    )  # fmt: skip
    obs = torch.tensor([[0.1, 0.0, -0.1, 0.2], [0.0, 0.3, 0.0, -0.2], [-0.2, 0.1, 0.1, 0.0]])
    actions = torch.tensor([0, 1, 1])
    with torch.no_grad():
        log_probs, entropy = ppo.policy.log_prob_entropy(obs, actions)
        values = ppo.value(obs)
    # Chosen ratios r = pi / pi_old, advantages and value errors:
    ratios = torch.tensor([1.5, 0.7, 1.0])
    advantages = torch.tensor([1.0, 1.0, -2.0])
    buffer = ppo.buffer
    buffer.obs[:, 0] = obs
    buffer.actions[:, 0] = actions
    buffer.log_probs[:, 0] = log_probs - ratios.log()
    buffer.values[:, 0] = values
    buffer.advantages = advantages[:, None]
    buffer.returns = (values + torch.tensor([1.0, -2.0, 0.0]))[:, None]

    before_policy, before_value = copy.deepcopy(ppo.policy), copy.deepcopy(ppo.value)
    metrics = ppo.update()
    # Clipped surrogate (PPO eq. 7), eps = 0.2, per element -min(r A, clip(r, 0.8, 1.2) A):
    #   r = 1.5, A = 1:  -min(1.5, 1.2) = -1.2   (clipped: no gradient)
    #   r = 0.7, A = 1:  -min(0.7, 0.8) = -0.7
    #   r = 1.0, A = -2: -min(-2, -2)   =  2.0
    #   mean = 0.1 / 3
    assert metrics["policy_loss"] == pytest.approx(0.1 / 3, abs=1e-6)
    # Value loss (SB3's scale: the mean squared error): (1 + 4 + 0) / 3
    assert metrics["value_loss"] == pytest.approx(5 / 3, abs=1e-5)
    # Entropy of the near-uniform initial policy (output gain 0.01): just under log 2. The
    # step is tiny (lr 1e-5), so metrics taken before or after it agree to 1e-4.
    assert metrics["entropy"] == pytest.approx(float(entropy.mean()), abs=1e-4)
    assert math.log(2) - 1e-3 < metrics["entropy"] <= math.log(2)

    # The gradient taken is that of  policy + 0.5 * value - 0.1 * entropy  at the old weights.
    for p in [*before_policy.parameters(), *before_value.parameters()]:
        p.grad = None
    new_log_probs, new_entropy = before_policy.log_prob_entropy(obs, actions)
    ratio = torch.exp(new_log_probs - buffer.log_probs[:, 0])
    surrogate = -torch.minimum(ratio * advantages, ratio.clamp(0.8, 1.2) * advantages).mean()
    value_error = ((before_value(obs) - buffer.returns[:, 0]) ** 2).mean()
    (surrogate + 0.5 * value_error - 0.1 * new_entropy.mean()).backward()
    expected = torch.cat(
        [p.grad.reshape(-1) for p in [*before_policy.parameters(), *before_value.parameters()]]
    )
    torch.testing.assert_close(ppo.flat.param.grad, expected)
    assert ppo.num_updates == 1
    # approx_kl and clip_fraction of the batch: k3 = mean((r - 1) - log r) (as in SB3), and
    # |r - 1| > 0.2 for r = 1.5 and 0.7.
    k3 = float(((ratios - 1) - ratios.log()).mean())
    assert metrics["approx_kl"] == pytest.approx(k3, rel=1e-2)
    assert metrics["clip_fraction"] == pytest.approx(2 / 3)


def test_gaussian_policy_on_pendulum_acts_within_bounds():
    ppo = PPO("Pendulum-v1", seed=0, n_envs=2, n_steps=32, batch_size=32, n_epochs=1)
    assert not ppo.policy.discrete
    ppo.learn(128, show_progress=False)
    obs = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    actions = ppo.predict(obs, deterministic=False)
    assert actions.shape == (50, 1) and np.all(np.abs(actions) <= 2.0)
    report = ppo.evaluate(1)
    assert report["mean_length"] == 200


def test_ppo_learns_cartpole():
    # The zoo preset (8 envs x 32 steps, 20 epochs, linear decay) at 20k steps: about 3 s.
    torch.set_num_threads(1)
    ppo = PPO("CartPole-v1", seed=0)
    before = ppo.evaluate(episodes=5)["mean_return"]
    ppo.learn(20_000, show_progress=False)
    after = ppo.evaluate(episodes=10)["mean_return"]
    assert before < 100
    assert after >= 300, after


def test_instance_with_short_time_limit_trains_and_bootstraps():
    # An instance: 4 copies made from its spec keep the 20-step limit; every episode is
    # truncated (or terminated earlier), and the rollout bootstraps the truncated ones.
    env = gym.make("CartPole-v1", max_episode_steps=20)
    ppo = PPO(env, seed=0, n_envs=4, n_steps=32, batch_size=64, n_epochs=1)
    ppo.learn(128, show_progress=False)
    assert ppo.buffer._truncations  # truncations were valued from their final observation
    assert max(ppo.recent_returns) <= 20
    assert ppo.evaluate(2)["mean_length"] <= 20


@pytest.mark.parametrize("ent_coef", [0.0, 0.01])
def test_gradient_by_hand_equals_autograd(ent_coef):
    """The categorical policy's minibatch gradient, back-propagated by hand, against autograd
    on :meth:`PPO.losses` for a batch of 256 from a real rollout (normalised advantages;
    some ratios clipped)."""
    ppo = PPO("CartPole-v1", seed=0, ent_coef=ent_coef)
    assert ppo.by_hand
    ppo.learn(512, show_progress=False)  # two rollouts, so that the policy has moved
    ppo.collect()
    batch = ppo.buffer.flat()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # ratios from 0.67 to 1.49: both branches of the min
        batch["log_probs"] = batch["log_probs"] + 0.8 * torch.rand(256, generator=gen).sub(0.5)
        ratio = torch.exp(ppo.policy.log_prob(batch["obs"], batch["actions"]) - batch["log_probs"])
    assert 20 < int(((ratio - 1).abs() > 0.2).sum()) < 236
    ppo.flat.param.grad.fill_(7.0)  # set, not accumulated
    terms = ppo.gradients_by_hand(batch, 0.2)
    by_hand = ppo.flat.param.grad.clone()
    policy_loss, value_loss, entropy = ppo.losses(batch, 0.2)
    loss = policy_loss + ppo.config["vf_coef"] * value_loss
    if ent_coef > 0:
        loss = loss - ent_coef * entropy
    ppo.flat.zero_grad()
    loss.backward()
    torch.testing.assert_close(by_hand, ppo.flat.param.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(terms[0], policy_loss.detach())
    torch.testing.assert_close(terms[1], value_loss.detach())
    assert (terms[2] is None) == (ent_coef == 0)
    assert not PPO("CartPole-v1", seed=0, clip_range_vf=0.2).by_hand
    assert not PPO("Pendulum-v1", seed=0).by_hand
