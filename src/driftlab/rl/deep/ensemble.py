"""Several critics of one shape evaluated as one network (TD3's twin critics).

Evaluating ``n`` separate MLPs costs ``n`` kernels per layer, each forward and backward;
stacking their weights ``[n, in, out]`` makes every hidden layer one batched matrix product
(``torch.baddbmm``) for all of them, and their optimiser step one pass over one tensor.
Where a layer's product is large enough for oneDNN (:mod:`driftlab.core.matmul`; TD3's
400 x 300 layers on a batch of 256), each member's runs on its own there instead: two
oneDNN products take less than half the time of one batched product through MKL on AMD
CPUs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from driftlab.core import matmul
from driftlab.core.config import check_choice, check_int
from driftlab.rl.deep.networks import ACTIVATIONS, ContinuousQNet, activation_backward


class EnsembleQNet(nn.Module):
    """``n`` critics ``q_i(s, a)``, each an MLP on ``[s, a]``, computed together.

    Layer ``l`` holds ``weights[l]`` of shape ``[n, in, out]`` and ``biases[l]`` of shape
    ``[n, 1, out]``; member ``i`` is exactly the MLP with ``weight = weights[l][i].T``. Each
    member starts as a fresh :class:`~driftlab.rl.deep.networks.ContinuousQNet` (PyTorch's
    default initialisation), independently of the others.
    """

    def __init__(
        self,
        n: int,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int],
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.n = check_int("n", n, minimum=1)
        check_choice("activation", activation, ACTIVATIONS)
        self.activation = ACTIVATIONS[activation]
        sizes = [obs_dim + action_dim, *hidden_sizes, 1]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(n, a, b)) for a, b in itertools.pairwise(sizes)
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.empty(n, 1, b)) for _, b in itertools.pairwise(sizes)
        )
        self.copy_from(
            [ContinuousQNet(obs_dim, action_dim, tuple(hidden_sizes), activation) for _ in range(n)]
        )

    @torch.no_grad()
    def copy_from(self, critics: Sequence[ContinuousQNet]) -> None:
        """Make member ``i`` equal to ``critics[i]``."""
        if len(critics) != self.n:
            raise ValueError(f"need {self.n} critics, got {len(critics)}")
        for i, critic in enumerate(critics):
            for weight, bias, linear in zip(
                self.weights, self.biases, critic.net.layers, strict=True
            ):
                weight[i].copy_(linear.weight.T)
                bias[i, 0].copy_(linear.bias)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``[q_1(s, a), ..., q_n(s, a)]`` of shape ``[n, batch]``."""
        x = torch.cat([obs, actions], dim=-1)
        if self._by_member(x):
            layers = self._layers(x, range(self.n))
            return torch.stack([self._output(m, h[-1]) for m, h in enumerate(layers)])
        hidden = x.expand(self.n, -1, -1)
        # (Indexing, not slicing: a slice of a ParameterList builds a new module per call.)
        for i in range(len(self.weights) - 1):
            hidden = self.activation(torch.baddbmm(self.biases[i], hidden, self.weights[i]))
        # A width-1 output layer is one dot product per row: as a product and a sum it is
        # about 5x faster than batched GEMM's narrow-matrix path, forward and backward.
        # In float32 even where the hidden layers ran in bfloat16 (autocast): q keeps full
        # precision, and a mixed-dtype product would take a slow path.
        last = self.weights[-1].transpose(1, 2)
        return (hidden.float() * last).sum(-1) + self.biases[-1][:, :, 0]

    def member(
        self, index: int, obs: torch.Tensor, actions: torch.Tensor, frozen: bool = False
    ) -> torch.Tensor:
        """``q_index(s, a)`` alone, shape ``[batch]`` (the actor's objective needs only one).
        With ``frozen`` the critic's parameters are constants: gradients reach ``obs`` and
        ``actions`` only, and no product is spent on the parameters' gradients."""
        x = torch.cat([obs, actions], dim=-1)
        (layers,) = self._layers(x, [index], frozen)
        return self._output(index, layers[-1], frozen)

    def _by_member(self, x: torch.Tensor) -> bool:
        """Whether the hidden layers run member by member on oneDNN
        (:mod:`driftlab.core.matmul`) rather than as one batched product through MKL, which
        is half as fast on AMD CPUs."""
        widest = max(w.shape[1] * w.shape[2] for w in self.weights)
        return matmul.uses_onednn(x, x.shape[0] * widest)

    def _layers(
        self, x: torch.Tensor, members: Sequence[int], frozen: bool = False
    ) -> list[list[torch.Tensor]]:
        """For each of ``members``: ``[x, h_1, ..., h_L]``, the input and every hidden layer
        after its activation, one product per member and layer. With ``frozen`` the
        parameters are constants (no gradient)."""
        relu = self.activation is torch.relu
        layers = [[x] for _ in members]
        for i in range(len(self.weights) - 1):
            weight, bias = self.weights[i], self.biases[i][:, 0]
            if frozen:
                weight, bias = weight.detach(), bias.detach()
            # unbind, not indexing: its backward stacks the members' gradients in one copy
            # where indexing's fills a zero tensor per member.
            weights, biases = weight.unbind(0), bias.unbind(0)
            for h, m in zip(layers, members, strict=True):
                out = matmul.linear(h[-1], weights[m].t(), biases[m], relu=relu)
                h.append(out if relu else self.activation(out))
        return layers

    def _output(self, member: int, hidden: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """``q_member`` from its last hidden layer: one matrix-vector product, in float32
        even where the hidden layers ran in bfloat16 (autocast)."""
        weight, bias = self.weights[-1][member, :, 0], self.biases[-1][member, 0]
        if frozen:
            weight, bias = weight.detach(), bias.detach()
        return torch.addmv(bias, hidden.float(), weight)

    # -- back-propagation by hand (the learners' float32 updates) ---------------------------

    @torch.no_grad()
    def activations(
        self, obs: torch.Tensor, actions: torch.Tensor, members: Sequence[int] | None = None
    ) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
        """Without recording a graph: for each of ``members`` (all by default) the list
        ``[x, h_1, ..., h_L]`` that :meth:`backward` and :meth:`input_grad` take, and
        ``q`` of shape ``[len(members), batch]``."""
        members = range(self.n) if members is None else members
        layers = self._layers(torch.cat([obs, actions], dim=-1), members)
        q = torch.stack([self._output(m, h[-1]) for m, h in zip(members, layers, strict=True)])
        return layers, q

    @torch.no_grad()
    def backward(self, layers: list[list[torch.Tensor]], grad_q: torch.Tensor) -> None:
        """Sets (does not accumulate) every parameter's ``.grad`` to the gradient of a loss
        whose gradient with respect to ``q`` (``[n, batch]``) is ``grad_q``, from the
        :meth:`activations` of all members. For layer ``l`` with input ``h`` and output
        gradient ``g``: ``dW = h^T g``, ``db = sum_rows g``; ``g W^T`` goes on down through
        the activation's derivative. The products are the ones autograd would compute (a
        test compares), without its graph bookkeeping and gradient accumulation, which cost
        TD3's update as much as a third of its time."""
        for param in (*self.weights, *self.biases):
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        for m, hidden in enumerate(layers):
            g = grad_q[m]
            torch.mv(hidden[-1].t(), g, out=self.weights[-1].grad[m, :, 0])
            torch.sum(g, 0, keepdim=True, out=self.biases[-1].grad[m, 0])
            g = torch.outer(g, self.weights[-1][m, :, 0])
            for i in range(len(self.weights) - 2, -1, -1):
                g = activation_backward(g, hidden[i + 1], self.activation)
                matmul.mm(hidden[i].t(), g, out=self.weights[i].grad[m])
                torch.sum(g, 0, out=self.biases[i].grad[m, 0])
                if i > 0:
                    g = matmul.mm(g, self.weights[i][m].t())

    @torch.no_grad()
    def input_grad(
        self, member: int, layers: list[torch.Tensor], grad_q: torch.Tensor
    ) -> torch.Tensor:
        """The gradient with respect to the input ``[s, a]`` (``[batch, obs + action]``) of a
        loss whose gradient with respect to ``q_member`` is ``grad_q``, from the member's
        :meth:`activations`; the parameters are constants (DDPG's actor update)."""
        g = torch.outer(grad_q, self.weights[-1][member, :, 0])
        for i in range(len(self.weights) - 2, -1, -1):
            g = matmul.mm(
                activation_backward(g, layers[i + 1], self.activation),
                self.weights[i][member].t(),
            )
        return g
