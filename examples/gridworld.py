"""Solve the grid world of Zhao's book exactly, then learn it from data and compare.

python examples/gridworld.py
"""

import numpy as np

from driftlab.rl.tabular import GridWorld, q_learning, value_iteration

world = GridWorld()  # 5x5, the book's forbidden cells and target, gamma 0.9
exact = value_iteration(world)
print("optimal state values (row by row):")
print(np.round(exact.values.reshape(world.rows, world.cols), 1))

# Off-policy Q-learning from a uniform behaviour policy, 20 independent runs in one go.
result = q_learning(
    world,
    behavior_policy=world.uniform_policy(),
    alpha=1.0,
    episodes=150,
    episode_length=100,
    n_runs=20,
    seed=0,
)
error = np.sqrt(((result.q_values - exact.q_values) ** 2).mean(axis=(1, 2)))
print(f"Q-learning: RMS error of q to q* {error.mean():.1e} over {len(error)} runs")
