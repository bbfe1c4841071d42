"""The deep RL part of ``make demo``: PPO on CartPole-v1 with RL Baselines3 Zoo's preset
(100k steps), its evaluation, and its learning curve."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from driftlab.core.metrics import MetricsLogger
from driftlab.core.rundir import write_json


def run_demo(out_dir: str | Path, seed: int = 0, steps: int | None = None) -> str:
    """Train PPO on CartPole-v1 (the zoo preset; ``steps`` defaults to its 100k) into
    ``out_dir``, evaluate it on 20 episodes and draw the learning curve; returns a summary."""
    from driftlab.rl.deep import PPO
    from driftlab.rl.deep.plots import episode_returns, plot_learning_curve

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small networks: one thread is fastest
    try:
        start = time.perf_counter()
        ppo = PPO("CartPole-v1", seed=seed)
        total = steps or ppo.config["total_steps"]
        with MetricsLogger(out) as logger:
            ppo.learn(total, logger=logger)
        seconds = time.perf_counter() - start
        ppo.save(out / "model")
        report = ppo.evaluate(episodes=20)
        ppo.close()
    finally:
        torch.set_num_threads(threads)
    write_json(
        out / "eval.json", {"algorithm": "ppo", "env": "CartPole-v1", "steps": total, **report}
    )
    curve = plot_learning_curve(
        *episode_returns(out / "metrics.jsonl"),
        out / "learning_curve.png",
        title=f"PPO on CartPole-v1 (zoo preset, seed {seed})",
    )
    return "\n".join(
        [
            f"Deep RL: PPO on CartPole-v1, {total} steps in {seconds:.1f} s (zoo preset)",
            f"  evaluation: return {report['mean_return']:.1f} +- {report['std_return']:.1f} "
            f"over 20 episodes (the maximum is 500)",
            f"  learning curve: {curve}",
        ]
    )
