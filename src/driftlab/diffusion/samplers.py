"""Samplers on a denoiser: probability-flow ODE, reverse SDE and Langevin dynamics.

Every sampler has one signature and works on any denoiser ``D(x_hat, sigma)`` and any
formulation, so a model of one formulation can be sampled in another's coordinates.
Samplers are pure functions over a precomputed time grid (no stateful schedulers): the
grid's coefficients are Python floats computed once (and kept for a formulation object
sampled again with the same steps), each sampler's per-step numbers are derived from them
once (and kept with the denoiser's levels, see :func:`_plan`), so a step costs its
denoiser call and a tensor op or two. Euler, Heun, DPM-Solver++(2M) and DDIM (DDPM too)
are linear in stacked rows of their state (with a row of fresh noise where DDIM draws it),
and a step of theirs is one matrix product (:mod:`~driftlab.diffusion.stacked`).

The denoiser is taken once per call at every noise level of the grid, as a
:class:`~driftlab.diffusion.denoisers.Level` ``D(x_hat) = c_skip x_hat + c_out F(x_hat)``;
a denoiser that offers ``at_levels(sigmas, like)`` (driftlab's ``Denoiser``) gives them with
its preconditioning split out and computed for the whole grid at once, so that a sampler
step ``a x_hat + b D`` folds ``c_skip`` and ``c_out`` into ``a`` and ``b``. The state is
float64 by default, as in NVlabs/edm.

ODE samplers (``euler``, ``heun``, ``dpmpp-2m``) and ``edm-stochastic`` integrate in the
formulation's own coordinates ``x = s(t) x_hat``; ``ddim``, ``ddpm``, ``pc`` and
``annealed-langevin`` are written on ``x_hat`` and sigma alone (they are invariant to ``s``).
The ODE is EDM eq. 4 in the form of EDM Algorithm 1:

    dx/dt = (sigma'/sigma + s'/s) x - (sigma' s / sigma) D(x / s; sigma).
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from driftlab.core.config import (
    ConfigError,
    check_choice,
    check_in_range,
    check_int,
    check_nonnegative,
    check_positive,
)
from driftlab.diffusion.denoisers import Level, caster, combine
from driftlab.diffusion.formulations import Formulation, get_formulation
from driftlab.diffusion.stacked import LinearPlan, linear_plan, run_linear

DenoiserFn = Callable[..., torch.Tensor]


@dataclass
class Grid:
    """A time grid ``t_0 > ... > t_n = 0`` with every coefficient as Python floats."""

    t: list[float]
    sigma: list[float]
    s: list[float]
    ds: list[float]  # s'(t)
    dsigma: list[float]  # sigma'(t)
    # Per-sampler coefficients derived from the grid, computed on first use (grids are reused).
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n(self) -> int:
        return len(self.t) - 1

    def ode_coefficients(self, i: int) -> tuple[float, float]:
        """``(alpha, beta)`` with ``dx/dt = alpha x + beta D`` at grid point ``i`` (sigma > 0)."""
        sig, s = self.sigma[i], self.s[i]
        return self.dsigma[i] / sig + self.ds[i] / s, -self.dsigma[i] * s / sig


def make_grid(formulation: Formulation, steps: int, sigmas: Any = None) -> Grid:
    """The formulation's own discretisation, or the given decreasing ``sigmas`` mapped to its
    times through ``sigma_inv`` (a final 0 is appended when missing)."""
    if sigmas is None:
        t = formulation.timesteps(steps)
    else:
        sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
        if sig.numel() < 1 or (sig < 0).any():
            raise ConfigError("sigmas must be a non-empty sequence of values >= 0")
        if sig[-1] != 0:
            sig = torch.cat([sig, torch.zeros(1, dtype=torch.float64)])
        if sig.numel() < 2 or not (sig[1:] < sig[:-1]).all():
            raise ConfigError("sigmas must be strictly decreasing")
        t = formulation.sigma_inv(sig)
        t[-1] = 0.0
    sigma = formulation.sigma(t)
    sigma[-1] = 0.0
    inner = t[:-1]
    # Derivatives are never needed at t = 0 (sigma = 0 ends every sampler); store 0 there.
    ds = torch.cat([formulation.scale_deriv(inner), torch.zeros(1, dtype=torch.float64)])
    dsigma = torch.cat([formulation.sigma_deriv(inner), torch.zeros(1, dtype=torch.float64)])
    return Grid(
        t=t.tolist(),
        sigma=sigma.tolist(),
        s=formulation.scale(t).tolist(),
        ds=ds.tolist(),
        dsigma=dsigma.tolist(),
    )


# Grids already built, per formulation object (held weakly) and per (steps, config()).
_GRIDS: weakref.WeakKeyDictionary[Formulation, dict[tuple, Grid]] = weakref.WeakKeyDictionary()


def _grid(formulation: Formulation, steps: int, sigmas: Any) -> Grid:
    """:func:`make_grid`, remembered for a formulation object sampled again with the same
    steps: building a grid costs some thirty small tensor ops, as much as a few steps of a
    small network. The key holds ``config()``, so a formulation changed in place gets a
    new grid; grids are only read by the samplers."""
    if sigmas is not None:
        return make_grid(formulation, steps, sigmas)
    grids = _GRIDS.setdefault(formulation, {})
    key = (steps, tuple(formulation.config().items()))
    if key not in grids:
        if len(grids) >= 16:  # a sweep over many step counts does not pile up grids
            grids.clear()
        grids[key] = make_grid(formulation, steps)
    return grids[key]


class _Run:
    """What one sampler call shares: the start, the denoiser at every noise level of the grid,
    the noise generator, the trajectory."""

    def __init__(
        self,
        denoiser: DenoiserFn,
        grid: Grid,
        noise: torch.Tensor,
        generator: torch.Generator | None,
        record: bool,
        cond: dict[str, Any],
        out_dtype: torch.dtype,
    ) -> None:
        self.denoiser = denoiser
        self.grid = grid
        self.noise = noise
        self.batch = noise.shape[0]
        self.dtype = noise.dtype
        self.out_dtype = out_dtype  # the samples' (the caller's noise's) dtype
        self.device = noise.device
        self.generator = generator
        self.cond = cond
        self.trajectory: list[torch.Tensor] | None = [] if record else None
        levels = self.given_levels = self._levels(grid.sigma[:-1], noise)  # the last sigma is 0
        plans = getattr(levels, "plans", None)
        if cond or plans is None:
            self.levels = self._bound(levels)
        else:  # without cond the bound levels depend on the levels alone: kept with them
            self.levels = plans.get("bound") or plans.setdefault("bound", self._bound(levels))

    def _bound(self, levels: list[Level]) -> list[Level]:
        """``levels`` with this call's ``cond`` given to the network. Every sampler starts at
        ``levels[0]`` or at an off-grid level (see :meth:`at`), so checking the output there
        checks the denoiser once per call."""
        first = self._bind(levels[0], check=True)
        if self.cond:
            levels = [self._bind(level, check=False) for level in levels]
        return [first, *levels[1:]]

    def _levels(self, sigmas: list[float], like: torch.Tensor) -> list[Level]:
        """``D(., sigma_i)`` for every noise level of the grid, made before the loop so that a
        step allocates no sigma tensor; a denoiser with ``at_levels(sigmas, like)``
        (driftlab's :class:`Denoiser`) gives them with its preconditioning split out."""
        at_levels = getattr(self.denoiser, "at_levels", None)
        if at_levels is not None:
            return at_levels(sigmas, like)
        rows = torch.tensor(sigmas, dtype=self.dtype, device=self.device)
        rows = rows[:, None].expand(-1, self.batch).contiguous().unbind(0)
        return [
            Level(sigma, functools.partial(self._call, row))
            for sigma, row in zip(sigmas, rows, strict=True)
        ]

    def _call(self, sigma: torch.Tensor, x_hat: torch.Tensor, **cond: Any) -> torch.Tensor:
        return self.denoiser(x_hat, sigma, **cond)

    def _bind(self, level: Level, check: bool) -> Level:
        """``level`` with this call's ``cond`` given to its network, and its output's shape
        checked if ``check``."""
        G = functools.partial(level.G, **self.cond) if self.cond else level.G
        if check:
            G = functools.partial(_checked, G)
        return Level(level.sigma, G, level.c_skip, level.c_out, level.c_in, level.net_dtype)

    def at(self, sigma: float) -> Level:
        """The denoiser at a noise level off the grid (EDM Algorithm 2's raised ``sigma_hat``)."""
        sig = torch.full((self.batch,), sigma, dtype=self.dtype, device=self.device)
        return self._bind(Level(sigma, functools.partial(self._call, sig)), check=True)

    def start(self, scale: float = 1.0) -> torch.Tensor:
        """``scale x_0``, the start ``x_0 = s(t_0) sigma(t_0) noise`` in any units (``1 / s``
        for ``x_hat``, ``c_in / s`` for the network's input) as one new tensor."""
        return torch.mul(self.noise, self.start_factor(scale))

    def start_factor(self, scale: float = 1.0) -> float:
        """The number that times the noise gives :meth:`start`."""
        return self.grid.s[0] * self.grid.sigma[0] * scale

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)

    def record(self, x: torch.Tensor, scale: float = 1.0) -> None:
        """Record the state ``scale * x`` in the formulation's coordinates ``x = s(t) x_hat``
        (the product is only formed when recording)."""
        if self.trajectory is not None:
            self.trajectory.append(x * scale if scale != 1.0 else x.clone())


def _checked(F: DenoiserFn, x_hat: torch.Tensor) -> torch.Tensor:
    out = F(x_hat)
    if not isinstance(out, torch.Tensor) or out.shape != x_hat.shape:
        shape = getattr(out, "shape", type(out).__name__)
        raise ConfigError(
            f"denoiser returned {shape} for input of shape {tuple(x_hat.shape)}; "
            "it must return a tensor of the input's shape"
        )
    return out


# ----- ODE samplers in the formulation's coordinates -----------------------------------------


def _next_scales(run: _Run) -> list[float]:
    """``c_in`` of the level after each step (1 after the last: the output is ``x_hat``)."""
    return [level.c_in for level in run.levels[1:]] + [1.0]


def _plan(run: _Run, name: Any, build: Callable[[_Run], Any]) -> Any:
    """The per-step numbers of sampler ``name`` on this run's grid and levels, from
    ``build(run)``.

    Building them is the Python arithmetic of the sampler's equations, about as costly per
    step as the step's tensor ops on a small batch. Levels that a denoiser keeps between
    calls (:meth:`Denoiser.at_levels`) keep the plans made on them too, per grid, so a call
    repeated with the same grid leaves each step its network call and one or two ops.
    """
    plans = getattr(run.given_levels, "plans", None)
    if plans is None:  # levels made for this call only
        return build(run)
    # A grid is a new object when it changes; holding it in the entry keeps its id unique.
    entry = plans.get((name, id(run.grid)))
    if entry is None or entry[0] is not run.grid:
        if len(plans) >= 16:  # a sweep over many grids does not pile up plans
            plans.clear()
        entry = plans[(name, id(run.grid))] = (run.grid, build(run))
    return entry[1]


def _euler_plan(run: _Run) -> LinearPlan:
    """Rows ``(u, F)``: the state ``u = c_in x_hat`` and the network's output. Per step
    ``u' = c_u u + c_G G(u)`` is the Euler step ``x' = x + h (alpha x + beta D)`` of
    ``x = s x_hat``, with ``c_in'`` of the next level folded in, and ``x' = (s' / c_in') u'``
    is recorded."""
    g = run.grid
    evaluations = []
    for i, (level, scale) in enumerate(zip(run.levels, _next_scales(run), strict=True)):
        alpha, beta = g.ode_coefficients(i)
        h = g.t[i + 1] - g.t[i]
        s_next = g.s[i + 1]
        # x_hat' = x' / s' with x = s x_hat.
        a, b = (1.0 + h * alpha) * g.s[i] / s_next, h * beta / s_next
        c_u, c_G = level.scaled_coefficients(a, b, scale)
        evaluations.append((i, 0, 1, [[c_u, c_G], [0.0, 0.0]], (0, s_next / scale)))
    start = [run.start_factor(run.levels[0].c_in / g.s[0]), 0.0]
    return linear_plan(run, start, evaluations)


def _euler(run: _Run) -> torch.Tensor:
    """Euler on the probability-flow ODE (EDM Algorithm 1 without the correction).

    The step ``x' = x + h (alpha x + beta D)`` is taken in the formulation's coordinates; the
    state is stored as the network's next input ``u = c_in x_hat`` (``x_hat = x / s``), which
    saves the scaling of every network input, and the step is one linear combination of
    ``u`` and the network's output, with coefficients from :func:`_euler_plan`, taken as one
    product on the stacked rows (:mod:`~driftlab.diffusion.stacked`).
    """
    return run_linear(run, _plan(run, "euler", _euler_plan), "euler")


# Heun's step on the state u = c_in x_hat: the predictor u' = c_u u + c_G G(u) and, when the
# step does not end at sigma = 0, the corrector u' <- c_u2 u' + c_G2 G'(u') + c_prev u.
_HeunStep = tuple[float, float, tuple[float, float, float] | None, float]


def _heun_step(
    run: _Run, i: int, level: Level, t_cur: float, s_cur: float, alpha: float, beta: float
) -> _HeunStep:
    """The numbers of Heun's step ``i`` from ``(t_cur, s_cur)`` (grid point ``i``, or the
    raised one of EDM Algorithm 2) with slope ``alpha x + beta D`` there.

    The trapezoidal corrector ``x + h/2 (d + d')`` is written with the predictor
    ``x' = x + h d`` as ``(x + x' + h d') / 2``, a linear combination of ``x``, ``x'`` and
    ``D(x')``; both are taken in units of the next level's input.
    """
    g = run.grid
    scale = run.levels[i + 1].c_in if i + 1 < g.n else 1.0
    h = g.t[i + 1] - t_cur
    s_next = g.s[i + 1]
    # Euler predictor x' = x + h d with the slope d = alpha x + beta D, x = s x_hat.
    c_u, c_G = level.scaled_coefficients(
        (1.0 + h * alpha) * s_cur / s_next, h * beta / s_next, scale
    )
    corrector = None
    if i + 1 < g.n:
        alpha2, beta2 = g.ode_coefficients(i + 1)
        c_u2, c_G2 = run.levels[i + 1].scaled_coefficients(
            0.5 * (1.0 + h * alpha2), 0.5 * h * beta2 / s_next, scale
        )
        corrector = (c_u2, c_G2, 0.5 * s_cur / s_next * scale / level.c_in)
    return c_u, c_G, corrector, s_next / scale


def _heun_plan(run: _Run) -> list[_HeunStep]:
    g = run.grid
    return [
        _heun_step(run, i, level, g.t[i], g.s[i], *g.ode_coefficients(i))
        for i, level in enumerate(run.levels)
    ]


_ZERO_ROWS = [[0.0] * 4] * 3


def _heun_linear_plan(run: _Run) -> LinearPlan:
    """Rows ``(u, F, u', F')``: the state, the network's output on it, the predictor and
    the network's output on that. The predictor's evaluation keeps ``u`` and forms
    ``u' = c_u u + c_G F``; the corrector's forms ``c_prev u + c_u2 u' + c_G2 F'``, the next
    state (:func:`_heun_step`). The last step, which ends at sigma = 0, has no corrector."""
    evaluations = []
    for i, (c_u, c_G, corrector, to_x) in enumerate(_heun_plan(run)):
        if corrector is None:
            evaluations.append((i, 0, 1, [[c_u, c_G, 0.0, 0.0], *_ZERO_ROWS], (0, to_x)))
            continue
        c_u2, c_G2, c_prev = corrector
        predictor = [[1.0, 0.0, 0.0, 0.0], _ZERO_ROWS[0], [c_u, c_G, 0.0, 0.0], _ZERO_ROWS[0]]
        evaluations.append((i, 0, 1, predictor, None))
        evaluations.append((i + 1, 2, 3, [[c_prev, 0.0, c_u2, c_G2], *_ZERO_ROWS], (0, to_x)))
    start = [run.start_factor(run.levels[0].c_in / run.grid.s[0]), 0.0, 0.0, 0.0]
    return linear_plan(run, start, evaluations)


def _churn_gamma(churn: dict[str, float], sigma: float, n: int) -> float:
    """EDM Algorithm 2's gamma at noise level ``sigma`` of an ``n``-step grid."""
    if churn["S_min"] <= sigma <= churn["S_max"]:
        return min(churn["S_churn"] / n, math.sqrt(2.0) - 1.0)
    return 0.0


def _heun(run: _Run, churn: dict[str, float] | None = None) -> torch.Tensor:
    """Heun's 2nd-order method, EDM Algorithm 1 (Algorithm 2 when ``churn`` is given), in
    general ``(s, sigma)`` form as in NVlabs/edm's ablation sampler.

    As in :func:`_euler`, the steps are those of ``x = s x_hat`` but the state is the
    network's input ``u = c_in x_hat``; :func:`_heun_step` gives each step's coefficients.
    Without churn (or where it raises no noise level) a step is two stacked-row products
    (:func:`_heun_linear_plan`); with churn the loop is written out, since a raised level
    has coefficients of its own.
    """
    g = run.grid
    formulation = churn.pop("formulation") if churn else None
    if not churn or not any(_churn_gamma(churn, sigma, g.n) > 0 for sigma in g.sigma[:-1]):
        return run_linear(run, _plan(run, "heun-linear", _heun_linear_plan), "heun")
    recording = run.trajectory is not None
    plan = _plan(run, "heun", _heun_plan)
    u = run.start(run.levels[0].c_in / g.s[0])
    for i, (level, step) in enumerate(zip(run.levels, plan, strict=True)):
        # EDM Algorithm 2, lines 4-6: raise the noise level to sigma_hat = (1 + gamma) sigma.
        sig_cur = g.sigma[i]
        gamma = _churn_gamma(churn, sig_cur, g.n)
        if gamma > 0:
            sig_hat = sig_cur * (1 + gamma)
            t_hat = float(formulation.sigma_inv(sig_hat))
            s_hat = float(formulation.scale(t_hat))
            std = math.sqrt(sig_hat**2 - sig_cur**2) * churn["S_noise"]
            x_hat = u / level.c_in
            u = torch.add(x_hat, run.randn_like(x_hat), alpha=std)
            ds = float(formulation.scale_deriv(t_hat))
            dsig = float(formulation.sigma_deriv(t_hat))
            alpha, beta = dsig / sig_hat + ds / s_hat, -dsig * s_hat / sig_hat
            level = run.at(sig_hat)  # c_in = 1: u is x_hat
            step = _heun_step(run, i, level, t_hat, s_hat, alpha, beta)
        c_u, c_G, corrector, to_x = step
        # The predictor, then the corrector (lines 7-11); combine() makes a new tensor, so
        # u, which the network may keep, is never written.
        u_next = combine(u, c_u, level.G(u), c_G)
        if corrector is not None:
            c_u2, c_G2, c_prev = corrector
            u_next = combine(u_next, c_u2, run.levels[i + 1].G(u_next), c_G2)
            u_next.add_(u, alpha=c_prev)
        u = u_next
        if recording:
            run.record(u, to_x)
    return u if g.s[-1] == 1.0 else u * g.s[-1]


def _dpmpp_2m_plan(run: _Run) -> LinearPlan:
    """Rows ``(x_hat, D_prev, u, F)``: the state, the previous denoised estimate, the
    network's input ``c_in x_hat`` and its output. Per step the product gives
    ``(x_hat', D, u', 0)``; ``D_prev`` starts at 0, which its zero weight on the first step
    leaves out exactly.

    With the level's ``D = c_skip x_hat + c_out F``, the multistep combination
    ``D_step = w D + (1 - w) D_prev`` and ``ratio = sigma' / sigma``, the step
    ``x_hat' = ratio x_hat + (1 - ratio) D_step`` has the coefficients

        x_hat: ratio + (1 - ratio) w c_skip,  D_prev: (1 - ratio)(1 - w),  F: (1 - ratio) w c_out,

    and ``u' = c_in' x_hat'`` is the next network input. ``w = 1 + 1/(2r)`` (1 on the first
    step and on the last, where ``ratio = 0`` makes ``x_hat' = D``).
    """
    g = run.grid
    evaluations = []
    for i, (level, scale) in enumerate(zip(run.levels, _next_scales(run), strict=True)):
        sig, sig_next = g.sigma[i], g.sigma[i + 1]
        w = 1.0
        if i > 0 and sig_next > 0:
            r = math.log(g.sigma[i - 1] / sig) / math.log(sig / sig_next)
            w = 1.0 + 0.5 / r
        ratio = sig_next / sig
        x_row = [
            ratio + (1.0 - ratio) * w * level.c_skip,
            (1.0 - ratio) * (1.0 - w),
            0.0,
            (1.0 - ratio) * w * level.c_out,
        ]
        D_row = [level.c_skip, 0.0, 0.0, level.c_out]
        M = [x_row, D_row, [scale * c for c in x_row], [0.0] * 4]
        evaluations.append((i, 2, 3, M, (0, g.s[i + 1])))
    start = [
        run.start_factor(1.0 / g.s[0]),
        0.0,
        run.start_factor(run.levels[0].c_in / g.s[0]),
        0.0,
    ]
    return linear_plan(run, start, evaluations)


def _dpmpp_2m(run: _Run) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in the data-prediction form on
    ``lambda = -log sigma``; the step is scale invariant, so it runs on ``x_hat``.

    With ``h = lambda' - lambda`` and ``r = h_prev / h``, the second-order multistep
    correction (eq. 17) replaces ``D`` by ``(1 + 1/(2r)) D - D_prev / (2r)``, and the step is
    ``x_hat' = ratio x_hat + (1 - ratio) D_step`` with ``ratio = sigma' / sigma``.

    The new state, the new denoised estimate and the next network input are all linear in
    ``(x_hat, D_prev, u, F)`` with the network's output ``F = G(u)``, so a step is the network
    call and one product on the stacked rows (:func:`_dpmpp_2m_plan`,
    :mod:`~driftlab.diffusion.stacked`). Written out, the step takes four ops besides the
    network call: the scaling by ``c_in``, ``D`` and two interpolations.
    """
    return run_linear(run, _plan(run, "dpmpp-2m", _dpmpp_2m_plan), "dpmpp-2m")


# ----- samplers on x_hat and sigma alone -----------------------------------------------------


def _ddim_plan(run: _Run, eta: float) -> LinearPlan:
    """Rows ``(u, F)``, and ``z`` (fresh standard-normal noise) when ``eta > 0``: per step
    ``u' = c_u u + c_G G(u) + std z`` on the state ``u = c_in x_hat``; ``x' = (s' / c_in') u'``
    is recorded."""
    g = run.grid
    evaluations, draws = [], []
    for i, (level, scale) in enumerate(zip(run.levels, _next_scales(run), strict=True)):
        sig, sig_next = g.sigma[i], g.sigma[i + 1]
        if sig_next == 0:
            c_u, c_G = level.scaled_coefficients(0.0, 1.0, scale)  # D
            sigma_up = 0.0
        else:
            sigma_up = eta * sig_next * math.sqrt(max(1.0 - sig_next**2 / sig**2, 0.0))
            sigma_down = math.sqrt(sig_next**2 - sigma_up**2)
            # D + sigma_down (x_hat - D) / sigma; for a VP eps-prediction network the step is
            # a single combination of x_t and eps.
            ratio = sigma_down / sig
            c_u, c_G = level.scaled_coefficients(ratio, 1.0 - ratio, scale)
        row = [c_u, c_G, sigma_up * scale] if eta > 0 else [c_u, c_G]
        M = [row] + [[0.0] * len(row)] * (len(row) - 1)
        evaluations.append((i, 0, 1, M, (0, g.s[i + 1] / scale)))
        draws.append(sigma_up > 0)
    start = [run.start_factor(run.levels[0].c_in / g.s[0]), 0.0]
    if eta > 0:
        start.append(0.0)  # the noise row, drawn before each product that uses it
    return linear_plan(run, start, evaluations, draws, noise_row=2)


def _ddim(run: _Run, eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12) on ``x_hat = x / s``.

    With ``alpha_bar = 1/(1+sigma^2)`` the DDIM step becomes
    ``x_hat' = D + sigma_down eps_hat + sigma_up z`` with
    ``sigma_up = eta sigma' sqrt(1 - sigma'^2/sigma^2)`` and
    ``sigma_down = sqrt(sigma'^2 - sigma_up^2)``; ``eta = 1`` is DDPM's ancestral sampler.
    As in :func:`_euler`, the state is the network's input ``u = c_in x_hat``, and a step is
    one product on the stacked rows (:func:`_ddim_plan`).
    """
    plan = _plan(run, ("ddim", eta), functools.partial(_ddim_plan, eta=eta))
    return run_linear(run, plan, ("ddim", eta))


def _ddpm(run: _Run) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2): DDIM with ``eta = 1``, whose
    noise is the posterior variance ``beta_tilde`` of q(x_{t-1} | x_t, x0)."""
    return _ddim(run, eta=1.0)


def _euler_maruyama(
    run: _Run, beta: float | Callable[[float], float] | None = None
) -> torch.Tensor:
    """Euler-Maruyama on the reverse SDE, EDM eq. 6 in general ``(s, sigma)`` form:

        dx = [f x - s (sigma'/sigma + beta) (D - x/s)] dt + s sigma sqrt(2 beta) dw,

    ``beta(t) = sigma'/sigma`` (the default) is Song et al.'s reverse SDE
    ``dx = [f x - g^2 grad log p] dt + g dw``; ``beta = 0`` is the probability-flow ODE.
    The last step to sigma = 0 is the denoiser's mean (Song et al.'s noise removal).
    """
    g = run.grid
    x = run.start()
    for i, level in enumerate(run.levels):
        sig, s = g.sigma[i], g.s[i]
        x_hat = x if s == 1.0 else x * (1.0 / s)
        D = level(x_hat)
        if g.sigma[i + 1] == 0:
            x = D * g.s[i + 1]
        else:
            h = g.t[i + 1] - g.t[i]
            rate = g.dsigma[i] / sig
            b = rate if beta is None else (beta(g.t[i]) if callable(beta) else beta)
            f = g.ds[i] / s
            # x + h [f x - s (rate + b) (D - x_hat)]
            drift_x = 1.0 + h * f + h * (rate + b)  # x_hat = x / s, so s * x_hat = x
            x = torch.add(x * drift_x, D, alpha=-h * s * (rate + b))
            if b > 0:
                x = torch.add(x, run.randn_like(x), alpha=s * sig * math.sqrt(2 * b * abs(h)))
        run.record(x)
    return x


def _langevin(run: _Run, x_hat: torch.Tensor, level: Level, step: float) -> torch.Tensor:
    """One Langevin step ``x + step/2 score + sqrt(step) z`` with ``score = (D - x)/sigma^2``."""
    score = (level(x_hat) - x_hat) / level.sigma**2
    noise = run.randn_like(x_hat)
    return x_hat + (0.5 * step) * score + math.sqrt(step) * noise


def _pc(run: _Run, snr: float = 0.16, n_corrector: int = 1) -> torch.Tensor:
    """Predictor-corrector (Song et al. 2021, Algorithms 2-3): a Langevin corrector at each
    noise level with step ``2 (snr ||z|| / ||score||)^2`` (norms averaged over the batch),
    then the reverse-diffusion predictor
    ``x + (sigma^2 - sigma'^2) score + sqrt(sigma^2 - sigma'^2) z``, all on ``x_hat``."""
    g = run.grid
    x_hat = run.start(1.0 / g.s[0])
    dims = tuple(range(1, x_hat.ndim))
    for i, level in enumerate(run.levels):
        sig, sig_next = g.sigma[i], g.sigma[i + 1]
        for _ in range(n_corrector):
            D = level(x_hat)
            score = (D - x_hat) / sig**2
            z = run.randn_like(x_hat)
            # Norms averaged over the batch, as in score_sde: a per-sample ratio explodes
            # wherever one sample's score is near zero (mode centres in low dimension).
            z_norm = torch.linalg.vector_norm(z, dim=dims).mean()
            score_norm = torch.linalg.vector_norm(score, dim=dims).mean()
            step = 2 * (snr * z_norm / score_norm.clamp_min(1e-30)) ** 2
            x_hat = x_hat + step * score + torch.sqrt(2 * step) * z
        D = level(x_hat)
        if sig_next == 0:
            x_hat = D
        else:
            var = sig**2 - sig_next**2
            score = (D - x_hat) / sig**2
            x_hat = x_hat + var * score + math.sqrt(var) * run.randn_like(x_hat)
        run.record(x_hat, g.s[i + 1])
    return x_hat if g.s[-1] == 1.0 else x_hat * g.s[-1]


def _annealed_langevin(run: _Run, n_inner: int = 100, step_lr: float | None = None) -> torch.Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1): at each noise level
    ``sigma_i`` of the grid, ``n_inner`` Langevin steps of size
    ``alpha_i = step_lr sigma_i^2 / sigma_L^2``, then one denoising step at ``sigma_L``.

    ``step_lr`` defaults to ``0.2 sigma_L^2`` (the paper's 2e-5 at sigma_L = 0.01).
    """
    g = run.grid
    sigma_L = g.sigma[-2]  # the last sigma is 0
    lr = 0.2 * sigma_L**2 if step_lr is None else step_lr
    x_hat = run.start(1.0 / g.s[0])
    for i, level in enumerate(run.levels):
        alpha = lr * level.sigma**2 / sigma_L**2
        for _ in range(n_inner):
            x_hat = _langevin(run, x_hat, level, alpha)
        if i == g.n - 1:
            x_hat = level(x_hat)
        run.record(x_hat, g.s[i + 1])
    return x_hat if g.s[-1] == 1.0 else x_hat * g.s[-1]


def _edm_stochastic(
    run: _Run,
    formulation: Formulation,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
) -> torch.Tensor:
    """EDM Algorithm 2: Heun with "churn", adding noise to go up to ``(1 + gamma) sigma``
    before each step, for ``sigma`` in ``[S_min, S_max]``."""
    churn = {
        "formulation": formulation,
        "S_churn": S_churn,
        "S_min": S_min,
        "S_max": S_max,
        "S_noise": S_noise,
    }
    return _heun(run, churn)


# ----- registry and validation ---------------------------------------------------------------


def _check_beta(value: Any) -> Any:
    if value is None or callable(value):
        return value
    return check_nonnegative("beta", value)


# Each sampler's options and their validators.
SAMPLER_OPTIONS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "euler": {},
    "heun": {},
    "dpmpp-2m": {},
    "edm-stochastic": {
        "S_churn": lambda v: check_nonnegative("S_churn", v),
        "S_min": lambda v: check_nonnegative("S_min", v),
        "S_max": lambda v: check_nonnegative("S_max", v),
        "S_noise": lambda v: check_positive("S_noise", v),
    },
    "ddim": {"eta": lambda v: check_in_range("eta", v, 0.0, 1.0)},
    "ddpm": {},
    "euler-maruyama": {"beta": _check_beta},
    "pc": {
        "snr": lambda v: check_positive("snr", v),
        "n_corrector": lambda v: check_int("n_corrector", v, minimum=0),
    },
    "annealed-langevin": {
        "n_inner": lambda v: check_int("n_inner", v, minimum=1),
        "step_lr": lambda v: v if v is None else check_positive("step_lr", v),
    },
}

SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": _euler,
    "heun": _heun,
    "dpmpp-2m": _dpmpp_2m,
    "edm-stochastic": _edm_stochastic,
    "ddim": _ddim,
    "ddpm": _ddpm,
    "euler-maruyama": _euler_maruyama,
    "pc": _pc,
    "annealed-langevin": _annealed_langevin,
}

ODE_SAMPLERS = ("euler", "heun", "dpmpp-2m", "ddim")

_COMMON_OPTIONS = ("sigmas", "return_trajectory", "dtype", "cond")


# The formulations sample() makes from a name, one per name. They are private to sample(), so
# never changed in place, and they keep their time grids (and the plans and states kept with
# a denoiser's levels per grid) from one call to the next, as a formulation object does.
_NAMED_FORMULATIONS: dict[str, Formulation] = {}


def _formulation(formulation: Formulation | str) -> Formulation:
    if not isinstance(formulation, str):
        return get_formulation(formulation)
    named = _NAMED_FORMULATIONS.get(formulation)
    if named is None:  # get_formulation() refuses an unknown name
        named = _NAMED_FORMULATIONS[formulation] = get_formulation(formulation)
    return named


def evaluations_per_sample(sampler: str, steps: int, **options: Any) -> int:
    """Number of denoiser evaluations a sampler makes for ``steps`` steps."""
    check_choice("sampler", sampler, SAMPLERS)
    if sampler in ("heun", "edm-stochastic"):
        return 2 * steps - 1
    if sampler == "pc":
        return steps * (1 + options.get("n_corrector", 1))
    if sampler == "annealed-langevin":
        return steps * options.get("n_inner", 100) + 1
    return steps


def sample(
    denoiser: DenoiserFn,
    noise: torch.Tensor,
    formulation: Formulation | str = "edm",
    sampler: str = "heun",
    steps: int = 18,
    generator: torch.Generator | None = None,
    **options: Any,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Draw samples by running ``sampler`` from standard-normal ``noise`` ``[batch, ...]``.

    Args:
        denoiser: ``D(x_hat, sigma[batch], **cond) -> x0_hat``.
        noise: standard-normal tensor; the start is ``s(t_0) sigma(t_0) noise``.
        formulation: a :class:`Formulation` or its name; fixes the coordinates the ODE is
            solved in and the time grid.
        sampler: ``euler | heun | edm-stochastic | ddim | ddpm | euler-maruyama | pc |
            annealed-langevin | dpmpp-2m``.
        steps: number of steps (noise levels) of the grid.
        generator: torch generator for the noise of stochastic samplers.
        options: the sampler's own options (``eta``, ``S_churn``, ``snr``, ...) and
            ``sigmas`` (a decreasing sigma grid replacing the formulation's), ``cond`` (extra
            keyword arguments for the denoiser, e.g. class labels), ``dtype`` (state dtype,
            float64 by default) and ``return_trajectory``.

    Returns:
        samples with ``noise``'s shape and dtype, or ``(samples, trajectory)`` with the
        trajectory ``[n_points, batch, ...]`` in the formulation's coordinates.
    """
    check_choice("sampler", sampler, SAMPLERS)
    check_int("steps", steps, minimum=1)
    formulation = _formulation(formulation)
    if not isinstance(noise, torch.Tensor) or noise.ndim < 1 or noise.shape[0] < 1:
        raise ConfigError("noise must be a tensor of shape [batch, ...] with batch >= 1")
    allowed = SAMPLER_OPTIONS[sampler]
    own: dict[str, Any] = {}
    for key, value in options.items():
        if key in _COMMON_OPTIONS:
            continue
        if key not in allowed:
            names = ", ".join(sorted([*allowed, *_COMMON_OPTIONS]))
            raise ConfigError(f"unknown option {key!r} for sampler {sampler!r}; allowed: {names}")
        own[key] = allowed[key](value)
    if sampler == "edm-stochastic":
        own["formulation"] = formulation

    dtype = options.get("dtype", torch.float64)
    grid = _grid(formulation, steps, options.get("sigmas"))
    # Entering no_grad costs a microsecond, as much as a small op: skip it where gradients
    # are off already (under inference_mode or an outer no_grad).
    with torch.no_grad() if torch.is_grad_enabled() else contextlib.nullcontext():
        run = _Run(
            denoiser,
            grid,
            caster(dtype)(noise),
            generator,
            bool(options.get("return_trajectory", False)),
            dict(options.get("cond") or {}),
            noise.dtype,
        )
        if run.trajectory is not None:
            run.record(run.start())
        x = SAMPLERS[sampler](run, **own)
    samples = caster(noise.dtype)(x)
    if run.trajectory is not None:
        return samples, torch.stack(run.trajectory).to(noise.dtype)
    return samples
