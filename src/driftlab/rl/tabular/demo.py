"""The tabular part of ``driftlab demo``: the default world solved, and Q-learning learning it.

Writes ``gridworld_optimal.png`` (optimal policy and values, as in Zhao ch. 3) and
``q_learning_curve.png``: off-policy Q-learning from a uniformly random behaviour policy, as in
Zhao ch. 7.4 (100,000 steps, alpha = 0.1), its error to q* against steps, mean and std over 20
seeds advanced together. Returns a short text summary. Takes about two seconds on one core.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from driftlab.rl.tabular.cli import format_policy, format_values
from driftlab.rl.tabular.gridworld import GridWorld
from driftlab.rl.tabular.planning import evaluate_policy, policy_iteration, value_iteration
from driftlab.rl.tabular.plots import plot_grid, plot_learning_curves

# Q-learning budget of the demo (the book's): 100 episodes of 1,000 steps, step size 0.1.
DEMO_RUNS, DEMO_EPISODES, DEMO_EPISODE_LENGTH, DEMO_ALPHA = 20, 100, 1000, 0.1


def run_demo(run_dir: Path, seed: int = 0) -> str:
    """Solve the default grid world and learn it with Q-learning; write PNGs into ``run_dir``."""
    from driftlab.rl.tabular.td import q_learning

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    world = GridWorld()
    optimal = policy_iteration(world)
    vi = value_iteration(world)
    plot_grid(
        world, optimal.values, optimal.policy, path=run_dir / "gridworld_optimal.png",
        title="Optimal policy and state values (Zhao ch. 3), gamma = 0.9",
    )  # fmt: skip

    learned = q_learning(
        world, behavior_policy=world.uniform_policy(), alpha=DEMO_ALPHA, episodes=DEMO_EPISODES,
        episode_length=DEMO_EPISODE_LENGTH, n_runs=DEMO_RUNS, seed=seed,
        reference=optimal.q_values,
    )  # fmt: skip
    errors = learned.errors  # [episodes, n_runs], RMS over (s, a) of q - q*
    steps = np.arange(1, errors.shape[0] + 1) * DEMO_EPISODE_LENGTH
    plot_learning_curves(
        {f"off-policy Q-learning, uniform behaviour, alpha = {DEMO_ALPHA}": (
            steps, errors.mean(axis=1), errors.std(axis=1))},
        run_dir / "q_learning_curve.png", xlabel="steps", ylabel="RMS error of q to q*",
        title=f"Q-learning on the default grid world ({DEMO_RUNS} seeds)", log_y=True,
    )  # fmt: skip
    optimal_runs = sum(
        np.allclose(evaluate_policy(world, policy).values, optimal.values, atol=1e-6)
        for policy in learned.policy
    )
    return "\n".join(
        [
            "Grid world (Zhao ch. 3-4): optimal state values, gamma = 0.9",
            format_values(world, optimal.values, decimals=1),
            "optimal policy (o = stay):",
            format_policy(world, optimal.policy),
            f"value iteration: {vi.iterations} iterations, max |v - v*| = "
            f"{np.abs(vi.values - optimal.values).max():.1e}; policy iteration: "
            f"{optimal.iterations} iterations",
            f"off-policy Q-learning ({DEMO_RUNS} seeds x {DEMO_EPISODES * DEMO_EPISODE_LENGTH} "
            f"steps of a uniform behaviour policy, alpha {DEMO_ALPHA}): RMS error of q to q* "
            f"{errors[-1].mean():.3f} +- {errors[-1].std():.3f}; greedy policy optimal in "
            f"{optimal_runs}/{DEMO_RUNS} runs",
        ]
    )
