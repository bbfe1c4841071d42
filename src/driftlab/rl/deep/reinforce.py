"""REINFORCE with a learned baseline (Williams 1992, "Simple statistical gradient-following
algorithms for connectionist reinforcement learning"; Sutton & Barto 2018, sec. 13.4).

Each iteration plays ``episodes_per_update`` whole episodes with the current policy, computes
the Monte Carlo return of every step,

    G_t = r_t + gamma r_{t+1} + gamma^2 r_{t+2} + ...       (Sutton & Barto eq. 3.8)

and takes one gradient step on the policy and one on the baseline:

    policy:    L = -E[ log pi(a_t|s_t) (G_t - b(s_t)) ]     (Sutton & Barto eq. 13.11)
    baseline:  L_b = E[ (b(s_t) - G_t)^2 ]                  (its own learning rate)

The advantages ``G_t - b(s_t)`` are optionally normalised over the batch (mean 0, std 1).
Sutton & Barto's per-step ``gamma^t`` factor is left out, as in nearly every implementation:
it would weight late steps of long episodes to almost nothing. With ``baseline=False`` the
advantage is ``G_t`` itself: plain REINFORCE (Williams 1992; Sutton & Barto sec. 13.3, eq. 13.8).

Episode ends follow Gymnasium: a terminated episode's return stops there; a truncated one (a
time limit) is bootstrapped from ``b(s_T)`` of its real final observation, the baseline's
estimate of the return the time limit cut off. Plain REINFORCE has no value estimate, so it
counts a truncated episode's return up to the cut. With ``n_envs > 1`` the environments step
in lockstep until ``episodes_per_update`` episodes have ended in total; episodes still running
then are cut like a time limit (bootstrapped from the baseline) or, without a baseline, left
out of the gradient. With one environment (the default) every update sees whole episodes
only, so a ``learn(total_steps)`` call may run past ``total_steps`` to finish its last ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from driftlab.rl.deep.algorithm import Algorithm
from driftlab.rl.deep.networks import ValueNet, make_policy, obs_dim
from driftlab.rl.deep.optim import FlatParameters, adam
from driftlab.rl.losses import discounted_returns


@dataclass
class Episodes:
    """``T`` lockstep steps of ``N`` environments, time-major ``[T, N, ...]``.

    ``final_obs[t]`` is the real ``s_{t+1}`` (differs from ``obs[t + 1]`` where an episode
    ended at ``t``); ``last_obs`` is the observation after the last step."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_obs: torch.Tensor
    last_obs: torch.Tensor

    @property
    def done(self) -> torch.Tensor:
        return (self.terminated + self.truncated) > 0

    def running_at_end(self) -> torch.Tensor:
        """``[T, N]``: True at the steps of episodes that had not ended by the last step."""
        ended_later = self.done.flip(0).cummax(0).values.flip(0)
        return ~ended_later


class REINFORCE(Algorithm):
    """``REINFORCE(env, seed=0, **hyperparameters)``; see :mod:`driftlab.rl.deep.presets`."""

    name = "reinforce"

    def build(self) -> None:
        c = self.config
        self.policy = make_policy(
            self.observation_space, self.action_space, c["hidden_sizes"], c["activation"]
        )
        self.policy_flat = FlatParameters(self.policy.parameters())
        self.optimizer = adam(self.policy_flat, c["learning_rate"])
        self.baseline: ValueNet | None = None
        if c["baseline"]:
            self.baseline = ValueNet(
                obs_dim(self.observation_space), c["hidden_sizes"], c["activation"]
            )
            self.baseline_flat = FlatParameters(self.baseline.parameters())
            self.baseline_optimizer = adam(self.baseline_flat, c["baseline_learning_rate"])

    def modules(self) -> dict[str, nn.Module]:
        if self.baseline is None:
            return {"policy": self.policy}
        return {"policy": self.policy, "baseline": self.baseline}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self.baseline is None:
            return {"optimizer": self.optimizer}
        return {"optimizer": self.optimizer, "baseline_optimizer": self.baseline_optimizer}

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        if deterministic:
            return self.policy.mode(obs)
        return self.policy.sample(obs, self.generator)[0]

    def iteration(self) -> dict[str, float]:
        return self.update(self.collect())

    @torch.no_grad()
    def collect(self) -> Episodes:
        """Step every environment with the current policy until ``episodes_per_update``
        episodes have ended."""
        obs, actions, rewards, terminated, truncated, final_obs = [], [], [], [], [], []
        ended = 0
        while ended < self.config["episodes_per_update"]:
            state = torch.from_numpy(self.obs)
            action, _ = self.policy.sample(state, self.generator)
            step = self.envs.step(self.to_env_actions(action))
            obs.append(state)
            actions.append(action)
            rewards.append(step.rewards)
            terminated.append(step.terminated)
            truncated.append(step.truncated)
            final_obs.append(step.final_obs)
            self.obs = step.obs
            self.num_steps += self.envs.num_envs
            ended += int(step.done.sum())
        return Episodes(
            obs=torch.stack(obs),
            actions=torch.stack(actions),
            rewards=torch.as_tensor(np.stack(rewards), dtype=torch.float32),
            terminated=torch.as_tensor(np.stack(terminated), dtype=torch.float32),
            truncated=torch.as_tensor(np.stack(truncated), dtype=torch.float32),
            final_obs=torch.as_tensor(np.stack(final_obs)),
            last_obs=torch.from_numpy(self.obs.copy()),
        )

    def returns(self, episodes: Episodes) -> torch.Tensor:
        """Monte Carlo returns ``G_t`` ``[T, N]`` (:func:`driftlab.rl.losses.discounted_returns`),
        bootstrapped from the baseline where an episode was cut (time limit, or still running
        at the last step) and from nothing where it terminated."""
        next_values = torch.zeros_like(episodes.rewards)
        if self.baseline is not None:
            T = episodes.rewards.shape[0]
            cut = episodes.truncated.bool()
            cut[T - 1] = True  # discounted_returns bootstraps the last step unless terminated
            if cut.any():
                # s_{t+1} of a cut step: the real final observation (equal to last_obs for an
                # episode still running at the end).
                with torch.no_grad():
                    next_values[cut] = self.baseline(episodes.final_obs[cut])
        return discounted_returns(
            episodes.rewards,
            self.config["gamma"],
            terminated=episodes.terminated,
            truncated=episodes.truncated,
            next_values=next_values,
        )

    def update(self, episodes: Episodes) -> dict[str, float]:
        """One policy-gradient step (Sutton & Barto eq. 13.11) and one baseline step."""
        c = self.config
        lr = self.scheduled(c["learning_rate"], c["lr_schedule"])
        self.set_learning_rate(self.optimizer, lr)
        returns = self.returns(episodes)
        used = torch.ones_like(returns, dtype=torch.bool)
        if self.baseline is None:
            used = ~episodes.running_at_end()  # no value to bootstrap a cut episode from
        obs, actions, returns = episodes.obs[used], episodes.actions[used], returns[used]
        metrics: dict[str, float] = {"learning_rate": lr, "batch_steps": float(len(returns))}
        if self.baseline is not None:
            values = self.baseline(obs)
            advantages = returns - values.detach()
            baseline_loss = (values - returns).pow(2).mean()
            self.set_learning_rate(
                self.baseline_optimizer,
                self.scheduled(c["baseline_learning_rate"], c["lr_schedule"]),
            )
            self.baseline_flat.zero_grad()
            baseline_loss.backward()
            self.baseline_flat.clip_grad_norm(c["max_grad_norm"])
            self.baseline_optimizer.step()
            metrics["baseline_loss"] = float(baseline_loss.detach())
        else:
            advantages = returns
        if c["normalize_advantage"] and advantages.numel() > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        log_probs, _ = self.policy.log_prob_entropy(obs, actions)
        policy_loss = reinforce_loss(log_probs, advantages)
        self.policy_flat.zero_grad()
        policy_loss.backward()
        self.policy_flat.clip_grad_norm(c["max_grad_norm"])
        self.optimizer.step()
        self.num_updates += 1
        metrics["policy_loss"] = float(policy_loss.detach())
        return metrics


def reinforce_loss(log_probs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """``-mean_t log pi(a_t|s_t) A_t`` with ``A_t`` held constant: its gradient is the
    REINFORCE estimate of ``-grad J`` (Sutton & Barto eq. 13.11, without ``gamma^t``)."""
    return -(log_probs * advantages.detach()).mean()
