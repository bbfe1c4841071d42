"""Preconditioning and prediction types: every (formulation, prediction) network is a denoiser."""

import math

import pytest
import torch
from diffusion_helpers import perturbed_mlp_denoiser
from torch import nn

from driftlab.diffusion import (
    PREDICTIONS,
    Denoiser,
    GaussianMixture,
    from_denoised,
    get_formulation,
    get_preconditioning,
    prediction_preconditioning,
    sample,
    to_denoised,
)
from driftlab.diffusion.denoisers import prediction_coefficients

GM = GaussianMixture.ring(std=0.3)


def _true_outputs(x0, eps, sigma, s):
    """Each prediction type's exact target for x_hat = x0 + sigma eps."""
    alpha = 1 / math.sqrt(1 + sigma**2)
    return {
        "x0": x0,
        "eps": eps,
        "velocity": eps - x0,
        "v": alpha * eps - sigma * alpha * x0,
        "score": -eps / (sigma * s),  # grad of log N(x_t; s x0, s^2 sigma^2) at x_t
    }


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_every_prediction_maps_to_x0(prediction):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 2, generator=g, dtype=torch.float64)
    sigma, s = 0.7, 0.8
    x_hat = x0 + sigma * eps
    out = _true_outputs(x0, eps, sigma, s)[prediction]
    torch.testing.assert_close(to_denoised(prediction, out, x_hat, sigma, scale=s), x0)
    torch.testing.assert_close(from_denoised(prediction, x0, x_hat, sigma, scale=s), out)


def test_edm_preconditioning_by_hand():
    p = get_preconditioning("edm", sigma_data=0.5)
    sigma = torch.tensor([0.5], dtype=torch.float64)
    assert float(p.c_skip(sigma)) == pytest.approx(0.5)
    assert float(p.c_out(sigma)) == pytest.approx(0.25 / math.sqrt(0.5))
    assert float(p.c_in(sigma)) == pytest.approx(1 / math.sqrt(0.5))
    assert float(p.c_noise(sigma)) == pytest.approx(0.25 * math.log(0.5))
    vp = get_preconditioning("vp")
    assert float(vp.c_noise(torch.tensor([float(get_formulation("vp").sigma(0.5))]))) == (
        pytest.approx(999 * 0.5)
    )


class OracleNet(nn.Module):
    """A 'network' that inverts its own preconditioning to return the exact target
    (EDM eq. 8) of the Gaussian mixture: a trained network's ideal."""

    def __init__(self, precond, sigma_of_noise):
        super().__init__()
        self.precond = precond
        self.sigma_of_noise = sigma_of_noise
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x_in, c_noise):
        sigma = self.sigma_of_noise(c_noise)
        x_hat = x_in / self.precond.c_in(sigma)[:, None]
        target, _ = Denoiser(nn.Identity(), self.precond).training_target(
            GM.denoiser(x_hat, sigma), x_hat, sigma
        )
        return target


def _cases():
    vp = get_formulation("vp")
    yield "edm", get_preconditioning("edm"), lambda c: torch.exp(4 * c)
    yield "vp", get_preconditioning("vp"), lambda c: vp.sigma(c / 999)
    yield "ve", get_preconditioning("ve"), lambda c: 2 * torch.exp(c)
    yield "fm", get_preconditioning("fm"), lambda c: c / (1 - c)
    for name in ("vp", "fm", "edm"):
        f = get_formulation(name)
        for prediction in PREDICTIONS:
            yield (
                f"{name}-{prediction}",
                prediction_preconditioning(f, prediction),
                f.sigma,
            )


@pytest.mark.parametrize(("label", "precond", "sigma_of_noise"), list(_cases()))
def test_wrapped_network_is_the_exact_denoiser(label, precond, sigma_of_noise):
    denoiser = Denoiser(OracleNet(precond, sigma_of_noise), precond)
    x = 3 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigma = torch.logspace(-2, 1.5, 64, dtype=torch.float64)
    torch.testing.assert_close(denoiser(x, sigma), GM.denoiser(x, sigma), rtol=1e-9, atol=1e-9)


def test_network_of_one_formulation_sampled_in_another():
    """An FM velocity network, sampled with Heun in EDM coordinates and with DDIM in VP
    coordinates, gives what sampling the oracle itself gives."""
    fm = get_formulation("fm")
    precond = prediction_preconditioning(fm, "velocity")
    denoiser = Denoiser(OracleNet(precond, fm.sigma), precond)
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for formulation, sampler in (("edm", "heun"), ("vp", "ddim")):
        got = sample(denoiser, noise, formulation, sampler, steps=12)
        want = sample(GM, noise, formulation, sampler, steps=12)
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)


def test_float32_network_keeps_caller_dtype():
    net = nn.Linear(3, 2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = net

        def forward(self, x, c_noise):
            return self.lin(torch.cat([x, c_noise[:, None]], 1))

    d = Denoiser(Net(), "edm")
    out = d(torch.zeros(4, 2, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (4, 2)


def test_prediction_coefficients_reject_unknown():
    from driftlab.core import ConfigError

    with pytest.raises(ConfigError, match="prediction must be one of"):
        prediction_coefficients("noise", torch.ones(1))


@pytest.mark.parametrize("precond", ["edm", "vp", "ve", "fm"])
@pytest.mark.parametrize("sampler", ["heun", "ddim", "dpmpp-2m", "euler-maruyama"])
def test_precomputed_levels_equal_the_plain_call(precond, sampler):
    """Samplers use ``Denoiser.at_levels`` (the grid's preconditioning computed once); the
    result equals calling the same denoiser level by level through a plain function."""
    denoiser = perturbed_mlp_denoiser(precond)
    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fast = sample(denoiser, noise, "vp", sampler, 8, generator=torch.Generator().manual_seed(2))
    plain = sample(
        lambda x, sigma: denoiser(x, sigma),
        noise,
        "vp",
        sampler,
        8,
        generator=torch.Generator().manual_seed(2),
    )
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precond", ["edm", "vp", "ve", "fm"])
def test_level_is_the_denoiser_and_its_step_the_linear_combination(precond):
    """A level's ``D`` equals the plain call; ``step(x, a, b)`` equals ``a x + b D(x)``, and
    ``scaled_coefficients`` give it on the network's scaled input."""
    denoiser = perturbed_mlp_denoiser(precond)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        for level in denoiser.at_levels([5.0, 0.5, 0.05], x):
            sigma = torch.full((16,), level.sigma, dtype=torch.float64)
            D = denoiser(x, sigma)
            assert level(x).dtype == torch.float64
            torch.testing.assert_close(level(x), D, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(
                level.step(x, 0.7, -0.3), 0.7 * x - 0.3 * D, rtol=1e-12, atol=1e-12
            )
            # The same step, scaled by 2, on the network's input u = c_in x.
            u = level.c_in * x
            c_u, c_G = level.scaled_coefficients(0.7, -0.3, 2.0)
            torch.testing.assert_close(
                c_u * u + c_G * level.G(u).double(),
                2.0 * (0.7 * x - 0.3 * D),
                rtol=1e-12,
                atol=1e-12,
            )


def test_levels_are_kept_per_grid_and_follow_the_network():
    """``at_levels`` is answered from its cache for the same grid, batch and dtype, and not
    after the network is replaced or changes dtype."""
    denoiser = perturbed_mlp_denoiser()
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sigmas = [2.0, 1.0, 0.1]
    levels = denoiser.at_levels(sigmas, x)
    assert denoiser.at_levels(sigmas, x) is levels
    assert denoiser.at_levels(sigmas, x[:4]) is not levels
    assert denoiser.at_levels(sigmas[:2], x) is not levels
    assert denoiser.at_levels(sigmas, x.float()) is not levels

    with torch.no_grad():
        other = perturbed_mlp_denoiser().net
        for p in other.parameters():
            p.mul_(2.0)
        denoiser.net = other
        sigma = torch.full((8,), 1.0, dtype=torch.float64)
        torch.testing.assert_close(denoiser.at_levels(sigmas, x)[1](x), denoiser(x, sigma))
        denoiser.net.double()
        torch.testing.assert_close(denoiser.at_levels(sigmas, x)[1](x), denoiser(x, sigma))


def test_kept_levels_do_not_keep_the_denoiser_alive():
    import gc
    import weakref

    denoiser = perturbed_mlp_denoiser()
    denoiser.at_levels([1.0, 0.1], torch.zeros(4, 2, dtype=torch.float64))
    ref = weakref.ref(denoiser)
    del denoiser
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("sampler", ["heun", "ddim", "pc"])
def test_cond_reaches_the_network_at_every_level(sampler):
    class Conditional(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)
            self.shift = nn.Embedding(3, 2)

        def forward(self, x, c_noise, label):
            return self.lin(torch.cat([x, c_noise[:, None]], 1)) + self.shift(label)

    torch.manual_seed(0)
    denoiser = Denoiser(Conditional(), "edm")
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    label = torch.tensor([0, 1, 2, 0, 1, 2])
    opts = {"generator": torch.Generator().manual_seed(2), "cond": {"label": label}}
    fast = sample(denoiser, noise, "edm", sampler, 5, **opts)
    opts = {"generator": torch.Generator().manual_seed(2), "cond": {"label": label}}
    plain = sample(
        lambda x, s, label: denoiser(x, s, label=label), noise, "edm", sampler, 5, **opts
    )
    torch.testing.assert_close(fast, plain, rtol=1e-9, atol=1e-9)
    other = sample(
        denoiser,
        noise,
        "edm",
        sampler,
        5,
        cond={"label": torch.zeros_like(label)},
        generator=torch.Generator().manual_seed(2),
    )
    assert not torch.allclose(fast, other)


@pytest.mark.parametrize("sampler", ["euler", "heun", "ddim", "dpmpp-2m"])
def test_plans_kept_with_the_levels_follow_the_grid(sampler):
    """The per-step numbers a sampler keeps with a denoiser's levels belong to one time grid:
    the same levels (the same sigmas) under another formulation's grid, and again under the
    first, give what a plain function denoiser gives, which keeps nothing."""
    from driftlab.diffusion.samplers import make_grid

    denoiser = perturbed_mlp_denoiser()
    plain = lambda x, sigma: denoiser(x, sigma)  # noqa: E731
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    vp = get_formulation("vp")
    sigmas = make_grid(vp, 8).sigma
    for formulation, options in [(vp, {}), ("edm", {"sigmas": sigmas}), (vp, {})]:
        kept = sample(denoiser, noise, formulation, sampler, 8, **options)
        again = sample(denoiser, noise, formulation, sampler, 8, **options)
        fresh = sample(plain, noise, formulation, sampler, 8, **options)
        assert torch.equal(kept, again)
        torch.testing.assert_close(kept, fresh, rtol=1e-5, atol=1e-6)
    if sampler in ("ddim", "dpmpp-2m"):
        return  # written on x_hat and sigma alone: the same numbers under both grids
    # Under VP the ODE is solved for x = s x_hat, under EDM for x_hat: other numbers.
    assert not torch.equal(
        sample(denoiser, noise, vp, sampler, 8),
        sample(denoiser, noise, "edm", sampler, 8, sigmas=sigmas),
    )


def test_network_dtype_is_its_first_parameter_s():
    from driftlab.diffusion.denoisers import _dtype_of

    class Own(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_parameter("missing", None)
            self.inner = nn.Sequential(nn.ReLU(), nn.Linear(2, 2).double(), nn.Linear(2, 2))

    nets = [Own(), nn.Sequential(nn.ReLU(), nn.Linear(2, 2).half()), nn.Linear(2, 2), nn.ReLU()]
    expected = [torch.float64, torch.float16, torch.float32, torch.float32]
    for net, dtype in zip(nets, expected, strict=True):
        assert _dtype_of(net) == dtype
        assert _dtype_of(net) == next(iter(net.parameters()), torch.zeros(1)).dtype


def test_caster_is_tensor_to():
    """``caster(dtype)`` gives what ``Tensor.to(dtype)`` gives, the tensor itself when it
    already has the dtype, for the float types it has a method for and for any other."""
    from driftlab.diffusion.denoisers import caster

    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 7
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32):
        y = caster(dtype)(x)
        assert y.dtype == dtype and torch.equal(y, x.to(dtype)), dtype
        assert caster(dtype)(y) is y, dtype
