"""QAC, the simplest actor-critic (Zhao, "Mathematical Foundations of Reinforcement Learning",
ch. 10.1), with neural networks: the deep version of :func:`driftlab.rl.tabular.qac`.

Each iteration collects ``n_steps`` steps of ``n_envs`` environments with the current policy
``pi(a|s, theta)`` and stores every transition ``(s, a, r, s', terminated)``, ``s'`` being the
real next observation (the final one where an episode ended). Then, on that batch:

- critic (Sarsa, Zhao ch. 10.1's critic, TD(0) on the on-policy stream)::

      y = r + gamma (1 - terminated) q(s', a'),   a' ~ pi(.|s')
      L_q = E[(q(s, a, w) - y)^2]

  A truncated episode bootstraps from its real final observation ``s'``; a terminated one
  does not bootstrap.
- actor (Zhao ch. 10.1's actor, stochastic gradient ascent on J(theta))::

      L_pi = -E[ln pi(a|s, theta) q(s, a, w)] - ent_coef E[H(pi(.|s))]

  with ``q`` the critic just updated (the order of the tabular learner).

``baseline=True`` weighs ``ln pi`` by ``q(s, a) - v(s)`` instead, with
``v(s) = sum_b pi(b|s) q(s, b)``: the expectation of the gradient is unchanged (Zhao ch. 10.2,
a baseline that does not depend on the action) and its variance is smaller. The basic QAC
(``baseline=False``, the default) uses the sampled ``q(s, a)`` itself.

The critic is one network with one output per action, so only Discrete action spaces are
supported.
"""

from __future__ import annotations

import gymnasium as gym
import torch
from torch import nn

from driftlab.core.config import ConfigError
from driftlab.rl.deep.algorithm import Algorithm
from driftlab.rl.deep.networks import DiscreteQNet, make_policy, obs_dim
from driftlab.rl.deep.optim import FlatParameters, adam


def sarsa_targets(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    next_q: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """``y = r + gamma (1 - terminated) q(s', a')`` (Zhao ch. 7.2, Sarsa's TD target), with
    ``next_q`` the critic's value of the real next observation and its sampled next action."""
    return rewards + gamma * (1.0 - terminated) * next_q


def qac_actor_loss(
    log_probs: torch.Tensor,
    weights: torch.Tensor,
    entropy: torch.Tensor,
    ent_coef: float,
) -> torch.Tensor:
    """``-E[ln pi(a|s) weight] - ent_coef E[H]``: minimising it ascends Zhao ch. 10.1's
    ``E[grad ln pi(a|s) q(s, a)]`` (``weights`` is ``q(s, a)``, or ``q(s, a) - v(s)``)."""
    return -(log_probs * weights.detach()).mean() - ent_coef * entropy.mean()


class QAC(Algorithm):
    """``QAC(env, seed=0, **hyperparameters)``; see :mod:`driftlab.rl.deep.presets`."""

    name = "qac"

    def build(self) -> None:
        c = self.config
        if not isinstance(self.action_space, gym.spaces.Discrete):
            raise ConfigError(f"QAC needs a Discrete action space, got {self.action_space}")
        self.policy = make_policy(
            self.observation_space, self.action_space, c["hidden_sizes"], c["activation"]
        )
        self.critic = DiscreteQNet(
            obs_dim(self.observation_space),
            int(self.action_space.n),
            c["hidden_sizes"],
            c["activation"],
        )
        self.policy_flat = FlatParameters(self.policy.parameters())
        self.critic_flat = FlatParameters(self.critic.parameters())
        self.policy_optimizer = adam(self.policy_flat, c["learning_rate"])
        self.critic_optimizer = adam(self.critic_flat, c["critic_learning_rate"])
        T, N = c["n_steps"], self.envs.num_envs
        shape = self.observation_space.shape
        self.batch_obs = torch.zeros((T, N, *shape))
        self.batch_next_obs = torch.zeros((T, N, *shape))
        self.batch_actions = torch.zeros((T, N), dtype=torch.long)
        self.batch_rewards = torch.zeros((T, N))
        self.batch_terminated = torch.zeros((T, N))

    def modules(self) -> dict[str, nn.Module]:
        return {"policy": self.policy, "critic": self.critic}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self.policy_optimizer, "critic": self.critic_optimizer}

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        if deterministic:
            return self.policy.mode(obs)
        return self.policy.sample(obs, self.generator)[0]

    def iteration(self) -> dict[str, float]:
        self.collect()
        n = self.batch_rewards.numel()
        return self.update(
            self.batch_obs.reshape(n, *self.observation_space.shape),
            self.batch_actions.reshape(n),
            self.batch_rewards.reshape(n),
            self.batch_next_obs.reshape(n, *self.observation_space.shape),
            self.batch_terminated.reshape(n),
        )

    @torch.no_grad()
    def collect(self) -> None:
        """``n_steps`` steps of every environment with the current policy."""
        for t in range(self.config["n_steps"]):
            obs = torch.from_numpy(self.obs)
            actions, _ = self.policy.sample(obs, self.generator)
            step = self.envs.step(self.to_env_actions(actions))
            self.batch_obs[t] = obs
            self.batch_actions[t] = actions
            self.batch_rewards[t] = torch.from_numpy(step.rewards)
            self.batch_next_obs[t] = torch.from_numpy(step.final_obs)
            self.batch_terminated[t] = torch.from_numpy(step.terminated)
            self.obs = step.obs
            self.num_steps += self.envs.num_envs

    def update(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
    ) -> dict[str, float]:
        """One critic step (Sarsa) then one actor step (policy gradient) on a batch."""
        c = self.config
        lr = self.scheduled(c["learning_rate"], c["lr_schedule"])
        critic_lr = self.scheduled(c["critic_learning_rate"], c["lr_schedule"])
        self.set_learning_rate(self.policy_optimizer, lr)
        self.set_learning_rate(self.critic_optimizer, critic_lr)

        with torch.no_grad():
            next_actions, _ = self.policy.sample(next_obs, self.generator)
            next_q = self.critic(next_obs).gather(-1, next_actions.unsqueeze(-1)).squeeze(-1)
            targets = sarsa_targets(rewards, terminated, next_q, c["gamma"])
        q = self.critic(obs).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        critic_loss = (q - targets).pow(2).mean()
        self.critic_flat.zero_grad()
        critic_loss.backward()
        self.critic_flat.clip_grad_norm(c["max_grad_norm"])
        self.critic_optimizer.step()

        logits = self.policy.logits(obs)
        all_log_probs = torch.log_softmax(logits, dim=-1)
        probs = all_log_probs.exp()
        log_probs = all_log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        entropy = -(probs * all_log_probs).sum(-1)
        with torch.no_grad():
            q_all = self.critic(obs)
            weights = q_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
            if c["baseline"]:
                weights = weights - (probs * q_all).sum(-1)
        actor_loss = qac_actor_loss(log_probs, weights, entropy, c["ent_coef"])
        self.policy_flat.zero_grad()
        actor_loss.backward()
        self.policy_flat.clip_grad_norm(c["max_grad_norm"])
        self.policy_optimizer.step()
        self.num_updates += 1
        return {
            "actor_loss": float(actor_loss.detach()),
            "critic_loss": float(critic_loss.detach()),
            "q_mean": float(q.detach().mean()),
            "entropy": float(entropy.detach().mean()),
            "learning_rate": lr,
        }
