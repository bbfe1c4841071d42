"""Test-wide settings: one torch thread per worker (pytest-xdist runs two workers on the
two cores; more threads would oversubscribe them and make timings erratic)."""

import torch

torch.set_num_threads(1)
