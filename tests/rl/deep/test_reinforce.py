"""REINFORCE: Monte Carlo returns of a hand-computed episode, the truncation bootstrap, the
policy and baseline steps, determinism, save/load, and a short CartPole learning run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from driftlab.rl.deep import REINFORCE
from driftlab.rl.deep.reinforce import Episodes, reinforce_loss

LN2 = math.log(2.0)


def _episode(end: str, n_envs: int = 1) -> Episodes:
    """4 steps of rewards 1, 2, 3, 4 whose last step ends the episode by ``end``."""
    T = 4
    flag = torch.zeros(T, n_envs)
    flag[-1] = 1.0
    obs = torch.randn(T, n_envs, 4, generator=torch.Generator().manual_seed(0))
    return Episodes(
        obs=obs,
        actions=torch.tensor([0, 1, 1, 0]).reshape(T, 1).expand(T, n_envs).clone(),
        rewards=torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(T, 1).expand(T, n_envs).clone(),
        terminated=flag if end == "terminated" else torch.zeros(T, n_envs),
        truncated=flag if end == "truncated" else torch.zeros(T, n_envs),
        final_obs=torch.randn(T, n_envs, 4, generator=torch.Generator().manual_seed(1)),
        last_obs=torch.randn(n_envs, 4),
    )


def _constant(algo: REINFORCE, value: float) -> None:
    """b(s) = value everywhere and pi(.|s) uniform: zero output weights."""
    with torch.no_grad():
        if algo.baseline is not None:
            algo.baseline.net.layers[-1].weight.zero_()
            algo.baseline.net.layers[-1].bias.fill_(value)
        algo.policy.logits.layers[-1].weight.zero_()
        algo.policy.logits.layers[-1].bias.zero_()


def _reinforce(**overrides) -> REINFORCE:
    settings = {"gamma": 0.5, "normalize_advantage": False, "max_grad_norm": None}
    return REINFORCE("CartPole-v1", seed=0, **{**settings, **overrides})


def test_monte_carlo_returns_of_a_terminated_episode():
    algo = _reinforce()
    _constant(algo, 10.0)
    # G_3 = 4, G_2 = 3 + 0.5*4 = 5, G_1 = 2 + 0.5*5 = 4.5, G_0 = 1 + 0.5*4.5 = 3.25;
    # the baseline (10) is never added after a termination
    returns = algo.returns(_episode("terminated"))
    assert returns.reshape(-1).tolist() == pytest.approx([3.25, 4.5, 5.0, 4.0])


def test_truncated_episode_is_bootstrapped_from_the_baseline():
    algo = _reinforce()
    _constant(algo, 10.0)
    # G_3 = 4 + 0.5*b(s_4) = 9, G_2 = 3 + 4.5 = 7.5, G_1 = 2 + 3.75 = 5.75, G_0 = 1 + 2.875
    returns = algo.returns(_episode("truncated"))
    assert returns.reshape(-1).tolist() == pytest.approx([3.875, 5.75, 7.5, 9.0])
    # Plain REINFORCE has no value to bootstrap from: the return stops at the time limit.
    plain = _reinforce(baseline=False)
    returns = plain.returns(_episode("truncated"))
    assert returns.reshape(-1).tolist() == pytest.approx([3.25, 4.5, 5.0, 4.0])


def test_episodes_still_running_at_the_end():
    # env 0 terminates at step 1 and starts again; env 1 runs through all 4 steps.
    episodes = _episode("none", n_envs=2)
    episodes.terminated[1, 0] = 1.0
    running = episodes.running_at_end()
    assert running.tolist() == [[False, True], [False, True], [True, True], [True, True]]
    algo = _reinforce()
    _constant(algo, 10.0)
    # env 0: G_1 = 2, G_0 = 1 + 0.5*2 = 2; then a new episode cut after step 3:
    # G_3 = 4 + 0.5*10 = 9, G_2 = 3 + 4.5 = 7.5. env 1: the truncated returns above.
    returns = algo.returns(episodes)
    assert returns[:, 0].tolist() == pytest.approx([2.0, 2.0, 7.5, 9.0])
    assert returns[:, 1].tolist() == pytest.approx([3.875, 5.75, 7.5, 9.0])


def test_reinforce_loss_on_a_three_step_batch():
    log_probs = torch.tensor([-0.5, -1.0, -2.0], requires_grad=True)
    advantages = torch.tensor([1.0, -2.0, 0.5])
    loss = reinforce_loss(log_probs, advantages)
    # -(-0.5*1 + -1*-2 + -2*0.5)/3 = -0.5/3
    assert loss.item() == pytest.approx(-0.5 / 3)
    loss.backward()
    # d loss / d log pi_t = -A_t / 3
    assert log_probs.grad.tolist() == pytest.approx([-1 / 3, 2 / 3, -0.5 / 3])


def test_update_gradients_of_policy_and_baseline():
    algo = _reinforce()
    _constant(algo, 4.0)
    metrics = algo.update(_episode("terminated"))
    # G = [3.25, 4.5, 5, 4], b = 4, so A = G - b = [-0.75, 0.5, 1, 0]
    # baseline loss mean (b - G)^2 = (0.5625 + 0.25 + 1 + 0)/4
    assert metrics["baseline_loss"] == pytest.approx(1.8125 / 4)
    # policy loss -mean(log pi A) with log pi = -ln 2: ln2 * mean(A) = ln2 * 0.75/4
    assert metrics["policy_loss"] == pytest.approx(LN2 * 0.75 / 4)
    # d/db [mean (b - G)^2] = 2 mean(b - G) = 2 * (-0.75)/4
    assert algo.baseline.net.layers[-1].bias.grad.item() == pytest.approx(-0.375)
    # d/d bias_a [-mean log pi(a_t) A_t] = -mean A_t (1[a_t = a] - 1/2), actions 0, 1, 1, 0:
    # a = 0: -(-0.75*0.5 + 0.5*-0.5 + 1*-0.5 + 0)/4 = 1.125/4
    grad = algo.policy.logits.layers[-1].bias.grad
    assert grad.tolist() == pytest.approx([1.125 / 4, -1.125 / 4])


def test_plain_reinforce_leaves_out_cut_episodes():
    algo = _reinforce(baseline=False)
    _constant(algo, 0.0)
    episodes = _episode("none", n_envs=2)
    episodes.terminated[1, 0] = 1.0
    metrics = algo.update(episodes)
    # only env 0's finished episode (steps 0 and 1) enters the gradient
    assert metrics["batch_steps"] == 2.0
    assert "baseline_loss" not in metrics and set(algo.modules()) == {"policy"}


def test_continuous_actions():
    algo = REINFORCE("Pendulum-v1", seed=0)  # one episode (200 steps) per update by default
    log_std = algo.policy.log_std.detach().clone()
    algo.learn(400, show_progress=False)
    assert (algo.num_steps, algo.num_updates) == (400, 2)
    assert not torch.equal(algo.policy.log_std.detach(), log_std)
    action = algo.predict(np.zeros(3, dtype=np.float32))
    assert action.shape == (1,) and -2.0 <= action[0] <= 2.0


def _params(algo: REINFORCE) -> torch.Tensor:
    return torch.cat([algo.policy_flat.param.detach(), algo.baseline_flat.param.detach()])


def test_whole_episodes_same_seed_same_parameters():
    runs = [REINFORCE("CartPole-v1", seed=2).learn(600, show_progress=False) for _ in "ab"]
    assert torch.equal(_params(runs[0]), _params(runs[1]))
    # each update saw whole episodes: the environment is at the start of a fresh one
    assert runs[0].envs._episode_lengths.tolist() == [0]
    assert runs[0].num_updates == len(runs[0].recent_returns) // 4  # 4 episodes per update


def test_save_load_and_exact_resume(tmp_path):
    algo = REINFORCE("CartPole-v1", seed=1).learn(300, show_progress=False)
    algo.save(tmp_path / "reinforce")
    loaded = REINFORCE.load(tmp_path / "reinforce")
    assert torch.equal(_params(algo), _params(loaded))
    obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    assert np.array_equal(algo.predict(obs), loaded.predict(obs))
    algo.learn(300, show_progress=False)
    loaded.learn(300, show_progress=False)
    assert torch.equal(_params(algo), _params(loaded))


def test_learns_cartpole():
    # the CartPole preset: 4 episodes per update, baseline; a random policy scores ~20
    algo = REINFORCE("CartPole-v1", seed=0)
    algo.learn(THRESHOLD_STEPS, show_progress=False)
    result = algo.evaluate(episodes=5)
    assert result["mean_return"] >= THRESHOLD_RETURN, result


THRESHOLD_STEPS = 10_000
THRESHOLD_RETURN = 200.0  # seed 0 scores 376 here
