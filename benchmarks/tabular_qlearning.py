"""Environment steps per second of Q-learning over 100 parallel runs on the grid world.

``driftlab.rl.tabular.q_learning`` advances all runs in one NumPy step; the baseline is the
straightforward loop a Gymnasium user writes: one ``env.step`` per agent per step, with the
same epsilon-greedy Q-learning update (Zhao eq. (7.18)) done in Python. Both take the same
number of environment steps on the continuing 5x5 world. Prints one JSON line.
"""

from __future__ import annotations

import json
import time

import numpy as np

from driftlab.rl.tabular.gridworld import GridWorld
from driftlab.rl.tabular.td import q_learning

N_RUNS = 100
EPISODES = 50
EPISODE_LENGTH = 100
EPSILON = 0.1
ALPHA = 0.1
SEED = 0
REPEATS = 3


def vectorised(world: GridWorld) -> float:
    """Seconds for ``N_RUNS * EPISODES * EPISODE_LENGTH`` steps of the vectorised learner."""
    begin = time.perf_counter()
    q_learning(
        world,
        epsilon=EPSILON,
        alpha=ALPHA,
        episodes=EPISODES,
        episode_length=EPISODE_LENGTH,
        n_runs=N_RUNS,
        seed=SEED,
        start="random",
    )
    return time.perf_counter() - begin


def per_step_loop(world_options: dict) -> float:
    """Seconds for the same number of steps, one Gymnasium ``env.step`` at a time."""
    rng = np.random.default_rng(SEED)
    envs = [GridWorld(**world_options) for _ in range(N_RUNS)]
    gamma = envs[0].gamma
    n_actions = envs[0].n_actions
    q = np.zeros((N_RUNS, envs[0].n_states, n_actions))
    begin = time.perf_counter()
    for episode in range(EPISODES):
        states = [
            env.reset(seed=SEED + i if episode == 0 else None)[0] for i, env in enumerate(envs)
        ]
        for _ in range(EPISODE_LENGTH):
            for i, env in enumerate(envs):
                s = states[i]
                if rng.random() < EPSILON:
                    a = int(rng.integers(n_actions))
                else:
                    a = int(q[i, s].argmax())
                s_next, reward, terminated, _, _ = env.step(a)
                bootstrap = 0.0 if terminated else q[i, s_next].max()
                q[i, s, a] += ALPHA * (reward + gamma * bootstrap - q[i, s, a])
                states[i] = s_next
    return time.perf_counter() - begin


def main() -> None:
    world = GridWorld()
    steps = N_RUNS * EPISODES * EPISODE_LENGTH
    q_learning(world, episodes=2, episode_length=10, n_runs=N_RUNS)  # warm-up
    # The two are timed in alternation and each keeps its best time, so that load from other
    # processes during one phase does not skew the ratio.
    vectorised_s, loop_s = float("inf"), float("inf")
    for _ in range(REPEATS):
        vectorised_s = min(vectorised_s, *(vectorised(world) for _ in range(3)))
        loop_s = min(loop_s, per_step_loop({}))
    result = {
        "benchmark": "tabular_qlearning",
        "n_runs": N_RUNS,
        "steps": steps,
        "vectorised_steps_per_s": round(steps / vectorised_s),
        "loop_steps_per_s": round(steps / loop_s),
        "speedup": round(loop_s / vectorised_s, 1),
    }
    print(json.dumps(result))


def markdown(records: list[dict]) -> str:
    """README table from the JSON line."""
    r = records[-1]
    return (
        "| Q-learning, 100 parallel runs | environment steps / s |\n"
        "|---|---|\n"
        f"| driftlab (vectorised over runs) | {r['vectorised_steps_per_s']:,.0f} |\n"
        f"| per-agent Gymnasium `env.step` loop | {r['loop_steps_per_s']:,.0f} |\n"
        f"| speed-up | **{r['speedup']:.1f}x** |\n"
    )


if __name__ == "__main__":
    main()
