"""Every sampler on the exact denoiser of a 2-D mixture of 8 Gaussians (no training)."""

import math

import pytest
import torch
from diffusion_helpers import perturbed_mlp_denoiser

from driftlab.core import ConfigError
from driftlab.diffusion import (
    GaussianMixture,
    evaluations_per_sample,
    get_formulation,
    sample,
    sliced_wasserstein,
)
from driftlab.diffusion.samplers import SAMPLERS

GM = GaussianMixture.ring(n_modes=8, radius=2.0, std=0.2)
N = 12000


def _noise(seed, n=N):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _fresh(seed, n=N):
    return GM.sample(n, torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def floor():
    """Two-sample noise floor: mean SWD between independent sets of exact samples."""
    pairs = [(_fresh(100 + i), _fresh(200 + i)) for i in range(4)]
    g = torch.Generator().manual_seed(7)
    return sum(sliced_wasserstein(a, b, generator=g) for a, b in pairs) / len(pairs)


# (sampler, formulation, steps, options): "enough steps" for each.
CASES = [
    ("euler", "edm", 100, {}),
    ("heun", "edm", 40, {}),
    ("heun", "fm", 40, {}),
    ("heun", "vp", 40, {}),
    ("dpmpp-2m", "ve", 40, {}),
    ("edm-stochastic", "edm", 60, {"S_churn": 30.0, "S_min": 0.05, "S_max": 50.0}),
    ("ddim", "vp", 100, {"eta": 0.5}),
    ("ddpm", "vp", 100, {}),
    ("euler-maruyama", "vp", 200, {}),
    ("pc", "ve", 100, {"snr": 0.16}),
    ("annealed-langevin", "ve", 20, {"n_inner": 20}),
]


@pytest.mark.parametrize(("sampler", "formulation", "steps", "options"), CASES)
def test_sampler_reproduces_the_mixture(sampler, formulation, steps, options, floor):
    g = torch.Generator().manual_seed(3)
    swds, freqs = [], []
    for seed in (0, 1, 2):
        x = sample(GM, _noise(seed), formulation, sampler, steps, generator=g, **options)
        assert x.shape == (N, 2) and torch.isfinite(x).all()
        freqs.append(torch.bincount(GM.classify(x), minlength=8).double() / N)
        swds.append(sliced_wasserstein(x, _fresh(300 + seed), generator=torch.Generator()))
    weight_error = (torch.stack(freqs) - GM.weights).abs().max()
    assert weight_error <= 0.02, f"mixture weights off by {weight_error:.3f}"
    swd = sum(swds) / len(swds)
    assert swd <= 1.5 * floor, f"SWD {swd:.4f} > 1.5 x floor {floor:.4f}"


def test_ode_in_every_coordinate_system_gives_the_same_samples():
    """FM, VP, VE, sub-VP and EDM on the same sigma interval [1e-4, 80] and the same sigma
    grid: the same ODE solved in five coordinate systems ends at the same samples."""
    noise = _noise(5, 1000)
    sigmas = get_formulation("edm", sigma_min=1e-4).sigmas(512)
    outs = {}
    for name in ("fm", "vp", "ve", "subvp", "edm"):
        f = get_formulation(name, sigma_min=1e-4, sigma_max=80.0)
        outs[name] = sample(GM, noise, f, "heun", sigmas=sigmas)
    # Points whose trajectory ends near the boundary between two modes are excluded: there
    # the flow map is steep and tiny integration differences pick different modes.
    resp = GM.responsibilities(outs["edm"]).max(1).values
    inside = resp > 0.999
    assert inside.float().mean() > 0.97
    for name, x in outs.items():
        diff = (x - outs["edm"]).norm(dim=1)[inside]
        assert diff.max() < 1e-3, f"{name}: max difference {diff.max():.2e}"


def test_euler_fm_euler_edm_and_ddim_are_one_algorithm():
    noise = _noise(6, 500)
    sigmas = get_formulation("edm").sigmas(25)
    fm = get_formulation("fm", sigma_min=0.002, sigma_max=80.0)
    a = sample(GM, noise, fm, "euler", sigmas=sigmas)
    b = sample(GM, noise, "edm", "euler", sigmas=sigmas)
    c = sample(GM, noise, "vp", "ddim", sigmas=sigmas, eta=0.0)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(a, c, rtol=0, atol=1e-12)


def _error(x, ref):
    return float((x - ref).norm(dim=1).mean())


def test_solver_order_ve():
    """On VE's own grid (geometric in sigma, uniform in log-SNR as DPM-Solver prefers):
    Heun with 18 steps (35 evaluations) beats Euler with 35, and DPM-Solver++(2M) with
    10 steps beats Euler with 50."""
    noise = _noise(8, 1000)
    ref = sample(GM, noise, "ve", "heun", steps=1000)
    err = {
        (s, n): _error(sample(GM, noise, "ve", s, steps=n), ref)
        for s, n in [("heun", 18), ("euler", 35), ("dpmpp-2m", 10), ("euler", 50)]
    }
    assert err["heun", 18] < err["euler", 35]
    assert err["dpmpp-2m", 10] < err["euler", 50]


def _dpmpp_2m_written_out(denoiser, noise, formulation, steps):
    """DPM-Solver++(2M), Lu et al. 2022 Algorithm 2, step by step on ``x_hat = x / s`` with
    ``lambda = -log sigma``: ``x' = (sigma'/sigma) x - expm1(-h) D_step``, the multistep
    ``D_step = (1 + 1/(2r)) D - D_prev / (2r)`` with ``r = h_prev / h``, and ``D`` itself on
    the last step to sigma = 0. Returns the samples and the states after every step, in the
    formulation's coordinates."""
    from driftlab.diffusion.samplers import make_grid

    g = make_grid(get_formulation(formulation), steps)
    x = noise.to(torch.float64) * g.sigma[0]
    states, D_prev, h_prev = [], None, None
    for i in range(steps):
        D = denoiser(x, torch.full((noise.shape[0],), g.sigma[i], dtype=torch.float64))
        if g.sigma[i + 1] == 0:
            x = D
        else:
            h = math.log(g.sigma[i] / g.sigma[i + 1])
            D_step = D
            if D_prev is not None:
                r = h_prev / h
                D_step = (1 + 1 / (2 * r)) * D - D_prev / (2 * r)
            x = g.sigma[i + 1] / g.sigma[i] * x - math.expm1(-h) * D_step
            D_prev, h_prev = D, h
        states.append(x * g.s[i + 1])
    return x * g.s[-1], torch.stack(states)


@pytest.mark.parametrize("formulation", ["edm", "vp", "ve", "fm"])
def test_dpmpp_2m_is_algorithm_2(formulation):
    """The sampler (one matrix product per step on stacked state rows) equals Algorithm 2
    written out, samples and trajectory, on the exact mixture denoiser and on a float64
    network under each preconditioning (c_skip, c_out and c_in all in play)."""
    noise = _noise(14, 64)
    denoisers = [GM.denoiser]
    for precond in ("edm", "vp", "ve", "fm"):
        denoisers.append(perturbed_mlp_denoiser(precond, dtype=torch.float64))
    for denoiser in denoisers:
        with torch.no_grad():
            want, want_states = _dpmpp_2m_written_out(denoiser, noise, formulation, 9)
        for _ in range(2):  # the second call runs on the plan kept with the levels
            x, traj = sample(denoiser, noise, formulation, "dpmpp-2m", 9, return_trajectory=True)
            torch.testing.assert_close(x, want, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(traj[1:], want_states, rtol=1e-12, atol=1e-12)


def test_dpmpp_2m_on_image_shaped_noise():
    """A state of shape [batch, channels, height, width] (rows of the stacked state are views
    in that shape), with a float32 network under the float64 state."""
    from driftlab.diffusion import Denoiser

    class PerPixel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)

        def forward(self, x, c_noise):
            return self.conv(x) * torch.cos(c_noise)[:, None, None, None]

    torch.manual_seed(1)
    denoiser = Denoiser(PerPixel(), "edm")
    noise = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, _ = _dpmpp_2m_written_out(denoiser, noise, "edm", 6)
    x = sample(denoiser, noise, "edm", "dpmpp-2m", 6)
    assert x.shape == noise.shape and x.dtype == noise.dtype
    torch.testing.assert_close(x, want.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", ["euler", "heun", "ddim", "dpmpp-2m"])
def test_a_network_may_keep_its_inputs(sampler):
    """A forward hook that keeps the network's inputs (as activation recorders do) finds them
    as they were: a sampler does not overwrite a tensor after handing it to the network, in
    the float64 state (the network's input is a cast) and in the float32 state (it is not)."""
    from driftlab.diffusion import Denoiser
    from driftlab.diffusion.networks import MLP

    net = MLP(2, hidden=8, depth=2)
    seen = []
    net.register_forward_pre_hook(lambda _, args: seen.append((args[0], args[0].clone())))
    noise = _noise(15, 16)
    denoiser, edm = Denoiser(net, "edm"), get_formulation("edm")
    for dtype in (torch.float64, torch.float32):
        seen.clear()
        for _ in range(2):  # the second call on the state kept from the first
            sample(denoiser, noise, edm, sampler, 5, dtype=dtype)
        assert len(seen) == 2 * evaluations_per_sample(sampler, 5)
        assert all(torch.equal(x, copy) for x, copy in seen), dtype


@pytest.mark.parametrize("formulation", ["edm", "fm"])
def test_heun_beats_euler_at_equal_evaluations(formulation):
    noise = _noise(9, 1000)
    ref = sample(GM, noise, formulation, "heun", steps=1000)
    heun = _error(sample(GM, noise, formulation, "heun", steps=18), ref)
    euler = _error(sample(GM, noise, formulation, "euler", steps=35), ref)
    assert heun < euler


def test_heun_converges_at_second_order():
    """Single Gaussian: the exact ODE solution is x_T std / sqrt(std^2 + sigma_max^2)."""
    gm = GaussianMixture([[0.0, 0.0]], 0.5)
    noise = _noise(10, 200)
    exact = noise * 80 * 0.5 / (0.5**2 + 80**2) ** 0.5
    e40 = _error(sample(gm, noise, "edm", "heun", steps=40), exact)
    e80 = _error(sample(gm, noise, "edm", "heun", steps=80), exact)
    assert 3.0 < e40 / e80 < 5.0  # ~4 for second order


def test_limits_reduce_to_known_samplers():
    noise = _noise(11, 300)
    for formulation in ("edm", "vp", "fm"):
        euler = sample(GM, noise, formulation, "euler", steps=20)
        em = sample(GM, noise, formulation, "euler-maruyama", steps=20, beta=0.0)
        # With beta = 0 the reverse SDE is the ODE; only the last step differs (a denoise
        # instead of an Euler step), which for sigma_min -> 0 is the same: compare earlier.
        _, traj_e = sample(GM, noise, formulation, "euler", 20, return_trajectory=True)
        _, traj_m = sample(
            GM, noise, formulation, "euler-maruyama", 20, beta=0.0, return_trajectory=True
        )
        torch.testing.assert_close(traj_e[:-1], traj_m[:-1], rtol=1e-10, atol=1e-10)
        assert (euler - em).abs().max() < 1e-2
    heun = sample(GM, noise, "vp", "heun", steps=15)
    churn0 = sample(GM, noise, "vp", "edm-stochastic", steps=15, S_churn=0.0)
    torch.testing.assert_close(heun, churn0, rtol=0, atol=0)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    ddpm = sample(GM, noise, "vp", "ddpm", steps=15, generator=g1)
    ddim1 = sample(GM, noise, "vp", "ddim", steps=15, generator=g2, eta=1.0)
    torch.testing.assert_close(ddpm, ddim1, rtol=0, atol=0)


def test_stochastic_samplers_are_seeded():
    noise = _noise(12, 100)
    for sampler in ("ddpm", "euler-maruyama", "pc", "annealed-langevin", "edm-stochastic"):
        opts = {"S_churn": 10.0} if sampler == "edm-stochastic" else {}
        if sampler == "annealed-langevin":
            opts = {"n_inner": 3}
        a = sample(GM, noise, "ve", sampler, 8, generator=torch.Generator().manual_seed(4), **opts)
        b = sample(GM, noise, "ve", sampler, 8, generator=torch.Generator().manual_seed(4), **opts)
        c = sample(GM, noise, "ve", sampler, 8, generator=torch.Generator().manual_seed(5), **opts)
        assert torch.equal(a, b) and not torch.equal(a, c), sampler


def test_trajectory_and_dtype():
    noise = _noise(13, 50).float()
    x, traj = sample(GM, noise, "fm", "heun", steps=6, return_trajectory=True)
    assert x.dtype == torch.float32 and traj.shape == (7, 50, 2)
    fm = get_formulation("fm")
    start = noise * float(fm.scale(fm.t_max) * fm.sigma(fm.t_max))
    torch.testing.assert_close(traj[0], start)
    torch.testing.assert_close(traj[-1], x)


def test_evaluation_counts():
    calls = []

    def counting(x, sigma):
        calls.append(1)
        return GM.denoiser(x, sigma)

    for sampler, opts in [
        ("euler", {}),
        ("heun", {}),
        ("pc", {"n_corrector": 2}),
        ("annealed-langevin", {"n_inner": 4}),
        ("dpmpp-2m", {}),
    ]:
        calls.clear()
        sample(counting, _noise(0, 4), "edm", sampler, 7, **opts)
        assert len(calls) == evaluations_per_sample(sampler, 7, **opts), sampler


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sampler": "plms"}, "sampler must be one of"),
        ({"steps": 0}, "steps must be >= 1, got 0"),
        ({"sampler": "ddim", "eta": 1.5}, r"eta must be in \[0.0, 1.0\], got 1.5"),
        ({"sampler": "heun", "eta": 0.5}, "unknown option 'eta' for sampler 'heun'"),
        ({"sampler": "pc", "snr": -1.0}, "snr must be > 0"),
        ({"formulation": "cosine"}, "formulation must be one of"),
        ({"sigmas": [1.0, 2.0]}, "sigmas must be strictly decreasing"),
        ({"sigmas": [1.0, -0.5]}, "sigmas must be a non-empty sequence of values >= 0"),
    ],
)
def test_bad_input_is_refused(kwargs, message):
    args = {"formulation": "edm", "sampler": "heun", "steps": 4, **kwargs}
    with pytest.raises(ConfigError, match=message):
        sample(GM, _noise(0, 4), **args)


def test_denoiser_shape_mismatch():
    with pytest.raises(ConfigError, match="must return a tensor of the input's shape"):
        sample(lambda x, s: x[:, :1], _noise(0, 4), "edm", "euler", 3)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_samplers_leave_the_denoiser_s_tensors_alone(sampler):
    """A denoiser may return a tensor it keeps (here the same one at every call) and may keep
    its inputs: samplers overwrite only tensors they made, so both stay as they were."""
    kept = torch.full((8, 2), 0.25, dtype=torch.float64)
    inputs = []

    def denoiser(x, sigma):
        inputs.append((x, x.clone()))
        return kept

    options = {"n_inner": 2} if sampler == "annealed-langevin" else {}
    sample(denoiser, _noise(0, 8), "vp", sampler, 4, torch.Generator().manual_seed(0), **options)
    assert torch.equal(kept, torch.full((8, 2), 0.25, dtype=torch.float64))
    assert all(torch.equal(x, copy) for x, copy in inputs)


def test_the_denoiser_s_output_is_checked_on_every_call():
    """The checked first level is kept with the denoiser's levels between calls; the check
    still runs in each call, with and without cond."""
    from driftlab.diffusion import Denoiser

    class Switch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            self.broken = False

        def forward(self, x, c_noise, **cond):
            out = self.lin(x)
            return out[:, :1] if self.broken else out

    net = Switch()
    denoiser = Denoiser(net, "edm")
    noise = _noise(16, 4)
    for _ in range(2):
        sample(denoiser, noise, "edm", "euler", 3)
    sample(denoiser, noise, "edm", "euler", 3, cond={"label": torch.zeros(4)})
    net.broken = True
    for cond in ({}, {"label": torch.zeros(4)}):
        with pytest.raises(ConfigError, match="must return a tensor of the input's shape"):
            sample(denoiser, noise, "edm", "euler", 3, cond=cond)


@pytest.mark.parametrize("sampler", ["euler", "heun", "ddim", "dpmpp-2m"])
def test_samples_are_new_tensors_and_the_noise_is_left_alone(sampler):
    """With float64 noise (the state's own dtype, so no cast copies it) and non-contiguous
    noise: the noise is not written, the samples equal those of contiguous noise, and each
    call's samples are a tensor of their own (the next call does not change them)."""
    denoiser = perturbed_mlp_denoiser("vp")
    vp = get_formulation("vp")  # one object, so that the second call reuses the kept state
    noise = _noise(17, 12).T.contiguous().T  # [12, 2], column-major
    assert not noise.is_contiguous()
    kept = noise.clone()
    first = sample(denoiser, noise, vp, sampler, 6)
    snapshot = first.clone()
    second = sample(denoiser, noise, vp, sampler, 6)
    assert torch.equal(noise, kept)
    assert first is not noise and first.data_ptr() != second.data_ptr()
    assert torch.equal(first, snapshot) and torch.equal(first, second)
    assert first.untyped_storage().nbytes() == first.numel() * first.element_size()
    torch.testing.assert_close(first, sample(denoiser, noise.contiguous(), vp, sampler, 6))


def test_samples_carry_no_graph_with_gradients_on_or_off():
    """sample() turns gradients off itself when they are on, and skips that when they are
    off already (under inference_mode): the same samples, with no autograd history."""
    denoiser = perturbed_mlp_denoiser("edm")
    noise = _noise(18, 8).float()
    assert torch.is_grad_enabled()
    with_grad = sample(denoiser, noise, "edm", "heun", 4)
    assert not with_grad.requires_grad and with_grad.grad_fn is None
    with torch.inference_mode():
        without = sample(denoiser, noise, "edm", "heun", 4)
    assert torch.equal(with_grad, without)


def test_concurrent_calls_do_not_share_the_kept_state():
    """The stacked state kept between calls is taken out while a call runs: threads sampling
    with one denoiser and grid at once get what they get one after another."""
    import threading
    import time

    from driftlab.diffusion import Denoiser

    class Yielding(torch.nn.Module):
        """The network, sleeping briefly in each call so that the threads take turns inside
        sampler calls."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, c_noise):
            time.sleep(1e-4)
            return self.net(x, c_noise)

    denoiser = Denoiser(Yielding(perturbed_mlp_denoiser("vp").net), "vp")
    vp = get_formulation("vp")  # one object: one grid, so one kept state for every call
    noises = [_noise(30 + k, 32) for k in range(4)]
    want = [sample(denoiser, noise, vp, "heun", 8) for noise in noises]
    got: dict[int, list[torch.Tensor]] = {k: [] for k in range(4)}

    def work(k):
        for _ in range(15):
            got[k].append(sample(denoiser, noises[k], vp, "heun", 8))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(4):
        assert all(torch.equal(x, want[k]) for x in got[k]), k


def test_large_states_are_not_kept():
    """A state above stacked.POOL_ELEMENTS is allocated per call and not kept with the
    levels; a small one is kept, once per noise shape."""
    from driftlab.diffusion.samplers import make_grid
    from driftlab.diffusion.stacked import POOL_ELEMENTS

    denoiser = perturbed_mlp_denoiser("edm")
    vp = get_formulation("vp")
    for batch, kept in ((16, 1), (POOL_ELEMENTS // 8 + 1, 0)):
        noise = torch.randn(batch, 2, generator=torch.Generator().manual_seed(0))
        for _ in range(2):
            x = sample(denoiser, noise, vp, "euler", 3)
        levels = denoiser.at_levels(make_grid(vp, 3).sigma[:-1], noise.double())
        assert len(levels.plans.get("programs", {})) == kept, batch
        assert torch.isfinite(x).all()


def test_a_formulation_named_keeps_its_grid_between_calls():
    """sample() makes one formulation per name and keeps it, so a name, like a formulation
    object, has its grid built once; the samples are those of a fresh object."""
    from driftlab.diffusion import samplers

    denoiser = perturbed_mlp_denoiser("vp")
    noise = _noise(19, 16)
    first = sample(denoiser, noise, "vp", "euler", 6)
    named = samplers._NAMED_FORMULATIONS["vp"]
    grid = samplers._grid(named, 6, None)
    second = sample(denoiser, noise, "vp", "euler", 6)
    assert samplers._NAMED_FORMULATIONS["vp"] is named and samplers._grid(named, 6, None) is grid
    assert torch.equal(first, second)
    assert torch.equal(first, sample(denoiser, noise, get_formulation("vp"), "euler", 6))
