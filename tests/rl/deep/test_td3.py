"""TD3: clipped double-Q target, target policy smoothing, delayed updates, the batched twin
critics, determinism, save/load and a short learning run."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from driftlab.rl.deep import TD3
from driftlab.rl.deep.buffers import Transitions
from driftlab.rl.deep.ensemble import EnsembleQNet
from driftlab.rl.deep.networks import ContinuousQNet

SMALL = {"hidden_sizes": (32, 32), "batch_size": 16, "learning_starts": 50, "buffer_size": 1000}


def _batch() -> Transitions:
    """Three transitions; the second terminated, the third truncated (its s' is real)."""
    return Transitions(
        obs=torch.zeros(3, 3),
        actions=torch.zeros(3, 1),
        rewards=torch.tensor([1.0, -2.0, 0.5]),
        next_obs=torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, -1.0]]),
        terminated=torch.tensor([0.0, 1.0, 0.0]),
    )


def _hand_networks(algo: TD3) -> None:
    """mu'(s') = (0.5, 0.9, -0.95); Q1'(s', a) = sum(s') + 2a, Q2'(s', a) = sum(s') - a."""
    algo.actor_target = lambda s: torch.tensor([[0.5], [0.9], [-0.95]])

    def twin(s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return torch.stack([s.sum(-1) + 2 * a[:, 0], s.sum(-1) - a[:, 0]])

    algo.critic_target = twin


def test_clipped_double_q_target_takes_the_smaller_critic() -> None:
    algo = TD3("Pendulum-v1", seed=0, gamma=0.5, target_noise=0.0, **SMALL)
    _hand_networks(algo)
    # s' sums: 1, 2, -1.  a' = mu'(s') (no smoothing noise).
    # Q1' = 1 + 1.0 = 2.0,  2 + 1.8 = 3.8,  -1 - 1.9 = -2.9
    # Q2' = 1 - 0.5 = 0.5,  2 - 0.9 = 1.1,  -1 + 0.95 = -0.05
    # min = 0.5 (Q2), 1.1 (Q2), -2.9 (Q1)
    # y = r + 0.5 (1 - d) min = 1 + 0.25 = 1.25,  -2 (terminated),  0.5 - 1.45 = -0.95
    y = algo.critic_target_values(_batch())
    torch.testing.assert_close(y, torch.tensor([1.25, -2.0, -0.95]))


def test_target_policy_smoothing_clips_noise_then_action() -> None:
    # std 10 with clip 0.5: every perturbation is +-0.5 unless |eps| < 0.05.
    algo = TD3("Pendulum-v1", seed=0, gamma=0.5, target_noise=10.0, target_noise_clip=0.5, **SMALL)
    _hand_networks(algo)
    eps = torch.randn(3, 1, generator=torch.Generator().manual_seed(123))
    assert (eps.abs() > 0.05).all()
    algo.generator.manual_seed(123)
    a = algo.target_actions(_batch().next_obs)
    # a' = clip(mu' + 0.5 sign(eps), -1, 1), by hand for each sign
    mu = torch.tensor([0.5, 0.9, -0.95])
    expected = (mu + 0.5 * eps[:, 0].sign()).clamp(-1.0, 1.0)
    torch.testing.assert_close(a[:, 0], expected)
    # e.g. 0.9 + 0.5 = 1.4 -> 1.0 and -0.95 - 0.5 -> -1.0: the box clip applies after the noise
    assert a.abs().max() <= 1.0
    # std 0.2: the unclipped perturbation 0.2 eps, where it is inside +-0.5
    algo = TD3("Pendulum-v1", seed=0, target_noise=0.2, target_noise_clip=0.5, **SMALL)
    _hand_networks(algo)
    algo.generator.manual_seed(7)
    eps = torch.randn(3, 1, generator=torch.Generator().manual_seed(7))
    expected = (torch.tensor([[0.5], [0.9], [-0.95]]) + (0.2 * eps).clamp(-0.5, 0.5)).clamp(-1, 1)
    torch.testing.assert_close(algo.target_actions(_batch().next_obs), expected)


def test_delayed_actor_and_target_updates() -> None:
    algo = TD3("Pendulum-v1", seed=0, policy_delay=2, **SMALL)
    algo.learn(50, show_progress=False)  # fills the buffer; no update yet
    assert algo.num_updates == 0

    def snapshot() -> dict[str, torch.Tensor]:
        return {
            "actor": algo.actor_flat.param.detach().clone(),
            "critic": algo.critic_flat.param.detach().clone(),
            "actor_target": algo.actor_target_flat.param.detach().clone(),
            "critic_target": algo.critic_target_flat.param.detach().clone(),
        }

    before = snapshot()
    for update in range(1, 5):
        algo.gradient_step()
        after = snapshot()
        changed = {k: not torch.equal(before[k], after[k]) for k in before}
        delayed = update % 2 == 0  # TD3 moves the actor and targets on every 2nd update
        assert changed == {
            "critic": True,
            "actor": delayed,
            "actor_target": delayed,
            "critic_target": delayed,
        }, update
        before = after


@pytest.mark.parametrize(("hidden", "batch"), [((8, 6), 5), ((400, 300), 256)])
def test_twin_critics_equal_two_separate_networks(hidden, batch) -> None:
    """Small: one batched product per layer; TD3's size: one oneDNN product per member
    (where available)."""
    torch.manual_seed(0)
    critics = [ContinuousQNet(3, 2, hidden) for _ in range(2)]
    twin = EnsembleQNet(2, 3, 2, hidden)
    twin.copy_from(critics)
    obs, actions = torch.randn(batch, 3), torch.randn(batch, 2)
    q = twin(obs, actions)
    assert q.shape == (2, batch)
    for i, critic in enumerate(critics):
        torch.testing.assert_close(q[i], critic(obs, actions))
        torch.testing.assert_close(twin.member(i, obs, actions), critic(obs, actions))
    # Gradients too: each member's weights get exactly its own network's gradient.
    target = torch.randn(batch)
    (q - target).pow(2).mean(-1).sum().backward()
    for i, critic in enumerate(critics):
        (critic(obs, actions) - target).pow(2).mean().backward()
        for weight, linear in zip(twin.weights, critic.net.layers, strict=True):
            torch.testing.assert_close(weight.grad[i], linear.weight.grad.T)


@pytest.mark.parametrize(("hidden", "batch"), [((8, 6), 5), ((400, 300), 256)])
def test_hand_backpropagation_equals_autograd(hidden, batch) -> None:
    """Both sizes: small products (PyTorch's path) and TD3's own (oneDNN where available)."""
    torch.manual_seed(0)
    twin = EnsembleQNet(2, 3, 2, hidden)
    obs, actions, target = torch.randn(batch, 3), torch.rand(batch, 2) * 2 - 1, torch.randn(batch)
    layers, q = twin.activations(obs, actions)
    torch.testing.assert_close(q, twin(obs, actions))
    error = q - target
    twin.backward(layers, 2 * error / batch)
    by_hand = [p.grad.clone() for p in twin.parameters()]
    for p in twin.parameters():
        p.grad = None
    (twin(obs, actions) - target).pow(2).mean(-1).sum().backward()
    for got, param in zip(by_hand, twin.parameters(), strict=True):
        torch.testing.assert_close(got, param.grad, rtol=1e-4, atol=1e-6)
        assert param.grad.abs().max() > 0
    # The input gradient of one member with the parameters held constant (the actor's step)
    inputs = torch.cat([obs, actions], -1).requires_grad_()
    (member_layers,), q1 = twin.activations(obs, actions, members=[1])
    grad_q = torch.randn(batch)
    by_hand_input = twin.input_grad(1, member_layers, grad_q)
    (expected,) = torch.autograd.grad(
        twin.member(1, inputs[:, :3], inputs[:, 3:], frozen=True), inputs, grad_q
    )
    torch.testing.assert_close(q1[0], twin.member(1, obs, actions))
    torch.testing.assert_close(by_hand_input, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("hidden", [(32, 32), (400, 300)])
def test_updates_by_hand_equal_autograd_updates(hidden) -> None:
    """The float32 critic and actor steps (hand back-propagation) against the bfloat16 path's
    autograd code run in float32: the same gradients, so the same Adam step."""
    algo = TD3("Pendulum-v1", seed=0, **{**SMALL, "hidden_sizes": hidden})
    algo.learn(60, show_progress=False)
    batch = algo.buffer.sample(256, algo.generator)
    target = torch.randn(256)
    q = algo.critic(batch.obs, batch.actions)
    critic_params = list(algo.critic.parameters())
    expected = torch.autograd.grad((q - target).pow(2).mean(-1).sum(), critic_params)
    algo.critic_optimizer.step = lambda: None  # keep the parameters to compare at one point
    algo.update_critic(batch, target)
    for param, want in zip(critic_params, expected, strict=True):
        torch.testing.assert_close(param.grad, want, rtol=1e-4, atol=1e-6)
    actor_params = list(algo.actor.parameters())
    loss = -algo.critic.member(0, batch.obs, algo.actor(batch.obs), frozen=True).mean()
    expected = torch.autograd.grad(loss, actor_params)
    algo.actor_optimizer.step = lambda: None
    algo.update_actor(batch.obs)
    for param, want in zip(actor_params, expected, strict=True):
        torch.testing.assert_close(param.grad, want, rtol=1e-4, atol=1e-7)
        assert want.abs().max() > 0


def test_bfloat16_matmuls_stay_close_to_float32() -> None:
    torch.manual_seed(0)
    twin = EnsembleQNet(2, 3, 1, (400, 300))
    obs, actions = torch.randn(256, 3), torch.rand(256, 1) * 2 - 1
    q = twin(obs, actions)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q_bf16 = twin(obs, actions)
    assert q_bf16.dtype == torch.float32
    # bfloat16 keeps 8 significant bits: relative error of a few 1e-3 on the features
    assert (q_bf16 - q).abs().max() < 0.02 * q.abs().max()
    algo = TD3("Pendulum-v1", seed=0, matmul_dtype="bfloat16", **SMALL)
    algo.learn(60, show_progress=False)
    assert algo.num_updates == 10 and torch.isfinite(algo.critic_flat.param).all()


def _learned(seed: int) -> TD3:
    algo = TD3("Pendulum-v1", seed=seed, **SMALL)
    return algo.learn(120, show_progress=False)


def test_same_seed_same_parameters() -> None:
    a, b, c = _learned(0), _learned(0), _learned(1)
    assert torch.equal(a.actor_flat.param, b.actor_flat.param)
    assert torch.equal(a.critic_flat.param, b.critic_flat.param)
    assert not torch.equal(a.actor_flat.param, c.actor_flat.param)


def test_save_load_resumes_exactly(tmp_path) -> None:
    algo = _learned(0)
    algo.save(tmp_path / "td3", include_buffer=True)
    loaded = TD3.load(tmp_path / "td3")
    obs = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, -2.0]], dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict(obs), algo.predict(obs))
    algo.learn(40, show_progress=False)
    loaded.learn(40, show_progress=False)
    for name, module in algo.modules().items():
        for p, q in zip(module.parameters(), loaded.modules()[name].parameters(), strict=True):
            assert torch.equal(p, q), name


class Reach(gym.Env):
    """Steer a point to 0: ``x' = clip(x + 0.2 a, -2, 2)``, reward ``-x'^2``, 20 steps from
    ``x_0 ~ U(-1, 1)``. Moving straight to 0 scores about -0.4; standing still about -6.7,
    and a constant push (an untrained tanh actor) worse."""

    observation_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.t = self.np_random.uniform(-1.0, 1.0), 0
        return np.array([self.x], dtype=np.float32), {}

    def step(self, action):
        self.x = float(np.clip(self.x + 0.2 * float(action[0]), -2.0, 2.0))
        self.t += 1
        return np.array([self.x], dtype=np.float32), -(self.x**2), False, self.t >= 20, {}


def test_learns_to_reach() -> None:
    env = Reach()
    untrained = TD3(Reach(), seed=0, hidden_sizes=(32, 32)).evaluate(episodes=20)
    algo = TD3(env, seed=0, hidden_sizes=(32, 32), learning_starts=200, batch_size=64, gamma=0.9)
    algo.learn(1500, show_progress=False)
    result = algo.evaluate(episodes=20)
    assert untrained["mean_return"] < -3.0, untrained
    assert result["mean_return"] > -1.0, result
