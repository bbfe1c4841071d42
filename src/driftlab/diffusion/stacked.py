"""Samplers whose steps are linear in stacked rows of their state: one product per evaluation.

Euler, Heun, DDIM and DPM-Solver++(2M) all compute each new quantity (the next state, the
network's next input, a multistep method's previous denoised estimate) as a linear
combination of quantities they already hold and of the network's latest output. Stacking
those quantities as the rows of a ``[rows, numel]`` state makes every step

    F <- G(u)                  (the network on one row, its output into another)
    state' = M state           (one ``[rows, rows]`` matrix product)

with ``M`` computed once per time grid. On a small batch an op costs its dispatch, not its
arithmetic: the product replaces the two or three elementwise ops (scale, multiply-add, and
for a float64 state a mixed-dtype add) that a step written out takes, and copying the
network's output into a row is the cheapest mixed-dtype op there is. Two states take turns,
the product writing the one not read.

The network gets a tensor of its own, which it may keep: the cast to its dtype makes one when
it runs in another dtype than the state, else the row is copied. The state's memory and the
views on it are kept with the denoiser's levels for the next call with the same grid and
noise shape (up to :data:`POOL_ELEMENTS` elements); a call takes them out of the pool while it
runs, so concurrent calls never share them, and the samples returned are always a new tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from driftlab.diffusion.denoisers import caster

if TYPE_CHECKING:
    from driftlab.diffusion.samplers import _Run

# States up to this many elements (both turns, all rows) are kept between calls: 2 MB in
# float64. Larger ones are allocated per call, where a network call dwarfs the allocation.
POOL_ELEMENTS = 1 << 18


@dataclass
class LinearPlan:
    """A sampler as stacked-row products.

    The first state is ``start * noise`` (``start`` is a ``[rows, 1]`` column). Evaluation
    ``j`` calls the network of ``run.levels[levels[j]]`` on row ``inputs[j]``, writes its
    output into row ``outputs[j]``, draws standard-normal noise into row ``noise_row`` when
    ``draws[j]``, then takes the product with ``matrices[j]``; after it the row and scale in
    ``records[j]`` (if any) go into the trajectory. Row 0 of the last state is ``x_hat``.
    """

    start: torch.Tensor
    levels: list[int]
    inputs: list[int]
    outputs: list[int]
    matrices: list[torch.Tensor]
    records: list[tuple[int, float] | None]
    draws: list[bool] | None = None
    noise_row: int = -1

    @property
    def rows(self) -> int:
        return self.start.shape[0]


def linear_plan(
    run: _Run,
    start: list[float],
    evaluations: list[tuple[int, int, int, list[list[float]], tuple[int, float] | None]],
    draws: list[bool] | None = None,
    noise_row: int = -1,
) -> LinearPlan:
    """A :class:`LinearPlan` from Python numbers: ``start`` and per evaluation
    ``(level, input_row, output_row, M, record)`` with ``M`` as nested lists; the matrices
    go to the state's dtype and device in one tensor."""
    matrices = torch.tensor([e[3] for e in evaluations], dtype=run.dtype, device=run.device)
    return LinearPlan(
        start=torch.tensor(start, dtype=run.dtype, device=run.device)[:, None],
        levels=[e[0] for e in evaluations],
        inputs=[e[1] for e in evaluations],
        outputs=[e[2] for e in evaluations],
        matrices=list(matrices.unbind(0)),
        records=[e[4] for e in evaluations],
        draws=draws if draws is not None and any(draws) else None,
        noise_row=noise_row,
    )


class _Program:
    """A plan bound to one state's memory: per evaluation the network, whether its input is
    already a tensor of its own, the input and output rows, the state read, the state
    written and the matrix."""

    def __init__(self, run: _Run, plan: LinearPlan) -> None:
        shape = run.noise.shape
        memory = torch.empty((2, plan.rows, run.noise.numel()), dtype=run.dtype, device=run.device)
        self.states = memory.unbind(0)
        self.rows = [state.unbind(0) for state in memory.view(2, plan.rows, *shape).unbind(0)]
        self.steps = []
        for j, (index, i_in, i_out, M) in enumerate(
            zip(plan.levels, plan.inputs, plan.outputs, plan.matrices, strict=True)
        ):
            level, k = run.levels[index], j % 2
            own = level.net_dtype is not None
            rows = self.rows[k]
            self.steps.append(
                (level.G, own, rows[i_in], rows[i_out], self.states[k], self.states[1 - k], M)
            )


def run_linear(run: _Run, plan: LinearPlan, name: Any) -> torch.Tensor:
    """Run ``plan`` (kept under ``name`` with the levels) and return ``x_hat`` at the end of
    the grid, scaled by ``s`` there, as a new tensor in the caller's dtype."""
    pool, key = None, None
    plans = getattr(run.given_levels, "plans", None)
    small = 2 * plan.rows * run.noise.numel() <= POOL_ELEMENTS
    if plans is not None and not run.cond and small:
        pool = plans.setdefault("programs", {})
        key = (name, run.noise.shape)
    program = None
    if pool is not None:
        entry = pool.pop(key, None)  # taken out while this call runs
        if entry is not None and entry[0] is plan:
            program = entry[1]
    if program is None:
        program = _Program(run, plan)

    torch.mul(run.noise.reshape(1, -1), plan.start, out=program.states[0])
    if run.trajectory is None and plan.draws is None:
        for G, own, u, F, state, out, M in program.steps:
            F.copy_(G(u if own else u.clone()))
            torch.mm(M, state, out=out)
    else:
        for j, (G, own, u, F, state, out, M) in enumerate(program.steps):
            F.copy_(G(u if own else u.clone()))
            if plan.draws is not None and plan.draws[j]:
                # Drawn as torch.randn draws: the same numbers for the same generator state.
                program.rows[j % 2][plan.noise_row].normal_(generator=run.generator)
            torch.mm(M, state, out=out)
            record = plan.records[j]
            if record is not None:
                run.record(program.rows[(j + 1) % 2][record[0]], record[1])

    x = program.rows[len(program.steps) % 2][0]
    s_end = run.grid.s[-1]
    if s_end != 1.0:
        result = x * s_end
    elif run.out_dtype == run.dtype:
        result = x.clone()
    else:
        result = caster(run.out_dtype)(x)
    if pool is not None:
        pool[key] = (plan, program)
    return result
