"""Several critics of one shape evaluated as one network (TD3's twin critics).

Evaluating ``n`` separate MLPs costs ``n`` kernels per layer, each forward and backward;
stacking their weights ``[n, in, out]`` makes every hidden layer one batched matrix product
(``torch.baddbmm``) for all of them, and their optimiser step one pass over one tensor.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from driftlab.core.config import check_choice, check_int
from driftlab.rl.deep.networks import ACTIVATIONS, ContinuousQNet


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
        x = torch.cat([obs, actions], dim=-1).expand(self.n, -1, -1)
        # (Indexing, not slicing: a slice of a ParameterList builds a new module per call.)
        for i in range(len(self.weights) - 1):
            x = self.activation(torch.baddbmm(self.biases[i], x, self.weights[i]))
        # A width-1 output layer is one dot product per row: as a product and a sum it is
        # about 5x faster than batched GEMM's narrow-matrix path, forward and backward.
        # In float32 even where the hidden layers ran in bfloat16 (autocast): q keeps full
        # precision, and a mixed-dtype product would take a slow path.
        return (x.float() * self.weights[-1].transpose(1, 2)).sum(-1) + self.biases[-1][:, :, 0]

    def member(self, index: int, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``q_index(s, a)`` alone, shape ``[batch]`` (the actor's objective needs only one)."""
        x = torch.cat([obs, actions], dim=-1)
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.addmm(bias[index], x, weight[index])
            if i < last:
                x = self.activation(x)
        return x.squeeze(-1)
