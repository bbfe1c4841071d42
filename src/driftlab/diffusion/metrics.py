"""Sample-quality metrics for low-dimensional data, with their two-sample noise floor."""

from __future__ import annotations

import torch

from driftlab.core.config import ConfigError, check_int


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).to(torch.float64)


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    n_projections: int = 256,
    generator: torch.Generator | None = None,
) -> float:
    """Sliced 1-Wasserstein distance: the mean over random unit directions of the 1-D
    Wasserstein-1 distance between the projected samples (equal sample sizes)."""
    check_int("n_projections", n_projections, minimum=1)
    x, y = _flat(x), _flat(y)
    if x.shape != y.shape:
        raise ConfigError(f"x and y must have one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    directions = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    px, _ = (x @ directions).sort(dim=0)
    py, _ = (y @ directions).sort(dim=0)
    return float((px - py).abs().mean())


def mmd(
    x: torch.Tensor, y: torch.Tensor, bandwidths: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0)
) -> float:
    """Unbiased squared maximum mean discrepancy with a sum of Gaussian kernels."""
    x, y = _flat(x), _flat(y)
    if x.shape[1] != y.shape[1]:
        raise ConfigError(f"x and y must have one dimension, got {x.shape[1]} and {y.shape[1]}")
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ConfigError("mmd needs at least 2 samples in each set")

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h**2)) for h in bandwidths)

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2 * kxy.mean())


def mixture_report(
    mixture, samples: torch.Tensor, seed: int = 0, repeats: int = 3
) -> dict[str, float]:
    """How well ``samples`` reproduce a :class:`~driftlab.diffusion.GaussianMixture`.

    ``swd``: sliced Wasserstein distance to fresh exact samples of the same size, averaged
    over ``repeats`` fresh sets; ``swd_floor``: the same distance between two independent
    exact sets, averaged over ``repeats`` pairs (what an exact sampler scores);
    ``weight_error``: the largest error of the mixture weights recovered by assigning each
    sample to its likeliest component.
    """
    check_int("repeats", repeats, minimum=1)
    n = samples.shape[0]
    gen = torch.Generator().manual_seed(seed)
    swd, floor = 0.0, 0.0
    for i in range(repeats):
        fresh, other, third = (mixture.sample(n, gen) for _ in range(3))
        directions = torch.Generator().manual_seed(seed + i)
        swd += sliced_wasserstein(samples, fresh, generator=directions)
        floor += sliced_wasserstein(other, third, generator=directions)
    counts = torch.bincount(mixture.classify(samples), minlength=len(mixture.weights))
    weights = counts.to(torch.float64) / n
    return {
        "swd": swd / repeats,
        "swd_floor": floor / repeats,
        "weight_error": float((weights - mixture.weights).abs().max()),
    }
