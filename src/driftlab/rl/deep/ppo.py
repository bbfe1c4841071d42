"""Proximal Policy Optimization (Schulman et al. 2017, "Proximal Policy Optimization Algorithms").

Each iteration collects ``n_steps`` steps of ``n_envs`` environments with the current policy,
estimates advantages by GAE (Schulman et al. 2016), then takes ``n_epochs`` passes of
minibatch Adam steps on

    L = E[ max(-r A, -clip(r, 1 - eps, 1 + eps) A) ]      (PPO eq. 7, r = pi / pi_old)
        + vf_coef * E[(v(s) - R)^2]  (optionally clipped around the old values)
        - ent_coef * E[H(pi(.|s))],

with advantages normalised per minibatch, the learning rate and the clip range optionally
annealed linearly to 0, and the global gradient norm clipped. Discrete actions get a
categorical policy, continuous ones a Gaussian with a state-independent log-std.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from driftlab.rl.deep.actor_critic import ActorCritic, categorical_logits_grad
from driftlab.rl.deep.buffers import minibatches
from driftlab.rl.deep.optim import FlatParameters, adam
from driftlab.rl.losses import clipped_surrogate_loss, clipped_value_loss


class PPO(ActorCritic):
    """``PPO(env, seed=0, **hyperparameters)``; see :mod:`driftlab.rl.deep.presets`."""

    name = "ppo"

    def build(self) -> None:
        c = self.config
        self.build_actor_critic()
        self.flat = FlatParameters([*self.policy.parameters(), *self.value.parameters()])
        self.optimizer = adam(self.flat, c["learning_rate"], eps=1e-5)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"optimizer": self.optimizer}

    def iteration(self) -> dict[str, float]:
        self.collect()
        return self.update()

    def advantages(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The minibatch's advantages, normalised within it when ``normalize_advantage``."""
        advantages = batch["advantages"]
        if self.config["normalize_advantage"] and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        return advantages

    def losses(
        self, batch: dict[str, torch.Tensor], clip: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The three terms of PPO's objective on one minibatch: the clipped surrogate (eq. 7),
        the value error and the policy's mean entropy (``None`` when ``ent_coef`` is 0, which
        saves computing it)."""
        c = self.config
        advantages = self.advantages(batch)
        if c["ent_coef"] > 0:
            log_probs, entropy = self.policy.log_prob_entropy(batch["obs"], batch["actions"])
            entropy = entropy.mean()
        else:
            log_probs, entropy = self.policy.log_prob(batch["obs"], batch["actions"]), None
        policy_loss = clipped_surrogate_loss(log_probs, batch["log_probs"], advantages, clip).mean()
        # vf_coef weighs the mean squared error (twice the 0.5-scaled loss), as in
        # Stable-Baselines3, so that presets carry over with the same meaning.
        values = self.value(batch["obs"])
        if c["clip_range_vf"] is None:
            value_loss = functional.mse_loss(values, batch["returns"])
        else:
            value_loss = (
                2.0
                * clipped_value_loss(
                    values, batch["values"], batch["returns"], c["clip_range_vf"]
                ).mean()
            )
        return policy_loss, value_loss, entropy

    @property
    def by_hand(self) -> bool:
        """Whether a minibatch's gradient is back-propagated by hand
        (:meth:`gradients_by_hand`): for a categorical policy and an unclipped value loss."""
        return self.policy.discrete and self.config["clip_range_vf"] is None

    @torch.no_grad()
    def gradients_by_hand(
        self, batch: dict[str, torch.Tensor], clip: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Sets the gradient of :meth:`losses`' objective on one minibatch (a test compares
        it with autograd's) and returns the same three terms.

        With ``r = pi(a|s) / pi_old(a|s)`` and ``B`` rows, the clipped surrogate's gradient
        with respect to ``log pi(a|s)`` is ``-r A / B`` where ``r A`` is the smaller term and
        0 where the clipped one is; ``d log pi(a|s) / d logits = onehot(a) - pi``. The
        entropy's is ``-pi (log pi + H)`` per row, the value error's ``2 (v - R) / B``. The
        networks back-propagate these through :meth:`MLP.backward`, without autograd's
        graph, which is about half of the gradient step's time at CartPole's sizes."""
        c = self.config
        advantages = self.advantages(batch)
        rows = len(advantages)
        policy_net, value_net = self.policy.logits, self.value.net
        policy_layers = policy_net.activations(batch["obs"])
        log_pi = torch.log_softmax(policy_layers[-1], dim=-1)
        actions = batch["actions"].long().unsqueeze(-1)
        log_prob = log_pi.gather(-1, actions).squeeze(-1)
        ratio = torch.exp(log_prob - batch["log_probs"])
        unclipped = ratio * advantages
        clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantages
        policy_loss = -torch.minimum(unclipped, clipped).mean()
        grad_log_prob = torch.where(unclipped <= clipped, unclipped, 0.0).mul_(-1.0 / rows)
        entropy = None
        if c["ent_coef"] > 0:
            entropy = -(log_pi.exp() * log_pi).sum(-1).mean()
        grad_logits = categorical_logits_grad(log_pi, actions, grad_log_prob, c["ent_coef"] / rows)
        policy_net.backward(policy_layers, grad_logits)
        value_layers = value_net.activations(batch["obs"])
        error = value_layers[-1].squeeze(-1) - batch["returns"]
        value_loss = error.pow(2).mean()
        value_net.backward(value_layers, (error * (2.0 * c["vf_coef"] / rows)).unsqueeze(-1))
        return policy_loss, value_loss, entropy

    def update(self) -> dict[str, float]:
        """``n_epochs`` passes of minibatch gradient steps on the clipped objective."""
        c = self.config
        lr = self.scheduled(c["learning_rate"], c["lr_schedule"])
        self.set_learning_rate(self.optimizer, lr)
        clip = self.scheduled(c["clip_range"], c["clip_schedule"])
        data = self.buffer.flat()
        n = data["obs"].shape[0]
        for _ in range(c["n_epochs"]):
            # One minibatch of everything needs no shuffle: a mean does not see the order.
            if c["batch_size"] >= n:
                batches = [data]
            else:
                indices = minibatches(n, c["batch_size"], self.generator)
                batches = ({k: v[index] for k, v in data.items()} for index in indices)
            for batch in batches:
                if self.by_hand:
                    policy_loss, value_loss, entropy = self.gradients_by_hand(batch, clip)
                else:
                    policy_loss, value_loss, entropy = self.losses(batch, clip)
                    loss = policy_loss + c["vf_coef"] * value_loss
                    if c["ent_coef"] > 0:
                        loss = loss - c["ent_coef"] * entropy
                    self.flat.zero_grad()
                    loss.backward()
                self.flat.clip_grad_norm(c["max_grad_norm"])
                self.optimizer.step()
                self.num_updates += 1
        with torch.no_grad():
            log_probs, entropy = self.policy.log_prob_entropy(batch["obs"], batch["actions"])
            log_ratio = log_probs - batch["log_probs"]
            approx_kl = ((log_ratio.exp() - 1) - log_ratio).mean()  # k3 of the last minibatch
            clip_fraction = ((log_ratio.exp() - 1).abs() > clip).float().mean()
        return {
            "policy_loss": float(policy_loss.detach()),
            "value_loss": float(value_loss.detach()),
            "entropy": float(entropy.mean()),
            "approx_kl": float(approx_kl),
            "clip_fraction": float(clip_fraction),
            "learning_rate": lr,
            "clip_range": clip,
        }
