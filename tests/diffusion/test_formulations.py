"""Formulations against EDM Table 1 (values computed by hand with ``math``) and the SDE view."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from driftlab.core import ConfigError
from driftlab.diffusion import FORMULATIONS, get_formulation

NAMES = sorted(FORMULATIONS)


def _vp_sigma(t, beta_d=19.9, beta_min=0.1):
    return math.sqrt(math.exp(0.5 * beta_d * t**2 + beta_min * t) - 1)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_vp_matches_table_1(t):
    vp = get_formulation("vp")
    sigma = _vp_sigma(t)
    assert float(vp.sigma(t)) == pytest.approx(sigma, rel=1e-12)
    assert float(vp.scale(t)) == pytest.approx(1 / math.sqrt(1 + sigma**2), rel=1e-12)
    # sigma'(t) = (beta_d t + beta_min)(sigma^2 + 1) / (2 sigma), EDM Table 1.
    assert float(vp.sigma_deriv(t)) == pytest.approx(
        (19.9 * t + 0.1) * (sigma**2 + 1) / (2 * sigma), rel=1e-12
    )
    # sigma^-1 from Table 1: (sqrt(beta_min^2 + 2 beta_d log(sigma^2 + 1)) - beta_min) / beta_d
    assert float(vp.sigma_inv(sigma)) == pytest.approx(t, rel=1e-12)


def test_hand_values_at_quarter():
    t = 0.25
    ve, edm, fm = get_formulation("ve"), get_formulation("edm"), get_formulation("fm")
    assert float(ve.sigma(t)) == 0.5 and float(ve.scale(t)) == 1.0
    assert float(ve.sigma_deriv(t)) == pytest.approx(1.0)  # 1 / (2 sqrt t)
    assert float(edm.sigma(t)) == 0.25 and float(edm.sigma_deriv(t)) == 1.0
    assert float(fm.scale(t)) == 0.75
    assert float(fm.sigma(t)) == pytest.approx(1 / 3)
    assert float(fm.sigma_deriv(t)) == pytest.approx(1 / 0.75**2)
    subvp = get_formulation("subvp")
    B = 0.5 * 19.9 * t**2 + 0.1 * t
    assert float(subvp.scale(t)) == pytest.approx(math.exp(-B / 2), rel=1e-12)
    assert float(subvp.sigma(t) * subvp.scale(t)) == pytest.approx(1 - math.exp(-B), rel=1e-12)


def test_loss_weights_by_hand():
    assert float(get_formulation("edm").loss_weight(0.5)) == pytest.approx(8.0)
    assert float(get_formulation("ve").loss_weight(0.5)) == pytest.approx(4.0)
    assert float(get_formulation("fm").loss_weight(1.0)) == pytest.approx(4.0)


@pytest.mark.parametrize("name", NAMES)
def test_inverse_and_derivatives(name):
    f = get_formulation(name)
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64) * f.t_max
    torch.testing.assert_close(f.sigma_inv(f.sigma(t)), t, rtol=1e-10, atol=1e-12)
    h = 1e-6 * f.t_max
    fd_sigma = (f.sigma(t + h) - f.sigma(t - h)) / (2 * h)
    fd_scale = (f.scale(t + h) - f.scale(t - h)) / (2 * h)
    torch.testing.assert_close(f.sigma_deriv(t), fd_sigma, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(f.scale_deriv(t), fd_scale, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_timesteps_decrease_to_zero(name):
    f = get_formulation(name)
    t = f.timesteps(10)
    assert t.shape == (11,) and t.dtype == torch.float64
    assert (t[1:] < t[:-1]).all() and t[-1] == 0
    assert float(t[0]) == pytest.approx(f.t_max)
    assert float(f.sigmas(10)[0]) == pytest.approx(f.sigma_max)


def test_each_discretisation():
    # EDM eq. 5 with 3 points: sigma_max, the rho-mean, sigma_min.
    edm = get_formulation("edm")
    mid = ((80 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7
    np.testing.assert_allclose(edm.timesteps(3).numpy(), [80, mid, 0.002, 0], rtol=1e-12)
    ve = get_formulation("ve")  # geometric in sigma
    sig = ve.sigmas(5)[:-1].numpy()
    np.testing.assert_allclose(sig[1:] / sig[:-1], (0.02 / 100) ** 0.25, rtol=1e-12)
    vp = get_formulation("vp")  # linear in t from 1 to 1e-3
    np.testing.assert_allclose(vp.timesteps(3).numpy(), [1, 0.5005, 1e-3, 0], rtol=1e-12)
    fm = get_formulation("fm")  # uniform in t down to 0
    np.testing.assert_allclose(fm.timesteps(3).numpy(), [0.999, 0.666, 0.333, 0], rtol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_add_noise_moments(name):
    """Empirical mean and variance of x_t match s mu and s^2 (std^2 + sigma^2)."""
    f = get_formulation(name)
    g = torch.Generator().manual_seed(0)
    n, mu, std = 400_000, 1.5, 0.3
    t = 0.3 * f.t_max
    x0 = mu + std * torch.randn(n, 1, generator=g, dtype=torch.float64)
    xt = f.add_noise(x0, t, torch.randn(n, 1, generator=g, dtype=torch.float64))
    s, sigma = float(f.scale(t)), float(f.sigma(t))
    sd = s * math.sqrt(std**2 + sigma**2)
    assert float(xt.mean()) == pytest.approx(s * mu, abs=4 * sd / math.sqrt(n))
    assert float(xt.var()) == pytest.approx(sd**2, rel=0.01)


@pytest.mark.parametrize("name", NAMES)
def test_sde_marginals_match_scale_and_sigma(name):
    """Integrating ds/dt = f s and dVar/dt = 2 f Var + g^2 (the forward SDE's moments for
    x0 = 0) reproduces s(t) and s(t)^2 sigma(t)^2."""
    f = get_formulation(name)
    t0, t1 = 0.1 * f.t_max, 0.9 * f.t_max

    def rhs(t, y):
        ft, gt = float(f.f(t)), float(f.g(t))
        return [ft * y[0], 2 * ft * y[1] + gt**2]

    s0, sig0 = float(f.scale(t0)), float(f.sigma(t0))
    sol = solve_ivp(rhs, (t0, t1), [s0, (s0 * sig0) ** 2], rtol=1e-10, atol=1e-12)
    s1, var1 = sol.y[:, -1]
    assert s1 == pytest.approx(float(f.scale(t1)), rel=1e-6)
    assert var1 == pytest.approx(float(f.scale(t1) * f.sigma(t1)) ** 2, rel=1e-6)


def test_training_noise_distributions():
    g = torch.Generator().manual_seed(0)
    log_sigma = get_formulation("edm").sample_sigma(100_000, g).log()
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=0.02)
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=0.02)
    ve = get_formulation("ve").sample_sigma(100_000, g)
    assert ve.min() >= 0.02 and ve.max() <= 100
    assert float(ve.log().mean()) == pytest.approx((math.log(0.02) + math.log(100)) / 2, abs=0.03)
    fm = get_formulation("fm", t_distribution="logit-normal").sample_sigma(100_000, g)
    t = fm / (1 + fm)
    assert float(torch.logit(t).mean()) == pytest.approx(0.0, abs=0.02)


def test_same_interval_for_all():
    for name in NAMES:
        f = get_formulation(name, sigma_min=0.002, sigma_max=80.0)
        assert float(f.sigma(f.t_min)) == pytest.approx(0.002)
        assert float(f.sigma(f.t_max)) == pytest.approx(80.0)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("ddpm", {}, "formulation must be one of"),
        ("edm", {"sigma_min": -1.0}, "sigma_min must be > 0"),
        ("edm", {"sigma_min": 5.0, "sigma_max": 1.0}, "sigma_min must be < sigma_max"),
        ("fm", {"t_max": 1.0}, "t_max must be in (0, 1)"),
        ("vp", {"gamma": 1.0}, "bad option for formulation 'vp'"),
    ],
)
def test_bad_formulations(name, options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_formulation(name, **options)


def test_steps_must_be_positive():
    with pytest.raises(ConfigError, match="steps must be >= 1, got 0"):
        get_formulation("edm").timesteps(0)
