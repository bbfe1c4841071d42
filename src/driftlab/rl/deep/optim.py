"""Parameters of several networks in one flat tensor, so that an optimiser step is one kernel.

The learners here are small MLPs updated thousands of times: per-tensor bookkeeping (one
Adam update, one norm and one scale per weight and bias) costs more than the arithmetic.
:class:`FlatParameters` re-homes every parameter and its gradient as views into two
contiguous tensors; the networks are used exactly as before, while zeroing, clipping and
Adam act on one tensor each.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class FlatParameters:
    """``params`` become views of ``self.param`` (their gradients views of ``self.param.grad``).

    Autograd accumulates each gradient into its view, so after ``backward`` the flat gradient
    is complete. Loading a module's ``state_dict`` copies in place and keeps the views.
    """

    def __init__(self, params: Iterable[nn.Parameter]) -> None:
        params = list(params)
        total = sum(p.numel() for p in params)
        self.param = nn.Parameter(torch.empty(total))
        self.param.grad = torch.zeros(total)
        offset = 0
        for p in params:
            n = p.numel()
            self.param.data[offset : offset + n] = p.data.reshape(-1)
            p.data = self.param.data[offset : offset + n].view_as(p)
            p.grad = self.param.grad[offset : offset + n].view_as(p)
            offset += n

    def zero_grad(self) -> None:
        self.param.grad.zero_()

    def clip_grad_norm(self, max_norm: float | None) -> torch.Tensor:
        """Scale the gradient to global L2 norm at most ``max_norm`` (Pascanu et al. 2013);
        returns the norm before clipping."""
        norm = torch.linalg.vector_norm(self.param.grad)
        if max_norm is not None:
            self.param.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        return norm


def adam(flat: FlatParameters, lr: float, eps: float = 1e-8) -> torch.optim.Adam:
    """Adam over a flat parameter (the fused kernel: one pass over all parameters)."""
    return torch.optim.Adam([flat.param], lr=lr, eps=eps, fused=True)
