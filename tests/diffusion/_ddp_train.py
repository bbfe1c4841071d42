"""Worker for the data-parallel test: trains a few steps under torchrun and saves weights."""

import sys

import torch

from driftlab.core import save_checkpoint
from driftlab.diffusion.trainer import TrainConfig, Trainer

torch.set_num_threads(1)
out, steps = sys.argv[1], int(sys.argv[2])
config = TrainConfig(
    data="moons",
    n_train=512,
    steps=steps,
    batch_size=64,
    warmup_steps=2,
    network_options={"hidden": 32, "depth": 2},
    tensorboard=False,
    log_every=1000,
)
trainer = Trainer(config)
trainer.train(show_progress=False)
if trainer.is_main:
    save_checkpoint(out, {"net": trainer.net.state_dict()})
trainer.close()
