"""Training throughput of ``driftlab.diffusion.trainer`` against a plain hand-written PyTorch
loop (the limit) on the same network, batch and loss: samples per second of each, and their
ratio. The plain loop is the minimum EDM training step: sample sigma and noise, one forward,
the weighted loss, backward, AdamW step. The trainer adds what a real run needs (EMA,
clipping, warm-up, logging). Interleaved repeats; the best time of each is kept.
"""

from __future__ import annotations

import json
import time

import torch

from driftlab.diffusion.data import load_dataset
from driftlab.diffusion.networks import MLP, UNet
from driftlab.diffusion.trainer import TrainConfig, Trainer

STEPS = 150
REPEATS = 3


def plain_loop(net: torch.nn.Module, data: torch.Tensor, batch: int, steps: int) -> float:
    """Seconds for ``steps`` minimal EDM steps (EDM eq. 8 with its preconditioning)."""
    sd = float(data.std())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=g)
        x0 = data[idx]
        sigma = torch.exp(-1.2 + 1.2 * torch.randn(batch, generator=g))
        s = sigma.view(-1, *([1] * (x0.ndim - 1)))
        x = x0 + s * torch.randn(x0.shape, generator=g)
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (s**2 + sd**2).sqrt()
        out = net(c_in * x, sigma.log() / 4)
        loss = (out - (x0 - c_skip * x) / c_out).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def ours(config: TrainConfig, steps: int) -> float:
    trainer = Trainer(config)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(1)
    cases = [
        ("moons MLP (2-256-256-256-2), batch 512", "moons", 512, lambda: MLP(2)),
        ("digits U-Net, batch 128", "digits", 128, lambda: UNet()),
    ]
    for label, data, batch, make in cases:
        dataset = load_dataset(data)
        config = TrainConfig(data=data, batch_size=batch, tensorboard=False)
        best_plain, best_ours = float("inf"), float("inf")
        for _ in range(REPEATS):
            torch.manual_seed(0)
            best_plain = min(best_plain, plain_loop(make(), dataset.x, batch, STEPS))
            best_ours = min(best_ours, ours(config, STEPS))
        record = {
            "benchmark": "trainer_throughput",
            "case": label,
            "steps": STEPS,
            "plain_samples_per_s": round(STEPS * batch / best_plain),
            "ours_samples_per_s": round(STEPS * batch / best_ours),
            "time_ratio": round(best_ours / best_plain, 3),
        }
        print(json.dumps(record), flush=True)


def markdown(records: list[dict]) -> str:
    lines = [
        "| network and batch | plain loop samples/s | driftlab trainer samples/s | time ratio |",
        "|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['case']} | {r['plain_samples_per_s']:,} | {r['ours_samples_per_s']:,} | "
            f"{r['time_ratio']:.3f} |"
        )
    lines.append(
        f"\n{records[0]['steps']} steps each, one torch thread, best of {REPEATS} interleaved "
        "repeats. The plain loop is the bare EDM step; the trainer adds EMA, gradient "
        "clipping, learning-rate warm-up and per-noise-level loss bookkeeping."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
