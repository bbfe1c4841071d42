"""What the on-policy actor-critic learners (A2C, TRPO, PPO) share: a stochastic policy
``pi(a|s)`` (categorical or Gaussian), a state-value critic ``v(s)`` of the same shape, a
rollout buffer, and acting with the policy's mode or a sample."""

from __future__ import annotations

import torch
from torch import nn

from driftlab.rl.deep.algorithm import Algorithm
from driftlab.rl.deep.buffers import RolloutBuffer
from driftlab.rl.deep.networks import ValueNet, make_policy, obs_dim


class ActorCritic(Algorithm):
    """Base of A2C, TRPO and PPO: :meth:`build_actor_critic` makes ``self.policy``,
    ``self.value`` and ``self.buffer``; each learner adds its own optimisers."""

    def build_actor_critic(self) -> None:
        c = self.config
        self.policy = make_policy(
            self.observation_space,
            self.action_space,
            c["hidden_sizes"],
            c["activation"],
            c["ortho_init"],
            c["log_std_init"],
        )
        self.value = ValueNet(
            obs_dim(self.observation_space), c["hidden_sizes"], c["activation"], c["ortho_init"]
        )
        discrete = self.policy.discrete
        self.buffer = RolloutBuffer(
            c["n_steps"],
            self.envs.num_envs,
            self.observation_space.shape,
            () if discrete else self.action_space.shape,
            torch.long if discrete else torch.float32,
        )

    def modules(self) -> dict[str, nn.Module]:
        return {"policy": self.policy, "value": self.value}

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        if deterministic:
            return self.policy.mode(obs)
        return self.policy.sample(obs, self.generator)[0]

    # Whether collect() values the states and computes GAE. A2C turns it off: its single
    # gradient step per rollout values every state in the same batched forward pass that
    # serves its value loss.
    values_in_rollout = True

    @torch.no_grad()
    def collect(self) -> None:
        """Fill the rollout buffer with ``n_steps`` steps of every environment, then GAE
        (unless :attr:`values_in_rollout` is off)."""
        c, buffer = self.config, self.buffer
        buffer.reset()
        while not buffer.full:
            obs = torch.from_numpy(self.obs)
            actions, log_probs = self.policy.sample(obs, self.generator)
            step = self.envs.step(self.to_env_actions(actions))
            buffer.add(
                obs,
                actions,
                log_probs,
                self.value(obs) if self.values_in_rollout else 0.0,
                step.rewards,
                step.terminated,
                step.truncated,
                step.final_obs,
            )
            self.obs = step.obs
            self.num_steps += self.envs.num_envs
        if not self.values_in_rollout:
            return
        last_values = self.value(torch.from_numpy(self.obs))
        buffer.compute_advantages(last_values, self.value, c["gamma"], c["gae_lambda"])


@torch.no_grad()
def categorical_logits_grad(
    log_pi: torch.Tensor,
    actions: torch.Tensor,
    grad_log_prob: torch.Tensor,
    entropy_weight: float = 0.0,
) -> torch.Tensor:
    """The gradient with respect to a categorical policy's logits of a loss whose gradient
    with respect to ``log pi(a|s)`` of each row's action is ``grad_log_prob``, plus
    ``-entropy_weight`` times each row's entropy ``H = -sum_a pi log pi``:
    ``d log pi(a|s) / d logits = onehot(a) - pi`` and ``dH / d logits = -pi (log pi + H)``.
    ``log_pi`` is ``log_softmax(logits)`` (``[rows, actions]``), ``actions`` ``[rows, 1]``."""
    pi = log_pi.exp()
    grad = torch.zeros_like(pi).scatter_(-1, actions, 1.0).sub_(pi)
    grad.mul_(grad_log_prob.unsqueeze(-1))
    if entropy_weight:
        row_entropy = -(pi * log_pi).sum(-1, keepdim=True)
        grad.add_(pi * (log_pi + row_entropy), alpha=entropy_weight)
    return grad
