"""Gymnasium environments by id or instance, stepped in parallel under one autoreset convention.

**The convention** (Gymnasium's ``SAME_STEP`` autoreset): ``VecEnv.step(actions)`` returns, for
every environment, the observation to act on next. Where an episode ended at this step that
is already the first observation of the next episode, and the observation the episode really
ended in is in ``final_obs`` (elsewhere ``final_obs`` equals ``obs``). So every step is a real
transition ``(s_t, a_t, r_t, final_obs_t)``: a learner bootstraps from ``final_obs`` on
truncation and from nothing on termination, and never sees a fake "reset" transition.

Observation and reward normalisation live here too (their statistics are part of
:meth:`VecEnv.state_dict`, so they are saved with the model), and so does the bookkeeping of
finished episodes' raw returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from driftlab.core.config import ConfigError, check_int
from driftlab.rl.deep.normalization import ObservationNormalizer, RewardScaler
from driftlab.rl.env_group import (
    env_state,
    load_env_state,
    reset_seeded,
    step_with_autoreset,
)


def env_id(env: str | gym.Env) -> str | None:
    """The registered id of ``env`` (``None`` for an unregistered instance)."""
    if isinstance(env, str):
        return env
    spec = getattr(env, "spec", None)
    return spec.id if spec is not None else None


def make_env(env: str | gym.Env, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    """A fresh environment from an id (``gym.make``), or ``env`` itself if it is an instance."""
    if isinstance(env, gym.Env):
        return env
    if not isinstance(env, str):
        raise ConfigError(f"env must be a Gymnasium id or environment, got {env!r}")
    try:
        return gym.make(env, render_mode=render_mode, disable_env_checker=True, **kwargs)
    except (gym.error.Error, ModuleNotFoundError) as error:
        # "module:Env-v0" ids import their module first; a missing one is a bad id too.
        raise ConfigError(f"unknown environment {env!r}: {error}") from None


def _copies(env: str | gym.Env, n: int) -> list[gym.Env]:
    """``n`` independent environments: made from the id, or from an instance's spec."""
    if isinstance(env, gym.Env):
        if n == 1:
            return [env]
        if env.spec is None:
            raise ConfigError(
                f"n_envs={n} needs an environment id or a registered environment, got an "
                f"unregistered {type(env).__name__}; pass n_envs=1"
            )
        return [env] + [gym.make(env.spec, disable_env_checker=True) for _ in range(n - 1)]
    return [make_env(env) for _ in range(n)]


@dataclass
class Step:
    """One step of all environments: ``obs`` to act on next, ``final_obs`` the real ``s_{t+1}``,
    ``rewards`` after scaling (``raw_rewards`` before), termination and truncation flags."""

    obs: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    final_obs: np.ndarray
    raw_rewards: np.ndarray

    @property
    def done(self) -> np.ndarray:
        return self.terminated | self.truncated


class VecEnv:
    """``n_envs`` copies of one environment stepped in this process, in a loop.

    Environment ``i`` is seeded with ``seed + i``. Lean on purpose: one ``env.step`` per copy
    and no per-step info merging, which is where generic vector wrappers spend their time on
    small environments. For heavy environments :class:`AsyncVecEnv` steps the copies in
    worker processes under the same convention.
    """

    def __init__(
        self,
        env: str | gym.Env,
        n_envs: int = 1,
        seed: int = 0,
        normalize_obs: bool = False,
        normalize_reward: bool = False,
        gamma: float = 0.99,
    ) -> None:
        self.num_envs = check_int("n_envs", n_envs, minimum=1)
        self.envs = _copies(env, self.num_envs)
        first = self.envs[0]
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.spec = first.spec
        if not isinstance(self.single_observation_space, gym.spaces.Box):
            raise ConfigError(
                f"observations must be a Box space, got {self.single_observation_space}"
            )
        self.obs_normalizer = (
            ObservationNormalizer(self.single_observation_space.shape) if normalize_obs else None
        )
        self.reward_scaler = RewardScaler(self.num_envs, gamma) if normalize_reward else None
        self.training = True
        self.seed = seed
        self._raw_obs: np.ndarray | None = None
        self._episode_returns = np.zeros(self.num_envs)
        self._episode_lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.finished_returns: list[float] = []
        self.finished_lengths: list[int] = []

    # -- stepping -------------------------------------------------------------------------

    def reset(self) -> np.ndarray:
        """Reset every copy (copy ``i`` with seed ``seed + i``); returns the observations."""
        self._raw_obs = reset_seeded(self.envs, self.seed)
        self._episode_returns[:] = 0.0
        self._episode_lengths[:] = 0
        return self.normalize(self._raw_obs, update=True)

    def _step_envs(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        return step_with_autoreset(self.envs, actions)

    def step(self, actions: np.ndarray) -> Step:
        """Step every copy with ``actions[i]``; finished episodes restart in the same step."""
        raw_obs, raw_final, raw_rewards, terminated, truncated = self._step_envs(actions)
        done = terminated | truncated
        self._episode_returns += raw_rewards
        self._episode_lengths += 1
        for i in np.flatnonzero(done):
            self.finished_returns.append(float(self._episode_returns[i]))
            self.finished_lengths.append(int(self._episode_lengths[i]))
            self._episode_returns[i] = 0.0
            self._episode_lengths[i] = 0
        self._raw_obs = raw_obs
        rewards = raw_rewards
        if self.reward_scaler is not None:
            rewards = self.reward_scaler(raw_rewards, done, update=self.training)
        obs = self.normalize(raw_obs, update=True)
        final = obs if not done.any() else self.normalize(raw_final, update=False)
        return Step(obs, rewards, terminated, truncated, final, raw_rewards)

    def normalize(self, obs: np.ndarray, update: bool = False) -> np.ndarray:
        """Observations as the learner sees them (statistics updated only while training)."""
        if self.obs_normalizer is None:
            return obs
        return self.obs_normalizer(obs, update=update and self.training)

    def pop_episodes(self) -> tuple[list[float], list[int]]:
        """Raw returns and lengths of the episodes finished since the last call."""
        returns, lengths = self.finished_returns, self.finished_lengths
        self.finished_returns, self.finished_lengths = [], []
        return returns, lengths

    def close(self) -> None:
        for env in self.envs:
            env.close()

    # -- exact resume -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Normalisation statistics, episode bookkeeping and, where the environment allows it
        (classic control: an ``unwrapped.state`` array; MuJoCo: ``qpos``/``qvel``), each
        copy's physical state, step counter and RNG, so that a resumed run continues the
        same episodes. ``exact`` says whether the environment state could be captured."""
        state: dict[str, Any] = {
            "episode_returns": torch.as_tensor(self._episode_returns),
            "episode_lengths": torch.as_tensor(self._episode_lengths),
        }
        if self.obs_normalizer is not None:
            state["obs_normalizer"] = self.obs_normalizer.state_dict()
        if self.reward_scaler is not None:
            state["reward_scaler"] = self.reward_scaler.state_dict()
        copies = [_env_state(env) for env in self.envs]
        if self._raw_obs is not None and all(c is not None for c in copies):
            state["envs"] = copies
            state["raw_obs"] = torch.as_tensor(self._raw_obs)
        state["exact"] = "envs" in state
        return state

    def load_normalization(self, state: dict[str, Any]) -> None:
        """Only the normalisation statistics of ``state`` (what a saved model needs)."""
        if self.obs_normalizer is not None and "obs_normalizer" in state:
            self.obs_normalizer.load_state_dict(state["obs_normalizer"])
        if self.reward_scaler is not None and "reward_scaler" in state:
            self.reward_scaler.load_state_dict(state["reward_scaler"])

    def load_state_dict(self, state: dict[str, Any]) -> np.ndarray | None:
        """Restore :meth:`state_dict`; returns the observation to act on (``None`` when the
        environments could not be restored and must be reset)."""
        self.load_normalization(state)
        if "envs" not in state:
            return None
        for i, (env, saved) in enumerate(zip(self.envs, state["envs"], strict=True)):
            env.reset(seed=self.seed + i)  # Gymnasium refuses step() before a reset
            load_env_state(env, saved)
        self._raw_obs = state["raw_obs"].numpy().copy()
        self._episode_returns = state["episode_returns"].numpy().astype(np.float64).copy()
        self._episode_lengths = state["episode_lengths"].numpy().astype(np.int64).copy()
        return self.normalize(self._raw_obs, update=False)


def _env_state(env: gym.Env) -> dict[str, Any] | None:
    return env_state_tensors(env_state(env))


def env_state_tensors(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """An :func:`driftlab.rl.env_group.env_state` with its arrays as tensors, as checkpoints
    (safetensors) hold them."""
    if state is None:
        return None
    return {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}


class AsyncVecEnv(VecEnv):
    """:class:`VecEnv` whose copies step in worker processes (Gymnasium's ``AsyncVectorEnv``
    in ``SAME_STEP`` autoreset mode): worth it when one environment step costs far more than
    the inter-process round trip (MuJoCo, Box2D), not for CartPole."""

    def __init__(
        self,
        env: str,
        n_envs: int = 2,
        seed: int = 0,
        normalize_obs: bool = False,
        normalize_reward: bool = False,
        gamma: float = 0.99,
    ) -> None:
        if not isinstance(env, str):
            raise ConfigError("asynchronous environments need an environment id, got an instance")
        super().__init__(env, 1, seed, normalize_obs, normalize_reward, gamma)
        self.envs[0].close()
        self.num_envs = check_int("n_envs", n_envs, minimum=1)
        self.reward_scaler = RewardScaler(self.num_envs, gamma) if normalize_reward else None
        self._episode_returns = np.zeros(self.num_envs)
        self._episode_lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.vector = gym.vector.AsyncVectorEnv(
            [lambda: make_env(env) for _ in range(self.num_envs)],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
        self.envs = []

    def reset(self) -> np.ndarray:
        obs, _ = self.vector.reset(seed=[self.seed + i for i in range(self.num_envs)])
        self.vector.action_space.seed(self.seed)
        self._raw_obs = np.asarray(obs, dtype=np.float32)
        self._episode_returns[:] = 0.0
        self._episode_lengths[:] = 0
        return self.normalize(self._raw_obs, update=True)

    def _step_envs(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        obs, rewards, terminated, truncated, info = self.vector.step(actions)
        obs = np.asarray(obs, dtype=np.float32)
        final = obs.copy()
        if "_final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                final[i] = info["final_obs"][i]
        return obs, final, np.asarray(rewards, dtype=np.float64), terminated, truncated

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # The environments' own state stays in the worker processes: a resume resets them.
        state.pop("envs", None)
        state.pop("raw_obs", None)
        state["exact"] = False
        return state

    def close(self) -> None:
        self.vector.close()
