"""Rollouts on Ray actors: :class:`RayVecEnv`, the vector environment for more than one machine.

The ``n_envs`` copies live in Ray actors (``envs_per_actor`` copies each), which Ray places
on any node of the cluster the driver is connected to; the learner stays in the driver and
sends one batch of actions per actor and step. Everything else is :class:`VecEnv`'s:
the same ``SAME_STEP`` autoreset convention (``obs`` is already the next episode's first
observation where an episode ended, ``final_obs`` the real last one), the same seeding (copy
``i`` is reset with ``seed + i``), normalisation and episode bookkeeping in the driver, so a
seeded action sequence gives exactly what :class:`VecEnv` gives (a test checks it). Unlike
:class:`AsyncVecEnv` the copies' physical state can be fetched from the actors, so a saved
run resumes the same episodes.

Ray is an optional extra (``pip install driftlab[ray]``). Select it with the hyperparameter
``vec_env="ray"``; the driver joins the running Ray instance (``ray.init()`` first to choose
one, e.g. ``ray.init(address="auto")`` on a cluster) or starts a local one. Every node needs
driftlab and the environment's package installed. One round trip per step costs about a
millisecond, so it pays for environments whose step is slow, or when many copies per actor
amortise it, not for a lone CartPole.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from driftlab.core.config import ConfigError, check_int
from driftlab.rl.deep.envs import VecEnv, env_state_tensors
from driftlab.rl.deep.normalization import RewardScaler
from driftlab.rl.env_group import EnvGroup

__all__ = ["RayVecEnv"]


def _as_arrays(state: dict[str, Any]) -> dict[str, Any]:
    """An environment state with arrays for tensors, so that an actor never has to import
    torch to unpickle it."""
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError:
        raise ConfigError(
            "vec_env='ray' needs Ray, an optional extra: pip install 'driftlab[ray]'"
        ) from None
    return ray


class RayVecEnv(VecEnv):
    """:class:`VecEnv` whose copies step in Ray actors, ``envs_per_actor`` copies per actor.

    ``actor_options`` go to Ray's ``.options()`` for every actor (for example
    ``{"num_cpus": 1}`` to reserve a core per actor, or a scheduling strategy); by default an
    actor takes Ray's defaults (a CPU to be placed, none while it runs), so any number of
    actors fits on a small instance. Starts a local Ray instance if none is running.
    """

    def __init__(
        self,
        env: str,
        n_envs: int = 2,
        seed: int = 0,
        normalize_obs: bool = False,
        normalize_reward: bool = False,
        gamma: float = 0.99,
        envs_per_actor: int = 1,
        actor_options: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(env, str):
            raise ConfigError(f"Ray actors need an environment id, got {type(env).__name__}")
        ray = _import_ray()
        n_envs = check_int("n_envs", n_envs, minimum=1)
        envs_per_actor = check_int("envs_per_actor", envs_per_actor, minimum=1)
        # The spaces (and normalisers sized by them) come from one local copy, then closed.
        super().__init__(env, 1, seed, normalize_obs, normalize_reward, gamma)
        self.envs[0].close()
        self.envs = []
        self.num_envs = n_envs
        self.reward_scaler = RewardScaler(n_envs, gamma) if normalize_reward else None
        self._episode_returns = np.zeros(n_envs)
        self._episode_lengths = np.zeros(n_envs, dtype=np.int64)
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        remote = ray.remote(EnvGroup).options(**(actor_options or {}))
        self._ray = ray
        self._slices = [
            slice(first, min(first + envs_per_actor, n_envs))
            for first in range(0, n_envs, envs_per_actor)
        ]
        self.actors = [remote.remote(env, s.start, s.stop - s.start) for s in self._slices]

    def _gather(self, calls: list[Any]) -> list[Any]:
        return self._ray.get(calls)

    def reset(self) -> np.ndarray:
        parts = self._gather([actor.reset.remote(self.seed) for actor in self.actors])
        self._raw_obs = np.concatenate(parts)
        self._episode_returns[:] = 0.0
        self._episode_lengths[:] = 0
        return self.normalize(self._raw_obs, update=True)

    def _step_envs(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        actions = np.asarray(actions)
        parts = self._gather(
            [
                actor.step.remote(actions[s])
                for actor, s in zip(self.actors, self._slices, strict=True)
            ]
        )
        # One concatenation per field; the arrays Ray hands back may be read-only views.
        return tuple(np.concatenate(field) for field in zip(*parts, strict=True))

    # -- exact resume: the copies' state is fetched from, and sent back to, the actors -------

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()  # normalisation and bookkeeping (no local copies)
        state.pop("envs", None)
        parts = self._gather([actor.get_state.remote() for actor in self.actors])
        copies = [env_state_tensors(c) for part in parts for c in part]
        if self._raw_obs is not None and all(c is not None for c in copies):
            state["envs"] = copies
        else:
            state.pop("raw_obs", None)
        state["exact"] = "envs" in state
        return state

    def load_state_dict(self, state: dict[str, Any]) -> np.ndarray | None:
        self.load_normalization(state)
        if "envs" not in state:
            return None
        copies = state["envs"]
        if len(copies) != self.num_envs:
            raise ConfigError(f"state holds {len(copies)} environments, this has {self.num_envs}")
        self._gather(
            [
                actor.set_state.remote(self.seed, [_as_arrays(c) for c in copies[s]])
                for actor, s in zip(self.actors, self._slices, strict=True)
            ]
        )
        self._raw_obs = state["raw_obs"].numpy().copy()
        self._episode_returns = state["episode_returns"].numpy().astype(np.float64).copy()
        self._episode_lengths = state["episode_lengths"].numpy().astype(np.int64).copy()
        return self.normalize(self._raw_obs, update=False)

    def close(self) -> None:
        if not self.actors:
            return
        self._gather([actor.close.remote() for actor in self.actors])
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
