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
        self.isotropic = bool((stds == stds[:, :1]).all())
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

    def _sigma(self, batch: int, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        if (sigma < 0).any():
            raise ConfigError("sigma must be >= 0")
        if sigma.ndim == 0:
            sigma = sigma.expand(batch)
        if sigma.shape != (batch,):
            raise ConfigError(f"sigma must be a scalar or of shape [{batch}], got {sigma.shape}")
        return sigma

    def _posterior(
        self, x: torch.Tensor, sigma: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log joint terms ``log w_k + log N(x; mu_k, var_k)`` ``[B, K]``, the responsibilities
        ``r`` ``[B, K]`` and the shrinkage ``std_k^2 / var_k`` (``[B, K]`` when isotropic,
        else ``[B, K, d]``)."""
        sig2 = self._sigma(x.shape[0], sigma) ** 2
        if self.isotropic:  # one std per component across dimensions: the fast path
            # Squared distances through one matmul: ||x||^2 - 2 x.mu + ||mu||^2, so no
            # [B, K, d] tensor is formed (this is the samplers' hot path).
            std2 = self.stds[:, 0] ** 2
            var = std2 + sig2[:, None]
            dist2 = (
                (x**2).sum(1, keepdim=True) - 2 * x @ self.means.T + (self.means**2).sum(1)
            ).clamp_min(0)
            log_det = self.dim * torch.log(2 * math.pi * var)
            shrink = std2 / var
        else:
            var = self.stds**2 + sig2[:, None, None]
            dist2 = None
            quad = ((x[:, None, :] - self.means) ** 2 / var).sum(-1)
            log_terms = torch.log(self.weights) - 0.5 * (
                quad + torch.log(2 * math.pi * var).sum(-1)
            )
            return log_terms, torch.softmax(log_terms, dim=1), self.stds**2 / var
        log_terms = torch.log(self.weights) - 0.5 * (dist2 / var + log_det)
        return log_terms, torch.softmax(log_terms, dim=1), shrink

    # ----- the oracle ----------------------------------------------------------------------
    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0) -> torch.Tensor:
        """``log p(x; sigma)``, summed over dimensions, shape ``[batch]``."""
        log_terms, _, _ = self._posterior(self._flat(x), sigma)
        return torch.logsumexp(log_terms, dim=1).to(x.dtype)

    def responsibilities(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0) -> torch.Tensor:
        """Posterior component probabilities ``p(k | x; sigma)``, shape ``[batch, K]``."""
        return self._posterior(self._flat(x), sigma)[1]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Most probable component of each sample, shape ``[batch]``."""
        return self.responsibilities(x).argmax(dim=1)

    def denoiser(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """The ideal denoiser ``E[x0 | x; sigma] = x + sigma^2 score`` (Tweedie).

        Written as ``sum_k r_k (mu_k + std_k^2 / (std_k^2 + sigma^2) (x - mu_k))``, the
        per-component posterior means, which stays accurate at very large sigma.
        """
        flat = self._flat(x)
        _, r, shrink = self._posterior(flat, sigma)
        if shrink.ndim == 2:
            rc = r * shrink
            out = (r - rc) @ self.means + rc.sum(1, keepdim=True) * flat
        else:
            posterior_means = self.means + shrink * (flat[:, None, :] - self.means)
            out = (r[..., None] * posterior_means).sum(1)
        return out.reshape(x.shape).to(x.dtype)

    __call__ = denoiser

    def score(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``grad_x log p(x; sigma) = sum_k r_k (mu_k - x) / (std_k^2 + sigma^2)``."""
        flat = self._flat(x)
        _, r, shrink = self._posterior(flat, sigma)
        # (mu_k - x) / var_k = (mu_k - x) (1 - shrink_k) / sigma^2 fails at sigma = 0, so use
        # 1 / var_k = shrink_k / std_k^2 instead.
        inv_var = shrink / (self.stds[:, 0] ** 2 if shrink.ndim == 2 else self.stds**2)
        if shrink.ndim == 2:
            w = r * inv_var
            out = w @ self.means - w.sum(1, keepdim=True) * flat
        else:
            out = (r[..., None] * inv_var * (self.means - flat[:, None, :])).sum(1)
        return out.reshape(x.shape).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples from the mixture (sigma = 0), float64 ``[n, d]``."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k] * z
