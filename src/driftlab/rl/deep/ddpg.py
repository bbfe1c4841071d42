"""Deep Deterministic Policy Gradient (Lillicrap et al. 2016, "Continuous control with deep
reinforcement learning"), on the deterministic policy gradient of Silver et al. 2014.

A deterministic actor ``mu(s)`` and a critic ``Q(s, a)`` learn off-policy from a replay
buffer. Each gradient step on a minibatch of transitions ``(s, a, r, s', d)``:

    y = r + gamma (1 - d) Q'(s', mu'(s'))                     (Lillicrap et al. alg. 1)
    critic:  minimise E[(Q(s, a) - y)^2]
    actor:   ascend E[Q(s, mu(s))], whose gradient is
             E[grad_a Q(s, a)|_{a = mu(s)} grad_theta mu(s)]   (Silver et al. 2014, eq. 6)
    targets: theta' <- tau theta + (1 - tau) theta'            (Polyak averaging)

``d`` is termination only: a truncated episode's last transition carries its real final
observation and is bootstrapped. Before ``learning_starts`` steps actions are uniform in the
action box; afterwards they are ``mu(s)`` plus exploration noise (Gaussian, or the
Ornstein-Uhlenbeck process of the paper, restarted at each episode's end), clipped to the
box. Every ``train_freq`` environment steps the learner takes ``gradient_steps`` steps.
With ``matmul_dtype="bfloat16"`` those steps run their hidden layers' matrix products in
bfloat16 (autocast; parameters, optimiser and critic outputs stay float32).

Actions live in the action box rescaled to ``[-1, 1]`` (the actor's tanh output): the
replay buffer, the critic's input and the noise scales (``action_noise_std``,
``target_noise``, ``target_noise_clip``) are all in that space, as in Stable-Baselines3, and
the environment gets ``center + half_range * a``.

This class also holds what TD3 (:mod:`driftlab.rl.deep.td3`) shares with DDPG: acting,
replay, the actor update every ``policy_delay`` critic updates (1 here) and the target
updates. TD3 changes the critics and their target.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from driftlab.core.config import ConfigError
from driftlab.rl.deep.algorithm import Algorithm
from driftlab.rl.deep.buffers import ReplayBuffer, Transitions
from driftlab.rl.deep.ensemble import EnsembleQNet
from driftlab.rl.deep.networks import DeterministicPolicy, obs_dim
from driftlab.rl.deep.noise import make_action_noise
from driftlab.rl.deep.optim import FlatParameters, adam
from driftlab.rl.losses import smoothed_target_actions


class DDPG(Algorithm):
    """``DDPG(env, seed=0, **hyperparameters)``; see :mod:`driftlab.rl.deep.presets`."""

    name = "ddpg"
    n_critics: ClassVar[int] = 1

    def build(self) -> None:
        c = self.config
        if not isinstance(self.action_space, gym.spaces.Box):
            raise ConfigError(f"{self.name} needs a Box action space, got {self.action_space}")
        n_obs = obs_dim(self.observation_space)
        self.action_dim = int(np.prod(self.action_space.shape))
        unit_box = gym.spaces.Box(-1.0, 1.0, (self.action_dim,), np.float32)
        self.actor = DeterministicPolicy(n_obs, unit_box, c["hidden_sizes"], c["activation"])
        self.critic = EnsembleQNet(
            self.n_critics, n_obs, self.action_dim, c["hidden_sizes"], c["activation"]
        )
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        # Flat parameters: an Adam step, a zero_grad and a Polyak update are one kernel each.
        self.actor_flat = FlatParameters(self.actor.parameters())
        self.critic_flat = FlatParameters(self.critic.parameters())
        self.actor_target_flat = FlatParameters(self.actor_target.parameters())
        self.critic_target_flat = FlatParameters(self.critic_target.parameters())
        for p in (*self.actor_target.parameters(), *self.critic_target.parameters()):
            p.requires_grad_(False)
        self.actor_optimizer = adam(self.actor_flat, c["learning_rate"])
        self.critic_optimizer = adam(self.critic_flat, c["learning_rate"])
        self.buffer = ReplayBuffer(
            c["buffer_size"], self.observation_space.shape, (self.action_dim,)
        )
        low = self.action_space.low.reshape(-1).astype(np.float32)
        high = self.action_space.high.reshape(-1).astype(np.float32)
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise ConfigError(f"{self.name} needs a bounded action box, got {self.action_space}")
        self.action_center, self.action_half_range = (high + low) / 2, (high - low) / 2
        self.noise = make_action_noise(
            c["action_noise"], c["action_noise_std"], self.envs.num_envs, self.action_dim, self.rng
        )

    def modules(self) -> dict[str, nn.Module]:
        return {
            "actor": self.actor,
            "critic": self.critic,
            "actor_target": self.actor_target,
            "critic_target": self.critic_target,
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_optimizer, "critic": self.critic_optimizer}

    def replay_buffer(self) -> ReplayBuffer:
        return self.buffer

    def extra_state(self) -> dict[str, Any]:
        return {"noise": self.noise.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.noise.load_state_dict(state["noise"])

    # -- acting -----------------------------------------------------------------------------

    def env_actions(self, actions: np.ndarray) -> np.ndarray:
        """Actions in ``[-1, 1]`` mapped into the environment's action box."""
        env_actions = self.action_center + self.action_half_range * actions
        return env_actions.reshape(-1, *self.action_space.shape)

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """``mu(s)`` in the environment's action box; with ``deterministic=False`` plus
        Gaussian noise of std ``action_noise_std`` (in the rescaled space), clipped."""
        actions = self.actor(obs)
        if not deterministic:
            noise = torch.randn(actions.shape, generator=self.generator)
            actions = (actions + self.config["action_noise_std"] * noise).clamp(-1.0, 1.0)
        center = torch.from_numpy(self.action_center)
        return center + torch.from_numpy(self.action_half_range) * actions

    @torch.no_grad()
    def collect_step(self) -> None:
        """One step of every environment with exploration; the transitions go to replay."""
        n = self.envs.num_envs
        if self.num_steps < self.config["learning_starts"]:
            actions = self.rng.uniform(-1.0, 1.0, (n, self.action_dim)).astype(np.float32)
        else:
            mu = self.actor(torch.from_numpy(self.obs)).numpy()
            actions = np.clip(mu + self.noise.sample(), -1.0, 1.0)
        step = self.envs.step(self.env_actions(actions))
        self.buffer.add(self.obs, actions, step.rewards, step.final_obs, step.terminated)
        done = step.terminated | step.truncated
        if done.any():
            self.noise.reset(np.flatnonzero(done))
        self.obs = step.obs
        self.num_steps += n

    # -- learning ---------------------------------------------------------------------------

    def iteration(self) -> dict[str, float]:
        c = self.config
        for _ in range(max(1, c["train_freq"] // self.envs.num_envs)):
            self.collect_step()
        if self.num_steps <= c["learning_starts"]:
            return {}
        lr = self.scheduled(c["learning_rate"], c["lr_schedule"])
        self.set_learning_rate(self.actor_optimizer, lr)
        self.set_learning_rate(self.critic_optimizer, lr)
        metrics: dict[str, float] = {}
        # The updates are matrix products of [batch, 400] x [400, 300]; bfloat16 halves them.
        bf16 = c["matmul_dtype"] == "bfloat16"
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for _ in range(c["gradient_steps"]):
                metrics.update(self.gradient_step())
        metrics["learning_rate"] = lr
        return metrics

    def gradient_step(self) -> dict[str, float]:
        """One critic update; every ``policy_delay``-th also the actor and the targets."""
        c = self.config
        batch = self.buffer.sample(c["batch_size"], self.generator)
        with torch.no_grad():
            target = self.critic_target_values(batch)
        critic_loss = self.update_critic(batch, target)
        self.num_updates += 1
        metrics = {"critic_loss": critic_loss}
        if self.num_updates % c["policy_delay"] == 0:
            metrics["actor_loss"] = self.update_actor(batch.obs)
            self.update_targets()
        return metrics

    def target_actions(self, next_obs: torch.Tensor) -> torch.Tensor:
        """``mu'(s')``, smoothed with clipped Gaussian noise when ``target_noise > 0``
        (TD3's target policy smoothing; 0 for DDPG)."""
        c = self.config
        actions = self.actor_target(next_obs)
        if c["target_noise"] > 0:
            actions = smoothed_target_actions(
                actions, c["target_noise"], c["target_noise_clip"], -1.0, 1.0, self.generator
            )
        return actions

    def critic_target_values(self, batch: Transitions) -> torch.Tensor:
        """``y = r + gamma (1 - d) Q'(s', mu'(s'))`` (Lillicrap et al. 2016, alg. 1)."""
        next_q = self.critic_target(batch.next_obs, self.target_actions(batch.next_obs))[0]
        return batch.rewards + self.config["gamma"] * (1.0 - batch.terminated) * next_q

    def update_critic(self, batch: Transitions, target: torch.Tensor) -> float:
        """One Adam step on ``sum_i E[(Q_i(s, a) - y)^2]`` over the critics.

        In float32 the gradient is back-propagated by hand (``EnsembleQNet.backward``; a test
        checks it against autograd); under bfloat16 autocast, through autograd."""
        if torch.is_autocast_enabled("cpu"):
            q = self.critic(batch.obs, batch.actions)  # [n_critics, batch]
            loss = (q - target).pow(2).mean(dim=-1).sum()
            self.critic_flat.zero_grad()
            loss.backward()
        else:
            layers, q = self.critic.activations(batch.obs, batch.actions)
            error = q - target
            loss = error.pow(2).mean(dim=-1).sum()
            # d loss / d q_i = 2 (q_i - y) / batch
            self.critic.backward(layers, error.mul_(2.0 / error.shape[-1]))
        if self.config["max_grad_norm"] is not None:
            self.critic_flat.clip_grad_norm(self.config["max_grad_norm"])
        self.critic_optimizer.step()
        return float(loss.detach())

    def update_actor(self, obs: torch.Tensor) -> float:
        """One Adam step on ``-E[Q_1(s, mu(s))]``: the deterministic policy gradient
        ``E[grad_a Q_1(s, a)|_{a = mu(s)} grad_theta mu(s)]`` (Silver et al. 2014, eq. 6).

        The critic's parameters are constants here: no product is spent on their gradient.
        As for the critic, float32 back-propagates by hand and bfloat16 through autograd."""
        if torch.is_autocast_enabled("cpu"):
            loss = -self.critic.member(0, obs, self.actor(obs), frozen=True).mean()
            self.actor_flat.zero_grad()
            loss.backward()
        else:
            actor = self.actor
            layers = actor.net.activations(obs)
            squashed = torch.tanh(layers[-1])
            actions = actor.center + actor.half_range * squashed
            critic_layers, q = self.critic.activations(obs, actions, members=[0])
            loss = -q[0].mean()
            grad_q = torch.full_like(q[0], -1.0 / q.shape[-1])
            grad_actions = self.critic.input_grad(0, critic_layers[0], grad_q)[
                :, -self.action_dim :
            ]
            # mu(s) = center + half_range tanh(f(s)): back through the scale and the tanh
            grad_f = torch.ops.aten.tanh_backward(grad_actions * actor.half_range, squashed)
            actor.net.backward(layers, grad_f)
        if self.config["max_grad_norm"] is not None:
            self.actor_flat.clip_grad_norm(self.config["max_grad_norm"])
        self.actor_optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def update_targets(self) -> None:
        """``theta' <- (1 - tau) theta' + tau theta`` for the actor and critic targets."""
        tau = self.config["tau"]
        self.actor_target_flat.param.lerp_(self.actor_flat.param, tau)
        self.critic_target_flat.param.lerp_(self.critic_flat.param, tau)
