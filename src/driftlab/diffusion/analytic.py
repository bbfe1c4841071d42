"""The exact oracle: a Gaussian mixture and its closed-form quantities at every noise level.

Convolving ``p0 = sum_k w_k N(mu_k, diag(std_k^2))`` with ``N(0, sigma^2 I)`` gives another
mixture with variances ``std_k^2 + sigma^2``. So the noisy density, its score and the ideal
denoiser ``D(x; sigma) = E[x0 | x0 + sigma n = x]`` (EDM eq. 3's minimiser) are all exact,
which is what every sampler and likelihood test here is checked against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from driftlab.core.config import ConfigError

ArrayLike = torch.Tensor | Sequence


class GaussianMixture:
    """``sum_k w_k N(means[k], diag(stds[k]^2))`` in any dimension.

    Args:
        means: ``[K, d]`` component means.
        stds: ``[K]`` (isotropic) or ``[K, d]`` (diagonal) standard deviations, or a scalar.
        weights: ``[K]`` nonnegative weights (normalised here); uniform when omitted.

    Inputs ``x`` of shape ``[batch, ...]`` are flattened to ``[batch, d]``; ``sigma`` is a
    scalar or a ``[batch]`` tensor. All arithmetic is float64; outputs take ``x``'s dtype.
    """

    def __init__(
        self,
        means: ArrayLike,
        stds: ArrayLike | float,
        weights: ArrayLike | None = None,
    ) -> None:
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ConfigError(f"means must have shape [K, d], got {tuple(self.means.shape)}")
        K, d = self.means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.ndim == 0:
            stds = stds.expand(K)
        if stds.ndim == 1:
            stds = stds[:, None].expand(K, d)
        if stds.shape != (K, d):
            raise ConfigError(f"stds must have shape [K] or [K, d] = [{K}, {d}], got {stds.shape}")
        if (stds <= 0).any():
            raise ConfigError("stds must all be > 0")
        self.stds = stds.contiguous()
        weights = torch.full((K,), 1.0 / K) if weights is None else weights
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (K,) or (weights < 0).any() or weights.sum() <= 0:
            raise ConfigError(f"weights must be {K} nonnegative numbers with a positive sum")
        self.weights = weights / weights.sum()
        self.dim = d

    @classmethod
    def ring(cls, n_modes: int = 8, radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
        """``n_modes`` equal Gaussians evenly spaced on a circle (the "8 Gaussians" set)."""
        angles = 2 * math.pi * torch.arange(n_modes, dtype=torch.float64) / n_modes
        means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
        return cls(means, std)

    # ----- internals -----------------------------------------------------------------------
    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        if flat.shape[1] != self.dim:
            raise ConfigError(
                f"x has {flat.shape[1]} features per sample, the mixture has dim {self.dim}"
            )
        return flat

    def _sigma(self, sigma: torch.Tensor | float, batch: int) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        if (sigma < 0).any():
            raise ConfigError("sigma must be >= 0")
        if sigma.ndim == 0:
            sigma = sigma.expand(batch)
        if sigma.shape != (batch,):
            raise ConfigError(f"sigma must be a scalar or of shape [{batch}], got {sigma.shape}")
        return sigma[:, None, None]

    def _components(
        self, x: torch.Tensor, sigma: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-component log-likelihood terms ``[B, K]``, variances and residuals ``[B, K, d]``."""
        var = self.stds**2 + self._sigma(sigma, x.shape[0]) ** 2
        diff = x[:, None, :] - self.means
        log_norm = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)
        return torch.log(self.weights) + log_norm, var, diff

    # ----- the oracle ----------------------------------------------------------------------
    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0) -> torch.Tensor:
        """``log p(x; sigma)``, summed over dimensions, shape ``[batch]``."""
        flat = self._flat(x)
        log_terms, _, _ = self._components(flat, sigma)
        return torch.logsumexp(log_terms, dim=1).to(x.dtype)

    def responsibilities(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0) -> torch.Tensor:
        """Posterior component probabilities ``p(k | x; sigma)``, shape ``[batch, K]``."""
        log_terms, _, _ = self._components(self._flat(x), sigma)
        return torch.softmax(log_terms, dim=1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Most probable component of each sample, shape ``[batch]``."""
        return self.responsibilities(x).argmax(dim=1)

    def score(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``grad_x log p(x; sigma) = sum_k r_k (mu_k - x) / (std_k^2 + sigma^2)``."""
        flat = self._flat(x)
        log_terms, var, diff = self._components(flat, sigma)
        r = torch.softmax(log_terms, dim=1)[..., None]
        return (-(r * diff / var).sum(1)).reshape(x.shape).to(x.dtype)

    def denoiser(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """The ideal denoiser ``E[x0 | x; sigma] = x + sigma^2 score`` (Tweedie).

        Written as ``sum_k r_k (mu_k + std_k^2 / (std_k^2 + sigma^2) (x - mu_k))``, the
        per-component posterior means, which stays accurate at very large sigma.
        """
        flat = self._flat(x)
        log_terms, var, diff = self._components(flat, sigma)
        r = torch.softmax(log_terms, dim=1)[..., None]
        posterior_means = self.means + self.stds**2 / var * diff
        return (r * posterior_means).sum(1).reshape(x.shape).to(x.dtype)

    __call__ = denoiser

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples from the mixture (sigma = 0), float64 ``[n, d]``."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k] * z
