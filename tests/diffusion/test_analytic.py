"""The Gaussian-mixture oracle against closed forms and autograd."""

import math

import pytest
import torch

from driftlab.core import ConfigError
from driftlab.diffusion import GaussianMixture


def _mixture():
    means = [[-1.0, 0.0, 2.0], [1.5, 1.0, -0.5]]
    return GaussianMixture(means, [[0.3, 0.5, 0.2], [0.4, 0.4, 0.4]], [0.3, 0.7])


def test_single_gaussian_closed_form():
    gm = GaussianMixture([[1.0, -2.0]], 0.5)
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0]], dtype=torch.float64)
    sigma = 1.2
    var = 0.25 + sigma**2
    expected = -((x - torch.tensor([1.0, -2.0])) ** 2).sum(1) / (2 * var) - math.log(
        2 * math.pi * var
    )
    torch.testing.assert_close(gm.log_prob(x, sigma), expected)
    # Denoiser of a Gaussian: mu + std^2 / (std^2 + sigma^2) (x - mu).
    torch.testing.assert_close(
        gm.denoiser(x, sigma), torch.tensor([1.0, -2.0]) + 0.25 / var * (x - torch.tensor([1, -2]))
    )


@pytest.mark.parametrize("sigma", [0.0, 0.1, 1.0, 30.0])
def test_score_is_gradient_of_log_prob_and_denoiser_is_tweedie(sigma):
    gm = _mixture()
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(xr, sigma).sum(), xr)
    torch.testing.assert_close(gm.score(x, sigma), grad)
    torch.testing.assert_close(gm.denoiser(x, sigma), x + sigma**2 * gm.score(x, sigma))


def test_density_integrates_to_one():
    gm = GaussianMixture.ring(n_modes=8, radius=2.0, std=0.3)
    grid = torch.linspace(-5, 5, 401, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    mass = gm.log_prob(pts, 0.2).exp().sum() * (grid[1] - grid[0]) ** 2
    assert float(mass) == pytest.approx(1.0, abs=1e-4)


def test_per_sample_sigma():
    gm = _mixture()
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sig = torch.tensor([0.0, 0.5, 2.0, 10.0], dtype=torch.float64)
    rows = torch.stack([gm.denoiser(x[i : i + 1], float(sig[i]))[0] for i in range(4)])
    torch.testing.assert_close(gm.denoiser(x, sig), rows)


def test_sample_statistics():
    gm = _mixture()
    x = gm.sample(200_000, torch.Generator().manual_seed(0))
    mean = (gm.weights[:, None] * gm.means).sum(0)
    torch.testing.assert_close(x.mean(0), mean, atol=0.01, rtol=0)
    freq = torch.bincount(gm.classify(x), minlength=2).double() / len(x)
    torch.testing.assert_close(freq, gm.weights, atol=0.01, rtol=0)


def test_bad_mixtures():
    with pytest.raises(ConfigError, match="means must have shape"):
        GaussianMixture([1.0, 2.0], 1.0)
    with pytest.raises(ConfigError, match="stds must all be > 0"):
        GaussianMixture([[0.0]], 0.0)
    with pytest.raises(ConfigError, match="weights must be 2 nonnegative"):
        GaussianMixture([[0.0], [1.0]], 1.0, [1.0, -1.0])
    gm = GaussianMixture([[0.0, 0.0]], 1.0)
    with pytest.raises(ConfigError, match="has dim 2"):
        gm.score(torch.zeros(3, 3), 1.0)
    with pytest.raises(ConfigError, match="sigma must be >= 0"):
        gm.score(torch.zeros(3, 2), -1.0)
