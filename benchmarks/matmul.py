"""Float32 matrix-product rates on one thread: PyTorch's default path against oneDNN.

For the products that dominate the deep RL updates (TD3's 256 x 400 x 300 layers, DQN's
64 x 256 x 256) and a large square one, the rate in GFLOP/s of ``torch.mm`` (MKL's
``sgemm`` in PyTorch's x86 builds) and of ``driftlab.core.matmul.mm`` (oneDNN where
``driftlab.core.matmul`` chooses it), each the median of rounds of repeated calls. Also
forward plus backward of one differentiable layer, ``functional.linear`` against
``driftlab.core.matmul.linear``. The CPU's model name goes with the records: the ratio is a
property of the machine (MKL runs its AVX2 kernels on AMD CPUs).

Prints one JSON line per product shape.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional

from driftlab.core import matmul

SHAPES = [(256, 400, 300), (64, 256, 256), (1024, 1024, 1024)]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def seconds_per_call(fn: Callable[[], object], calls: int, rounds: int = 7) -> float:
    for _ in range(max(3, calls // 10)):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    for m, k, n in SHAPES:
        a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
        flop = 2 * m * k * n
        calls = max(5, int(2e9 / flop))
        torch_s = seconds_per_call(lambda a=a, b=b: torch.mm(a, b), calls)
        ours_s = seconds_per_call(lambda a=a, b=b: matmul.mm(a, b), calls)
        x = a.clone().requires_grad_()
        w = b.t().contiguous().requires_grad_()
        grad = torch.randn(m, n, generator=gen)

        def layer(fn: Callable[..., torch.Tensor], x=x, w=w, grad=grad) -> None:
            torch.autograd.grad(fn(x, w), (x, w), grad)

        torch_layer_s = seconds_per_call(lambda: layer(functional.linear), max(3, calls // 3))
        ours_layer_s = seconds_per_call(lambda: layer(matmul.linear), max(3, calls // 3))
        print(
            json.dumps(
                {
                    "benchmark": "matmul",
                    "shape": [m, k, n],
                    "cpu": cpu_model(),
                    "torch": torch.__version__,
                    "backend": matmul.backend(),
                    "torch_gflops": round(flop / torch_s / 1e9, 1),
                    "driftlab_gflops": round(flop / ours_s / 1e9, 1),
                    "torch_layer_us": round(torch_layer_s * 1e6, 1),
                    "driftlab_layer_us": round(ours_layer_s * 1e6, 1),
                }
            ),
            flush=True,
        )


def markdown(records: list[dict]) -> str:
    """README table: rates and layer times per shape."""
    lines = [
        "| product m x k x n | torch.mm GFLOP/s | driftlab GFLOP/s | linear fwd+bwd, torch us "
        "| linear fwd+bwd, driftlab us | layer time ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        m, k, n = r["shape"]
        lines.append(
            f"| {m} x {k} x {n} | {r['torch_gflops']:.0f} | {r['driftlab_gflops']:.0f} "
            f"| {r['torch_layer_us']:.0f} | {r['driftlab_layer_us']:.0f} "
            f"| {r['driftlab_layer_us'] / r['torch_layer_us']:.2f} |"
        )
    if records:
        r = records[0]
        lines.append("")
        lines.append(
            f"One thread, float32, PyTorch {r['torch']}, {r['cpu']}; driftlab's products go "
            f"to {r['backend']}. Median of 7 rounds."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
