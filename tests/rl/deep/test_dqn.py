"""DQN: TD targets and losses on hand-computed batches, epsilon schedule, target-network
timing, truncation in the replay buffer, determinism, save/load, and a short learning run."""

from __future__ import annotations

from dataclasses import fields

import gymnasium as gym
import numpy as np
import pytest
import torch

from driftlab.rl.deep import DQN
from driftlab.rl.deep.buffers import Transitions
from driftlab.rl.deep.dqn import linear_epsilon, q_learning_target

# Settings that make a DQN cheap to build and step (no training unless a test asks).
SMALL = {"hidden_sizes": (16,), "buffer_size": 1000, "learning_starts": 10_000}


def _identity_q(algo: DQN) -> None:
    """Online and target networks with q(s) = relu(s[:2]) (one hidden layer of 2 units)."""
    first, second = algo.q_net.net.layers
    with torch.no_grad():
        first.weight.zero_()
        first.weight[0, 0] = first.weight[1, 1] = 1.0
        first.bias.zero_()
        second.weight.copy_(torch.eye(2))
        second.bias.zero_()
    algo.target_flat.param.data.copy_(algo.flat.param.data)


def test_q_learning_target_plain_and_double():
    rewards = torch.tensor([1.0, 2.0, 3.0])
    terminated = torch.tensor([0.0, 1.0, 0.0])  # the third transition was truncated
    next_q_target = torch.tensor([[1.0, 4.0], [5.0, 2.0], [3.0, 0.0]])
    next_q_online = torch.tensor([[2.0, 1.0], [0.0, 9.0], [1.0, 2.0]])
    # plain: y = r + 0.5 (1 - term) max_a q^-(s', a) = [1 + 0.5*4, 2, 3 + 0.5*3]
    plain = q_learning_target(rewards, terminated, next_q_target, 0.5)
    torch.testing.assert_close(plain, torch.tensor([3.0, 2.0, 4.5]))
    # double: online argmax = [0, 1, 1] -> q^- values [1, (terminated), 0]
    # y = [1 + 0.5*1, 2, 3 + 0.5*0]
    double = q_learning_target(rewards, terminated, next_q_target, 0.5, next_q_online)
    torch.testing.assert_close(double, torch.tensor([1.5, 2.0, 3.0]))


@pytest.mark.parametrize(("huber", "expected"), [(True, 2.5 / 3), (False, 2.0)])
def test_loss_on_a_three_transition_batch(huber, expected):
    algo = DQN("CartPole-v1", seed=0, **{**SMALL, "hidden_sizes": (2,)}, gamma=0.5, huber=huber)
    _identity_q(algo)
    batch = Transitions(
        obs=torch.tensor([[1.0, 2, 0, 0], [3, 1, 0, 0], [2, 2, 0, 0]]),
        actions=torch.tensor([1, 0, 1]),
        rewards=torch.tensor([1.0, 2.0, 2.5]),
        next_obs=torch.tensor([[4.0, 1, 0, 0], [0, 5, 0, 0], [1, 3, 0, 0]]),
        terminated=torch.tensor([0.0, 1.0, 0.0]),  # the third one truncated: bootstrapped
    )
    # q(s, a) = [2, 3, 2]; y = [1 + 0.5*4, 2 (terminated), 2.5 + 0.5*3] = [3, 2, 4]
    # errors y - q = [1, -1, 2]
    # Huber (delta 1): [0.5*1, 0.5*1, 2 - 0.5] -> mean 2.5/3;  squared: [1, 1, 4] -> mean 2
    torch.testing.assert_close(algo.td_target(batch), torch.tensor([3.0, 2.0, 4.0]))
    loss, q = algo.loss(batch)
    torch.testing.assert_close(q, torch.tensor([2.0, 3.0, 2.0]))
    assert loss.item() == pytest.approx(expected)
    # d loss / d q(s, a) = -clip(error, -1, 1)/3 (Huber) or -2 error/3 (squared); the output
    # bias of action a collects it: action 0 gets the second, action 1 the first and third.
    algo.flat.zero_grad()
    loss.backward()
    bias_grad = algo.q_net.net.layers[1].bias.grad
    expected_grad = [1 / 3, -2 / 3] if huber else [2 / 3, -6 / 3]
    torch.testing.assert_close(bias_grad, torch.tensor(expected_grad))


def test_double_q_differs_from_plain_in_the_learner():
    kwargs = {**SMALL, "hidden_sizes": (2,), "gamma": 0.5}
    plain = DQN("CartPole-v1", **kwargs, double_q=False)
    double = DQN("CartPole-v1", **kwargs, double_q=True)
    for algo in (plain, double):
        _identity_q(algo)
    # Online q(s') = relu(s'[:2]) = [1, 3], argmax 1; a target network with the output rows
    # swapped values s' as [3, 1]: plain takes max 3, double takes the target's value of
    # action 1, which is 1.
    for algo in (plain, double):
        with torch.no_grad():
            algo.target_q_net.net.layers[1].weight.copy_(torch.tensor([[0.0, 1], [1, 0]]))
    batch = Transitions(
        obs=torch.zeros(1, 4),
        actions=torch.zeros(1, dtype=torch.long),
        rewards=torch.tensor([1.0]),
        next_obs=torch.tensor([[1.0, 3, 0, 0]]),
        terminated=torch.zeros(1),
    )
    assert plain.td_target(batch).item() == pytest.approx(1 + 0.5 * 3)
    assert double.td_target(batch).item() == pytest.approx(1 + 0.5 * 1)


def test_epsilon_schedule():
    # 1 -> 0.04 over the first 16%: at 8% halfway, 1 - 0.08 * 0.96 / 0.16 = 0.52
    assert linear_epsilon(1.0, 1.0, 0.04, 0.16) == 1.0
    assert linear_epsilon(0.92, 1.0, 0.04, 0.16) == pytest.approx(0.52)
    assert linear_epsilon(0.84, 1.0, 0.04, 0.16) == pytest.approx(0.04)
    assert linear_epsilon(0.1, 1.0, 0.04, 0.16) == 0.04
    assert linear_epsilon(0.5, 1.0, 0.04, 0.0) == 0.04
    # The learner's clock is the schedule's horizon: after 40 of 100 steps (CartPole's final
    # epsilon 0.04), eps = 1 - 0.4 * 0.96 / 0.5 = 0.232
    algo = DQN("CartPole-v1", **SMALL, train_freq=4, exploration_fraction=0.5)
    algo.learn(40, show_progress=False, horizon=100)
    assert algo.epsilon == pytest.approx(0.232)


def test_target_network_update_timing():
    algo = DQN(
        "CartPole-v1",
        **{**SMALL, "learning_starts": 0},
        train_freq=4,
        gradient_steps=1,
        target_update_interval=8,
        lr_schedule="constant",  # a linear rate would be 0 at the end of each learn(4)
    )
    initial = algo.flat.param.detach().clone()
    algo.learn(4, show_progress=False)  # steps 1-4, then one gradient step
    theta_1 = algo.flat.param.detach().clone()
    assert not torch.equal(theta_1, initial)
    assert torch.equal(algo.target_flat.param, initial)  # no copy before step 8
    algo.learn(4, show_progress=False)  # steps 5-8: copy at step 8, then a gradient step
    assert torch.equal(algo.target_flat.param, theta_1)
    assert not torch.equal(algo.flat.param, theta_1)
    algo.learn(4, show_progress=False)  # step 12: no copy
    assert torch.equal(algo.target_flat.param, theta_1)
    assert algo.num_updates == 3


def test_polyak_target_update():
    algo = DQN("CartPole-v1", **SMALL, tau=0.25)
    with torch.no_grad():
        algo.flat.param.fill_(1.0)
        algo.target_flat.param.fill_(-1.0)
    algo.update_target()  # -1 + 0.25 (1 - (-1)) = -0.5
    assert torch.all(algo.target_flat.param == -0.5)
    # hard copies (tau = 1) follow the online parameters exactly
    hard = DQN("CartPole-v1", **SMALL)
    with torch.no_grad():
        hard.flat.param.fill_(2.0)
    hard.target_stale = True
    hard.update_target()
    assert torch.all(hard.target_flat.param == 2.0)


def test_truncated_transition_stores_the_real_final_observation():
    env = gym.make("CartPole-v1", max_episode_steps=5)
    algo = DQN(env, **SMALL, train_freq=1)
    algo.learn(7, show_progress=False)
    buffer = algo.buffer
    assert buffer.size == 7
    # Within the episode s' of step t is s of step t + 1; the fifth step was truncated:
    # stored with its real final observation and terminated = 0, so it is bootstrapped.
    torch.testing.assert_close(buffer.next_obs[:4], buffer.obs[1:5])
    assert buffer.terminated[:7].sum() == 0
    assert not torch.equal(buffer.next_obs[4], buffer.obs[5])  # obs[5] starts a new episode
    step_5 = buffer.next_obs[4].numpy()
    assert np.all(np.isfinite(step_5)) and not np.allclose(step_5, 0.0)


def test_several_environments():
    algo = DQN(
        "CartPole-v1",
        **{**SMALL, "learning_starts": 32},
        n_envs=4,
        train_freq=16,
        gradient_steps=2,
        target_update_interval=8,
        batch_size=8,
    )
    assert (algo.steps_per_collect, algo.target_every) == (4, 2)
    algo.learn(64, show_progress=False)
    assert algo.num_steps == 64 and algo.buffer.size == 64
    assert algo.num_updates == 2 * 2  # trained after steps 48 and 64 (> learning_starts)
    assert np.isfinite(algo.evaluate(episodes=2)["mean_return"])


def _short_run(seed: int) -> DQN:
    algo = DQN(
        "CartPole-v1",
        seed=seed,
        hidden_sizes=(32,),
        buffer_size=2000,
        learning_starts=200,
        train_freq=64,
        gradient_steps=16,
        batch_size=32,
        target_update_interval=64,
    )
    return algo.learn(600, show_progress=False)


def test_same_seed_same_parameters():
    a, b, c = _short_run(0), _short_run(0), _short_run(1)
    assert a.num_updates > 0
    assert torch.equal(a.flat.param, b.flat.param)
    assert torch.equal(a.target_flat.param, b.target_flat.param)
    assert torch.equal(a.buffer.obs, b.buffer.obs)
    assert not torch.equal(a.flat.param, c.flat.param)


def test_save_load_round_trip_and_exact_resume(tmp_path):
    algo = _short_run(0)
    algo.save(tmp_path / "dqn", include_buffer=True)
    loaded = DQN.load(tmp_path / "dqn")
    obs = torch.randn(50, 4, generator=torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_array_equal(loaded.predict(obs), algo.predict(obs))
    assert torch.equal(loaded.target_flat.param, algo.target_flat.param)
    assert loaded.buffer.size == algo.buffer.size
    assert torch.equal(loaded.buffer.next_obs, algo.buffer.next_obs)
    # Training on from the saved state matches training on without saving.
    algo.learn(300, show_progress=False)
    loaded.learn(300, show_progress=False)
    assert torch.equal(loaded.flat.param, algo.flat.param)


def test_learns_cartpole():
    # 6000 steps of the CartPole preset on a smaller network reach 118 (seeds 1, 2: 131, 272);
    # a learner whose TD target, loss sign or target network is broken stays near the random
    # policy's ~20.
    algo = DQN("CartPole-v1", seed=0, hidden_sizes=(64, 64), train_freq=128, gradient_steps=64)
    algo.learn(6000, show_progress=False)
    assert algo.evaluate(episodes=10)["mean_return"] >= 100


@pytest.mark.parametrize(("huber", "double_q"), [(True, False), (False, True)])
def test_train_equals_autograd_on_the_loss(huber, double_q):
    """``train``'s hand-written gradient steps equal autograd on :meth:`DQN.loss`."""
    kwargs = {
        **SMALL,
        "hidden_sizes": (32, 32),
        "learning_starts": 0,
        "train_freq": 200,
        "gradient_steps": 5,
        "batch_size": 16,
        "max_grad_norm": None,  # Adam's step hides a gradient's scale; the gradient shows it
        "huber": huber,
        "double_q": double_q,
        "lr_schedule": "constant",
    }
    fast, reference = DQN("CartPole-v1", seed=3, **kwargs), DQN("CartPole-v1", seed=3, **kwargs)
    for algo in (fast, reference):
        algo.reset_envs()
        algo.collect()
    fast.train()
    drawn = reference.buffer.sample(5 * 16, reference.generator)
    for k in range(5):
        batch = Transitions(
            *(getattr(drawn, f.name)[16 * k : 16 * (k + 1)] for f in fields(Transitions))
        )
        loss, _ = reference.loss(batch)
        reference.flat.zero_grad()
        loss.backward()
        reference.optimizer.step()
    assert not torch.equal(fast.flat.param, fast.target_flat.param)
    torch.testing.assert_close(fast.flat.param.grad, reference.flat.param.grad)
    torch.testing.assert_close(fast.flat.param, reference.flat.param, rtol=1e-5, atol=1e-6)
