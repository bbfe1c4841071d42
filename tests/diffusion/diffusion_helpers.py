"""What several diffusion tests share."""

import torch

from driftlab.diffusion import Denoiser
from driftlab.diffusion.networks import MLP


def perturbed_mlp_denoiser(precond="vp", dtype=torch.float32):
    """A small MLP denoiser (seed 0) whose weights are moved off their initialisation, so
    that its output is not zero (the output layer starts at zero)."""
    torch.manual_seed(0)
    denoiser = Denoiser(MLP(2, hidden=16, depth=2), precond)
    with torch.no_grad():
        for p in denoiser.net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return denoiser.to(dtype)
