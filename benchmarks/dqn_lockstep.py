"""DQN in lockstep with Stable-Baselines3 at the zoo's CartPole-v1 settings, all randomness shared.

Both libraries start from the same network weights and draw every random number from the
same three streams: the explore-or-not coin of epsilon-greedy, its random action, and the
replay indices of every minibatch (SB3 takes them from NumPy's global generator and the
action space, driftlab from its own generators; here both read the shared streams). If the
two implement the same algorithm, they take the same actions and their networks agree to
float rounding, until rounding itself, amplified by training, makes them part.

Per product backend of driftlab (its default, with oneDNN for large float32 products, and
``DRIFTLAB_MATMUL=torch``, PyTorch's own products as SB3 uses): how many environment steps
both took the same action from the same observation, the largest difference of the
Q-values on fixed probe states after the first training round and after the twelfth, and
both final greedy returns (20 episodes from the same initial states).

Prints one JSON line per (products, seed); ``--seeds`` selects the seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deep_rl_speed import EVAL_SEED_OFFSET
from dqn_seeds import STEPS, set_products, zoo_settings

PRODUCTS = ("auto", "torch")  # -> DRIFTLAB_MATMUL


class Streams:
    """The shared random numbers of one run, identical for both libraries."""

    def __init__(self, seed: int) -> None:
        self.coin, self.action, self.index = (np.random.default_rng([seed, k]) for k in range(3))

    def indices(self, n: int, size: int) -> np.ndarray:
        """``n`` replay indices uniform in ``[0, size)``."""
        return (self.index.random(n) * size).astype(np.int64)


def _driftlab(hp: dict, seed: int, probe, log: dict) -> tuple[list, float]:
    import torch

    from driftlab.rl.deep import DQN
    from driftlab.rl.deep.buffers import Transitions

    streams = Streams(seed)
    algo = DQN("CartPole-v1", seed=seed, **hp)
    weights = [p.detach().clone() for p in algo.q_net.parameters()]

    class SharedRNG:  # what DQN.explore asks of its NumPy generator
        def random(self, n: int) -> np.ndarray:
            return streams.coin.random(n)

        def integers(self, high: int, size: int) -> np.ndarray:
            return streams.action.integers(high, size=size)

    algo.rng = SharedRNG()
    buffer = algo.buffer

    def sample(n: int, generator=None) -> Transitions:
        i = torch.from_numpy(streams.indices(n, buffer.size))
        return Transitions(
            buffer.obs[i], buffer.actions[i], buffer.rewards[i], buffer.next_obs[i],
            buffer.terminated[i],
        )  # fmt: skip

    buffer.sample = sample
    explore, train = algo.explore, algo.train

    def logged_explore(obs: np.ndarray, epsilon: float) -> np.ndarray:
        actions = explore(obs, epsilon)
        log["steps"].append((int(actions[0]), obs[0].copy()))
        return actions

    def logged_train() -> dict:
        metrics = train()
        with torch.no_grad():
            log["q"].append(algo.q_net(probe))
        return metrics

    algo.explore, algo.train = logged_explore, logged_train
    algo.learn(STEPS, show_progress=False)
    result = algo.evaluate(episodes=20, seed=seed + EVAL_SEED_OFFSET)
    return weights, result["mean_return"]


def _sb3(hp: dict, seed: int, weights: list, probe, log: dict) -> float:
    import stable_baselines3 as sb3
    import torch
    from stable_baselines3.common.evaluation import evaluate_policy

    from deep_rl_speed import make_sb3_env, sb3_arguments

    streams = Streams(seed)
    env = make_sb3_env("CartPole-v1", hp, seed)
    model = sb3.DQN("MlpPolicy", env, seed=seed, device="cpu", **sb3_arguments("dqn", hp))
    with torch.no_grad():
        for param, value in zip(model.q_net.parameters(), weights, strict=True):
            param.copy_(value)
        model.q_net_target.load_state_dict(model.q_net.state_dict())
    buffer = model.replay_buffer
    buffer.sample = lambda n, env=None: buffer._get_samples(streams.indices(n, buffer.pos), env)
    model.action_space.sample = lambda: int(streams.action.integers(2, size=1)[0])
    sample_action, train = model._sample_action, model.train

    def logged_sample_action(*args, **kwargs):
        actions, buffer_actions = sample_action(*args, **kwargs)
        log["steps"].append((int(actions[0]), model._last_obs[0].copy()))
        return actions, buffer_actions

    def logged_train(gradient_steps: int, batch_size: int) -> None:
        train(gradient_steps, batch_size)
        with torch.no_grad():
            log["q"].append(model.q_net(probe))

    model._sample_action, model.train = logged_sample_action, logged_train
    # SB3's DQN.predict tosses its explore-or-not coin with np.random.rand().
    with mock.patch("numpy.random.rand", lambda: float(streams.coin.random(1)[0])):
        model.learn(total_timesteps=STEPS)
    eval_env = make_sb3_env("CartPole-v1", hp, seed + EVAL_SEED_OFFSET, train_env=env)
    return float(evaluate_policy(model, eval_env, n_eval_episodes=20, deterministic=True)[0])


def lockstep(products: str, seed: int) -> dict:
    import torch

    from driftlab.core import matmul

    torch.set_num_threads(1)
    hp = zoo_settings()
    # Probe states spread over CartPole's usual range (the pole angle is small).
    probe = torch.randn(256, 4, generator=torch.Generator().manual_seed(seed))
    probe *= torch.tensor([1.0, 1.0, 0.1, 1.0])
    ours: dict = {"steps": [], "q": []}
    theirs: dict = {"steps": [], "q": []}
    weights, our_return = _driftlab(hp, seed, probe, ours)
    sb3_return = _sb3(hp, seed, weights, probe, theirs)
    same = 0
    for (a, obs), (b, obs_sb3) in zip(ours["steps"], theirs["steps"], strict=False):
        if a != b or not np.array_equal(obs, obs_sb3):
            break
        same += 1
    q_diff = [float((q - p).abs().max()) for q, p in zip(ours["q"], theirs["q"], strict=False)]
    return {
        "benchmark": "dqn_lockstep",
        "products": matmul.backend(),
        "seed": seed,
        "steps": STEPS,
        "same_action_steps": same,
        "training_rounds": [len(ours["q"]), len(theirs["q"])],
        "q_diff_round_1": q_diff[0],
        "q_diff_round_12": q_diff[11],
        "q_scale_round_12": float(theirs["q"][11].abs().max()),
        "driftlab_return": round(our_return, 2),
        "sb3_return": round(sb3_return, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    for products in PRODUCTS:
        # A process per backend: DRIFTLAB_MATMUL is read once, before the first product.
        with ProcessPoolExecutor(1, initializer=set_products, initargs=(products,)) as pool:
            for record in pool.map(lockstep, [products] * len(args.seeds), args.seeds):
                print(json.dumps(record), flush=True)


def markdown(records: list[dict]) -> str:
    lines = [
        "| driftlab's products | seed | steps with the same action | max abs Q difference "
        "after round 1 | after round 12 (Q up to) | final return SB3 / driftlab |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['products']} | {r['seed']} | {r['same_action_steps']:,} of {r['steps']:,} | "
            f"{r['q_diff_round_1']:.1e} | {r['q_diff_round_12']:.1e} "
            f"({r['q_scale_round_12']:.0f}) | {r['sb3_return']:.1f} / {r['driftlab_return']:.1f} |"
        )
    lines.append(
        "\nBoth libraries from the same weights, sharing every random number (`python "
        "benchmarks/dqn_lockstep.py`). A training round is 128 gradient steps every 256 "
        "environment steps; the Q difference is over 256 fixed probe states."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
