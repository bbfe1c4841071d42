"""DQN late in training, driftlab against Stable-Baselines3 on one shared state.

``dqn_lockstep.py`` compares the two libraries only until rounding parts their runs, a few
thousand steps in. This benchmark checks the later phase: a driftlab run at the zoo's
CartPole-v1 settings (``dqn_seeds.zoo_settings``) is stopped after ``steps`` environment steps,
when Q-values are near 100 and the replay buffer holds episodes cut at the 500-step limit, and
its online and target weights and its Adam state are copied into an SB3 ``DQN``. Then, per
case:

- the network is scored by driftlab's ``evaluate`` and by SB3's ``evaluate_policy`` on the
  speed benchmark's evaluation environment (the scores must be equal);
- the replay buffer's episode ends are checked: ``terminated`` must mark exactly the
  transitions that leave CartPole's bounds, never one cut by the time limit;
- one training round (128 gradient steps) runs in both libraries on the same 128 minibatches,
  and the parameters and the Q-values on 256 of the buffer's states are compared.

Both of driftlab's product backends are covered (``--products auto,torch``). Prints one JSON
line per (products, seed, steps); about two minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dqn_seeds import set_products, zoo_settings

SEEDS = (3, 201, 225)
STEPS = (30_000, 45_000)
PRODUCTS = ("auto", "torch")  # -> DRIFTLAB_MATMUL
ROUND_SEED = 123  # the generator of the shared minibatches
X_LIMIT, THETA_LIMIT = 2.4, 12 * 2 * math.pi / 360  # CartPole-v1's termination bounds


def sb3_copy(algo, hp: dict, seed: int):
    """An SB3 DQN at ``hp`` holding driftlab ``algo``'s weights, target and Adam state."""
    import stable_baselines3 as sb3
    import torch
    from stable_baselines3.common.logger import configure

    from deep_rl_speed import make_sb3_env, sb3_arguments

    env = make_sb3_env("CartPole-v1", hp, seed)
    model = sb3.DQN("MlpPolicy", env, seed=seed, device="cpu", **sb3_arguments("dqn", hp))
    model.set_logger(configure(None, []))
    pairs = [
        (algo.q_net.parameters(), model.q_net.parameters()),
        (algo.target_q_net.parameters(), model.q_net_target.parameters()),
    ]
    with torch.no_grad():
        for ours, theirs in pairs:
            for a, b in zip(ours, theirs, strict=True):
                b.copy_(a)
    optimizer, offset = model.policy.optimizer, 0
    for p in model.q_net.parameters():
        n = p.numel()
        state = optimizer.state[p]
        state["step"] = torch.tensor(float(algo.optimizer.steps))
        for key in ("exp_avg", "exp_avg_sq"):
            state[key] = getattr(algo.optimizer, key)[offset : offset + n].view_as(p).clone()
        offset += n
    return model, env


def buffer_labels(buffer) -> dict:
    """Episode ends in the buffer: how many, how many cut at 500, whether ``terminated`` marks
    exactly those that leave the bounds."""
    import numpy as np

    n = buffer.size
    obs, nxt = buffer.obs[:n].numpy(), buffer.next_obs[:n].numpy()
    terminated = buffer.terminated[:n].numpy().astype(bool)
    ends = np.flatnonzero(np.any(nxt[:-1] != obs[1:], axis=1))  # next_obs is not the next obs
    lengths = np.diff(np.concatenate([[-1], ends]))
    out = (np.abs(nxt[ends, 0]) > X_LIMIT) | (np.abs(nxt[ends, 2]) > THETA_LIMIT)
    inside = np.setdiff1d(np.arange(n - 1), ends)
    return {
        "episodes": len(ends),
        "cut_at_500": int((lengths[1:] == 500).sum()),  # the first episode may predate it
        "labels_exact": bool((terminated[ends] == out).all() and not terminated[inside].any()),
    }


def case(products: str, seed: int, steps: int) -> dict:
    import torch
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.type_aliases import ReplayBufferSamples

    import driftlab.rl.deep as deep
    from deep_rl_speed import EVAL_SEED_OFFSET, make_sb3_env
    from driftlab.rl.deep.buffers import Transitions

    torch.set_num_threads(1)
    hp = zoo_settings()
    algo = deep.DQN("CartPole-v1", seed=seed, **hp)
    algo.learn(steps)
    model, env = sb3_copy(algo, hp, seed)
    eval_seed = seed + EVAL_SEED_OFFSET
    ours_score = algo.evaluate(episodes=hp["eval_episodes"], seed=eval_seed)["mean_return"]
    eval_env = make_sb3_env("CartPole-v1", hp, eval_seed, train_env=env)
    sb3_score, _ = evaluate_policy(
        model, eval_env, n_eval_episodes=hp["eval_episodes"], deterministic=True
    )

    n_batches, batch_size = hp["gradient_steps"], hp["batch_size"]
    generator = torch.Generator().manual_seed(ROUND_SEED)
    batches = [algo.buffer.sample(batch_size, generator) for _ in range(n_batches)]
    fields = ("obs", "actions", "rewards", "next_obs", "terminated")
    rows = Transitions(*(torch.cat([getattr(b, f) for b in batches]) for f in fields))
    algo.buffer.sample = lambda n, generator=None: rows  # train() draws all rows at once
    feed = iter(batches)

    class Replay:  # SB3's train() asks for one minibatch per gradient step
        def sample(self, batch_size: int, env=None) -> ReplayBufferSamples:
            b = next(feed)
            actions, dones = b.actions[:, None].long(), b.terminated[:, None]
            return ReplayBufferSamples(b.obs, actions, b.next_obs, dones, b.rewards[:, None])

    def flat(params) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in params])

    model.replay_buffer = Replay()
    before = flat(algo.q_net.parameters())
    algo.train()
    model.train(gradient_steps=n_batches, batch_size=batch_size)
    ours, theirs = flat(algo.q_net.parameters()), flat(model.q_net.parameters())
    probes = torch.cat([b.obs for b in batches[:4]])
    with torch.no_grad():
        q_ours, q_sb3 = algo.q_net(probes), model.q_net(probes)
    return {
        "benchmark": "dqn_late_round",
        "products": products,
        "seed": seed,
        "steps": steps,
        **buffer_labels(algo.buffer),
        "eval_driftlab": round(float(ours_score), 2),
        "eval_sb3": round(float(sb3_score), 2),
        "param_moved": float((ours - before).abs().max()),
        "param_diff": float((ours - theirs).abs().max()),
        "q_max": float(q_ours.abs().max()),
        "q_diff": float((q_ours - q_sb3).abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", default=",".join(PRODUCTS), help="subset of auto,torch")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    args = parser.parse_args()
    products = [p.strip() for p in args.products.split(",") if p.strip()]
    unknown = sorted(set(products) - set(PRODUCTS))
    if unknown or not products:
        parser.error(f"unknown products {unknown or products}; available: {', '.join(PRODUCTS)}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    for choice in products:
        # One pool per backend: DRIFTLAB_MATMUL must be set before a worker's first product.
        with ProcessPoolExecutor(args.jobs, initializer=set_products, initargs=(choice,)) as pool:
            seeds, steps = zip(*[(seed, n) for seed in SEEDS for n in STEPS], strict=True)
            for record in pool.map(case, [choice] * len(seeds), seeds, steps):
                print(json.dumps(record), flush=True)


def markdown(records: list[dict]) -> str:
    """README table: one row per (products, seed, steps) record."""
    lines = [
        "| driftlab's products | seed | steps | episodes in buffer (cut at 500) | labels exact "
        "| score driftlab / SB3 evaluation | parameters moved | parameter difference "
        "| Q up to | Q difference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        name = "onednn" if r["products"] == "auto" else r["products"]
        lines.append(
            f"| {name} | {r['seed']} | {r['steps']:,} | {r['episodes']} ({r['cut_at_500']}) | "
            f"{'yes' if r['labels_exact'] else 'NO'} | {r['eval_driftlab']} / {r['eval_sb3']} | "
            f"{r['param_moved']:.2g} | {r['param_diff']:.1e} | {r['q_max']:.0f} | "
            f"{r['q_diff']:.1e} |"
        )
    lines.append(
        "\nA driftlab run stopped after `steps`, its state copied into SB3 "
        "(`python benchmarks/dqn_late_round.py`); one training round of 128 gradient steps on "
        "the same minibatches in both. Differences are the largest absolute ones over all "
        "parameters and over the Q-values of 256 buffer states."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
