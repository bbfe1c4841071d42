"""Experience storage: a rollout buffer for on-policy learners, a replay buffer for off-policy.

Both follow :mod:`driftlab.rl.deep.envs`' convention: a stored transition's next observation is
the real ``s_{t+1}`` (``final_obs``), and only ``terminated`` stops bootstrapping.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from driftlab.core.config import check_int
from driftlab.rl.losses import gae


class RolloutBuffer:
    """``n_steps`` steps of ``n_envs`` environments, time-major ``[T, N, ...]``.

    After :meth:`add`-ing ``n_steps`` steps, :meth:`compute_advantages` fills ``advantages``
    and ``returns`` by GAE (:func:`driftlab.rl.losses.gae`), bootstrapping truncated episodes
    from the value of their real final observation.
    """

    def __init__(
        self,
        n_steps: int,
        n_envs: int,
        obs_shape: tuple[int, ...],
        action_shape: tuple[int, ...],
        action_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.n_steps = check_int("n_steps", n_steps, minimum=1)
        self.n_envs = n_envs
        T, N = n_steps, n_envs
        self.obs = torch.zeros((T, N, *obs_shape))
        self.actions = torch.zeros((T, N, *action_shape), dtype=action_dtype)
        self.log_probs = torch.zeros((T, N))
        self.values = torch.zeros((T, N))
        self.rewards = torch.zeros((T, N))
        self.terminated = torch.zeros((T, N))
        self.truncated = torch.zeros((T, N))
        self.next_values = torch.zeros((T, N))
        self.advantages = torch.zeros((T, N))
        self.returns = torch.zeros((T, N))
        # (t, env, final observation) of every truncated episode, valued after the rollout.
        self._truncations: list[tuple[int, int, np.ndarray]] = []
        self.pos = 0

    def add(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        log_probs: torch.Tensor,
        values: torch.Tensor,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        final_obs: np.ndarray,
    ) -> None:
        t = self.pos
        self.obs[t] = obs
        self.actions[t] = actions
        self.log_probs[t] = log_probs
        self.values[t] = values
        self.rewards[t] = torch.from_numpy(rewards)
        self.terminated[t] = torch.from_numpy(terminated)
        self.truncated[t] = torch.from_numpy(truncated)
        for i in np.flatnonzero(truncated & ~terminated):
            self._truncations.append((t, int(i), final_obs[i]))
        self.pos += 1

    @property
    def full(self) -> bool:
        return self.pos == self.n_steps

    def compute_advantages(
        self, last_values: torch.Tensor, value_fn: Any, gamma: float, gae_lambda: float
    ) -> None:
        """GAE over the stored steps. ``last_values`` is ``v`` of the observation after the
        last step; ``value_fn`` values the final observations of truncated episodes."""
        next_values = self.next_values
        next_values[:-1] = self.values[1:]
        next_values[-1] = last_values
        if self._truncations:
            final = torch.as_tensor(np.stack([o for _, _, o in self._truncations]))
            with torch.no_grad():
                bootstrap = value_fn(final)
            for k, (t, i, _) in enumerate(self._truncations):
                next_values[t, i] = bootstrap[k]
        self.advantages = gae(
            self.rewards,
            self.values,
            next_values,
            gamma,
            gae_lambda,
            terminated=self.terminated,
            truncated=self.truncated,
        )
        self.returns = self.advantages + self.values

    def reset(self) -> None:
        self.pos = 0
        self._truncations = []

    def flat(self) -> dict[str, torch.Tensor]:
        """Every stored field with ``[T, N]`` merged into one batch dimension."""
        n = self.n_steps * self.n_envs
        fields = ("obs", "actions", "log_probs", "values", "advantages", "returns")
        return {f: getattr(self, f).reshape(n, *getattr(self, f).shape[2:]) for f in fields}


def minibatches(
    n: int, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """A fresh random permutation of ``range(n)`` cut into index batches of ``batch_size``
    (the last one smaller when ``batch_size`` does not divide ``n``)."""
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


@dataclass
class Transitions:
    """A minibatch of transitions ``(s, a, r, s', terminated)``."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor


class ReplayBuffer:
    """A ring buffer of the last ``capacity`` transitions (Mnih et al. 2015's experience replay).

    Stores ``s_{t+1}`` with each transition (the real final observation at the end of an
    episode), so truncated episodes are bootstrapped and terminated ones are not.
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        action_shape: tuple[int, ...],
        action_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.capacity = check_int("buffer_size", capacity, minimum=1)
        self.obs = torch.zeros((capacity, *obs_shape))
        self.next_obs = torch.zeros((capacity, *obs_shape))
        self.actions = torch.zeros((capacity, *action_shape), dtype=action_dtype)
        self.rewards = torch.zeros(capacity)
        self.terminated = torch.zeros(capacity)
        self.pos = 0
        self.size = 0

    def add(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
    ) -> None:
        """Add one step of ``n`` environments (leading dimension ``n``)."""
        n = len(rewards)
        end = self.pos + n
        index = (
            slice(self.pos, end)
            if end <= self.capacity
            else np.arange(self.pos, end) % self.capacity
        )
        # Written through NumPy views of the tensors (casting as NumPy assignment does): a
        # learner adds a transition per environment step, and a NumPy assignment of a few
        # values costs a fraction of torch's indexing and tensor conversion.
        self.obs.numpy()[index] = obs
        self.next_obs.numpy()[index] = next_obs
        self.actions.numpy()[index] = actions
        self.rewards.numpy()[index] = rewards
        self.terminated.numpy()[index] = terminated
        self.pos = end % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Transitions:
        """``batch_size`` transitions drawn uniformly with replacement."""
        index = torch.randint(self.size, (batch_size,), generator=generator)
        return Transitions(
            self.obs[index],
            self.actions[index],
            self.rewards[index],
            self.next_obs[index],
            self.terminated[index],
        )

    def state_dict(self) -> dict[str, Any]:
        n = self.size
        return {
            "obs": self.obs[:n],
            "next_obs": self.next_obs[:n],
            "actions": self.actions[:n],
            "rewards": self.rewards[:n],
            "terminated": self.terminated[:n],
            "pos": self.pos,
            "size": self.size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = state["size"]
        for name in ("obs", "next_obs", "actions", "rewards", "terminated"):
            getattr(self, name)[:n] = state[name]
        self.pos, self.size = state["pos"], n
