"""``make demo``: every family's demo on built-in data, into one run directory."""

from __future__ import annotations

import time

from driftlab.core import RunDir
from driftlab.core.config import check_positive


def run_demo(
    run_dir: str, overwrite: bool = False, seed: int = 0, train_minutes: float = 1.0
) -> None:
    """The oracle samplers, a two-moons model trained for ``train_minutes``, the grid
    world's exact solution with a Q-learning curve, PPO on CartPole-v1 with its learning
    curve, and GRPO on 2-digit addition after a supervised warm-up."""
    from driftlab.diffusion.demo import run_diffusion_demo, run_training_demo
    from driftlab.llm.demo import run_demo as run_llm_demo
    from driftlab.rl.deep.demo import run_demo as run_deep_rl_demo
    from driftlab.rl.tabular.demo import run_demo as run_tabular_demo

    check_positive("train_minutes", train_minutes)
    config = {"command": "demo", "seed": seed, "train_minutes": train_minutes}
    with RunDir.create(run_dir, config, overwrite=overwrite, resumable=False) as run:
        start = time.perf_counter()
        diffusion = run.path / "diffusion"
        print(run_diffusion_demo(diffusion, seed=seed), flush=True)
        print(flush=True)
        print(run_training_demo(diffusion, seed=seed, minutes=train_minutes), flush=True)
        print(flush=True)
        print(run_tabular_demo(run.path / "rl", seed=seed), flush=True)
        print(flush=True)
        print(run_deep_rl_demo(run.path / "rl-deep", seed=seed), flush=True)
        print(flush=True)
        print(run_llm_demo(run.path / "llm", seed=seed), flush=True)
        print(f"\ndemo finished in {time.perf_counter() - start:.1f} s; outputs in {run.path}")
