"""Score matching beyond the denoising form: exact (Hyvarinen), sliced and denoising.

A score network ``s_theta(x, sigma)`` estimates ``grad_x log p_sigma(x)``, the score of the
data convolved with ``N(0, sigma^2 I)`` (SMLD, Song & Ermon 2019). Three objectives learn
it, all without access to the true score:

- exact score matching (Hyvarinen 2005, eq. 4):
  ``J(theta) = E_{p_sigma}[ tr(grad_x s_theta(x)) + 1/2 ||s_theta(x)||^2 ]``, which equals
  ``1/2 E||s_theta - grad log p_sigma||^2`` up to a constant. The trace costs one backward
  pass per dimension, so it is for low dimension;
- sliced score matching (Song, Garg, Shi & Ermon 2019, eq. 7 and its variance-reduced
  form eq. 8): the trace replaced by random projections ``v^T (grad_x s) v``, one
  backward pass per projection whatever the dimension;
- denoising score matching at many noise levels (NCSN, Song & Ermon 2019, eq. 5-6),
  the objective used to train the multi-level networks that annealed Langevin dynamics
  samples.

The exact and sliced losses take samples ``x`` of ``p_sigma`` (data already perturbed at
``sigma``); :func:`fit_score` does the perturbation. A score network becomes a denoiser
``D(x, sigma) = x + sigma^2 s(x, sigma)`` (Tweedie) through :func:`score_denoiser`, so every
sampler of :mod:`driftlab.diffusion.samplers` can sample it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from driftlab.core.config import ConfigError, check_choice, check_int, check_positive
from driftlab.diffusion.networks import MLP

ScoreFn = Callable[..., torch.Tensor]
LOSSES = ("exact", "sliced", "sliced-vr", "dsm")


def _sigma_batch(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """``sigma`` as a positive ``[batch]`` tensor in ``x``'s dtype and device."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ConfigError(
            f"sigma must be a scalar or of shape [{x.shape[0]}], got {tuple(sigma.shape)}"
        )
    if not (sigma > 0).all():
        raise ConfigError(f"sigma must be > 0, got min {float(sigma.min())}")
    return sigma


def _per_sample(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``[batch]`` -> ``[batch, 1, ..., 1]`` to broadcast over ``x``'s feature dimensions."""
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


class ScoreNet(nn.Module):
    """A noise-conditional score network ``s_theta(x, sigma) = F_theta(x, c_noise) / sigma``.

    The division by ``sigma`` is NCSNv2's noise conditioning (Song & Ermon 2020, technique
    3): the true score's norm grows like ``1 / sigma``, so ``F_theta`` sees targets of unit
    scale at every level. ``c_noise = log(sigma) / 4`` is EDM's noise input (Table 1).

    Args:
        backbone: a module ``F(x, c_noise[batch], class_labels=None) -> [batch, ...]`` of
            the input's shape, e.g. :class:`driftlab.diffusion.networks.MLP`.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    @classmethod
    def mlp(cls, dim: int, hidden: int = 128, depth: int = 3, **kwargs: Any) -> ScoreNet:
        """A score network on :class:`~driftlab.diffusion.networks.MLP` (for ``[batch, dim]``
        data); ``kwargs`` go to the MLP (``embedding``, ``emb_dim``, ``num_classes``)."""
        return cls(MLP(dim, hidden=hidden, depth=depth, **kwargs))

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        sigma = _sigma_batch(sigma, x)
        c_noise = sigma.log() / 4
        if class_labels is None:
            out = self.backbone(x, c_noise)
        else:
            out = self.backbone(x, c_noise, class_labels=class_labels)
        return out / _per_sample(sigma, out)


def score_denoiser(score_net: ScoreFn) -> Callable[..., torch.Tensor]:
    """The denoiser ``D(x, sigma) = x + sigma^2 s(x, sigma)`` (Tweedie's formula, EDM eq. 3).

    Samplers run in float64; the network runs in its parameters' dtype (float32 for a
    freshly built module) and its output is cast back. Extra keyword arguments (e.g.
    ``class_labels`` passed through ``sample(..., cond=...)``) reach the score network.
    """
    params = list(score_net.parameters()) if isinstance(score_net, nn.Module) else []
    net_dtype = params[0].dtype if params else None

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        dtype = net_dtype or x.dtype
        sigma = _sigma_batch(sigma, x)
        with torch.no_grad():
            score = score_net(x.to(dtype), sigma.to(dtype), **cond).to(x.dtype)
        return x + _per_sample(sigma, x) ** 2 * score

    return denoiser


# ----- the objectives ------------------------------------------------------------------------


def exact_score_matching_loss(
    score_net: ScoreFn, x: torch.Tensor, sigma: torch.Tensor | float
) -> torch.Tensor:
    """Hyvarinen's score-matching objective (Hyvarinen 2005, eq. 4), trace computed exactly.

    ``J(theta) = E_x[ sum_i d s_i(x) / d x_i + 1/2 ||s(x)||^2 ]`` with ``s = s_theta(., sigma)``
    and ``x`` samples of ``p_sigma``. Minimising it minimises the Fisher divergence
    ``1/2 E||s_theta - grad log p_sigma||^2`` (their difference does not depend on theta;
    Hyvarinen's Theorem 1, by integration by parts).

    The Jacobian's diagonal takes one backward pass per feature dimension ``d``, each kept in
    the graph for the parameter gradient: use it for low ``d`` (the 2-D sets), and
    :func:`sliced_score_matching_loss` above that.

    Args:
        score_net: ``s(x, sigma[batch]) -> [batch, ...]``.
        x: ``[batch, ...]`` samples of ``p_sigma``.
        sigma: the noise level(s) the network is evaluated at, scalar or ``[batch]``.

    Returns:
        the batch mean of ``tr(grad_x s) + 1/2 ||s||^2`` (a scalar with a graph).
    """
    x = x.detach().requires_grad_(True)
    score = score_net(x, _sigma_batch(sigma, x))
    flat = score.reshape(x.shape[0], -1)
    trace = torch.zeros(x.shape[0], dtype=score.dtype, device=score.device)
    for i in range(flat.shape[1]):
        # Samples are independent, so the gradient of sum_b s_i(x_b) w.r.t. x holds each
        # sample's own d s_i / d x (row b); its i-th feature is the diagonal entry.
        (grad,) = torch.autograd.grad(flat[:, i].sum(), x, create_graph=True)
        trace = trace + grad.reshape(x.shape[0], -1)[:, i]
    return (trace + 0.5 * (flat**2).sum(1)).mean()


def sliced_score_matching_loss(
    score_net: ScoreFn,
    x: torch.Tensor,
    sigma: torch.Tensor | float,
    n_projections: int = 1,
    generator: torch.Generator | None = None,
    variance_reduction: bool = True,
) -> torch.Tensor:
    """Sliced score matching (Song, Garg, Shi & Ermon 2019): SSM (eq. 7) or SSM-VR (eq. 8).

    ``J(theta) = E_x E_v[ v^T grad_x(v^T s(x)) + 1/2 (v^T s(x))^2 ]`` with standard-normal
    projections ``v``. With ``variance_reduction`` (SSM-VR) the second term is replaced by its
    exact expectation over ``v``, ``1/2 ||s(x)||^2`` (``E[v v^T] = I``). Both are unbiased for
    Hyvarinen's objective: ``E_v[v^T A v] = tr(A)``.

    Each of ``n_projections`` directions is drawn per sample, and ``x`` is repeated once per
    direction (the paper's implementation), so one backward pass serves them all.

    Args:
        score_net: ``s(x, sigma[batch]) -> [batch, ...]``.
        x: ``[batch, ...]`` samples of ``p_sigma``.
        sigma: the noise level(s), scalar or ``[batch]``.
        n_projections: directions ``v`` per sample (``M`` in the paper).
        generator: torch generator for ``v``.
        variance_reduction: SSM-VR (``True``) or plain SSM.

    Returns:
        the mean over samples and directions (a scalar with a graph).
    """
    check_int("n_projections", n_projections, minimum=1)
    sigma = _sigma_batch(sigma, x)
    xs = x.detach().repeat(n_projections, *([1] * (x.ndim - 1))).requires_grad_(True)
    sigmas = sigma.repeat(n_projections)
    v = torch.randn(xs.shape, generator=generator, dtype=xs.dtype, device=xs.device)
    score = score_net(xs, sigmas)
    v_score = (v * score).reshape(xs.shape[0], -1).sum(1)
    (grad,) = torch.autograd.grad(v_score.sum(), xs, create_graph=True)
    v_jac_v = (grad * v).reshape(xs.shape[0], -1).sum(1)
    if variance_reduction:
        second = 0.5 * (score**2).reshape(xs.shape[0], -1).sum(1)
    else:
        second = 0.5 * v_score**2
    return (v_jac_v + second).mean()


def denoising_score_matching_loss(
    score_net: ScoreFn,
    x: torch.Tensor,
    sigmas: torch.Tensor | list[float],
    generator: torch.Generator | None = None,
    *,
    levels: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """NCSN's multi-level denoising score matching (Song & Ermon 2019, eq. 5-6).

    ``L = E_i E_x E_z[ lambda(sigma_i) 1/2 ||s(x + sigma_i z, sigma_i) + z / sigma_i||^2 ]``
    with ``lambda(sigma) = sigma^2``, i.e. ``1/2 ||sigma_i s + z||^2``: the target is the
    score of the Gaussian kernel, ``-(x_tilde - x) / sigma^2 = -z / sigma``, and the weighting
    makes every level's term of order one. Each sample gets its own level, drawn uniformly.

    Args:
        score_net: ``s(x, sigma[batch]) -> [batch, ...]``.
        x: ``[batch, ...]`` clean data.
        sigmas: the ``L`` noise levels ``sigma_1 > ... > sigma_L`` (any order works).
        generator: torch generator for the levels and the noise, drawn in that order.
        levels: optional ``[batch]`` level indices instead of drawn ones.
        noise: optional standard-normal ``z`` of ``x``'s shape instead of drawn noise.

    Returns:
        the batch mean of the per-sample terms (summed over features).
    """
    sigmas = torch.as_tensor(sigmas, dtype=x.dtype, device=x.device).flatten()
    if sigmas.numel() < 1 or not (sigmas > 0).all():
        raise ConfigError(f"sigmas must be a non-empty list of values > 0, got {sigmas.tolist()}")
    batch = x.shape[0]
    if levels is None:
        levels = torch.randint(
            len(sigmas), (batch,), generator=generator, device=torch.device("cpu")
        ).to(x.device)
    elif levels.shape != (batch,) or levels.min() < 0 or levels.max() >= len(sigmas):
        raise ConfigError(f"levels must be {batch} indices in [0, {len(sigmas) - 1}]")
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    elif noise.shape != x.shape:
        raise ConfigError(f"noise must have x's shape {tuple(x.shape)}, got {tuple(noise.shape)}")
    sigma = sigmas[levels]
    s = _per_sample(sigma, x)
    score = score_net(x + s * noise, sigma)
    return 0.5 * ((s * score + noise) ** 2).reshape(batch, -1).sum(1).mean()


# ----- training and evaluation helpers -------------------------------------------------------


def fit_score(
    score_net: nn.Module,
    data: torch.Tensor | Callable[..., torch.Tensor],
    loss: str = "dsm",
    sigma: float | None = None,
    sigmas: torch.Tensor | list[float] | None = None,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    n_projections: int = 1,
) -> list[float]:
    """Train ``score_net`` with one of :data:`LOSSES` by Adam for ``steps`` steps (seeded).

    A small loop for tests and benchmarks; the diffusion trainer lives in ``trainer.py``.

    Args:
        score_net: the network ``s(x, sigma)``; trained in place, in float32.
        data: a ``[N, ...]`` tensor (minibatches drawn with replacement) or a sampler
            ``data(n, generator) -> [n, ...]`` such as ``GaussianMixture.sample``.
        loss: ``exact | sliced | sliced-vr`` (at the fixed level ``sigma``: each batch is
            perturbed ``x + sigma z`` and the loss is taken on it) or ``dsm`` (over ``sigmas``).
        sigma: the fixed noise level of the exact and sliced losses.
        sigmas: the levels of ``dsm``.
        steps, batch_size, lr: the optimisation.
        seed: seeds the minibatches, perturbations and projections (not the initialisation,
            which is the caller's).
        n_projections: projections per sample of the sliced losses.

    Returns:
        the loss at every step.
    """
    check_choice("loss", loss, LOSSES)
    check_int("steps", steps, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_positive("lr", lr)
    if loss == "dsm":
        if sigmas is None:
            raise ConfigError("loss 'dsm' needs sigmas, a list of noise levels > 0")
    elif sigma is None:
        raise ConfigError(f"loss {loss!r} needs sigma, a fixed noise level > 0")
    else:
        check_positive("sigma", sigma)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(score_net.parameters(), lr=lr)
    # Cosine decay to zero: the last steps average out minibatch noise, which otherwise
    # sets the floor of the score error at a fixed learning rate.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    history = []
    for _ in range(steps):
        if isinstance(data, torch.Tensor):
            index = torch.randint(data.shape[0], (batch_size,), generator=generator)
            x = data[index]
        else:
            x = data(batch_size, generator)
        x = x.to(torch.float32)
        if loss == "dsm":
            value = denoising_score_matching_loss(score_net, x, sigmas, generator)
        else:
            x = x + sigma * torch.randn(x.shape, generator=generator)
            if loss == "exact":
                value = exact_score_matching_loss(score_net, x, sigma)
            else:
                value = sliced_score_matching_loss(
                    score_net,
                    x,
                    sigma,
                    n_projections,
                    generator,
                    variance_reduction=loss == "sliced-vr",
                )
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        schedule.step()
        history.append(float(value.detach()))
    return history


def relative_score_error(
    score_net: ScoreFn, oracle: Any, x: torch.Tensor, sigma: torch.Tensor | float
) -> float:
    """``E||s_theta(x, sigma) - s*(x, sigma)||^2 / E||s*(x, sigma)||^2`` over the points ``x``.

    ``oracle`` has an exact ``score(x, sigma)``, e.g. a
    :class:`~driftlab.diffusion.GaussianMixture`; take ``x`` from ``p_sigma`` to measure the
    error where the score matching objectives weigh it.
    """
    sigma_batch = _sigma_batch(sigma, x.to(torch.float64))
    exact = oracle.score(x.to(torch.float64), sigma_batch)
    params = list(score_net.parameters()) if isinstance(score_net, nn.Module) else []
    dtype = params[0].dtype if params else x.dtype
    with torch.no_grad():
        learned = score_net(x.to(dtype), sigma_batch.to(dtype)).to(torch.float64)
    return float(((learned - exact) ** 2).sum() / (exact**2).sum())
