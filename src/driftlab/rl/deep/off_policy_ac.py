"""Off-policy actor-critic with importance sampling (Zhao, "Mathematical Foundations of
Reinforcement Learning", ch. 10.4; Degris, White and Sutton 2012, "Off-Policy Actor-Critic").

Experience comes from a behaviour policy ``beta`` and is kept in a replay buffer together with
``beta(a|s)``, the probability with which each stored action was chosen. The target policy
``pi(a|s, theta)`` and the state value ``v(s, w)`` learn from minibatches of it, every
transition weighted by the importance ratio of the current policy to the behaviour one
(Zhao ch. 10.4)::

    rho   = min(pi(a|s) / beta(a|s), ratio_clip)      (truncated importance sampling)
    delta = r + gamma (1 - terminated) v'(s') - v(s)   (TD error; v' the target network)
    critic: L_v  = E[rho delta^2]                      (w     += alpha_w rho delta grad v)
    actor:  L_pi = -E[rho delta ln pi(a|s)]            (theta += alpha_theta rho delta grad ln pi)
                   - ent_coef E[H(pi(.|s))]

With ``rho`` untruncated, ``E_beta[rho delta grad ln pi]`` is the on-policy gradient
``E_pi[delta grad ln pi]`` (Zhao ch. 10.4): the ratio corrects the distribution of actions
(not of states, as in Degris et al.'s excursion objective). Truncating it at ``ratio_clip``
(ACER, Wang et al. 2017; Retrace, Munos et al. 2016) bounds the variance of the estimate at
the price of a bias towards the behaviour policy where ``pi >> beta``. ``s'`` is the real next
observation, so truncated episodes bootstrap from it and terminated ones do not.

As in DQN, every ``train_freq`` environment steps (summed over the ``n_envs`` copies) and once
``learning_starts`` steps are stored, ``gradient_steps`` minibatches of ``batch_size`` are drawn
uniformly from the last ``buffer_size`` transitions; ``v'`` follows ``v`` by Polyak averaging
with rate ``tau``.

Behaviour policies (``behaviour``):

- ``"uniform"``: ``beta(a|s) = 1 / |A|``, the fully off-policy case.
- ``"lagged"``: ``beta(a|s) = (1 - eps) pi_old(a|s) + eps / |A|`` with ``pi_old`` a copy of the
  policy refreshed every ``behaviour_update_interval`` steps and ``eps = behaviour_epsilon``:
  data from older policies, so every sample of the buffer is off-policy, with ``beta > 0``
  for every action (which importance sampling needs).

Discrete action spaces only (``beta`` and ``pi`` are categorical).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from driftlab.core.config import ConfigError
from driftlab.rl.deep.algorithm import Algorithm
from driftlab.rl.deep.buffers import ReplayBuffer, Transitions
from driftlab.rl.deep.networks import ValueNet, make_policy, obs_dim, polyak_update
from driftlab.rl.deep.optim import FlatParameters, adam


@dataclass
class BehaviourTransitions(Transitions):
    """Transitions with ``log beta(a|s)``, the behaviour policy's log-probability of each
    action."""

    behaviour_log_probs: torch.Tensor


class BehaviourReplayBuffer(ReplayBuffer):
    """A :class:`ReplayBuffer` that also stores ``log beta(a|s)`` of every transition."""

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        action_shape: tuple[int, ...],
        action_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(capacity, obs_shape, action_shape, action_dtype)
        self.behaviour_log_probs = torch.zeros(capacity)

    def add(  # type: ignore[override]
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        behaviour_log_probs: torch.Tensor,
    ) -> None:
        """Add one step of ``n`` environments with the log-probabilities of their actions."""
        n = len(rewards)
        index = (torch.arange(n) + self.pos) % self.capacity
        self.behaviour_log_probs[index] = torch.as_tensor(behaviour_log_probs)
        super().add(obs, actions, rewards, next_obs, terminated)

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> BehaviourTransitions:
        """``batch_size`` transitions drawn uniformly with replacement."""
        index = torch.randint(self.size, (batch_size,), generator=generator)
        return BehaviourTransitions(
            self.obs[index],
            self.actions[index],
            self.rewards[index],
            self.next_obs[index],
            self.terminated[index],
            self.behaviour_log_probs[index],
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "behaviour_log_probs": self.behaviour_log_probs[: self.size],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.behaviour_log_probs[: state["size"]] = state["behaviour_log_probs"]


def truncated_importance_ratios(
    log_probs: torch.Tensor, behaviour_log_probs: torch.Tensor, ratio_clip: float
) -> torch.Tensor:
    """``rho = min(pi(a|s) / beta(a|s), ratio_clip)`` (Zhao ch. 10.4's ratio, truncated as in
    ACER), without gradient: it weighs the update, it is not optimised."""
    return torch.exp(log_probs.detach() - behaviour_log_probs).clamp(max=ratio_clip)


def off_policy_ac_losses(
    log_probs: torch.Tensor,
    entropy: torch.Tensor,
    values: torch.Tensor,
    targets: torch.Tensor,
    ratios: torch.Tensor,
    ent_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Critic and actor losses of Zhao ch. 10.4 on a minibatch: ``E[rho delta^2]`` and
    ``-E[rho delta ln pi] - ent_coef E[H]``, with ``delta = targets - values``."""
    delta = targets - values
    critic_loss = (ratios * delta.pow(2)).mean()
    actor_loss = -(ratios * delta.detach() * log_probs).mean() - ent_coef * entropy.mean()
    return critic_loss, actor_loss


class OffPolicyAC(Algorithm):
    """``OffPolicyAC(env, seed=0, **hyperparameters)``; see :mod:`driftlab.rl.deep.presets`."""

    name = "off_policy_ac"

    def build(self) -> None:
        c = self.config
        if not isinstance(self.action_space, gym.spaces.Discrete):
            raise ConfigError(f"OffPolicyAC needs a Discrete action space, got {self.action_space}")
        self.n_actions = int(self.action_space.n)
        self.policy = make_policy(
            self.observation_space, self.action_space, c["hidden_sizes"], c["activation"]
        )
        n_obs = obs_dim(self.observation_space)
        self.value = ValueNet(n_obs, c["hidden_sizes"], c["activation"])
        # Copies taken before the parameters become views of flat tensors.
        self.value_target = copy.deepcopy(self.value).requires_grad_(False)
        self.behaviour_policy = copy.deepcopy(self.policy).requires_grad_(False)
        self.policy_flat = FlatParameters(self.policy.parameters())
        self.value_flat = FlatParameters(self.value.parameters())
        self.policy_optimizer = adam(self.policy_flat, c["learning_rate"])
        self.value_optimizer = adam(self.value_flat, c["critic_learning_rate"])
        self.next_behaviour_update = c["behaviour_update_interval"]
        self.buffer = BehaviourReplayBuffer(
            c["buffer_size"], self.observation_space.shape, (), torch.long
        )

    def modules(self) -> dict[str, nn.Module]:
        return {
            "policy": self.policy,
            "value": self.value,
            "value_target": self.value_target,
            "behaviour_policy": self.behaviour_policy,
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self.policy_optimizer, "value": self.value_optimizer}

    def replay_buffer(self) -> BehaviourReplayBuffer:
        return self.buffer

    def extra_state(self) -> dict[str, Any]:
        return {"next_behaviour_update": self.next_behaviour_update}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.next_behaviour_update = state["next_behaviour_update"]

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        if deterministic:
            return self.policy.mode(obs)
        return self.policy.sample(obs, self.generator)[0]

    def behaviour_probs(self, obs: torch.Tensor) -> torch.Tensor:
        """``beta(.|s)`` of each observation, ``[batch, |A|]``."""
        c = self.config
        uniform = torch.full((obs.shape[0], self.n_actions), 1.0 / self.n_actions)
        if c["behaviour"] == "uniform":
            return uniform
        eps = c["behaviour_epsilon"]
        lagged = torch.softmax(self.behaviour_policy.logits(obs), dim=-1)
        return (1.0 - eps) * lagged + eps * uniform

    def iteration(self) -> dict[str, float]:
        c = self.config
        # train_freq counts environment steps summed over the parallel copies.
        for _ in range(-(-c["train_freq"] // self.envs.num_envs)):
            self.collect_step()
        if self.num_steps < c["learning_starts"]:
            return {}
        metrics: dict[str, float] = {}
        for _ in range(c["gradient_steps"]):
            metrics = self.update(self.buffer.sample(c["batch_size"], self.generator))
        return metrics

    @torch.no_grad()
    def collect_step(self) -> None:
        """One step of every environment with the behaviour policy; refresh the lagged copy."""
        obs = torch.from_numpy(self.obs)
        probs = self.behaviour_probs(obs)
        actions = torch.multinomial(probs, 1, generator=self.generator)
        behaviour_log_probs = probs.gather(-1, actions).log().squeeze(-1)
        actions = actions.squeeze(-1)
        step = self.envs.step(self.to_env_actions(actions))
        self.buffer.add(
            self.obs, actions, step.rewards, step.final_obs, step.terminated, behaviour_log_probs
        )
        self.obs = step.obs
        self.num_steps += self.envs.num_envs
        if self.num_steps >= self.next_behaviour_update:
            self.behaviour_policy.load_state_dict(self.policy.state_dict())
            self.next_behaviour_update = self.num_steps + self.config["behaviour_update_interval"]

    def update(self, batch: BehaviourTransitions) -> dict[str, float]:
        """One importance-weighted step of the critic and of the actor on a minibatch."""
        c = self.config
        lr = self.scheduled(c["learning_rate"], c["lr_schedule"])
        critic_lr = self.scheduled(c["critic_learning_rate"], c["lr_schedule"])
        self.set_learning_rate(self.policy_optimizer, lr)
        self.set_learning_rate(self.value_optimizer, critic_lr)
        with torch.no_grad():
            next_values = self.value_target(batch.next_obs)
            targets = batch.rewards + c["gamma"] * (1.0 - batch.terminated) * next_values
        log_probs, entropy = self.policy.log_prob_entropy(batch.obs, batch.actions)
        ratios = truncated_importance_ratios(log_probs, batch.behaviour_log_probs, c["ratio_clip"])
        values = self.value(batch.obs)
        critic_loss, actor_loss = off_policy_ac_losses(
            log_probs, entropy, values, targets, ratios, c["ent_coef"]
        )
        self.value_flat.zero_grad()
        self.policy_flat.zero_grad()
        # The two losses touch disjoint parameters (delta is detached in the actor's).
        (critic_loss + actor_loss).backward()
        self.value_flat.clip_grad_norm(c["max_grad_norm"])
        self.policy_flat.clip_grad_norm(c["max_grad_norm"])
        self.value_optimizer.step()
        self.policy_optimizer.step()
        polyak_update(self.value_target, self.value, c["tau"])
        self.num_updates += 1
        return {
            "actor_loss": float(actor_loss.detach()),
            "critic_loss": float(critic_loss.detach()),
            "ratio_mean": float(ratios.mean()),
            "ratio_clipped": float((ratios >= c["ratio_clip"]).float().mean()),
            "entropy": float(entropy.detach().mean()),
            "learning_rate": lr,
        }
