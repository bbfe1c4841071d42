"""Sampler overhead: time of a sampler over the time of its bare network evaluations.

One untrained 3-layer MLP (2 -> 256 -> 256 -> 2, SiLU, with the noise conditioning
concatenated to the input) is an epsilon-prediction network of the discrete DDPM
schedule: it takes the variance-preserving ``x_t`` and the time index ``t`` in
``[0, 999]``. The same network object is sampled

- by driftlab, as ``sample(Denoiser(net, "vp"), noise, vp, sampler, steps)``: the library's
  own VP preconditioning (EDM Table 1: ``c_in = 1/sqrt(1+sigma^2)``, ``c_noise = 999 t``,
  ``D = x_hat - sigma eps``) on the VP formulation's grid, with the state in float64 (the
  default) and in float32 (``dtype=torch.float32``);
- by diffusers, as its pipelines do: ``set_timesteps``, then per step ``scale_model_input``,
  the network on the scheduler's timestep, and ``step(..., return_dict=False)``.

Pairs at equal network evaluations (NFE): ddim <-> DDIMScheduler, euler <->
EulerDiscreteScheduler, heun <-> HeunDiscreteScheduler (both 2 steps - 1), dpmpp-2m <->
DPMSolverMultistepScheduler (DPM-Solver++, order 2). The ratio is the sampler's time over
NFE times one bare network call ``net(x, c)`` on the same batch: 1.0 is the physical limit,
the excess is the sampler's own per-step cost (grid set-up included). Everything runs on
one thread under ``torch.inference_mode()`` and is timed in process CPU time, which equals
wall time on an idle machine and leaves out the time other processes hold the core on a
shared one. Each measurement of a sampler sits between two of the bare calls, the rounds
rotate the order, and a process's ratio is the median over its rounds. The whole
measurement runs in ``PROCESSES`` fresh processes, one after another, and the ratio reported
is the median of theirs: from one process to the next every loop's ratio, diffusers'
included, moves together by up to 0.03 at batch 100, more than the rounds within a process
spread (the cause is not pinned down). glibc is asked to keep
freed memory (``mallopt``): otherwise each 10 MB activation at batch 10,000 is a fresh
``mmap`` whose page faults cost more than a sampler step and vary with the other processes
on the machine; the allocator is the same for both libraries and the bare calls. Denormal
floats are flushed to zero: the untrained network sends samples far from any data, where
SiLU's tails underflow into denormals whose slow arithmetic would add several percent to
the sampling loops of both libraries but not to the bare calls on standard-normal input.

Prints one JSON line per (library, state dtype, sampler, batch); progress goes to stderr.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from driftlab.diffusion import Denoiser, evaluations_per_sample, get_formulation, sample

BATCHES = (1, 100, 10_000)
STEPS = 35  # single-evaluation samplers; Heun gets 18 steps = 35 evaluations
HEUN_STEPS = 18
NFE = 35
ROUNDS = {1: 9, 100: 9, 10_000: 8}
SECONDS_PER_MEASUREMENT = {1: 0.05, 100: 0.05, 10_000: 0.0}  # 0: a single sampling run
SEED = 0
PROCESSES = 3


class MLP(nn.Module):
    """``eps(x_t, t)``: 2 -> 256 -> 256 -> 2 with ``t / 1000`` (``t`` scalar or ``[batch]``) as
    a third input feature, so one network serves a per-sample ``c_noise`` and a scheduler's
    scalar timestep alike, normalised as real networks' time embeddings are."""

    def __init__(self, width: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = (t.to(x.dtype) * 1e-3).expand(x.shape[0]).unsqueeze(1)
        return self.net(torch.cat([x, t], dim=1))


def diffusers_schedulers() -> dict[str, Callable[[], object]]:
    """Our sampler name -> a fresh diffusers scheduler for the same algorithm, DDPM's linear
    beta schedule (their default)."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        HeunDiscreteScheduler,
    )

    return {
        "ddim": DDIMScheduler,
        "euler": EulerDiscreteScheduler,
        "heun": HeunDiscreteScheduler,
        "dpmpp-2m": lambda: DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver++", solver_order=2
        ),
    }


def steps_for(sampler: str) -> int:
    """Steps giving ``NFE`` network evaluations in both libraries."""
    steps = HEUN_STEPS if sampler == "heun" else STEPS
    assert evaluations_per_sample(sampler, steps) == NFE
    return steps


def driftlab_version() -> str:
    try:
        return importlib.metadata.version("driftlab")
    except importlib.metadata.PackageNotFoundError:
        return ""


def ours(net: nn.Module, sampler: str, noise: torch.Tensor, **options) -> Callable[[], object]:
    """A driftlab sampling call; the denoiser and formulation are made once, outside the
    timing, as the diffusers scheduler object is."""
    denoiser = Denoiser(net, "vp")
    formulation = get_formulation("vp")
    steps = steps_for(sampler)
    return lambda: sample(denoiser, noise, formulation, sampler, steps, **options)


def theirs(net: nn.Module, scheduler: object, steps: int, noise: torch.Tensor) -> Callable:
    """A diffusers sampling loop, written as its pipelines write it."""

    def run() -> torch.Tensor:
        scheduler.set_timesteps(steps)
        x = noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            eps = net(scheduler.scale_model_input(x, t), t)
            x = scheduler.step(eps, t, x, return_dict=False)[0]
        return x

    return run


def count_calls(net: nn.Module, fn: Callable[[], object]) -> int:
    """Network calls made by one run of ``fn`` (checks that NFE match)."""
    calls = 0

    def hook(*_: object) -> None:
        nonlocal calls
        calls += 1

    handle = net.register_forward_hook(hook)
    try:
        fn()
    finally:
        handle.remove()
    return calls


def keep_freed_memory() -> None:
    """Tell glibc to serve large allocations from its heap and not to trim it (no-op
    elsewhere), so repeated network calls reuse memory instead of page-faulting."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers in malloc.h
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)


def seconds(fn: Callable[[], object], number: int) -> float:
    """Mean CPU time of this process for one of ``number`` back-to-back calls of ``fn``.

    Everything runs on one thread, so on an idle machine this is the wall time; on a shared
    one it leaves out the time other processes hold the core, which wall time does not.
    """
    begin = time.process_time()
    for _ in range(number):
        fn()
    return (time.process_time() - begin) / number


def measure() -> None:
    """One process's measurement: a JSON line per (library, state dtype, sampler, batch)."""
    import diffusers

    keep_freed_memory()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    torch.manual_seed(SEED)
    net = MLP().eval()
    schedulers = diffusers_schedulers()
    for batch in BATCHES:
        gen = torch.Generator().manual_seed(SEED)
        noise = torch.randn(batch, 2, generator=gen)
        x_t = torch.randn(batch, 2, generator=gen)
        c_noise = torch.rand(batch, generator=gen) * 999

        def bare(x: torch.Tensor = x_t, c: torch.Tensor = c_noise) -> None:
            for _ in range(NFE):
                net(x, c)

        configs: dict[tuple[str, str, str], Callable[[], object]] = {}
        for sampler, make in schedulers.items():
            configs[("driftlab", "float64", sampler)] = ours(net, sampler, noise)
            configs[("driftlab", "float32", sampler)] = ours(
                net, sampler, noise, dtype=torch.float32
            )
            configs[("diffusers", "", sampler)] = theirs(net, make(), steps_for(sampler), noise)
        with torch.inference_mode():
            for (library, _, sampler), fn in configs.items():
                calls = count_calls(net, fn)
                if calls != NFE:
                    raise SystemExit(f"{library} {sampler}: {calls} network calls, expected {NFE}")
            bare()  # warm-up (the configurations were warmed up by counting their calls)
            number = max(1, round(SECONDS_PER_MEASUREMENT[batch] / seconds(bare, 1)))
            ratios: dict[tuple[str, str, str], list[float]] = {key: [] for key in configs}
            bare_times: list[float] = []
            for r in range(ROUNDS[batch]):
                keys = list(configs)
                keys = keys[r % len(keys) :] + keys[: r % len(keys)]
                before = seconds(bare, number)
                for key in keys:
                    # Each sampler run is timed between two runs of the same number of bare
                    # network calls, and compared with their mean: load from other processes
                    # then inflates both sides of the ratio alike.
                    took = seconds(configs[key], number)
                    after = seconds(bare, number)
                    ratios[key].append(2 * took / (before + after))
                    bare_times += [before, after]
                    before = after
            print(f"batch {batch}: {ROUNDS[batch]} rounds of {number} runs", file=sys.stderr)
        for (library, state, sampler), values in ratios.items():
            record = {
                "benchmark": "samplers",
                "library": library,
                "version": diffusers.__version__ if library == "diffusers" else driftlab_version(),
                "state_dtype": state or None,
                "sampler": sampler,
                "steps": steps_for(sampler),
                "batch": batch,
                "nfe": NFE,
                "ratio": statistics.median(values),
                "ratio_min": min(values),
                "ratio_max": max(values),
                "bare_seconds_per_eval": statistics.median(bare_times) / NFE,
                "rounds": ROUNDS[batch],
                "runs_per_measurement": number,
                "threads": 1,
                "clock": "process_time",
            }
            print(json.dumps(record), flush=True)


def main() -> None:
    """``PROCESSES`` runs of :func:`measure`, each in a fresh process; prints one JSON line
    per configuration with the median ratio over the processes and each process's own."""
    runs: list[list[dict]] = []
    for k in range(PROCESSES):
        print(f"process {k + 1} of {PROCESSES}", file=sys.stderr, flush=True)
        proc = subprocess.run(
            [sys.executable, __file__, "--one-process"],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        runs.append([json.loads(line) for line in proc.stdout.splitlines() if line])
    for records in zip(*runs, strict=True):
        keys = {(r["library"], r["state_dtype"], r["sampler"], r["batch"]) for r in records}
        assert len(keys) == 1, keys  # every process measures the same configurations in order
        record = dict(records[0])
        record["ratio"] = statistics.median(r["ratio"] for r in records)
        record["ratio_per_process"] = [r["ratio"] for r in records]
        record["ratio_min"] = min(r["ratio_min"] for r in records)
        record["ratio_max"] = max(r["ratio_max"] for r in records)
        record["bare_seconds_per_eval"] = statistics.median(
            r["bare_seconds_per_eval"] for r in records
        )
        record["processes"] = PROCESSES
        print(json.dumps(record), flush=True)


def markdown(records: list[dict]) -> str:
    """README table: ratio to bare network time per batch size, for driftlab with its default
    float64 state, driftlab with a float32 state, and diffusers."""
    ratio = {(r["library"], r.get("state_dtype"), r["sampler"], r["batch"]): r for r in records}
    samplers = list(dict.fromkeys(r["sampler"] for r in records))
    batches = sorted({r["batch"] for r in records})
    names = {"ddim": "DDIM", "euler": "Euler", "heun": "Heun", "dpmpp-2m": "DPM-Solver++(2M)"}
    variants = (("driftlab", "float64"), ("driftlab", "float32"), ("diffusers", None))
    header = "| sampler | " + " | ".join(f"batch {b:,}" for b in batches) + " |"
    lines = [header, "|---|" + "---:|" * len(batches)]
    for sampler in samplers:
        cells = []
        for b in batches:
            found = [ratio.get((lib, state, sampler, b)) for lib, state in variants]
            cells.append(" / ".join("-" if r is None else f"{r['ratio']:.2f}" for r in found))
        lines.append(f"| {names.get(sampler, sampler)} | " + " | ".join(cells) + " |")
    version = next((r["version"] for r in records if r["library"] == "diffusers"), "")
    nfe = records[0]["nfe"] if records else NFE
    processes = records[0].get("processes", 1) if records else PROCESSES
    bare = {r["batch"]: r["bare_seconds_per_eval"] for r in records}
    lines.append("")
    lines.append(
        "Each cell: driftlab (float64 state, the default) / driftlab (float32 state) / "
        f"diffusers {version}. Sampler time / ({nfe} x one bare network call): in each of "
        f"{processes} fresh processes the median over interleaved rounds of one-thread CPU "
        "time, and the median of the processes' ratios; 1.00 is the limit. 3-layer MLP "
        "(2 -> 256 -> 256 -> 2) as a DDPM epsilon model, the same object for both libraries; "
        'driftlab wraps it in `Denoiser(net, "vp")`; its time grid (per formulation object) '
        "and each step's coefficients and the memory of its stacked state (per denoiser and "
        "grid) are made on the first call and reused, diffusers' `set_timesteps` runs in "
        "every call. glibc keeps freed "
        "memory (`mallopt`) so that batch 10,000 does not page-fault on every network call; "
        "denormals are flushed (the untrained network drives samples "
        "into SiLU's underflowing tails). Bare call: "
        + ", ".join(f"{bare[b] * 1e6:,.0f} us at batch {b:,}" for b in batches)
        + "."
    )
    spread = [
        f"{names.get(r['sampler'], r['sampler'])} "
        + "-".join(f"{f(r['ratio_per_process']):.3f}" for f in (min, max))
        for r in records
        if r["library"] == "driftlab" and r["state_dtype"] == "float64" and r["batch"] == 100
        if "ratio_per_process" in r
    ]
    if spread:
        lines.append("")
        lines.append(
            "The processes' ratios at batch 100, driftlab with the float64 state: "
            + ", ".join(spread)
            + "."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--one-process"]:
        measure()
    else:
        main()
