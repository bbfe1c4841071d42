"""Solver order: error of every ODE sampler in every formulation versus denoiser evaluations.

The data is the 2-D ring of 8 Gaussians (``GaussianMixture.ring(8, radius=2, std=0.2)``),
whose exact denoiser stands in for a perfect network, so the only error left is the
discretisation of the probability-flow ODE. For each formulation (on its own default time
grid) and each ODE sampler (``euler``, ``heun``, ``dpmpp-2m``, ``ddim``) the samples from
1000 fixed noise vectors are compared with a reference solution of the same ODE from the
same noise: Heun with 1000 steps in the same formulation. The error is the mean over samples
of the L2 distance to the reference. Step counts are chosen so that every sampler lands near
10, 20, 35, 50 and 100 denoiser evaluations (Heun spends two per step but the last).

Prints one JSON line per (formulation, sampler, steps); progress goes to stderr.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from driftlab.diffusion import GaussianMixture, evaluations_per_sample, sample

FORMULATIONS = ("edm", "vp", "ve", "fm", "subvp")
SAMPLERS = ("euler", "heun", "dpmpp-2m", "ddim")
# Steps per sampler giving about 10, 20, 35, 50 and 100 evaluations (Heun: 2 * steps - 1).
STEPS = {
    "euler": (10, 20, 35, 50, 100),
    "heun": (5, 10, 18, 25, 50),
    "dpmpp-2m": (10, 20, 35, 50, 100),
    "ddim": (10, 20, 35, 50, 100),
}
NFE_BUCKETS = (10, 20, 35, 50, 100)
REFERENCE_SAMPLER = "heun"
REFERENCE_STEPS = 1000
N_SAMPLES = 1000
SEED = 0


def mean_l2(x: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over samples of the Euclidean distance between ``x`` and ``reference``."""
    return float((x - reference).flatten(1).norm(dim=1).mean())


def main() -> None:
    torch.set_num_threads(1)
    oracle = GaussianMixture.ring(n_modes=8, radius=2.0, std=0.2)
    noise = torch.randn(N_SAMPLES, 2, generator=torch.Generator().manual_seed(SEED))
    for formulation in FORMULATIONS:
        begin = time.perf_counter()
        reference = sample(oracle.denoiser, noise, formulation, REFERENCE_SAMPLER, REFERENCE_STEPS)
        print(f"{formulation}: reference in {time.perf_counter() - begin:.1f} s", file=sys.stderr)
        for sampler in SAMPLERS:
            for steps in STEPS[sampler]:
                x = sample(oracle.denoiser, noise, formulation, sampler, steps)
                record = {
                    "benchmark": "sampler_error",
                    "formulation": formulation,
                    "sampler": sampler,
                    "steps": steps,
                    "nfe": evaluations_per_sample(sampler, steps),
                    "error": mean_l2(x, reference),
                    "reference": f"{REFERENCE_SAMPLER}-{REFERENCE_STEPS}",
                    "n_samples": N_SAMPLES,
                    "seed": SEED,
                }
                print(json.dumps(record), flush=True)


def _bucket(nfe: int) -> int:
    """The NFE column a run belongs to: the nearest of ``NFE_BUCKETS``."""
    return min(NFE_BUCKETS, key=lambda b: abs(b - nfe))


def markdown(records: list[dict]) -> str:
    """README table: one row per (formulation, sampler), the mean L2 error per NFE column."""
    cells: dict[tuple[str, str], dict[int, dict]] = {}
    for r in records:
        cells.setdefault((r["formulation"], r["sampler"]), {})[_bucket(r["nfe"])] = r
    header = "| formulation | sampler | " + " | ".join(f"NFE ~{b}" for b in NFE_BUCKETS) + " |"
    lines = [header, "|" + "---|" * (2 + len(NFE_BUCKETS))]
    for (formulation, sampler), by_bucket in cells.items():
        values = []
        for b in NFE_BUCKETS:
            r = by_bucket.get(b)
            if r is None:
                values.append("")
            elif r["nfe"] == b:
                values.append(f"{r['error']:.1e}")
            else:
                values.append(f"{r['error']:.1e} ({r['nfe']})")
        lines.append(f"| {formulation} | {sampler} | " + " | ".join(values) + " |")
    reference = records[0]["reference"] if records else f"{REFERENCE_SAMPLER}-{REFERENCE_STEPS}"
    n_samples = records[0]["n_samples"] if records else N_SAMPLES
    lines.append("")
    lines.append(
        f"Mean L2 distance to a {reference.replace('-', ' ', 1)}-step solution of the same "
        f"probability-flow ODE from the same noise, {n_samples} samples of the 8-Gaussian "
        "ring with its exact denoiser; each formulation on its own default time grid. "
        "Exact NFE in parentheses where it differs from the column's."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
