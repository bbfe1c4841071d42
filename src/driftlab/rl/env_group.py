"""A group of environment copies stepped under driftlab's autoreset convention, without torch.

This is what one Ray actor of :class:`driftlab.rl.deep.ray_envs.RayVecEnv` holds. It lives
outside ``driftlab.rl.deep`` (whose package imports torch) so that a worker process starts
with Gymnasium and NumPy only: importing torch would cost every actor seconds. The capture
and restore of one environment's exact state live here for the same reason (the in-process
:class:`~driftlab.rl.deep.envs.VecEnv` uses them too, with tensors for its checkpoints).
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np


class EnvGroup:
    """Copies ``first, first + 1, ..., first + count - 1`` of the environment ``env_id``,
    reset and stepped exactly as :class:`driftlab.rl.deep.envs.VecEnv` resets and steps its
    copies: copy ``i`` is seeded with ``seed + i``, and an episode that ends is restarted in
    the same step (``SAME_STEP`` autoreset), its real last observation returned as ``final``.
    """

    def __init__(self, env_id: str, first: int, count: int) -> None:
        self.first = first
        self.envs = [gym.make(env_id, disable_env_checker=True) for _ in range(count)]

    def reset(self, seed: int) -> np.ndarray:
        return reset_seeded(self.envs, seed + self.first)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        return step_with_autoreset(self.envs, actions)

    def get_state(self) -> list[dict[str, Any] | None]:
        """Each copy's :func:`env_state`."""
        return [env_state(env) for env in self.envs]

    def set_state(self, seed: int, states: list[dict[str, Any]]) -> None:
        for j, (env, saved) in enumerate(zip(self.envs, states, strict=True)):
            env.reset(seed=seed + self.first + j)  # Gymnasium refuses step() before a reset
            load_env_state(env, saved)

    def close(self) -> None:
        for env in self.envs:
            env.close()


def reset_seeded(envs: list[gym.Env], seed: int) -> np.ndarray:
    """Reset ``envs[i]`` (and seed its action space) with ``seed + i``; returns the stacked
    first observations."""
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    for i, env in enumerate(envs):
        env.action_space.seed(seed + i)
    return np.stack(obs).astype(np.float32)


def step_with_autoreset(envs: list[gym.Env], actions: np.ndarray) -> tuple[np.ndarray, ...]:
    """Step ``envs[i]`` with ``actions[i]``; an episode that ends restarts in the same step
    (Gymnasium's ``SAME_STEP`` autoreset). Returns ``(obs, final, rewards, terminated,
    truncated)``: ``obs`` to act on next, ``final`` the real observation each step reached."""
    n = len(envs)
    obs = np.empty((n, *envs[0].observation_space.shape), dtype=np.float32)
    final = np.empty_like(obs)
    rewards = np.empty(n)
    terminated = np.empty(n, dtype=bool)
    truncated = np.empty(n, dtype=bool)
    for i, env in enumerate(envs):
        o, rewards[i], terminated[i], truncated[i], _ = env.step(actions[i])
        final[i] = o
        if terminated[i] or truncated[i]:
            o, _ = env.reset()
        obs[i] = o
    return obs, final, rewards, terminated, truncated


def _time_limit(env: gym.Env) -> gym.wrappers.TimeLimit | None:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, gym.wrappers.TimeLimit):
            return env
        env = env.env
    return None


def env_state(env: gym.Env) -> dict[str, Any] | None:
    """What an exact resume needs of one environment, as NumPy arrays and Python values: its
    RNG, its time limit's step counter and its physical state (classic control: the
    ``unwrapped.state`` array; MuJoCo: ``qpos``, ``qvel`` and the full integration state).
    ``None`` for an environment whose state is not known to be capturable."""
    inner = env.unwrapped
    state: dict[str, Any] = {"rng": copy.deepcopy(inner.np_random.bit_generator.state)}
    limit = _time_limit(env)
    if limit is not None:
        state["elapsed_steps"] = int(limit._elapsed_steps or 0)
    if hasattr(inner, "data") and hasattr(inner, "set_state"):  # MuJoCo
        state["qpos"] = inner.data.qpos.copy()
        state["qvel"] = inner.data.qvel.copy()
        state["mujoco"] = _mujoco_integration_state(inner)
        return state
    physical = getattr(inner, "state", None)
    if physical is None:
        return None
    state["physics"] = np.array(physical, dtype=np.float64)
    if hasattr(inner, "steps_beyond_terminated"):
        state["steps_beyond_terminated"] = inner.steps_beyond_terminated
    return state


def load_env_state(env: gym.Env, state: dict[str, Any]) -> None:
    """Restore :func:`env_state` (arrays may be NumPy arrays or CPU tensors) into ``env``,
    which must have been reset once."""
    inner = env.unwrapped
    inner.np_random.bit_generator.state = state["rng"]
    limit = _time_limit(env)
    if limit is not None and "elapsed_steps" in state:
        limit._elapsed_steps = state["elapsed_steps"]
    if "qpos" in state:
        inner.set_state(np.asarray(state["qpos"]), np.asarray(state["qvel"]))
        if "mujoco" in state:
            _set_mujoco_integration_state(inner, np.asarray(state["mujoco"]))
        return
    inner.state = np.asarray(state["physics"], dtype=np.float64).copy()
    if "steps_beyond_terminated" in state:
        inner.steps_beyond_terminated = state["steps_beyond_terminated"]


def _mujoco_integration_state(inner: gym.Env) -> np.ndarray:
    """MuJoCo's full integration state (time, qpos, qvel, activations, the constraint
    solver's warm start, controls, ...): ``qpos``/``qvel`` alone are not enough for an exact
    resume, because the solver starts from the previous step's accelerations and contact-rich
    bodies (HalfCheetah) amplify the 1e-16 difference to whole units within 200 steps."""
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(inner.model, spec))
    mujoco.mj_getState(inner.model, inner.data, state, spec)
    return state


def _set_mujoco_integration_state(inner: gym.Env, state: np.ndarray) -> None:
    import mujoco

    mujoco.mj_setState(inner.model, inner.data, state, mujoco.mjtState.mjSTATE_INTEGRATION)
