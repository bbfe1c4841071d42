"""Exploration noise added to a deterministic policy's actions (DDPG, TD3).

Both processes act in the action box rescaled to ``[-1, 1]``, one row per environment, and
draw from the learner's NumPy generator, so that a seed fixes them and a checkpoint's RNG
state resumes them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from driftlab.core.config import check_choice, check_nonnegative, check_positive


class NormalNoise:
    """Independent Gaussian noise ``eps_t ~ N(0, sigma^2 I)`` at every step (Fujimoto et al.
    2018, sec. 6.1: TD3 explores with ``N(0, 0.1)``)."""

    def __init__(self, sigma: float, shape: tuple[int, int], rng: np.random.Generator) -> None:
        self.sigma = check_nonnegative("action_noise_std", sigma)
        self.shape = shape
        self.rng = rng

    def sample(self) -> np.ndarray:
        return (self.sigma * self.rng.standard_normal(self.shape)).astype(np.float32)

    def reset(self, envs: np.ndarray) -> None:
        """Nothing to forget: the noise has no state."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class OrnsteinUhlenbeckNoise:
    """Temporally correlated noise (Lillicrap et al. 2016, sec. 7; Uhlenbeck & Ornstein 1930).

    The Euler-Maruyama step of ``dx = theta (mu - x) dt + sigma dW``:

        x_{t+1} = x_t + theta (mu - x_t) dt + sigma sqrt(dt) z_t,   z_t ~ N(0, I),

    which reverts to ``mu`` at rate ``theta`` with stationary std
    ``sigma sqrt(dt / (1 - (1 - theta dt)^2))``. ``theta = 0.15``, ``dt = 0.01`` and
    ``x_0 = mu = 0`` are Stable-Baselines3's defaults, so the zoo's ``noise_std`` means the
    same here. Each environment's process restarts at ``x_0`` when its episode ends.
    """

    def __init__(
        self,
        sigma: float,
        shape: tuple[int, int],
        rng: np.random.Generator,
        theta: float = 0.15,
        dt: float = 1e-2,
        mu: float = 0.0,
    ) -> None:
        self.sigma = check_nonnegative("action_noise_std", sigma)
        self.theta = check_nonnegative("theta", theta)
        self.dt = check_positive("dt", dt)
        self.mu = float(mu)
        self.shape = shape
        self.rng = rng
        self.x = np.full(shape, self.mu, dtype=np.float64)

    def sample(self) -> np.ndarray:
        z = self.rng.standard_normal(self.shape)
        self.x = (
            self.x + self.theta * (self.mu - self.x) * self.dt + self.sigma * np.sqrt(self.dt) * z
        )
        return self.x.astype(np.float32)

    def reset(self, envs: np.ndarray) -> None:
        """Restart the processes of environments ``envs`` (whose episodes just ended)."""
        self.x[envs] = self.mu

    def state_dict(self) -> dict[str, Any]:
        return {"x": torch.from_numpy(self.x.copy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.x = state["x"].numpy().astype(np.float64).copy()


ActionNoise = NormalNoise | OrnsteinUhlenbeckNoise
ACTION_NOISES = {"normal": NormalNoise, "ornstein-uhlenbeck": OrnsteinUhlenbeckNoise}


def make_action_noise(
    kind: str, sigma: float, n_envs: int, action_dim: int, rng: np.random.Generator
) -> ActionNoise:
    """``"normal"`` or ``"ornstein-uhlenbeck"`` noise of scale ``sigma``, one row per env."""
    check_choice("action_noise", kind, ACTION_NOISES)
    return ACTION_NOISES[kind](sigma, (n_envs, action_dim), rng)
