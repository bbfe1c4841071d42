"""Probability-flow ODE likelihood against the mixture's exact log-density."""

import math

import pytest
import torch

from driftlab.core import ConfigError
from driftlab.diffusion import GaussianMixture, bits_per_dim, log_likelihood

GM = GaussianMixture.ring(n_modes=8, radius=2.0, std=0.2)


def _data(n=48, seed=0):
    return GM.sample(n, torch.Generator().manual_seed(seed))


def test_exact_divergence_matches_log_prob():
    x = _data()
    got = log_likelihood(GM, x, "edm", sigma_min=1e-4, divergence="exact")
    error = (got - GM.log_prob(x)).abs()
    assert error.max() < 0.01, f"max error {error.max():.4f} nats"


@pytest.mark.parametrize("formulation", ["vp", "fm"])
def test_default_interval_is_the_formulations(formulation):
    """With a formulation's own sigma_min the ODE gives the density at that noise level."""
    from driftlab.diffusion import get_formulation

    x = _data(16, 1)
    f = get_formulation(formulation)
    got = log_likelihood(GM, x, f)
    torch.testing.assert_close(got, GM.log_prob(x, f.sigma_min), atol=0.01, rtol=0)


def test_hutchinson_is_unbiased_within_tolerance():
    """Hutchinson with 4 Rademacher probes: per-sample errors are noisy (2-D traces), but
    the batch mean is within 0.1 nats of the exact mean."""
    x = _data(96, 2)
    got = log_likelihood(
        GM,
        x,
        "edm",
        sigma_min=1e-4,
        divergence="hutchinson",
        n_probes=4,
        generator=torch.Generator().manual_seed(0),
    )
    error = got - GM.log_prob(x)
    assert abs(float(error.mean())) < 0.1
    assert float(error.std()) < 1.0


def test_gaussian_in_higher_dimension_uses_hutchinson():
    d = 20
    gm = GaussianMixture(torch.zeros(1, d), 0.5)
    x = gm.sample(8, torch.Generator().manual_seed(3))
    got = log_likelihood(gm, x, "edm", sigma_min=1e-4, n_probes=2, generator=torch.Generator())
    # For a Gaussian the divergence of the field is constant in x: Hutchinson is exact.
    torch.testing.assert_close(got, gm.log_prob(x), atol=0.02, rtol=0)


def test_bits_per_dim():
    logp = torch.tensor([-2 * math.log(2.0)], dtype=torch.float64)
    assert float(bits_per_dim(logp, 2)) == pytest.approx(1.0)


def test_bad_arguments():
    x = _data(4)
    with pytest.raises(ConfigError, match="divergence must be one of"):
        log_likelihood(GM, x, divergence="trace")
    with pytest.raises(ConfigError, match="sigma_min must be < sigma_max"):
        log_likelihood(GM, x, sigma_min=10.0, sigma_max=1.0)
    with pytest.raises(ConfigError, match="n_probes must be >= 1"):
        log_likelihood(GM, x, n_probes=0)
