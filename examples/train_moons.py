"""Train a small EDM model on two moons, sample it in another formulation's coordinates,
and evaluate it against held-out data.

    python examples/train_moons.py [steps]
"""

import sys
import tempfile
from pathlib import Path

from driftlab.diffusion.runs import evaluate_run, generate, train_run
from driftlab.diffusion.trainer import TrainConfig, load_trained

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
run_dir = Path(tempfile.mkdtemp()) / "moons"
config = TrainConfig(data="moons", formulation="edm", steps=steps, tensorboard=False)
train_run(config, run_dir)

trainer = load_trained(run_dir)
x, _ = generate(trainer, n=2000, sampler="ddim", steps=50, formulation="vp")
print(f"{len(x)} samples drawn with DDIM in VP coordinates from an EDM model")

report = evaluate_run(run_dir, sampler="heun", steps=18, n=2000, likelihood_points=100)
print(
    f"SWD {report['swd']:.4f} (floor {report['swd_floor']:.4f}), "
    f"test {report['bits_per_dim']:.3f} bits/dim; pictures in {run_dir}"
)
