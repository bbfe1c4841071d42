"""Float32 matrix products on the CPU through oneDNN where it is faster than the default.

PyTorch's CPU builds send a float32 ``mm``/``addmm``/``linear`` to MKL's ``sgemm``. On AMD
CPUs MKL runs its AVX2 kernels even where the core has AVX-512: on this project's benchmark
machine (AMD EPYC, Zen 5, one thread) a ``[256, 400] x [400, 300]`` product runs at
105 GFLOP/s through ``torch.mm`` and at 237 GFLOP/s through oneDNN, which PyTorch also ships
and which picks its kernels by instruction set. PyTorch reaches oneDNN's float32 products
only through an operator of its own (``torch.ops.mkldnn._linear_pointwise``, the one its
compiler emits), which has no autograd formula; :func:`linear` adds one.

A oneDNN call costs about 9 us more than an MKL call, so only products of at least
:data:`MIN_MACS` multiply-adds go to it; smaller ones, other dtypes, other devices and
products under autocast keep PyTorch's own path, and so does every product autograd records
inside a backward pass (a second derivative, as in TRPO's Fisher-vector products), since
oneDNN's has no derivative. The two paths agree to float32 rounding (they sum in different
orders), and each is deterministic on one machine.

``DRIFTLAB_MATMUL`` chooses: ``auto`` (default: oneDNN where available), ``onednn`` (an
error where it is not available) or ``torch`` (never oneDNN).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from torch.nn import functional

# Below this many multiply-adds (M K N) oneDNN's fixed cost (about 9 us a call, and a
# Python autograd node for a differentiable product) outweighs its faster kernels. Measured
# on the machine above, one thread: at 2^20 ([256, 64] x [64, 64]) a product takes 20-22 us
# either way and the weight gradient's transposed product 30 us on oneDNN against 22 us; at
# 2^21 ([512, 64] x [64, 64]) 29 us against 41 us, the transposed one 44 against 43; a
# differentiable layer's forward and backward break even near 1.5 * 2^20.
MIN_MACS = 1 << 21
BACKENDS = ("auto", "onednn", "torch")


@functools.cache
def _onednn_linear() -> Any:
    """oneDNN's ``linear`` operator, or None when this PyTorch build lacks it."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        op = torch.ops.mkldnn._linear_pointwise.default
        probe = torch.ones(2, 3)
        op(probe, torch.ones(4, 3), None, "none", [], "")
    except (AttributeError, RuntimeError):
        return None
    return op


@functools.cache
def backend() -> str:
    """``"onednn"`` or ``"torch"``: what large float32 CPU products use in this process."""
    choice = os.environ.get("DRIFTLAB_MATMUL", "auto")
    if choice not in BACKENDS:
        raise ValueError(f"DRIFTLAB_MATMUL={choice!r}: expected one of {', '.join(BACKENDS)}")
    if choice == "torch":
        return "torch"
    if _onednn_linear() is None:
        if choice == "onednn":
            raise RuntimeError("DRIFTLAB_MATMUL=onednn, but this PyTorch build has no oneDNN")
        return "torch"
    return "onednn"


def _use_onednn(a: torch.Tensor, b: torch.Tensor, macs: int) -> bool:
    return b.dim() == 2 and b.dtype == a.dtype and b.device == a.device and uses_onednn(a, macs)


def uses_onednn(x: torch.Tensor, macs: int) -> bool:
    """Whether a product of 2-D ``x`` (and a weight of its dtype and device) of ``macs``
    multiply-adds goes to oneDNN."""
    return (
        macs >= MIN_MACS
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.dim() == 2
        and not torch.is_autocast_enabled("cpu")
        and backend() == "onednn"
    )


def mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b`` for 2-D ``a`` ``[m, k]`` and ``b`` ``[k, n]`` (written into ``out`` when
    given); differentiable (through PyTorch's own product when autograd records it)."""
    m, k = a.shape
    n = b.shape[-1]
    # oneDNN's product has no derivative: where autograd records (a double backward through
    # :class:`_Linear`, as in TRPO's Fisher-vector products), PyTorch's mm does the work.
    recording = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
    if not recording and _use_onednn(a, b, m * k * n):
        # oneDNN's linear takes the weight as [n, k]; a transposed view costs nothing.
        product = _onednn_linear()(a, b.t(), None, "none", [], "")
        return product if out is None else out.copy_(product)
    return torch.mm(a, b, out=out)


class _Linear(torch.autograd.Function):
    """``y = x W^T + b`` (then ``relu`` when asked) on oneDNN, and its backward
    ``dx = g W``, ``dW = g^T x``, ``db = sum_rows g``, each product through :func:`mm`."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool
    ) -> torch.Tensor:
        y = _onednn_linear()(x, weight, bias, "relu" if relu else "none", [], "")
        ctx.save_for_backward(x, weight, y if relu else None)
        ctx.has_bias, ctx.relu = bias is not None, relu
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, y = ctx.saved_tensors
        if ctx.relu:
            grad = torch.ops.aten.threshold_backward(grad, y, 0)
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        grad_x = mm(grad, weight) if need_x else None
        grad_w = mm(grad.t(), x) if need_w else None
        grad_b = grad.sum(0) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    relu: bool = False,
) -> torch.Tensor:
    """``functional.linear(x, weight, bias)`` (``weight`` ``[out, in]``), followed by a ReLU
    when ``relu``; differentiable; through oneDNN when the product is large enough (see the
    module docstring), where the ReLU is fused into the product."""
    macs = x.shape[0] * weight.shape[0] * weight.shape[-1]
    if (
        x.dim() == 2
        and _use_onednn(x, weight, macs)
        and (bias is None or bias.dtype == torch.float32)
    ):
        params = (weight,) if bias is None else (weight, bias)
        if not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params))):
            return _onednn_linear()(x, weight, bias, "relu" if relu else "none", [], "")
        return _Linear.apply(x, weight, bias, relu)
    y = functional.linear(x, weight, bias)
    return y.relu_() if relu else y
