"""Networks of the deep RL learners: MLP bodies, stochastic and deterministic policies, critics.

Policies compute their log-probabilities and entropies in closed form instead of through
``torch.distributions`` objects: the formulas are one line each, and a rollout step then
costs one network call and a few tensor ops.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional

from driftlab.core import matmul
from driftlab.core.config import ConfigError, check_choice


class _Tanh(torch.autograd.Function):
    """``tanh(x) = 2 sigmoid(2x) - 1``, with tanh's own backward ``g (1 - y^2)``.

    The same function to float32 rounding (|error| < 2e-7); on the CPU builds we measured,
    PyTorch's sigmoid kernel is several times faster than its tanh kernel, and tanh layers
    are a large share of a small policy network's time."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def tanh(x: torch.Tensor) -> torch.Tensor:
    if x.numel() < 4096:  # small batches (acting): the autograd.Function's own cost dominates
        return torch.tanh(x)
    return _Tanh.apply(x)


ACTIVATIONS = {"tanh": tanh, "relu": torch.relu}


def activation_backward(grad: torch.Tensor, output: torch.Tensor, activation: Any) -> torch.Tensor:
    """``grad`` taken back through ``activation`` (one of :data:`ACTIVATIONS`) from its
    ``output`` ``h``: times ``1[h > 0]`` for ReLU, ``1 - h^2`` for tanh."""
    if activation is torch.relu:
        return torch.ops.aten.threshold_backward(grad, output, 0)
    return torch.ops.aten.tanh_backward(grad, output)


class MLP(nn.Module):
    """``in -> hidden... -> out`` with one activation between layers.

    Its forward pass calls ``functional.linear`` and the activation directly: the arithmetic
    of an ``nn.Sequential`` without a module call per layer, which is most of the time of a
    small network on a small batch. Batches large enough for some layer's product to gain
    from oneDNN go through :func:`driftlab.core.matmul.linear` instead; the test for that
    is one multiplication per call, not one per layer."""

    def __init__(self, sizes: list[int], activation: str) -> None:
        super().__init__()
        check_choice("activation", activation, ACTIVATIONS)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.activation = ACTIVATIONS[activation]
        self.widest = max(a * b for a, b in itertools.pairwise(sizes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        if x.dim() != 2 or x.shape[0] * self.widest < matmul.MIN_MACS:
            for i, layer in enumerate(self.layers):
                x = functional.linear(x, layer.weight, layer.bias)
                if i < last:
                    x = self.activation(x)
            return x
        relu = self.activation is torch.relu
        for i, layer in enumerate(self.layers):
            x = matmul.linear(x, layer.weight, layer.bias, relu=relu and i < last)
            if i < last and not relu:
                x = self.activation(x)
        return x

    @torch.no_grad()
    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[x, h_1, ..., h_L, out]``: the input and every layer's output (after its
        activation), without recording a graph; :meth:`backward` takes them."""
        outputs = [x]
        last = len(self.layers) - 1
        relu = self.activation is torch.relu
        for i, layer in enumerate(self.layers):
            x = matmul.linear(x, layer.weight, layer.bias, relu=relu and i < last)
            if i < last and not relu:
                x = tanh(x)
            outputs.append(x)
        return outputs

    @torch.no_grad()
    def backward(self, activations: list[torch.Tensor], grad_out: torch.Tensor) -> None:
        """Back-propagation written out: each parameter's ``.grad`` is *set* (not
        accumulated) to the gradient of a loss whose gradient with respect to the output is
        ``grad_out``, from the :meth:`activations` of the same input. For layer ``l`` with
        input ``h`` and output gradient ``g``: ``dW = g^T h``, ``db = sum_rows g``, and the
        input's gradient ``g W`` goes through the activation's derivative (``1[h > 0]`` for
        ReLU, ``1 - h^2`` for tanh).

        Autograd computes the same products; a small network updated tens of thousands of
        times spends a large share of its time in autograd's graph bookkeeping (DQN's
        gradient step on CartPole's 256-256 network, clipping and Adam included: 410 us
        this way, 490 us through autograd). The first layer's input gradient is not needed
        and not computed.
        """
        grad = grad_out
        for i in range(len(self.layers) - 1, -1, -1):
            layer, inputs = self.layers[i], activations[i]
            for param in (layer.weight, layer.bias):
                if param.grad is None:
                    param.grad = torch.empty_like(param)
            matmul.mm(grad.t(), inputs, out=layer.weight.grad)
            torch.sum(grad, 0, out=layer.bias.grad)
            if i > 0:
                grad = activation_backward(matmul.mm(grad, layer.weight), inputs, self.activation)


def mlp(
    in_dim: int,
    hidden_sizes: tuple[int, ...] | list[int],
    out_dim: int,
    activation: str = "tanh",
    out_gain: float = 1.0,
    ortho_init: bool = True,
) -> MLP:
    """``in -> hidden... -> out``. With ``ortho_init`` weights are orthogonal with gain
    sqrt(2) in hidden layers and ``out_gain`` at the output, biases zero (the initialisation
    of OpenAI Baselines' PPO, which matters for PPO's results); otherwise PyTorch's default."""
    net = MLP([in_dim, *hidden_sizes, out_dim], activation)
    if ortho_init:
        for i, linear in enumerate(net.layers):
            last = i == len(net.layers) - 1
            nn.init.orthogonal_(linear.weight, gain=out_gain if last else math.sqrt(2))
            nn.init.zeros_(linear.bias)
    return net


def obs_dim(space: gym.Space) -> int:
    if not isinstance(space, gym.spaces.Box):
        raise ConfigError(f"observations must be a Box space, got {space}")
    return int(np.prod(space.shape))


class CategoricalPolicy(nn.Module):
    """``pi(a|s) = softmax(logits(s))_a`` for a Discrete action space."""

    discrete = True

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden_sizes: tuple[int, ...],
        activation: str = "tanh",
        ortho_init: bool = True,
    ) -> None:
        super().__init__()
        self.logits = mlp(obs_dim, hidden_sizes, n_actions, activation, 0.01, ortho_init)

    def sample(
        self, obs: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampled actions and their log-probabilities."""
        log_probs = torch.log_softmax(self.logits(obs), dim=-1)
        actions = torch.multinomial(log_probs.exp(), 1, generator=generator)
        return actions.squeeze(-1), log_probs.gather(-1, actions).squeeze(-1)

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.logits(obs).argmax(dim=-1)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``log pi(a|s)`` of each row."""
        log_probs = torch.log_softmax(self.logits(obs), dim=-1)
        return log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def log_prob_entropy(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``log pi(a|s)`` and the entropy ``-sum_a pi log pi`` of each row."""
        log_probs = torch.log_softmax(self.logits(obs), dim=-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        return log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1), entropy


class GaussianPolicy(nn.Module):
    """``pi(a|s) = N(mu(s), diag(exp(log_std))^2)`` with a state-independent ``log_std``
    (Schulman et al. 2015/2017's continuous-control policy). Actions are unbounded here; the
    learner clips them to the action box when stepping the environment."""

    discrete = False

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: tuple[int, ...],
        activation: str = "tanh",
        ortho_init: bool = True,
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.mean = mlp(obs_dim, hidden_sizes, action_dim, activation, 0.01, ortho_init)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))

    def sample(
        self, obs: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mean(obs)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        actions = mean + self.log_std.exp() * noise
        return actions, self._log_prob(noise)

    def _log_prob(self, noise: torch.Tensor) -> torch.Tensor:
        # log N(a; mu, sigma) = -|z|^2/2 - sum log sigma - d/2 log(2 pi), z = (a - mu)/sigma
        d = noise.shape[-1]
        return -0.5 * noise.pow(2).sum(-1) - self.log_std.sum() - 0.5 * d * math.log(2 * math.pi)

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mean(obs)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self._log_prob((actions - self.mean(obs)) * torch.exp(-self.log_std))

    def log_prob_entropy(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        noise = (actions - self.mean(obs)) * torch.exp(-self.log_std)
        entropy = (self.log_std + 0.5 * math.log(2 * math.pi * math.e)).sum()
        return self._log_prob(noise), entropy.expand(noise.shape[0])


def make_policy(
    observation_space: gym.Space,
    action_space: gym.Space,
    hidden_sizes: tuple[int, ...],
    activation: str = "tanh",
    ortho_init: bool = True,
    log_std_init: float = 0.0,
) -> CategoricalPolicy | GaussianPolicy:
    """A categorical policy for Discrete actions, a Gaussian one for Box actions."""
    n_obs = obs_dim(observation_space)
    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalPolicy(n_obs, int(action_space.n), hidden_sizes, activation, ortho_init)
    if isinstance(action_space, gym.spaces.Box):
        dim = int(np.prod(action_space.shape))
        return GaussianPolicy(n_obs, dim, hidden_sizes, activation, ortho_init, log_std_init)
    raise ConfigError(f"action space must be Discrete or Box, got {action_space}")


class ValueNet(nn.Module):
    """``v(s)``: one number per observation."""

    def __init__(
        self,
        obs_dim: int,
        hidden_sizes: tuple[int, ...],
        activation: str = "tanh",
        ortho_init: bool = True,
    ) -> None:
        super().__init__()
        self.net = mlp(obs_dim, hidden_sizes, 1, activation, 1.0, ortho_init)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


class DiscreteQNet(nn.Module):
    """``q(s, .)``: one value per discrete action (DQN's network)."""

    def __init__(
        self, obs_dim: int, n_actions: int, hidden_sizes: tuple[int, ...], activation: str = "relu"
    ) -> None:
        super().__init__()
        self.net = mlp(obs_dim, hidden_sizes, n_actions, activation, ortho_init=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


class ContinuousQNet(nn.Module):
    """``q(s, a)`` for continuous actions: the action joins the observation at the input."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: tuple[int, ...],
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.net = mlp(obs_dim + action_dim, hidden_sizes, 1, activation, ortho_init=False)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, actions], dim=-1)).squeeze(-1)


class DeterministicPolicy(nn.Module):
    """``mu(s) = low + (tanh(f(s)) + 1) (high - low) / 2``: a deterministic policy inside the
    action box (DDPG, TD3)."""

    def __init__(
        self,
        obs_dim: int,
        action_space: gym.spaces.Box,
        hidden_sizes: tuple[int, ...],
        activation: str = "relu",
    ) -> None:
        super().__init__()
        dim = int(np.prod(action_space.shape))
        self.net = mlp(obs_dim, hidden_sizes, dim, activation, ortho_init=False)
        low = torch.as_tensor(action_space.low, dtype=torch.float32).reshape(dim)
        high = torch.as_tensor(action_space.high, dtype=torch.float32).reshape(dim)
        self.register_buffer("center", (high + low) / 2)
        self.register_buffer("half_range", (high - low) / 2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.center + self.half_range * torch.tanh(self.net(obs))


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) target + tau source`` (DDPG's soft target update; tau = 1 copies)."""
    target_params = list(target.parameters())
    source_params = list(source.parameters())
    if tau == 1.0:
        torch._foreach_copy_(target_params, source_params)
    else:
        torch._foreach_lerp_(target_params, source_params, tau)
