"""Exact log-likelihood through the probability-flow ODE (Song et al. 2021, sec. 4.3, App. D.2).

Along the ODE ``dx/dsigma = (x - D(x; sigma)) / sigma`` (EDM eq. 4 on ``x_hat``) the density
obeys the instantaneous change of variables (Chen et al. 2018):
``d log p(x(sigma); sigma) / dsigma = -div_x (dx/dsigma)``. Integrating from the data
(``sigma_min``) to ``sigma_max``, where ``p`` is ``N(0, sigma_max^2 I)``,

    log p_0(x) = log N(x(sigma_max); 0, sigma_max^2 I) + int div_x (dx/dsigma) dsigma.

The integral runs in ``u = log sigma``, where the vector field ``x - D(x; e^u)`` is smooth
at every scale. The ODE is the same in every formulation's coordinates (they differ by the
time change and the scale ``s``, which cancels at ``t = 0`` where ``s = 1``), so the
formulation only supplies the default noise interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.integrate import solve_ivp

from driftlab.core.config import ConfigError, check_choice, check_int, check_positive
from driftlab.diffusion.formulations import Formulation, get_formulation

DenoiserFn = Callable[..., torch.Tensor]


def _divergence_exact(field: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Trace of the Jacobian, one backward pass per dimension (exact, for small ``d``)."""
    flat_field = field.reshape(field.shape[0], -1)
    div = torch.zeros(field.shape[0], dtype=x.dtype)
    for j in range(flat_field.shape[1]):
        (grad,) = torch.autograd.grad(flat_field[:, j].sum(), x, retain_graph=True)
        div = div + grad.reshape(grad.shape[0], -1)[:, j]
    return div


def _divergence_hutchinson(
    field: torch.Tensor, x: torch.Tensor, probes: torch.Tensor
) -> torch.Tensor:
    """Hutchinson's estimator ``E[eps^T J eps]`` averaged over the fixed ``probes``."""
    div = torch.zeros(field.shape[0], dtype=x.dtype)
    for eps in probes:
        (grad,) = torch.autograd.grad((field * eps).sum(), x, retain_graph=True)
        div = div + (grad * eps).reshape(grad.shape[0], -1).sum(1)
    return div / probes.shape[0]


def log_likelihood(
    denoiser: DenoiserFn,
    x: torch.Tensor,
    formulation: Formulation | str = "edm",
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    divergence: str = "auto",
    n_probes: int = 1,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    method: str = "RK45",
    generator: torch.Generator | None = None,
    cond: dict[str, Any] | None = None,
) -> torch.Tensor:
    """``log p(x)`` in nats per sample (summed over dimensions), shape ``[batch]``.

    Args:
        denoiser: ``D(x_hat, sigma[batch], **cond) -> x0_hat``.
        x: data ``[batch, ...]``.
        formulation: supplies the default ``sigma_min`` / ``sigma_max``.
        divergence: ``"exact"`` (one backward pass per dimension), ``"hutchinson"``
            (``n_probes`` Rademacher probes, fixed over the solve) or ``"auto"`` (exact up to
            16 dimensions).
        rtol, atol, method: passed to :func:`scipy.integrate.solve_ivp`.
    """
    formulation = get_formulation(formulation)
    check_choice("divergence", divergence, ("auto", "exact", "hutchinson"))
    check_int("n_probes", n_probes, minimum=1)
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    lo = formulation.sigma_min if sigma_min is None else check_positive("sigma_min", sigma_min)
    hi = formulation.sigma_max if sigma_max is None else check_positive("sigma_max", sigma_max)
    if not lo < hi:
        raise ConfigError(f"sigma_min must be < sigma_max, got {lo} >= {hi}")
    if not isinstance(x, torch.Tensor) or x.ndim < 1:
        raise ConfigError("x must be a tensor of shape [batch, ...]")
    shape, batch = x.shape, x.shape[0]
    dim = x[0].numel()
    if divergence == "auto":
        divergence = "exact" if dim <= 16 else "hutchinson"
    probes = None
    if divergence == "hutchinson":
        signs = torch.randint(0, 2, (n_probes, *shape), generator=generator)
        probes = (2 * signs - 1).to(torch.float64)
    cond = dict(cond or {})

    def rhs(u: float, state: np.ndarray) -> np.ndarray:
        xs = torch.from_numpy(state[: batch * dim]).reshape(shape).requires_grad_(True)
        sigma = torch.full((batch,), math.exp(u), dtype=torch.float64)
        with torch.enable_grad():
            field = xs - denoiser(xs, sigma, **cond).to(torch.float64)
            if probes is None:
                div = _divergence_exact(field, xs)
            else:
                div = _divergence_hutchinson(field, xs, probes)
        out = np.empty_like(state)
        out[: batch * dim] = field.detach().reshape(-1).numpy()
        out[batch * dim :] = div.detach().numpy()
        return out

    start = np.concatenate([x.detach().to(torch.float64).reshape(-1).numpy(), np.zeros(batch)])
    solution = solve_ivp(
        rhs, (math.log(lo), math.log(hi)), start, method=method, rtol=rtol, atol=atol
    )
    if not solution.success:
        raise RuntimeError(f"probability-flow ODE solve failed: {solution.message}")
    end = torch.from_numpy(solution.y[:, -1])
    x_end = end[: batch * dim].reshape(batch, dim)
    delta_logp = end[batch * dim :]
    prior = -0.5 * (x_end**2).sum(1) / hi**2 - dim * (math.log(hi) + 0.5 * math.log(2 * math.pi))
    return (prior + delta_logp).to(x.dtype if x.is_floating_point() else torch.float64)


def bits_per_dim(log_prob: torch.Tensor, dim: int) -> torch.Tensor:
    """Convert nats per sample to bits per dimension: ``-log p / (dim ln 2)``.

    For data quantised to bins of width ``w`` add ``log2(1/w)`` to get the discrete
    bits per dimension of a dequantised model.
    """
    check_int("dim", dim, minimum=1)
    return -log_prob / (dim * math.log(2.0))
