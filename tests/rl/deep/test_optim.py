"""FlatParameters: module parameters stay views of one flat tensor through backward, clipping,
optimiser steps and state_dict loading."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from driftlab.core.checkpoint import load_checkpoint, save_checkpoint
from driftlab.rl.deep.optim import FlatParameters, adam


def _nets(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return (
        nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)),
        nn.Linear(3, 1),
    )


def _loss(a: nn.Module, b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return (a(x) ** 2).sum() + (b(x) ** 3).sum()


def test_parameters_are_views_and_a_step_changes_outputs():
    a, b = _nets()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    before = a(x).detach().clone()
    flat = FlatParameters([*a.parameters(), *b.parameters()])
    assert flat.param.numel() == 3 * 4 + 4 + 4 * 2 + 2 + 3 + 1
    torch.testing.assert_close(a(x), before)  # flattening keeps the values
    for p in [*a.parameters(), *b.parameters()]:
        assert p.untyped_storage().data_ptr() == flat.param.untyped_storage().data_ptr()
    optimizer = adam(flat, lr=0.1)
    flat.zero_grad()
    _loss(a, b, x).backward()
    optimizer.step()
    # Adam's first step moves every parameter with a non-zero gradient by lr.
    assert (a(x) - before).abs().max() > 1e-2
    flat.param.data.zero_()
    assert torch.all(a(x) == 0)


def test_flat_gradient_equals_per_parameter_gradients_and_accumulates():
    a, b = _nets()
    ref_a, ref_b = copy.deepcopy(a), copy.deepcopy(b)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    flat = FlatParameters([*a.parameters(), *b.parameters()])
    flat.zero_grad()
    _loss(a, b, x).backward()
    _loss(a, b, 2 * x).backward()  # accumulates, as autograd does
    _loss(ref_a, ref_b, x).backward()
    _loss(ref_a, ref_b, 2 * x).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in [*ref_a.parameters(), *ref_b.parameters()]])
    torch.testing.assert_close(flat.param.grad, expected)
    ours, theirs = [*a.parameters(), *b.parameters()], [*ref_a.parameters(), *ref_b.parameters()]
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    flat.zero_grad()
    assert torch.all(flat.param.grad == 0)
    assert all(torch.all(p.grad == 0) for p in a.parameters())


def test_clip_grad_norm_matches_torch():
    for max_norm in (0.05, 1e6):
        a, b = _nets()
        ref_a, ref_b = copy.deepcopy(a), copy.deepcopy(b)
        x = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
        flat = FlatParameters([*a.parameters(), *b.parameters()])
        flat.zero_grad()
        _loss(a, b, x).backward()
        _loss(ref_a, ref_b, x).backward()
        ref_params = [*ref_a.parameters(), *ref_b.parameters()]
        expected_norm = torch.nn.utils.clip_grad_norm_(ref_params, max_norm)
        norm = flat.clip_grad_norm(max_norm)
        torch.testing.assert_close(norm, expected_norm)
        expected = torch.cat([p.grad.reshape(-1) for p in ref_params])
        torch.testing.assert_close(flat.param.grad, expected)
    # None only measures the norm.
    grad = flat.param.grad.clone()
    torch.testing.assert_close(flat.clip_grad_norm(None), torch.linalg.vector_norm(grad))
    torch.testing.assert_close(flat.param.grad, grad)


def test_save_and_load_after_flattening_keeps_views(tmp_path):
    a, b = _nets(seed=0)
    flat = FlatParameters([*a.parameters(), *b.parameters()])
    save_checkpoint(tmp_path / "nets", {"a": a.state_dict(), "b": b.state_dict()})
    state = load_checkpoint(tmp_path / "nets")
    # A module whose tensors were saved as views loads into a fresh, differently seeded copy.
    c, _ = _nets(seed=5)
    c.load_state_dict(state["a"])
    x = torch.randn(4, 3)
    torch.testing.assert_close(c(x), a(x))
    # Loading into the flattened modules copies in place: the views survive.
    other_a, other_b = _nets(seed=7)
    a.load_state_dict(other_a.state_dict())
    b.load_state_dict(other_b.state_dict())
    torch.testing.assert_close(a(x), other_a(x))
    expected = torch.cat([p.reshape(-1) for p in [*other_a.parameters(), *other_b.parameters()]])
    torch.testing.assert_close(flat.param.data, expected.detach())


@pytest.mark.parametrize("fused", [True, False])
def test_flat_adam_equals_torch_adam_and_resumes_exactly(fused):
    from driftlab.rl.deep.optim import FlatAdam

    torch.manual_seed(0)
    ours, reference = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    reference.load_state_dict(ours.state_dict())
    flat = FlatParameters(ours.parameters())
    optimizer = FlatAdam(flat, lr=1e-2, eps=1e-5)
    assert optimizer.fused  # the kernel exists in the torch versions we support
    optimizer.fused = fused  # False: the five in-place ops
    torch_optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2, eps=1e-5)
    x = torch.randn(16, 4)
    for _ in range(30):
        flat.zero_grad()
        ours(x).pow(2).sum().backward()
        optimizer.step()
        torch_optimizer.zero_grad()
        reference(x).pow(2).sum().backward()
        torch_optimizer.step()
    for p, q in zip(ours.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), (p - q).abs().max()
    # A copy restored from the state dict takes the same next step.
    twin = torch.nn.Linear(4, 3)
    twin.load_state_dict(ours.state_dict())
    twin_flat = FlatParameters(twin.parameters())
    twin_optimizer = FlatAdam(twin_flat, lr=0.5)
    twin_optimizer.fused = fused
    twin_optimizer.load_state_dict(optimizer.state_dict())
    assert twin_optimizer.param_groups[0]["lr"] == 1e-2
    for f, opt, net in ((flat, optimizer, ours), (twin_flat, twin_optimizer, twin)):
        f.zero_grad()
        net(x).pow(2).sum().backward()
        opt.step()
    assert torch.equal(flat.param, twin_flat.param)
    assert twin_optimizer.steps == optimizer.steps == 31
