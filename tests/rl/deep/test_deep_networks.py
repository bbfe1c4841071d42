"""The deep RL networks: the MLP's written-out back-propagation against autograd."""

from __future__ import annotations

import pytest
import torch

from driftlab.rl.deep.networks import MLP


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("sizes", [[3, 2], [4, 8, 2], [5, 16, 12, 3]])
def test_mlp_backward_equals_autograd(sizes, activation):
    torch.manual_seed(0)
    net = MLP(sizes, activation)
    x = torch.randn(7, sizes[0])
    weights = torch.randn(7, sizes[-1])
    (net(x) * weights).sum().backward()  # d loss / d out = weights
    expected = [p.grad.clone() for p in net.parameters()]
    for p in net.parameters():
        p.grad.fill_(123.0)  # set, not accumulated
    activations = net.activations(x)
    torch.testing.assert_close(activations[-1], net(x).detach())
    assert len(activations) == len(sizes)
    net.backward(activations, weights)
    for p, grad in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, grad, rtol=1e-5, atol=1e-6)


def test_mlp_backward_allocates_missing_gradients():
    net = MLP([2, 3, 1], "relu")
    x = torch.tensor([[1.0, -2.0], [0.5, 0.5]])
    net.backward(net.activations(x), torch.ones(2, 1))
    # the output bias collects the row sum of d loss / d out
    torch.testing.assert_close(net.layers[1].bias.grad, torch.tensor([2.0]))
    assert all(p.grad is not None for p in net.parameters())
