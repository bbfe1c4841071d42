"""Mean estimation and Robbins-Monro (Zhao ch. 6) against exact answers, over many runs."""

from __future__ import annotations

import numpy as np
import pytest

from driftlab.core.config import ConfigError
from driftlab.rl.tabular import incremental_mean, robbins_monro
from driftlab.rl.tabular.stochastic_approximation import step_sizes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_incremental_mean_with_1_over_k_is_the_sample_mean(seed: int) -> None:
    samples = np.random.default_rng(seed).normal(5.0, 2.0, size=(100, 1000))
    running_mean = samples.cumsum(axis=1) / np.arange(1, 1001)
    for w0 in (0.0, -30.0):  # a_1 = 1 forgets w0 at once
        np.testing.assert_allclose(incremental_mean(samples, w0=w0), running_mean, atol=1e-10)


def test_incremental_mean_with_constant_step_is_an_exponential_average() -> None:
    samples = np.random.default_rng(3).normal(size=(4, 50))
    alpha, w0 = 0.2, 1.5
    estimates = incremental_mean(samples, step_size=alpha, w0=w0)
    k = 50
    weights = alpha * (1 - alpha) ** np.arange(k - 1, -1, -1)
    expected = (1 - alpha) ** k * w0 + samples @ weights
    np.testing.assert_allclose(estimates[:, -1], expected, atol=1e-12)


def test_mean_estimation_error_shrinks_like_one_over_sqrt_k() -> None:
    """Over 2000 runs the RMS error of the sample mean after k samples is sigma / sqrt(k)."""
    samples = np.random.default_rng(4).normal(1.0, 3.0, size=(2000, 400))
    estimates = incremental_mean(samples)
    for k in (10, 100, 400):
        rms = np.sqrt(((estimates[:, k - 1] - 1.0) ** 2).mean())
        assert rms == pytest.approx(3.0 / np.sqrt(k), rel=0.08)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_robbins_monro_finds_the_root_from_noisy_observations(seed: int) -> None:
    """Zhao ch. 6.2 example: g(w) = tanh(w - 1), root w* = 1, observations g(w) + N(0, 1)."""
    history = robbins_monro(
        lambda w: np.tanh(w - 1.0), w0=3.0, n_iterations=2000, noise_std=1.0, n_runs=200, seed=seed
    )
    assert history.shape == (200, 2001)
    error = np.abs(history[:, -1] - 1.0)
    assert error.mean() < 0.05
    # Far from the root the noiseless drift dominates: early iterates move towards w* = 1.
    assert np.abs(history[:, 10] - 1.0).mean() < np.abs(history[:, 0] - 1.0).mean()


def test_robbins_monro_with_constant_step_keeps_a_known_variance() -> None:
    """For g(w) = w - mu and a constant step a, w_k -> mu in mean with variance
    a sigma^2 / (2 - a): the stationary variance of w' = (1 - a) w + a (mu + eta)."""
    alpha, sigma, mu = 0.1, 2.0, -0.5
    history = robbins_monro(
        lambda w: w - mu, w0=0.0, n_iterations=300, step_size=alpha, noise_std=sigma,
        n_runs=20_000, seed=5,
    )  # fmt: skip
    final = history[:, -1]
    assert final.mean() == pytest.approx(mu, abs=0.02)
    assert final.var() == pytest.approx(alpha * sigma**2 / (2 - alpha), rel=0.05)


def test_step_sizes() -> None:
    np.testing.assert_allclose(step_sizes("1/k", 4), [1.0, 0.5, 1 / 3, 0.25])
    np.testing.assert_allclose(step_sizes(0.3, 2), [0.3, 0.3])
    np.testing.assert_allclose(step_sizes(lambda k: k**-0.6, 2), [1.0, 2**-0.6])
    with pytest.raises(ConfigError, match="step_size must be '1/k'"):
        step_sizes("1/k^2", 3)
    with pytest.raises(ConfigError, match=r"step_size must be > 0, got 0\.0"):
        step_sizes(0.0, 3)
    with pytest.raises(ConfigError, match="noise_std must be >= 0"):
        robbins_monro(lambda w: w, w0=0.0, n_iterations=1, noise_std=-1.0)
