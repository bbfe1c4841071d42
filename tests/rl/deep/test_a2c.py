"""A2C: the loss on hand-computed batches, n-step returns with truncation and termination, the
RMSprop step, determinism, save/load with exact resume, and a short CartPole learning run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from driftlab.rl.deep import A2C
from driftlab.rl.deep.a2c import a2c_losses

LN2 = math.log(2.0)


def test_a2c_losses_on_a_three_step_batch():
    log_probs = torch.tensor([-0.5, -1.0, -2.0])
    advantages = torch.tensor([1.0, -2.0, 0.5])
    values = torch.tensor([1.0, 2.0, 3.0])
    returns = torch.tensor([2.0, 2.0, 1.0])
    entropy = torch.tensor([0.6, 0.5, 0.4])
    policy_loss, value_loss, entropy_mean = a2c_losses(
        log_probs, entropy, advantages, values, returns
    )
    # -(-0.5*1 + -1*-2 + -2*0.5)/3 = -(-0.5 + 2 - 1)/3 = -0.5/3
    assert policy_loss.item() == pytest.approx(-0.5 / 3)
    # ((1-2)^2 + (2-2)^2 + (3-1)^2)/3 = 5/3
    assert value_loss.item() == pytest.approx(5 / 3)
    assert entropy_mean.item() == pytest.approx(0.5)


def _constant_critic_uniform_actor(algo: A2C, value: float) -> None:
    """v(s) = value everywhere and pi(.|s) uniform: zero output weights."""
    with torch.no_grad():
        algo.value.net.layers[-1].weight.zero_()
        algo.value.net.layers[-1].bias.fill_(value)
        algo.policy.logits.layers[-1].weight.zero_()
        algo.policy.logits.layers[-1].bias.zero_()


def _three_step_a2c(end: str, gae_lambda: float = 1.0) -> A2C:
    """One environment, 3 steps of reward 1, gamma 0.5, v = 1; step 1 ends the episode by
    ``end`` ("truncated" or "terminated"); actions 0, 1, 1."""
    algo = A2C(
        "CartPole-v1",
        seed=0,
        n_envs=1,
        n_steps=3,
        gamma=0.5,
        gae_lambda=gae_lambda,
        vf_coef=0.5,
        ent_coef=0.01,
        max_grad_norm=None,
        normalize_advantage=False,
        learning_rate=1e-3,
    )
    _constant_critic_uniform_actor(algo, 1.0)
    rng = np.random.default_rng(0)
    no, yes = np.array([False]), np.array([True])
    for t, action in enumerate([0, 1, 1]):
        obs = rng.normal(size=(1, 4)).astype(np.float32)
        algo.buffer.add(
            torch.from_numpy(obs),
            torch.tensor([action]),
            torch.tensor([-LN2]),
            0.0,
            np.array([1.0]),
            yes if (t == 1 and end == "terminated") else no,
            yes if (t == 1 and end == "truncated") else no,
            rng.normal(size=(1, 4)).astype(np.float32),
        )
    algo.obs = rng.normal(size=(1, 4)).astype(np.float32)
    return algo


@pytest.mark.parametrize(
    ("end", "returns"),
    [
        # truncated at 1: R_2 = 1 + 0.5*v = 1.5 (rollout end), R_1 = 1 + 0.5*v(final) = 1.5,
        # R_0 = 1 + 0.5*R_1 = 1.75
        ("truncated", [1.75, 1.5, 1.5]),
        # terminated at 1: R_1 = 1 (nothing after a terminal state), R_0 = 1 + 0.5*1 = 1.5
        ("terminated", [1.5, 1.0, 1.5]),
    ],
)
def test_nstep_returns_bootstrap_on_truncation_not_termination(end, returns):
    algo = _three_step_a2c(end)
    algo.update()
    assert algo.buffer.returns.reshape(-1).tolist() == pytest.approx(returns)
    assert algo.buffer.advantages.reshape(-1).tolist() == pytest.approx([r - 1.0 for r in returns])


def test_gae_advantages_with_lambda():
    algo = _three_step_a2c("truncated", gae_lambda=0.5)
    algo.update()
    # delta_t = 1 + 0.5*1 - 1 = 0.5 at every step (all bootstrap from v = 1);
    # A_2 = 0.5, A_1 = 0.5 (cut), A_0 = 0.5 + 0.5*0.5*A_1 = 0.625
    assert algo.buffer.advantages.reshape(-1).tolist() == pytest.approx([0.625, 0.5, 0.5])


def test_update_is_one_rmsprop_step_on_the_a2c_loss():
    algo = _three_step_a2c("truncated")
    bias_v = algo.value.net.layers[-1].bias
    bias_pi = algo.policy.logits.layers[-1].bias
    before_v, before_pi = bias_v.detach().clone(), bias_pi.detach().clone()
    metrics = algo.update()
    # A = [0.75, 0.5, 0.5], log pi = -ln 2 everywhere (uniform over 2 actions)
    assert metrics["policy_loss"] == pytest.approx(LN2 * 1.75 / 3)  # -mean(-ln2 * A)
    assert metrics["value_loss"] == pytest.approx((0.75**2 + 0.5**2 + 0.5**2) / 3)
    assert metrics["entropy"] == pytest.approx(LN2)
    # d/db_v [0.5 * mean (b - R)^2] = 0.5 * 2 * mean(1 - R) = -1.75/3
    g_v = -1.75 / 3
    # d/db_a [-mean log pi(a_t) A_t] = -mean A_t (1[a_t = a] - 1/2); entropy's gradient is 0
    # at the uniform policy. a = 0: -(0.75*0.5 - 0.5*0.5 - 0.5*0.5)/3 = 0.125/3
    g_pi = torch.tensor([0.125 / 3, -0.125 / 3])
    assert bias_v.grad.item() == pytest.approx(g_v, abs=1e-6)
    assert torch.allclose(bias_pi.grad, g_pi, atol=1e-6)

    # First RMSprop step: E[g^2] = 0.01 g^2, so delta = -lr g / (0.1 |g| + eps)
    def step(g):
        return -1e-3 * g / (0.1 * abs(g) + 1e-5)

    assert (bias_v - before_v).item() == pytest.approx(step(g_v), rel=1e-4)
    expected = torch.tensor([step(float(g)) for g in g_pi])
    assert torch.allclose(bias_pi.detach() - before_pi, expected, rtol=1e-4)


def test_one_update_matches_stable_baselines3():
    """Same weights, same rollout (with episode ends), fresh RMSprop on both: SB3's A2C.train
    and our update give the same losses, returns and parameters."""
    sb3 = pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.env_util import make_vec_env

    model = sb3.A2C("MlpPolicy", make_vec_env("CartPole-v1", n_envs=8, seed=0), seed=0)
    _, callback = model._setup_learn(1_000, None)
    callback.on_training_start(locals(), globals())
    rollout = model.rollout_buffer
    while True:  # until the rollout holds at least two episode ends
        model.collect_rollouts(model.env, callback, rollout, model.n_steps)
        dones = np.concatenate([rollout.episode_starts[1:], model._last_episode_starts[None]])
        if dones.sum() >= 2:
            break
    ours = A2C("CartPole-v1", seed=0)
    sb3_policy = model.policy
    pairs = [
        (ours.policy.logits.layers[0], sb3_policy.mlp_extractor.policy_net[0]),
        (ours.policy.logits.layers[1], sb3_policy.mlp_extractor.policy_net[2]),
        (ours.policy.logits.layers[2], sb3_policy.action_net),
        (ours.value.net.layers[0], sb3_policy.mlp_extractor.value_net[0]),
        (ours.value.net.layers[1], sb3_policy.mlp_extractor.value_net[2]),
        (ours.value.net.layers[2], sb3_policy.value_net),
    ]
    with torch.no_grad():
        for mine, theirs in pairs:
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
    n = ours.envs.num_envs
    for t in range(ours.buffer.n_steps):
        ours.buffer.add(
            torch.as_tensor(rollout.observations[t]),
            torch.as_tensor(rollout.actions[t, :, 0]).long(),
            torch.zeros(n),
            0.0,
            rollout.rewards[t].astype(np.float64),
            dones[t].astype(bool),  # CartPole's first 500 steps: every end is a termination
            np.zeros(n, dtype=bool),
            rollout.observations[t],
        )
    ours.obs = model._last_obs.astype(np.float32)
    metrics = ours.update()
    model.train()
    # SB3 flattens its buffer env-major: [N, T] -> N*T
    ours_returns = ours.buffer.returns.T.reshape(-1).numpy()
    assert np.allclose(ours_returns, rollout.returns.reshape(-1), atol=1e-5)
    logged = model.logger.name_to_value
    assert metrics["policy_loss"] == pytest.approx(logged["train/policy_loss"], rel=1e-5)
    assert metrics["value_loss"] == pytest.approx(logged["train/value_loss"], rel=1e-5)
    for mine, theirs in pairs:
        assert torch.allclose(mine.weight, theirs.weight, atol=1e-6)
        assert torch.allclose(mine.bias, theirs.bias, atol=1e-6)


def _params(algo: A2C) -> torch.Tensor:
    return algo.flat.param.detach().clone()


def test_same_seed_same_parameters():
    runs = [A2C("CartPole-v1", seed=3, n_envs=4).learn(800, show_progress=False) for _ in "ab"]
    assert torch.equal(_params(runs[0]), _params(runs[1]))
    other = A2C("CartPole-v1", seed=4, n_envs=4).learn(800, show_progress=False)
    assert not torch.equal(_params(runs[0]), _params(other))


def test_save_load_and_exact_resume(tmp_path):
    algo = A2C("CartPole-v1", seed=1, n_envs=4).learn(400, show_progress=False)
    algo.save(tmp_path / "a2c")
    loaded = A2C.load(tmp_path / "a2c")
    assert torch.equal(_params(algo), _params(loaded))
    obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    assert np.array_equal(algo.predict(obs), loaded.predict(obs))
    algo.learn(400, show_progress=False)
    loaded.learn(400, show_progress=False)
    assert torch.equal(_params(algo), _params(loaded))
    assert torch.equal(
        algo.optimizer.state_dict()["state"][0]["square_avg"],
        loaded.optimizer.state_dict()["state"][0]["square_avg"],
    )


def test_continuous_actions_and_adam():
    algo = A2C("Pendulum-v1", seed=0, n_envs=2, n_steps=5, optimizer="adam")
    log_std = algo.policy.log_std.detach().clone()
    algo.learn(200, show_progress=False)
    assert algo.num_updates == 20  # 200 steps / (2 envs * 5 steps)
    assert not torch.equal(algo.policy.log_std.detach(), log_std)
    action = algo.predict(np.zeros(3, dtype=np.float32))
    assert action.shape == (1,) and -2.0 <= action[0] <= 2.0


def test_learns_cartpole():
    # the zoo preset: 8 environments, 5 steps each, RMSprop at 7e-4; a random policy scores ~20
    algo = A2C("CartPole-v1", seed=0)
    algo.learn(THRESHOLD_STEPS, show_progress=False)
    result = algo.evaluate(episodes=5)
    assert result["mean_return"] >= THRESHOLD_RETURN, result


THRESHOLD_STEPS = 10_000
THRESHOLD_RETURN = 200.0  # seed 0 scores 387 here


@pytest.mark.parametrize("ent_coef", [0.0, 0.01])
def test_gradient_by_hand_equals_autograd(ent_coef):
    """The categorical policy's gradient back-propagated by hand against autograd's, on a
    rollout of the zoo's CartPole setting (8 environments, 5 steps, normalised advantages
    and a linear learning-rate schedule left as they are)."""
    algo = A2C("CartPole-v1", seed=0, ent_coef=ent_coef, normalize_advantage=True)
    assert algo.by_hand
    algo.learn(2_000, show_progress=False)
    algo.collect()
    algo.flat.param.grad.fill_(7.0)  # set, not accumulated
    terms = algo.gradients_by_hand()
    by_hand = algo.flat.param.grad.clone()
    expected_terms = algo.gradients_autograd()
    torch.testing.assert_close(by_hand, algo.flat.param.grad, rtol=1e-4, atol=1e-7)
    assert by_hand.abs().max() > 0
    for got, want in zip(terms, expected_terms, strict=True):
        torch.testing.assert_close(got, want.detach())
    assert not A2C("Pendulum-v1", seed=0).by_hand
