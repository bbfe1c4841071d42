"""From networks to denoisers: preconditioning and prediction types (EDM sec. 5, Table 1).

Every model here is used through a denoiser ``D(x_hat; sigma) -> x0_hat`` on the unscaled
input ``x_hat = x / s(t) = x0 + sigma n``. A network ``F`` becomes one through
EDM eq. 7,

    D(x_hat; sigma) = c_skip(sigma) x_hat + c_out(sigma) F(c_in(sigma) x_hat; c_noise(sigma)),

and training it is EDM eq. 8: regress ``F`` on ``(x0 - c_skip x_hat) / c_out`` with weight
``lambda(sigma) c_out(sigma)^2``. Each prediction type (x0, eps, Salimans & Ho's v, the Flow
Matching velocity ``eps - x0``, the score) is one choice of ``(c_skip, c_out)``; each
formulation fixes ``c_in = s(t)`` (the network sees the formulation's own ``x_t``) and
``c_noise`` (its own time). So a network trained under any formulation and prediction type
is a denoiser that any sampler and formulation can use.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from driftlab.core.config import check_choice, check_positive
from driftlab.diffusion.formulations import Formulation, _as_tensor, _expand_like, get_formulation

Coef = Callable[[torch.Tensor], torch.Tensor]

PREDICTIONS = ("x0", "eps", "v", "velocity", "score")


@dataclass(frozen=True)
class Preconditioning:
    """The four functions of EDM eq. 7, each mapping sigma ``[batch]`` to ``[batch]``."""

    c_skip: Coef
    c_out: Coef
    c_in: Coef
    c_noise: Coef
    name: str = ""


def _ones(sigma: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(sigma)


def prediction_coefficients(
    prediction: str, sigma: torch.Tensor, scale: torch.Tensor | float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out)`` with ``D = c_skip x_hat + c_out * output`` for a prediction type.

    - ``x0``: ``D = output``.
    - ``eps``: ``x_hat = x0 + sigma eps`` gives ``D = x_hat - sigma output``.
    - ``velocity`` (Flow Matching, ``eps - x0``): ``D = (x_hat - sigma output) / (1 + sigma)``.
    - ``v`` (Salimans & Ho 2022, ``alpha eps - sigma_t x0`` with the variance-preserving
      ``alpha = 1/sqrt(1+sigma^2)``, ``sigma_t = sigma alpha``):
      ``D = x_hat / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) output``.
    - ``score`` of the formulation's ``x_t = s x_hat``: ``D = x_hat + sigma^2 s output``.
    """
    check_choice("prediction", prediction, PREDICTIONS)
    sigma = _as_tensor(sigma)
    if prediction == "x0":
        return torch.zeros_like(sigma), torch.ones_like(sigma)
    if prediction == "eps":
        return torch.ones_like(sigma), -sigma
    if prediction == "velocity":
        return 1 / (1 + sigma), -sigma / (1 + sigma)
    if prediction == "v":
        return 1 / (1 + sigma**2), -sigma / torch.sqrt(1 + sigma**2)
    return torch.ones_like(sigma), sigma**2 * _as_tensor(scale)


def to_denoised(
    prediction: str,
    output: torch.Tensor,
    x_hat: torch.Tensor,
    sigma: torch.Tensor | float,
    scale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Convert a model output of type ``prediction`` to the denoised ``x0_hat``."""
    c_skip, c_out = prediction_coefficients(prediction, _as_tensor(sigma), scale)
    return _expand_like(c_skip, x_hat) * x_hat + _expand_like(c_out, x_hat) * output


def from_denoised(
    prediction: str,
    denoised: torch.Tensor,
    x_hat: torch.Tensor,
    sigma: torch.Tensor | float,
    scale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Inverse of :func:`to_denoised`: the output of type ``prediction`` giving ``denoised``."""
    c_skip, c_out = prediction_coefficients(prediction, _as_tensor(sigma), scale)
    return (denoised - _expand_like(c_skip, x_hat) * x_hat) / _expand_like(c_out, x_hat)


def edm_preconditioning(sigma_data: float = 0.5) -> Preconditioning:
    """EDM Table 1: ``c_skip = sd^2/(s^2+sd^2)``, ``c_out = s sd / sqrt(s^2+sd^2)``,
    ``c_in = 1/sqrt(s^2+sd^2)``, ``c_noise = ln(s)/4``."""
    sd = check_positive("sigma_data", sigma_data)
    return Preconditioning(
        c_skip=lambda s: sd**2 / (s**2 + sd**2),
        c_out=lambda s: s * sd / torch.sqrt(s**2 + sd**2),
        c_in=lambda s: 1 / torch.sqrt(s**2 + sd**2),
        c_noise=lambda s: 0.25 * torch.log(s),
        name="edm",
    )


def vp_preconditioning(formulation: Formulation | None = None, M: int = 1000) -> Preconditioning:
    """EDM Table 1, VP: ``c_skip = 1``, ``c_out = -sigma``, ``c_in = 1/sqrt(sigma^2+1)``,
    ``c_noise = (M - 1) t(sigma)`` (an eps-prediction network on DDPM's time index)."""
    vp = formulation if formulation is not None else get_formulation("vp")
    return Preconditioning(
        c_skip=_ones,
        c_out=lambda s: -s,
        c_in=lambda s: 1 / torch.sqrt(s**2 + 1),
        c_noise=lambda s: (M - 1) * vp.sigma_inv(s),
        name="vp",
    )


def ve_preconditioning() -> Preconditioning:
    """EDM Table 1, VE: ``c_skip = 1``, ``c_out = sigma``, ``c_in = 1``,
    ``c_noise = ln(sigma / 2)``."""
    return Preconditioning(
        c_skip=_ones,
        c_out=lambda s: s,
        c_in=_ones,
        c_noise=lambda s: torch.log(0.5 * s),
        name="ve",
    )


def fm_preconditioning() -> Preconditioning:
    """Flow Matching: the network predicts the velocity ``eps - x0`` from ``x_t = x_hat/(1+sigma)``
    at time ``t = sigma/(1+sigma)``, so ``D = x_t - t v``."""
    return Preconditioning(
        c_skip=lambda s: 1 / (1 + s),
        c_out=lambda s: -s / (1 + s),
        c_in=lambda s: 1 / (1 + s),
        c_noise=lambda s: s / (1 + s),
        name="fm",
    )


def prediction_preconditioning(
    formulation: Formulation | str, prediction: str, time_scale: float = 1.0
) -> Preconditioning:
    """A network that sees the formulation's ``x_t = s(t) x_hat`` and ``time_scale * t`` and
    predicts ``prediction`` (``x0 | eps | v | velocity | score``)."""
    formulation = get_formulation(formulation)
    check_choice("prediction", prediction, PREDICTIONS)

    def c_in(sigma: torch.Tensor) -> torch.Tensor:
        return formulation.scale(formulation.sigma_inv(sigma)).to(sigma.dtype)

    return Preconditioning(
        c_skip=lambda s: prediction_coefficients(prediction, s, c_in(s))[0],
        c_out=lambda s: prediction_coefficients(prediction, s, c_in(s))[1],
        c_in=c_in,
        c_noise=lambda s: (time_scale * formulation.sigma_inv(s)).to(s.dtype),
        name=f"{formulation.name}-{prediction}",
    )


PRECONDITIONINGS: dict[str, Callable[[], Preconditioning]] = {
    "edm": edm_preconditioning,
    "vp": vp_preconditioning,
    "ve": ve_preconditioning,
    "fm": fm_preconditioning,
}


def get_preconditioning(name: str, **options: float) -> Preconditioning:
    """EDM Table 1's preconditioning by name: ``"edm" | "vp" | "ve" | "fm"``."""
    check_choice("preconditioning", name, PRECONDITIONINGS)
    return PRECONDITIONINGS[name](**options)


@dataclass(frozen=True, slots=True)
class Level:
    """A denoiser at one noise level ``sigma`` in the affine form of EDM eq. 7,

        D(x_hat) = c_skip x_hat + c_out G(c_in x_hat),

    with ``G`` the network with ``c_noise`` applied, taking the scaled input ``u = c_in x_hat``;
    any other denoiser is the case ``c_skip = 0``, ``c_out = c_in = 1``, ``G = D(., sigma)``.
    Samplers that combine ``x_hat`` and ``D`` linearly fold ``c_skip`` and ``c_out`` into
    their own coefficients (:meth:`step`), and those that can carry their state as the
    network's scaled input fold ``c_in`` too (:meth:`scaled_coefficients`): each fold saves a
    tensor op per network call.

    ``net_dtype`` is the network's dtype when ``G`` casts its input to it (a float32 network
    under a float64 sampler state), else None. When set, the cast gives the network a new
    tensor on every call, so a sampler that reuses its own memory need not copy the input.
    """

    sigma: float
    G: Callable[..., torch.Tensor]
    c_skip: float = 0.0
    c_out: float = 1.0
    c_in: float = 1.0
    net_dtype: torch.dtype | None = None

    def F(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output ``G(c_in x)`` for the unscaled ``x_hat``."""
        return self.G(x if self.c_in == 1.0 else x * self.c_in)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``D(x)``."""
        out = self.G(x if self.c_in == 1.0 else x * self.c_in)  # F(x), one call fewer
        if self.c_skip == 0.0 and self.c_out == 1.0:
            return out if out.dtype == x.dtype else out.to(x.dtype)
        # Unit coefficients (c_skip of eps, VE and score models) cost no op; add() promotes
        # the network's output to x's dtype inside the kernel.
        return torch.add(x if self.c_skip == 1.0 else x * self.c_skip, out, alpha=self.c_out)

    def step(self, x: torch.Tensor, a: float, b: float) -> torch.Tensor:
        """``a x + b D(x)`` as ``(a + b c_skip) x + b c_out F(x)``."""
        return combine(x, a + b * self.c_skip, self.F(x), b * self.c_out)

    def scaled_coefficients(self, a: float, b: float, scale: float) -> tuple[float, float]:
        """``(c_u, c_G)`` with ``scale (a x + b D(x)) = c_u u + c_G G(u)`` for ``x = u / c_in``
        given as the network's input ``u``: a sampler whose next level has ``c_in = scale``
        keeps its state as ``u``, saves the scaling op of every network call, and computes
        these two numbers once per grid."""
        return scale * (a + b * self.c_skip) / self.c_in, scale * b * self.c_out


# Tensor.float() and its kin skip Tensor.to()'s overload resolution, a third of what a cast
# of a small tensor costs; a sampler casts its state for the network on every call.
_CASTS: dict[torch.dtype, Callable[[torch.Tensor], torch.Tensor]] = {
    torch.float32: torch.Tensor.float,
    torch.float64: torch.Tensor.double,
    torch.float16: torch.Tensor.half,
    torch.bfloat16: torch.Tensor.bfloat16,
}


def caster(dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> x.to(dtype)`` (``x`` itself when it has that dtype), in its cheapest form."""
    cast = _CASTS.get(dtype)
    if cast is None:

        def cast(x: torch.Tensor) -> torch.Tensor:
            return x.to(dtype=dtype)

    return cast


def combine(x: torch.Tensor, a: float, out: torch.Tensor, b: float) -> torch.Tensor:
    """``a x + b out`` in ``x``'s dtype in one or two ops."""
    if a == 1.0:
        return torch.add(x, out, alpha=b)
    # In place on the new product: a mixed-dtype add_ is cheaper than add().
    return x.mul(a).add_(out, alpha=b)


def _dtype_of(net: nn.Module) -> torch.dtype:
    """The dtype of ``net``'s first parameter in ``parameters()``' order (float32 without
    parameters). Walked by hand: ``parameters()``' generator machinery costs a microsecond,
    which a sampler call on a small batch notices."""
    return _first_dtype(net) or torch.float32


def _first_dtype(module: nn.Module) -> torch.dtype | None:
    for param in module._parameters.values():
        if param is not None:
            return param.dtype
    for child in module._modules.values():
        if child is not None and (dtype := _first_dtype(child)) is not None:
            return dtype
    return None


class Levels(list):
    """The :class:`Level` objects of one grid, with ``plans``: numbers that samplers derive
    from them (per sampler and time grid), kept as long as the levels are."""

    def __init__(self, levels: Iterable[Level] = ()) -> None:
        super().__init__(levels)
        self.plans: dict[Any, Any] = {}


# Denoiser.at_levels' results per denoiser (held weakly) and per grid.
_LEVELS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Levels]] = weakref.WeakKeyDictionary()


class Denoiser(nn.Module):
    """A network ``net(x_in, c_noise, **cond)`` wrapped into ``D(x_hat, sigma, **cond)``.

    The network runs in its own dtype; the denoiser accepts and returns the caller's dtype
    (samplers keep their state in float64, as NVlabs/edm does).
    """

    def __init__(self, net: nn.Module, preconditioning: Preconditioning | str = "edm") -> None:
        super().__init__()
        self.net = net
        if isinstance(preconditioning, str):
            preconditioning = get_preconditioning(preconditioning)
        self.preconditioning = preconditioning

    def coefficients(
        self, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.preconditioning
        return p.c_skip(sigma), p.c_out(sigma), p.c_in(sigma), p.c_noise(sigma)

    def _net_dtype(self) -> torch.dtype:
        return _dtype_of(self.net)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        dtype = self._net_dtype()
        raw = self.net((_expand_like(c_in, x) * x).to(dtype), c_noise.to(dtype), **cond)
        return _expand_like(c_skip, x) * x + _expand_like(c_out, x) * raw.to(x.dtype)

    def at_levels(self, sigmas: Sequence[float], like: torch.Tensor) -> Levels:
        """This denoiser at each noise level ``sigmas[i]`` as a :class:`Level`, for inputs
        shaped and typed like ``like``; each equals ``self(x_hat, sigma_i)`` up to rounding.

        The preconditioning of the whole grid is computed here in one go, as diffusers'
        schedulers precompute their timesteps in ``set_timesteps``: at one level ``c_skip``,
        ``c_out`` and ``c_in`` are numbers, and a call of ``F`` costs the network and one or
        two small tensor ops. The levels are kept for the next call with the same grid, batch
        size and dtype on the same network and preconditioning objects (samplers ask again
        on every call), so only the first call pays for them.
        """
        net = self.net
        dtype = _dtype_of(net)
        # The key holds the network and preconditioning objects, not their ids, so that an
        # id is not reused while its levels are kept.
        key = (tuple(sigmas), like.shape[0], like.dtype, like.device, net, dtype)
        key += (self.preconditioning,)
        cache = _LEVELS.get(self)
        if cache is None:
            cache = _LEVELS[self] = {}
        levels = cache.get(key)
        if levels is None:
            if len(cache) >= 8:  # a sweep over many grids does not pile up levels
                cache.clear()
            levels = cache[key] = self._make_levels(list(sigmas), like, net, dtype)
        return levels

    def _make_levels(
        self, sigmas: list[float], like: torch.Tensor, net: nn.Module, dtype: torch.dtype
    ) -> Levels:
        sigma = torch.tensor(sigmas, dtype=like.dtype, device=like.device)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        # The network gets c_noise as forward() gives it: a contiguous [batch] tensor.
        c_noise = c_noise.to(dtype).expand(sigma.shape)
        c_noise = c_noise[:, None].expand(len(sigmas), like.shape[0]).contiguous()
        cast = caster(dtype) if like.dtype != dtype else None

        def numbers(coef: torch.Tensor) -> list[float]:
            values = coef.to(like.dtype).tolist()  # a constant comes back as one number
            return values if isinstance(values, list) else [values] * len(sigmas)

        def network(c_noise: torch.Tensor) -> Callable[..., torch.Tensor]:
            # The closure holds the network, not the denoiser, so that the cache of levels
            # (keyed weakly on the denoiser) does not keep the denoiser alive.
            def G(u: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
                return net(u, c_noise, **cond)

            def G_cast(u: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
                return net(cast(u), c_noise, **cond)

            return G if cast is None else G_cast

        return Levels(
            Level(sig, network(noise), skip, out, scale, None if cast is None else dtype)
            for sig, skip, out, scale, noise in zip(
                sigmas,
                numbers(c_skip),
                numbers(c_out),
                numbers(c_in),
                c_noise.unbind(0),
                strict=True,
            )
        )

    def training_target(
        self, x0: torch.Tensor, x_hat: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """EDM eq. 8: the network's regression target ``(x0 - c_skip x_hat) / c_out`` and the
        factor ``c_out^2`` that turns a denoiser loss weight into the network's."""
        c_skip, c_out, _, _ = self.coefficients(sigma)
        target = (x0 - _expand_like(c_skip, x0) * x_hat) / _expand_like(c_out, x0)
        return target, c_out**2


def score_to_denoiser(score_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Wrap a score function ``score(x_hat, sigma)`` into a denoiser (Tweedie's formula)."""

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        return to_denoised("score", score_fn(x, sigma, **cond), x, sigma)

    return denoiser


__all__ = [
    "PREDICTIONS",
    "Denoiser",
    "Level",
    "Levels",
    "Preconditioning",
    "edm_preconditioning",
    "fm_preconditioning",
    "from_denoised",
    "get_preconditioning",
    "prediction_coefficients",
    "prediction_preconditioning",
    "score_to_denoiser",
    "to_denoised",
    "ve_preconditioning",
    "vp_preconditioning",
]
