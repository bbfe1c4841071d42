"""Diffusion formulations as one noising process, ``x_t = s(t) (x0 + sigma(t) eps)``.

Karras et al. 2022 (EDM), Table 1, writes every diffusion model in terms of a scale ``s(t)``
and a noise level ``sigma(t)``. Each class below gives those two functions, their
derivatives, the inverse ``t(sigma)``, the model's own time discretisation, its training
noise distribution and loss weight, and the equivalent forward SDE of Song et al. 2021,
``dx = f(t) x dt + g(t) dw`` with ``f = s'/s`` and ``g = s sqrt(2 sigma' sigma)`` (EDM eq. 28).

Time runs from noise to data as ``t`` decreases. For VP, sub-VP and Flow Matching ``t = 1`` is
noise and ``t = 0`` data; for VE and EDM, ``t`` is tied to sigma as in EDM Table 1.
Every formulation takes ``sigma_min`` / ``sigma_max`` so that all of them can be set to the
same noise interval; the defaults are those of EDM Table 1.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from driftlab.core.config import ConfigError, check_choice, check_int, check_positive

Tensorish = torch.Tensor | float


def _as_tensor(t: Tensorish) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t if t.is_floating_point() else t.to(torch.float64)
    return torch.as_tensor(t, dtype=torch.float64)


def _expand_like(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample coefficient ``[batch]`` (or scalar) over ``x [batch, ...]``."""
    coef = coef.to(dtype=x.dtype, device=x.device)
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim)) if coef.ndim else coef


class Formulation(ABC):
    """Base class: ``scale``, ``sigma`` and their derivatives define everything else."""

    name: str = ""

    def __init__(self, sigma_min: float, sigma_max: float) -> None:
        check_positive("sigma_min", sigma_min)
        check_positive("sigma_max", sigma_max)
        if not sigma_min < sigma_max:
            raise ConfigError(f"sigma_min must be < sigma_max, got {sigma_min} >= {sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    # ----- the process -----------------------------------------------------------------
    @abstractmethod
    def scale(self, t: Tensorish) -> torch.Tensor: ...

    @abstractmethod
    def sigma(self, t: Tensorish) -> torch.Tensor: ...

    @abstractmethod
    def scale_deriv(self, t: Tensorish) -> torch.Tensor: ...

    @abstractmethod
    def sigma_deriv(self, t: Tensorish) -> torch.Tensor: ...

    @abstractmethod
    def sigma_inv(self, sigma: Tensorish) -> torch.Tensor: ...

    @property
    def t_min(self) -> float:
        return float(self.sigma_inv(self.sigma_min))

    @property
    def t_max(self) -> float:
        return float(self.sigma_inv(self.sigma_max))

    def add_noise(self, x0: torch.Tensor, t: Tensorish, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = s(t) (x0 + sigma(t) noise)``, the marginal of EDM eq. 4; ``t`` scalar or
        ``[batch]``."""
        if x0.shape != noise.shape:
            raise ConfigError(f"x0 and noise must have one shape, got {x0.shape} and {noise.shape}")
        t = _as_tensor(t)
        return _expand_like(self.scale(t), x0) * (x0 + _expand_like(self.sigma(t), x0) * noise)

    # ----- the SDE view (Song et al. 2021) -------------------------------------------------
    def f(self, t: Tensorish) -> torch.Tensor:
        """Drift coefficient of ``dx = f(t) x dt + g(t) dw``: ``f = s'/s`` (EDM eq. 28)."""
        t = _as_tensor(t)
        return self.scale_deriv(t) / self.scale(t)

    def g(self, t: Tensorish) -> torch.Tensor:
        """Diffusion coefficient: ``g = s sqrt(2 sigma' sigma)`` (EDM eq. 28)."""
        t = _as_tensor(t)
        return self.scale(t) * torch.sqrt(2 * self.sigma_deriv(t) * self.sigma(t))

    # ----- discretisation and training -----------------------------------------------------
    def timesteps(self, n: int) -> torch.Tensor:
        """``n + 1`` decreasing times (float64): the model's own grid of ``n`` points in
        ``[t_min, t_max]``, then ``t = 0`` (sigma = 0) as the last point (EDM Table 1)."""
        check_int("steps", n, minimum=1)
        return torch.cat([self._grid(n), torch.zeros(1, dtype=torch.float64)])

    def sigmas(self, n: int) -> torch.Tensor:
        """Noise levels of :meth:`timesteps`, ending at 0."""
        sig = self.sigma(self.timesteps(n))
        sig[-1] = 0.0
        return sig

    @abstractmethod
    def _grid(self, n: int) -> torch.Tensor: ...

    @abstractmethod
    def sample_sigma(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training noise levels ``[n]`` from this formulation's distribution."""

    def loss_weight(self, sigma: Tensorish) -> torch.Tensor:
        """lambda(sigma) of the denoising loss ``lambda ||D(x0 + sigma n; sigma) - x0||^2``.

        ``1 / sigma^2`` is the epsilon-prediction loss written on the denoiser.
        """
        sigma = _as_tensor(sigma)
        return 1.0 / sigma**2

    def config(self) -> dict:
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g})"


def _linear_grid(t_max: float, t_min: float, n: int) -> torch.Tensor:
    return torch.linspace(t_max, t_min, n, dtype=torch.float64)


class VP(Formulation):
    """Variance preserving (DDPM, Ho et al. 2020; Song et al. 2021), EDM Table 1.

    ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)``, ``s(t) = 1 / sqrt(1 + sigma^2)``,
    time steps linear in ``t`` from 1 to ``eps_s = 1e-3``.
    """

    name = "vp"

    def __init__(
        self,
        beta_d: float = 19.9,
        beta_min: float = 0.1,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        t_min: float = 1e-3,
        t_max: float = 1.0,
    ) -> None:
        self.beta_d = check_positive("beta_d", beta_d)
        self.beta_min = check_positive("beta_min", beta_min)
        super().__init__(
            float(self.sigma(t_min)) if sigma_min is None else sigma_min,
            float(self.sigma(t_max)) if sigma_max is None else sigma_max,
        )

    def _B(self, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.beta_d * t**2 + self.beta_min * t

    def _beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_d * t + self.beta_min

    def sigma(self, t: Tensorish) -> torch.Tensor:
        return torch.sqrt(torch.expm1(self._B(_as_tensor(t))))

    def scale(self, t: Tensorish) -> torch.Tensor:
        return torch.exp(-0.5 * self._B(_as_tensor(t)))

    def sigma_deriv(self, t: Tensorish) -> torch.Tensor:
        t = _as_tensor(t)
        return 0.5 * self._beta(t) * torch.exp(self._B(t)) / self.sigma(t)

    def scale_deriv(self, t: Tensorish) -> torch.Tensor:
        t = _as_tensor(t)
        return -0.5 * self._beta(t) * self.scale(t)

    def sigma_inv(self, sigma: Tensorish) -> torch.Tensor:
        sigma = _as_tensor(sigma)
        root = torch.sqrt(self.beta_min**2 + 2 * self.beta_d * torch.log1p(sigma**2))
        return (root - self.beta_min) / self.beta_d

    def _grid(self, n: int) -> torch.Tensor:
        return _linear_grid(self.t_max, self.t_min, n)

    def sample_sigma(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return self.sigma(self.t_min + u * (self.t_max - self.t_min))

    def config(self) -> dict:
        return {**super().config(), "beta_d": self.beta_d, "beta_min": self.beta_min}


class SubVP(VP):
    """Sub-VP SDE (Song et al. 2021, eq. 29): ``dx = -beta/2 x dt + sqrt(beta (1 - e^{-2B})) dw``.

    Its marginals: ``s(t) = e^{-B/2}`` and ``s sigma = 1 - e^{-B}``, so
    ``sigma(t) = 2 sinh(B/2)``, with ``B(t) = beta_d t^2 / 2 + beta_min t``.
    """

    name = "subvp"

    def sigma(self, t: Tensorish) -> torch.Tensor:
        return 2 * torch.sinh(0.5 * self._B(_as_tensor(t)))

    def sigma_deriv(self, t: Tensorish) -> torch.Tensor:
        t = _as_tensor(t)
        return self._beta(t) * torch.cosh(0.5 * self._B(t))

    def sigma_inv(self, sigma: Tensorish) -> torch.Tensor:
        B = 2 * torch.asinh(0.5 * _as_tensor(sigma))
        return (torch.sqrt(self.beta_min**2 + 2 * self.beta_d * B) - self.beta_min) / self.beta_d


class VE(Formulation):
    """Variance exploding (SMLD, Song & Ermon 2019), EDM Table 1.

    ``sigma(t) = sqrt(t)``, ``s = 1``; time steps geometric in sigma from ``sigma_max = 100``
    to ``sigma_min = 0.02``.
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.02, sigma_max: float = 100.0) -> None:
        super().__init__(sigma_min, sigma_max)

    def sigma(self, t: Tensorish) -> torch.Tensor:
        return torch.sqrt(_as_tensor(t))

    def scale(self, t: Tensorish) -> torch.Tensor:
        return torch.ones_like(_as_tensor(t))

    def sigma_deriv(self, t: Tensorish) -> torch.Tensor:
        return 0.5 / torch.sqrt(_as_tensor(t))

    def scale_deriv(self, t: Tensorish) -> torch.Tensor:
        return torch.zeros_like(_as_tensor(t))

    def sigma_inv(self, sigma: Tensorish) -> torch.Tensor:
        return _as_tensor(sigma) ** 2

    def _grid(self, n: int) -> torch.Tensor:
        if n == 1:
            return torch.tensor([self.t_max], dtype=torch.float64)
        i = torch.arange(n, dtype=torch.float64) / (n - 1)
        return self.sigma_max**2 * (self.sigma_min**2 / self.sigma_max**2) ** i

    def sample_sigma(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        log_min, log_max = math.log(self.sigma_min), math.log(self.sigma_max)
        return torch.exp(log_min + u * (log_max - log_min))


class EDM(Formulation):
    """Karras et al. 2022: ``sigma(t) = t``, ``s = 1``, the rho = 7 schedule (EDM eq. 5) and the
    log-normal training noise with ``lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``."""

    name = "edm"

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        sigma_data: float = 0.5,
        P_mean: float = -1.2,
        P_std: float = 1.2,
    ) -> None:
        super().__init__(sigma_min, sigma_max)
        self.rho = check_positive("rho", rho)
        self.sigma_data = check_positive("sigma_data", sigma_data)
        self.P_mean = float(P_mean)
        self.P_std = check_positive("P_std", P_std)

    def sigma(self, t: Tensorish) -> torch.Tensor:
        return _as_tensor(t).clone()

    def scale(self, t: Tensorish) -> torch.Tensor:
        return torch.ones_like(_as_tensor(t))

    def sigma_deriv(self, t: Tensorish) -> torch.Tensor:
        return torch.ones_like(_as_tensor(t))

    def scale_deriv(self, t: Tensorish) -> torch.Tensor:
        return torch.zeros_like(_as_tensor(t))

    def sigma_inv(self, sigma: Tensorish) -> torch.Tensor:
        return _as_tensor(sigma).clone()

    def _grid(self, n: int) -> torch.Tensor:
        """EDM eq. 5: ``(smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho``."""
        i = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return (hi + i * (lo - hi)) ** self.rho

    def sample_sigma(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        return torch.exp(self.P_mean + self.P_std * z)

    def loss_weight(self, sigma: Tensorish) -> torch.Tensor:
        sigma = _as_tensor(sigma)
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def config(self) -> dict:
        return {**super().config(), "rho": self.rho, "sigma_data": self.sigma_data}


class FlowMatching(Formulation):
    """Flow Matching / rectified flow (Lipman et al. 2023; Liu et al. 2023).

    ``x_t = (1 - t) x0 + t eps``, so ``s(t) = 1 - t`` and ``sigma(t) = t / (1 - t)``;
    ``t = 1`` is noise and ``t = 0`` data (as in SD3). Time steps uniform in ``t``. The default
    top ``t_max = 0.999`` (sigma ~ 999) keeps ``s > 0``; the training velocity loss
    ``||v - v_hat||^2`` with ``v = eps - x0`` is ``lambda = ((1 + sigma) / sigma)^2`` on the
    denoiser. ``t_distribution`` picks uniform or logit-normal (SD3) training times.
    """

    name = "fm"

    def __init__(
        self,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        t_max: float = 0.999,
        t_distribution: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
    ) -> None:
        if not 0 < t_max < 1:
            raise ConfigError(f"t_max must be in (0, 1), got {t_max}")
        self.t_distribution = check_choice(
            "t_distribution", t_distribution, ("uniform", "logit-normal")
        )
        self.logit_mean = float(logit_mean)
        self.logit_std = check_positive("logit_std", logit_std)
        # sigma_min=None means the grid runs uniformly down to t = 0 itself.
        self._zero_floor = sigma_min is None
        super().__init__(
            1e-6 if sigma_min is None else sigma_min,
            t_max / (1 - t_max) if sigma_max is None else sigma_max,
        )

    def sigma(self, t: Tensorish) -> torch.Tensor:
        t = _as_tensor(t)
        return t / (1 - t)

    def scale(self, t: Tensorish) -> torch.Tensor:
        return 1 - _as_tensor(t)

    def sigma_deriv(self, t: Tensorish) -> torch.Tensor:
        return 1 / (1 - _as_tensor(t)) ** 2

    def scale_deriv(self, t: Tensorish) -> torch.Tensor:
        return -torch.ones_like(_as_tensor(t))

    def sigma_inv(self, sigma: Tensorish) -> torch.Tensor:
        sigma = _as_tensor(sigma)
        return sigma / (1 + sigma)

    def _grid(self, n: int) -> torch.Tensor:
        if self._zero_floor:
            # n uniform steps from t_max to 0; the final 0 is appended by timesteps().
            return torch.linspace(self.t_max, 0.0, n + 1, dtype=torch.float64)[:-1]
        return _linear_grid(self.t_max, self.t_min, n)

    def sample_sigma(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.t_distribution == "uniform":
            t = torch.rand(n, generator=generator, dtype=torch.float64)
        else:
            z = torch.randn(n, generator=generator, dtype=torch.float64)
            t = torch.sigmoid(self.logit_mean + self.logit_std * z)
        return self.sigma(t.clamp(self.t_min, self.t_max))

    def loss_weight(self, sigma: Tensorish) -> torch.Tensor:
        sigma = _as_tensor(sigma)
        return ((1 + sigma) / sigma) ** 2

    def config(self) -> dict:
        return {**super().config(), "t_distribution": self.t_distribution}


FORMULATIONS: dict[str, type[Formulation]] = {
    "vp": VP,
    "ve": VE,
    "edm": EDM,
    "fm": FlowMatching,
    "subvp": SubVP,
}


def get_formulation(name: str | Formulation, **options: float | str) -> Formulation:
    """The formulation called ``name`` (``"vp" | "ve" | "edm" | "fm" | "subvp"``).

    ``options`` go to its constructor, e.g. ``sigma_min=0.002, sigma_max=80`` to put every
    formulation on the same noise interval.
    """
    if isinstance(name, Formulation):
        if options:
            raise ConfigError("options cannot be given with a formulation instance")
        return name
    check_choice("formulation", name, FORMULATIONS)
    try:
        return FORMULATIONS[name](**options)
    except TypeError as err:
        raise ConfigError(f"bad option for formulation {name!r}: {err}") from None
