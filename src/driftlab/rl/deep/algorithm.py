"""What every deep RL learner shares: construction from an environment and a preset, the
``learn`` loop (progress bar, metrics, checkpoints, Ctrl-C), ``evaluate``, ``save`` and ``load``.

An algorithm file (``ppo.py``, ``dqn.py``, ...) subclasses :class:`Algorithm` and writes only
its own steps: ``build`` (networks, optimisers, buffers), ``iteration`` (collect experience
and update once; returns metrics) and ``act`` (the policy's action for evaluation).

Seeding: ``seed`` reaches the network initialisation (torch's global generator is seeded
before ``build``), the environments (copy ``i`` gets ``seed + i``), action sampling and
minibatch order (``self.generator``) and anything NumPy-random (``self.rng``); two runs with
one seed give identical parameters on CPU.
"""

from __future__ import annotations

import copy
import importlib
import math
from abc import ABC, abstractmethod
from collections import deque
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from driftlab.core.checkpoint import load_checkpoint, save_checkpoint
from driftlab.core.config import ConfigError, check_choice, check_int
from driftlab.core.interrupt import DeferredInterrupt
from driftlab.core.metrics import MetricsLogger
from driftlab.core.progress import progress
from driftlab.core.seeding import seed_everything
from driftlab.rl.deep.envs import AsyncVecEnv, VecEnv, env_id
from driftlab.rl.deep.presets import hyperparameters

# Class name -> module, and algorithm name (as in presets and the CLI) -> module.
ALGORITHM_CLASSES = {
    "DQN": "dqn",
    "REINFORCE": "reinforce",
    "QAC": "qac",
    "A2C": "a2c",
    "OffPolicyAC": "off_policy_ac",
    "DDPG": "ddpg",
    "TD3": "td3",
    "TRPO": "trpo",
    "PPO": "ppo",
}
ALGORITHM_NAMES = {module: module for module in ALGORITHM_CLASSES.values()}
ALGORITHMS: dict[str, type[Algorithm]] = {}  # filled as algorithm modules are imported


def get_algorithm(name: str) -> type[Algorithm]:
    """The learner class for an algorithm name (``"ppo"``, ``"dqn"``, ...)."""
    check_choice("algorithm", name, ALGORITHM_NAMES)
    importlib.import_module(f"driftlab.rl.deep.{ALGORITHM_NAMES[name]}")
    return ALGORITHMS[name]


class Algorithm(ABC):
    """Base of the deep RL learners: ``Algo(env, seed=0, **hyperparameters)``.

    ``env`` is a Gymnasium id or environment; hyperparameters default to the preset of that
    environment (``driftlab.rl.deep.presets``) and every value is validated.
    """

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            ALGORITHMS[cls.name] = cls

    def __init__(self, env: str | gym.Env, seed: int = 0, **hyperparameters_: Any) -> None:
        self.seed = check_int("seed", seed, minimum=0)
        self.env_id = env_id(env)
        self.config = hyperparameters(self.name, self.env_id, hyperparameters_)
        # Evaluation needs a separate environment of the same kind.
        self._env_source: Any = env if isinstance(env, str) else (env.spec or copy.deepcopy(env))
        seed_everything(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.envs = self.make_envs(env)
        self.observation_space = self.envs.single_observation_space
        self.action_space = self.envs.single_action_space
        self.num_steps = 0  # environment steps, summed over the parallel copies
        self.num_updates = 0
        self.target_steps = 0  # where the current learn() call stops
        self.horizon = 0  # where linear schedules reach 0 (the learn() target by default)
        self.recent_returns: deque[float] = deque(maxlen=100)
        self.obs: np.ndarray | None = None
        self.build()

    def make_envs(self, env: str | gym.Env) -> VecEnv:
        c = self.config
        kind = c.get("vec_env", "sync")
        if kind == "ray":
            from driftlab.rl.deep.ray_envs import RayVecEnv  # Ray is an optional extra

            vector: type[VecEnv] = RayVecEnv
        else:
            vector = AsyncVecEnv if kind == "async" else VecEnv
        return vector(
            env,
            n_envs=c.get("n_envs", 1),
            seed=self.seed,
            normalize_obs=c.get("normalize_obs", False),
            normalize_reward=c.get("normalize_reward", False),
            gamma=c.get("gamma", 0.99),
        )

    # -- what an algorithm writes -----------------------------------------------------------

    @abstractmethod
    def build(self) -> None:
        """Create networks, optimisers and buffers from ``self.config``."""

    @abstractmethod
    def iteration(self) -> dict[str, float]:
        """Collect experience, update once, advance ``self.num_steps``; return metrics."""

    @abstractmethod
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """The policy's actions for a batch of (normalised) observations."""

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Every network, by name (saved and loaded)."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimiser, by name (saved and loaded for an exact resume)."""

    def replay_buffer(self) -> Any:
        """The replay buffer of off-policy learners (saved on request), else ``None``."""
        return None

    # -- shared mechanics -------------------------------------------------------------------

    @property
    def progress_remaining(self) -> float:
        """1 at the start of training, 0 at its end: the clock of linear schedules."""
        if self.horizon <= 0:
            return 1.0
        return max(0.0, 1.0 - self.num_steps / self.horizon)

    def scheduled(self, value: float, schedule: str) -> float:
        """``value`` under a ``"constant"`` or ``"linear"`` (to 0 at the end) schedule."""
        return value * self.progress_remaining if schedule == "linear" else value

    def set_learning_rate(self, optimizer: torch.optim.Optimizer, lr: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr

    def to_env_actions(self, actions: torch.Tensor) -> np.ndarray:
        """Actions as the environments take them: integers, or clipped into the action box."""
        if isinstance(self.action_space, gym.spaces.Discrete):
            return actions.numpy().astype(np.int64)
        low, high = self.action_space.low, self.action_space.high
        return np.clip(actions.numpy(), low, high).reshape(-1, *self.action_space.shape)

    def reset_envs(self) -> None:
        if self.obs is None:
            self.obs = self.envs.reset()

    def learn(
        self,
        total_steps: int,
        *,
        show_progress: bool = True,
        logger: MetricsLogger | None = None,
        log_every: int = 1000,
        checkpoint: str | Path | None = None,
        checkpoint_every: int | None = None,
        save_buffer: bool = False,
        horizon: int | None = None,
    ) -> Algorithm:
        """Train for ``total_steps`` more environment steps (summed over parallel copies).

        ``logger`` receives every finished episode's return and, at most every ``log_every``
        steps, the algorithm's metrics. With ``checkpoint`` (a path stem) the full training
        state is saved every ``checkpoint_every`` steps, at the end, and on Ctrl-C (which
        then propagates); :meth:`load` and another ``learn`` resume exactly where it stopped.
        Linear schedules reach 0 at ``horizon`` steps in all (default: the end of this call,
        as Stable-Baselines3 does); pass it to train one schedule in several calls.
        """
        check_int("total_steps", total_steps, minimum=1)
        self.reset_envs()
        start = self.num_steps
        self.target_steps = start + total_steps
        self.horizon = self.target_steps if horizon is None else check_int("horizon", horizon, 1)
        next_log = start + log_every
        next_checkpoint = start + checkpoint_every if checkpoint_every else math.inf
        bar = progress(total=total_steps, desc=self.name, disable=not show_progress, unit="step")
        interrupt = DeferredInterrupt()
        try:
            while self.num_steps < self.target_steps:
                before = self.num_steps
                metrics = self.iteration()
                returns, lengths = self.envs.pop_episodes()
                self.recent_returns.extend(returns)
                if logger is not None:
                    for value, length in zip(returns, lengths, strict=True):
                        logger.log(self.num_steps, episode_return=value, episode_length=length)
                    if self.num_steps >= next_log:
                        logger.log(self.num_steps, **metrics, **self.rollout_stats())
                        next_log = self.num_steps + log_every
                bar.update(self.num_steps - before)
                if self.recent_returns:
                    bar.set_postfix(ret=f"{np.mean(self.recent_returns):.1f}", refresh=False)
                if checkpoint is not None and self.num_steps >= next_checkpoint:
                    self.save(checkpoint, include_buffer=save_buffer)
                    next_checkpoint = self.num_steps + checkpoint_every
                if interrupt.requested:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            if checkpoint is not None:
                self.save(checkpoint, include_buffer=save_buffer)
            raise
        finally:
            interrupt.restore()
            bar.close()
        if checkpoint is not None:
            self.save(checkpoint, include_buffer=save_buffer)
        return self

    def rollout_stats(self) -> dict[str, float]:
        if not self.recent_returns:
            return {}
        return {"return_mean_100": float(np.mean(self.recent_returns))}

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions for raw observations (one, or a batch), normalised as in training."""
        obs = np.asarray(obs, dtype=np.float32)
        single = obs.shape == self.observation_space.shape
        batch = obs[None] if single else obs
        batch = self.envs.normalize(batch, update=False)
        with torch.inference_mode():
            actions = self.to_env_actions(self.act(torch.as_tensor(batch), deterministic))
        return actions[0] if single else actions

    def make_eval_env(self, render_mode: str | None = None) -> gym.Env:
        """A separate environment of the training kind (for evaluation and recording)."""
        source = self._env_source
        if isinstance(source, gym.Env):
            return copy.deepcopy(source)
        return gym.make(source, render_mode=render_mode, disable_env_checker=True)

    def evaluate(
        self, episodes: int = 20, deterministic: bool = True, seed: int | None = None
    ) -> dict[str, Any]:
        """Mean and std of the undiscounted return of ``episodes`` episodes on a fresh
        environment (seeded with ``seed``, default ``self.seed + 10**6``), with the policy's
        deterministic action unless ``deterministic=False``. Training is unaffected: sampled
        actions come from the training generator reseeded with the evaluation seed, and its
        state is restored afterwards."""
        check_int("episodes", episodes, minimum=1)
        seed = self.seed + 10**6 if seed is None else seed
        env = self.make_eval_env()
        returns, lengths = [], []
        obs, _ = env.reset(seed=seed)
        training_state = self.generator.get_state()
        self.generator.manual_seed(seed)
        try:
            while len(returns) < episodes:
                total, length, done = 0.0, 0, False
                while not done:
                    obs, reward, terminated, truncated, _ = env.step(
                        self.predict(obs, deterministic)
                    )
                    total += float(reward)
                    length += 1
                    done = terminated or truncated
                returns.append(total)
                lengths.append(length)
                obs, _ = env.reset()
        finally:
            self.generator.set_state(training_state)
            env.close()
        return {
            "mean_return": float(np.mean(returns)),
            "std_return": float(np.std(returns)),
            "mean_length": float(np.mean(lengths)),
            "returns": returns,
        }

    # -- saving -----------------------------------------------------------------------------

    def extra_state(self) -> dict[str, Any]:
        """Algorithm-specific counters to save (override when there are any)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore what :meth:`extra_state` saved (nothing by default)."""

    def state_dict(self, include_buffer: bool = False) -> dict[str, Any]:
        state: dict[str, Any] = {
            "algorithm": self.name,
            "env_id": self.env_id,
            "seed": self.seed,
            "config": self.config,
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
            "counters": {
                "num_steps": self.num_steps,
                "num_updates": self.num_updates,
                "target_steps": self.target_steps,
                "horizon": self.horizon,
            },
            "rng": {
                "torch": torch.get_rng_state(),
                "generator": self.generator.get_state(),
                "numpy": self.rng.bit_generator.state,
            },
            "envs": self.envs.state_dict(),
            "recent_returns": list(self.recent_returns),
            "extra": self.extra_state(),
        }
        if self.obs is not None:
            state["obs"] = torch.as_tensor(self.obs)
        buffer = self.replay_buffer()
        if include_buffer and buffer is not None:
            state["replay_buffer"] = buffer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, module in self.modules().items():
            module.load_state_dict(state["modules"][name])
        for name, optimizer in self.optimizers().items():
            optimizer.load_state_dict(state["optimizers"][name])
        counters = state["counters"]
        self.num_steps = counters["num_steps"]
        self.num_updates = counters["num_updates"]
        self.target_steps = counters["target_steps"]
        self.horizon = counters["horizon"]
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["generator"])
        self.rng.bit_generator.state = state["rng"]["numpy"]
        self.recent_returns.extend(state["recent_returns"])
        restored = self.envs.load_state_dict(state["envs"])
        # Without the environments' own state (asynchronous workers, unknown environments)
        # training continues from freshly reset environments.
        self.obs = restored if restored is not None else None
        self.load_extra_state(state["extra"])
        buffer = self.replay_buffer()
        if buffer is not None and "replay_buffer" in state:
            buffer.load_state_dict(state["replay_buffer"])

    def save(self, path: str | Path, include_buffer: bool = False) -> None:
        """Save the model and its full training state as ``path.safetensors`` + ``path.json``
        (the replay buffer too with ``include_buffer``). Nothing is pickled."""
        save_checkpoint(Path(path), self.state_dict(include_buffer))

    @classmethod
    def load(cls, path: str | Path, env: str | gym.Env | None = None) -> Algorithm:
        """A learner saved by :meth:`save`, ready to ``predict``, ``evaluate`` or ``learn`` on.

        ``env`` replaces the saved environment id (needed when it was an unregistered
        instance)."""
        state = load_checkpoint(Path(path))
        name = state.get("algorithm")
        if name not in ALGORITHM_NAMES:
            raise ConfigError(f"{str(path)!r} is not a saved driftlab RL model")
        algo_cls = get_algorithm(name)
        if cls is not Algorithm and algo_cls is not cls:
            raise ConfigError(f"{str(path)!r} holds a {name} model, not {cls.name}")
        source = env if env is not None else state["env_id"]
        if source is None:
            raise ConfigError(f"{str(path)!r} was trained on an unregistered environment; pass env")
        algo = algo_cls(source, seed=state["seed"], **state["config"])
        algo.load_state_dict(state)
        return algo

    def close(self) -> None:
        self.envs.close()
