"""``make demo``: every family's demo on built-in data, into one run directory."""

from __future__ import annotations

import time

from driftlab.core import RunDir


def run_demo(run_dir: str, overwrite: bool = False, seed: int = 0) -> None:
    from driftlab.diffusion.demo import run_diffusion_demo
    from driftlab.rl.tabular.demo import run_demo as run_tabular_demo

    config = {"command": "demo", "seed": seed}
    with RunDir.create(run_dir, config, overwrite=overwrite, resumable=False) as run:
        start = time.perf_counter()
        print(run_diffusion_demo(run.path / "diffusion", seed=seed), flush=True)
        print(flush=True)
        print(run_tabular_demo(run.path / "rl", seed=seed), flush=True)
        print(f"\ndemo finished in {time.perf_counter() - start:.1f} s; outputs in {run.path}")
