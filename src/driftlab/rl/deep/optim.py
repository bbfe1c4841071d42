"""Parameters of several networks in one flat tensor, so that an optimiser step is one kernel.

The learners here are small MLPs updated thousands of times: per-tensor bookkeeping (one
Adam update, one norm and one scale per weight and bias) costs more than the arithmetic.
:class:`FlatParameters` re-homes every parameter and its gradient as views into two
contiguous tensors; the networks are used exactly as before, while zeroing, clipping and
Adam act on one tensor each.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

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


# PyTorch's fused Adam kernel (CPU since 2.4); a private op, so its absence is tolerated.
_FUSED_ADAM = getattr(torch, "_fused_adam_", None)
_FUSED_DTYPES = (torch.float32, torch.float64)


class FlatAdam:
    """Adam (Kingma & Ba 2015, Algorithm 1) on one flat parameter tensor:

        m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2,
        theta <- theta - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps),

    the update of ``torch.optim.Adam`` (to float rounding). A learner updates its small
    networks thousands of times, and ``torch.optim.Optimizer.step``'s own Python (hooks,
    parameter-group bookkeeping) cost more than the arithmetic; this keeps only the
    arithmetic: PyTorch's fused Adam kernel (the one ``torch.optim.Adam(fused=True)`` calls;
    24 us against 69 us for five in-place ops on DQN's 67k parameters, and 42 us through
    ``torch.optim.Adam``), or the five in-place ops where the kernel is missing.
    ``param_groups``, ``state_dict`` and ``load_state_dict`` work as for a torch optimiser
    with one group.
    """

    def __init__(
        self,
        flat: FlatParameters,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.param = flat.param
        self.param_groups = [{"lr": lr, "betas": betas, "eps": eps}]
        self.exp_avg = torch.zeros_like(self.param)
        self.exp_avg_sq = torch.zeros_like(self.param)
        # The fused kernel reads the step count from a tensor (float32, as torch.optim.Adam's).
        self.step_count = torch.zeros((), dtype=torch.float32)
        self.fused = _FUSED_ADAM is not None and self.param.dtype in _FUSED_DTYPES

    @property
    def steps(self) -> int:
        return int(self.step_count)

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        (b1, b2), eps, lr = group["betas"], group["eps"], group["lr"]
        grad = self.param.grad
        self.step_count += 1  # the kernel reads t, as torch.optim.Adam's fused path passes it
        if self.fused:
            _FUSED_ADAM(
                [self.param.data],
                [grad],
                [self.exp_avg],
                [self.exp_avg_sq],
                [],
                [self.step_count],
                lr=lr,
                beta1=b1,
                beta2=b2,
                weight_decay=0.0,
                eps=eps,
                amsgrad=False,
                maximize=False,
            )
            return
        t = self.steps
        self.exp_avg.lerp_(grad, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - b2**t)).add_(eps)
        self.param.data.addcdiv_(self.exp_avg, denom, value=-lr / (1 - b1**t))

    def state_dict(self) -> dict[str, Any]:
        """In ``torch.optim.Adam``'s layout: ``state[0]`` holds the moments and step count."""
        return {
            "state": {
                0: {
                    "step": self.step_count.clone(),
                    "exp_avg": self.exp_avg,
                    "exp_avg_sq": self.exp_avg_sq,
                }
            },
            "param_groups": [{**self.param_groups[0], "params": [0]}],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        group = {k: v for k, v in state["param_groups"][0].items() if k != "params"}
        group["betas"] = tuple(group["betas"])
        self.param_groups = [group]
        moments = state["state"][0]
        self.exp_avg.copy_(moments["exp_avg"])
        self.exp_avg_sq.copy_(moments["exp_avg_sq"])
        self.step_count.fill_(float(moments["step"]))


def adam(flat: FlatParameters, lr: float, eps: float = 1e-8) -> FlatAdam:
    """Adam over a flat parameter (see :class:`FlatAdam`)."""
    return FlatAdam(flat, lr=lr, eps=eps)
