"""driftlab.core.matmul: oneDNN float32 products agree with PyTorch's, forward and backward,
and everything outside their scope keeps PyTorch's own path."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional

from driftlab.core import matmul

needs_onednn = pytest.mark.skipif(
    matmul.backend() != "onednn", reason="oneDNN float32 products not available here"
)


def _reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, relu: bool) -> torch.Tensor:
    y = functional.linear(x.double(), w.double(), b.double())
    return torch.relu(y) if relu else y


@needs_onednn
@pytest.mark.parametrize("relu", [False, True])
def test_linear_and_its_gradients_match_float64(relu: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 400, generator=gen, requires_grad=True)
    w = torch.randn(300, 400, generator=gen, requires_grad=True)
    b = torch.randn(300, generator=gen, requires_grad=True)
    assert matmul.MIN_MACS <= 256 * 400 * 300  # the oneDNN autograd path
    y = matmul.linear(x, w, b, relu=relu)
    assert y.dtype == torch.float32 and y.grad_fn is not None
    assert type(y.grad_fn).__name__ == "_LinearBackward"
    ref = _reference(x, w, b, relu)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-4)
    grad_out = torch.randn(256, 300, generator=gen)
    grads = torch.autograd.grad(y, (x, w, b), grad_out)
    ref_grads = torch.autograd.grad(ref, (x, w, b), grad_out.double())
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)
    if relu:
        assert (y == 0).any()  # the ReLU did something to check


@needs_onednn
def test_no_grad_linear_and_mm_with_out() -> None:
    gen = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(128, 256, generator=gen), torch.randn(64, 256, generator=gen), None
    with torch.no_grad():
        y = matmul.linear(x, w, b, relu=True)
    torch.testing.assert_close(y, torch.relu(x @ w.T), rtol=1e-5, atol=1e-4)
    # mm of transposed views, written into a view of a larger buffer (a flat gradient)
    buffer = torch.full((3, 256, 64), 7.0)
    out = matmul.mm(x.t(), torch.randn(128, 64, generator=gen), out=buffer[1])
    assert out.data_ptr() == buffer[1].data_ptr()
    assert (buffer[0] == 7.0).all() and (buffer[2] == 7.0).all()


def test_outside_the_fast_path_it_is_pytorch_exactly() -> None:
    gen = torch.Generator().manual_seed(2)
    # float64, and a float32 product too small to be worth oneDNN's fixed cost
    for dtype, shape in ((torch.float64, (256, 400, 300)), (torch.float32, (8, 4, 16))):
        m, k, n = shape
        x = torch.randn(m, k, generator=gen, dtype=dtype, requires_grad=True)
        w = torch.randn(n, k, generator=gen, dtype=dtype)
        b = torch.randn(n, generator=gen, dtype=dtype)
        y = matmul.linear(x, w, b)
        assert torch.equal(y, functional.linear(x, w, b))
        assert type(y.grad_fn).__name__ == "AddmmBackward0"
        assert torch.equal(matmul.mm(x.detach(), w.t()), x.detach() @ w.t())
    # autocast keeps its own dtype rules
    x, w = torch.randn(256, 400, generator=gen), torch.randn(300, 400, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert matmul.linear(x, w).dtype == torch.bfloat16


@pytest.mark.parametrize(("value", "expected"), [("torch", "torch"), ("tpu", None)])
def test_backend_choice_from_the_environment(monkeypatch, value, expected) -> None:
    monkeypatch.setenv("DRIFTLAB_MATMUL", value)
    matmul.backend.cache_clear()
    try:
        if expected is None:
            with pytest.raises(ValueError, match=r"DRIFTLAB_MATMUL='tpu'.*auto, onednn, torch"):
                matmul.backend()
        else:
            assert matmul.backend() == expected
            x, w = torch.randn(256, 400), torch.randn(300, 400)
            assert torch.equal(matmul.linear(x, w), functional.linear(x, w))
    finally:
        monkeypatch.delenv("DRIFTLAB_MATMUL")
        matmul.backend.cache_clear()


@needs_onednn
def test_second_derivatives_through_linear() -> None:
    """A Hessian-vector product (TRPO's Fisher-vector product) through the oneDNN path
    equals PyTorch's."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(256, 400, generator=gen)
    w = torch.randn(300, 400, generator=gen) * 0.05
    v = torch.randn(300, 400, generator=gen)

    def hvp(fn) -> torch.Tensor:
        weight = w.clone().requires_grad_()
        loss = torch.tanh(fn(x, weight, None)).pow(2).sum()
        (grad,) = torch.autograd.grad(loss, weight, create_graph=True)
        (hv,) = torch.autograd.grad((grad * v).sum(), weight)
        return hv

    torch.testing.assert_close(hvp(matmul.linear), hvp(functional.linear), rtol=1e-4, atol=1e-3)
