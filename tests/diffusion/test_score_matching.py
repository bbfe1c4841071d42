"""Score matching: the losses against hand-computed values on tiny batches, and learned
scores against the exact score of a Gaussian-mixture oracle.

Measured at the settings below (MLP hidden 64, depth 3; Adam 3e-3 with cosine decay, batch
256; seed 0): relative score error at sigma = 0.5 after 1,500 steps: exact 0.0015, SSM-VR
0.0051, SSM 0.0071 (bounds 0.01, 0.02, 0.03). DSM: 0.0006 at sigma = 3 to 0.015 at
sigma = 0.05 (bound 0.03). Annealed Langevin (10 levels 3 -> 0.05, 200 steps each, 5,000
samples) on the 3,000-step DSM network: SWD 0.036 against a two-sample floor of 0.016 (bound
3x; the same sampler on the exact score: 0.015), mixture weight error 0.007 (bound 0.02; exact
score: 0.006).
"""

import math

import pytest
import torch

from driftlab.core import ConfigError
from driftlab.diffusion import GaussianMixture, sample
from driftlab.diffusion.metrics import mixture_report
from driftlab.diffusion.score_matching import (
    ScoreNet,
    denoising_score_matching_loss,
    exact_score_matching_loss,
    fit_score,
    relative_score_error,
    score_denoiser,
    sliced_score_matching_loss,
)

# Two components of different widths and weights, so a learned score must get the
# asymmetry right and a sampler must recover the 0.3 / 0.7 weights.
GM = GaussianMixture([[-1.5, -0.5], [1.5, 0.5]], [0.3, 0.45], [0.3, 0.7])
A = torch.tensor([[1.0, 2.0], [0.0, 3.0]], dtype=torch.float64)
B = torch.tensor([1.0, -1.0], dtype=torch.float64)
X = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)


def linear_score(x, sigma):
    """``s(x) = A x + b``: Jacobian ``A`` everywhere, so ``tr = 4``."""
    return x @ A.T + B


# ----- the losses on hand-computed examples ------------------------------------------------


def test_exact_loss_of_a_linear_score_by_hand():
    # A x + b on the three points: (1, -1), (2, -1), (3, 2); squared norms 2, 5, 13.
    # tr(A) + 0.5 mean ||A x + b||^2 = 4 + 0.5 * 20 / 3 = 22 / 3.
    loss = exact_score_matching_loss(linear_score, X, 0.5)
    assert loss.item() == pytest.approx(22 / 3, abs=1e-12)


def test_sliced_loss_with_one_known_projection():
    g = torch.Generator().manual_seed(4)
    v = torch.randn(X.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    s = linear_score(X, None)
    vAv = ((v @ A.T) * v).sum(1)
    vs = (v * s).sum(1)
    plain = sliced_score_matching_loss(linear_score, X, 0.5, 1, g, variance_reduction=False)
    assert plain.item() == pytest.approx(float((vAv + 0.5 * vs**2).mean()), abs=1e-12)
    g = torch.Generator().manual_seed(4)
    vr = sliced_score_matching_loss(linear_score, X, 0.5, 1, g, variance_reduction=True)
    assert vr.item() == pytest.approx(float((vAv + 0.5 * (s**2).sum(1)).mean()), abs=1e-12)


@pytest.mark.parametrize("variance_reduction", [True, False])
def test_sliced_loss_averages_to_the_exact_loss(variance_reduction):
    """``E_v[v^T A v] = tr(A)`` and ``E_v[(v^T s)^2] = ||s||^2`` for standard-normal ``v``.

    With 20,000 projections per point the standard error is below 0.02 (VR) and 0.06
    (plain; the (v^T s)^2 term has variance 2 ||s||^4)."""
    g = torch.Generator().manual_seed(0)
    loss = sliced_score_matching_loss(
        linear_score, X, 0.5, 20000, g, variance_reduction=variance_reduction
    )
    tol = 0.06 if variance_reduction else 0.2
    assert loss.item() == pytest.approx(22 / 3, abs=tol)


def test_denoising_loss_by_hand():
    """Score ``s(x) = -x`` on three 1-D points, levels sigma = (1, 0.5, 0.5):
    ``x~ = x + sigma z = (1, 0, 2.25)``; ``sigma s(x~) + z = (0, -2, -0.625)``;
    ``0.5 mean of squares = 0.5 (0 + 4 + 0.390625) / 3``."""
    x = torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64)
    noise = torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    loss = denoising_score_matching_loss(
        lambda y, sigma: -y, x, [1.0, 0.5], levels=torch.tensor([0, 1, 1]), noise=noise
    )
    assert loss.item() == pytest.approx(0.5 * 4.390625 / 3, abs=1e-12)


def test_denoising_loss_draws_levels_then_noise_from_the_generator():
    x = torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64)
    sigmas = [2.0, 1.0, 0.5]
    g = torch.Generator().manual_seed(9)
    levels = torch.randint(3, (3,), generator=g)
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    expected = denoising_score_matching_loss(
        lambda y, sigma: -y, x, sigmas, levels=levels, noise=noise
    )
    drawn = denoising_score_matching_loss(
        lambda y, sigma: -y, x, sigmas, torch.Generator().manual_seed(9)
    )
    assert float(drawn) == float(expected)


def test_the_exact_score_has_the_smallest_exact_loss():
    """Hyvarinen's objective is the Fisher divergence plus a constant: on samples of
    ``p_sigma``, the oracle's score scores lower than a scaled copy of it."""
    sigma = 0.5
    g = torch.Generator().manual_seed(1)
    x = GM.sample(20000, g) + sigma * torch.randn(20000, 2, generator=g, dtype=torch.float64)
    best = exact_score_matching_loss(GM.score, x, sigma).item()
    for scale in (0.8, 1.2):
        other = exact_score_matching_loss(lambda y, s, c=scale: c * GM.score(y, s), x, sigma).item()
        assert other > best + 0.01


# ----- adapters -----------------------------------------------------------------------------


def test_score_denoiser_of_the_exact_score_is_the_exact_denoiser():
    x = GM.sample(100, torch.Generator().manual_seed(2)) * 1.3
    sigma = torch.full((100,), 0.7, dtype=torch.float64)
    D = score_denoiser(GM.score)
    torch.testing.assert_close(D(x, sigma), GM.denoiser(x, sigma), rtol=1e-10, atol=1e-10)
    assert relative_score_error(GM.score, GM, x, 0.7) == 0.0


def test_score_net_divides_by_sigma_and_passes_labels():
    torch.manual_seed(0)
    net = ScoreNet.mlp(2, hidden=16, depth=2, emb_dim=16, num_classes=3)
    torch.nn.init.normal_(net.backbone.out.weight)  # the MLP starts at zero output
    x = torch.randn(4, 2)
    labels = torch.tensor([0, 1, 2, 0])
    out = net(x, 0.25, class_labels=labels)
    raw = net.backbone(x, torch.full((4,), math.log(0.25) / 4), class_labels=labels)
    torch.testing.assert_close(out, raw / 0.25)


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match="sigma must be > 0"):
        exact_score_matching_loss(linear_score, X, 0.0)
    with pytest.raises(ConfigError, match="n_projections must be >= 1"):
        sliced_score_matching_loss(linear_score, X, 0.5, n_projections=0)
    with pytest.raises(ConfigError, match="sigmas must be"):
        denoising_score_matching_loss(linear_score, X, [1.0, -0.5])
    with pytest.raises(ConfigError, match="loss must be one of"):
        fit_score(ScoreNet.mlp(2, hidden=8), GM.sample, loss="ism", sigma=0.5)
    with pytest.raises(ConfigError, match="needs sigma"):
        fit_score(ScoreNet.mlp(2, hidden=8), GM.sample, loss="exact")
    with pytest.raises(ConfigError, match="needs sigmas"):
        fit_score(ScoreNet.mlp(2, hidden=8), GM.sample, loss="dsm")


# ----- learning against the oracle ----------------------------------------------------------


def _small_net(seed: int = 0) -> ScoreNet:
    torch.manual_seed(seed)
    return ScoreNet.mlp(2, hidden=64, depth=3, emb_dim=32)


@pytest.mark.parametrize(
    ("loss", "bound"), [("exact", 0.01), ("sliced-vr", 0.02), ("sliced", 0.03)]
)
def test_fixed_level_score_matching_learns_the_noisy_score(loss, bound):
    """At sigma = 0.5 the learned score is within ``bound`` relative squared error of the
    exact score of ``p_0.5`` on fresh samples of it (an untrained network scores 1.0)."""
    sigma = 0.5
    net = _small_net()
    assert relative_score_error(net, GM, GM.sample(10, torch.Generator()), sigma) == 1.0
    fit_score(net, GM.sample, loss, sigma=sigma, steps=1500, lr=3e-3, seed=0)
    g = torch.Generator().manual_seed(123)
    x = GM.sample(20000, g) + sigma * torch.randn(20000, 2, generator=g, dtype=torch.float64)
    error = relative_score_error(net, GM, x, sigma)
    assert error < bound, f"{loss}: relative score error {error:.4f} >= {bound}"


def test_multi_level_dsm_with_annealed_langevin_reproduces_the_mixture():
    """NCSN end to end: 10 geometric levels 3 -> 0.05, DSM for 3,000 steps, then annealed
    Langevin (Song & Ermon 2019, Algorithm 1) through the denoiser view of the network."""
    sigmas = torch.logspace(math.log10(3.0), math.log10(0.05), 10).tolist()
    net = _small_net()
    fit_score(net, GM.sample, "dsm", sigmas=sigmas, steps=3000, lr=3e-3, seed=0)
    for sigma in sigmas:  # every trained level is learned to within 3%
        g = torch.Generator().manual_seed(5)
        x = GM.sample(5000, g) + sigma * torch.randn(5000, 2, generator=g, dtype=torch.float64)
        assert relative_score_error(net, GM, x, sigma) < 0.03
    noise = torch.randn(5000, 2, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    x = sample(
        score_denoiser(net),
        noise,
        "ve",
        "annealed-langevin",
        sigmas=sigmas,
        n_inner=200,
        generator=torch.Generator().manual_seed(20),
    )
    report = mixture_report(GM, x)
    assert report["weight_error"] < 0.02, report
    assert report["swd"] < 3 * report["swd_floor"], report
