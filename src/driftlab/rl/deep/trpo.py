"""Trust Region Policy Optimization (Schulman et al. 2015, "Trust Region Policy Optimization").

Each iteration collects ``n_steps`` steps of ``n_envs`` environments with the current policy
and estimates advantages by GAE (Schulman et al. 2016), then solves TRPO's problem (eq. 14)

    maximise_theta  L(theta) = E[ pi_theta(a|s) / pi_old(a|s) A ]
    subject to      KL_bar(theta) = E_s[ KL(pi_old(.|s) || pi_theta(.|s)) ] <= max_kl

approximately, as in its "practical algorithm" (sec. 6 and appendix C):

1. ``g = grad L`` at ``theta_old`` (advantages normalised over the batch, optionally);
2. the step direction ``s = F^-1 g`` by conjugate gradient (``cg_iterations``), where the
   Fisher matrix ``F`` is the Hessian of ``KL_bar`` at ``theta_old`` and enters only through
   Fisher-vector products ``F v = grad((grad KL_bar) . v) + cg_damping v`` (double backprop
   through the closed-form KL of the categorical or diagonal Gaussian policy);
3. the largest step along ``s`` the quadratic model of the KL allows,
   ``beta = sqrt(2 max_kl / s^T F s)`` (appendix C);
4. a backtracking line search on ``theta_old + shrink^k beta s`` (``k < line_search_steps``)
   that accepts the first candidate with ``KL_bar <= max_kl`` and ``L`` improved; if none
   passes, the policy keeps its parameters.

The value function ``v(s)`` is fitted separately by ``n_critic_updates`` epochs of minibatch
Adam on ``E[(v(s) - R)^2]`` (``critic_learning_rate``), as in sb3-contrib's TRPO, whose
defaults and zoo presets this module uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from driftlab.rl.deep.actor_critic import ActorCritic
from driftlab.rl.deep.buffers import minibatches
from driftlab.rl.deep.networks import (
    CategoricalPolicy,
    GaussianPolicy,
)
from driftlab.rl.deep.optim import FlatParameters, adam
from driftlab.rl.losses import conjugate_gradient

# A policy's distribution at a batch of states: (log-probabilities [B, A],) for a categorical
# policy, (mean [B, d], log_std [d]) for a diagonal Gaussian.
Distribution = tuple[torch.Tensor, ...]


def distribution(policy: CategoricalPolicy | GaussianPolicy, obs: torch.Tensor) -> Distribution:
    """The parameters of ``pi(.|s)`` for every row of ``obs`` (one network call)."""
    if policy.discrete:
        return (torch.log_softmax(policy.logits(obs), dim=-1),)
    return policy.mean(obs), policy.log_std


def log_prob(dist: Distribution, actions: torch.Tensor) -> torch.Tensor:
    """``log pi(a|s)`` of each row, summed over action dimensions."""
    if len(dist) == 1:
        return dist[0].gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    mean, log_std = dist
    # log N(a; mu, sigma) = -|z|^2/2 - sum log sigma - d/2 log(2 pi), z = (a - mu)/sigma
    z = (actions - mean) * torch.exp(-log_std)
    d = mean.shape[-1]
    return -0.5 * z.pow(2).sum(-1) - log_std.sum() - 0.5 * d * math.log(2 * math.pi)


def categorical_kl(old_log_probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """``KL(p_old || p) = sum_a p_old(a) (log p_old(a) - log p(a))`` of each row."""
    return (old_log_probs.exp() * (old_log_probs - log_probs)).sum(-1)


def gaussian_kl(
    old_mean: torch.Tensor, old_log_std: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor
) -> torch.Tensor:
    """``KL(N(mu_old, sigma_old^2) || N(mu, sigma^2))`` of diagonal Gaussians, per row:
    ``sum_i log(sigma_i / sigma_old_i) + (sigma_old_i^2 + (mu_old_i - mu_i)^2) / (2 sigma_i^2)
    - 1/2``."""
    var_ratio = torch.exp(2 * (old_log_std - log_std))
    mean_term = (old_mean - mean).pow(2) * torch.exp(-2 * log_std)
    return (log_std - old_log_std + 0.5 * (var_ratio + mean_term) - 0.5).sum(-1)


def kl_divergence(old: Distribution, new: Distribution) -> torch.Tensor:
    """Closed-form ``KL(pi_old(.|s) || pi(.|s))`` of each row, categorical or Gaussian."""
    if len(old) == 1:
        return categorical_kl(old[0], new[0])
    return gaussian_kl(*old, *new)


def flat_grad(
    output: torch.Tensor,
    params: list[nn.Parameter],
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> torch.Tensor:
    """``d output / d params`` as one flat vector (in the order of ``params``)."""
    grads = torch.autograd.grad(
        output, params, create_graph=create_graph, retain_graph=retain_graph
    )
    return torch.cat([g.reshape(-1) for g in grads])


def fisher_vector_product(
    kl: torch.Tensor, params: list[nn.Parameter], damping: float
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> (F + damping I) v`` with ``F`` the Hessian of the mean KL ``kl`` at the current
    parameters (TRPO appendix C.1): the gradient of ``grad(kl) . v``, so each product costs
    one backward pass through the graph of ``grad(kl)``, never the matrix itself."""
    grad_kl = flat_grad(kl, params, create_graph=True)

    def product(v: torch.Tensor) -> torch.Tensor:
        return flat_grad(grad_kl @ v, params, retain_graph=True) + damping * v

    return product


def natural_gradient_step(
    fvp: Callable[[torch.Tensor], torch.Tensor],
    g: torch.Tensor,
    max_kl: float,
    cg_iterations: int,
    residual_tol: float = 1e-10,
) -> torch.Tensor:
    """TRPO's full step ``beta s`` with ``s = F^-1 g`` (conjugate gradient, stopped after
    ``cg_iterations`` or at ``|g - F s|^2 < residual_tol``) and ``beta = sqrt(2 max_kl /
    s^T F s)``, the step at which the quadratic model ``KL ~ 1/2 (beta s)^T F (beta s)``
    reaches ``max_kl`` (appendix C). Zero when ``g`` is."""
    direction = conjugate_gradient(fvp, g, cg_iterations, residual_tol)
    curvature = direction @ fvp(direction)
    if not bool(curvature > 0):  # g = 0: nothing to improve (and no step to scale)
        return torch.zeros_like(g)
    return torch.sqrt(2 * max_kl / curvature) * direction


def line_search(
    evaluate: Callable[[torch.Tensor], tuple[float, float]],
    params: torch.Tensor,
    full_step: torch.Tensor,
    surrogate_before: float,
    max_kl: float,
    steps: int,
    shrink: float,
) -> tuple[bool, float, float, float]:
    """Backtracking line search (TRPO sec. 6): try ``params + shrink^k full_step`` for
    ``k = 0 .. steps - 1``; ``evaluate(candidate)`` returns its surrogate ``L`` and mean KL.
    The first candidate with ``KL <= max_kl`` and ``L > surrogate_before`` is accepted.

    Returns ``(accepted, step fraction shrink^k, L, KL)``; ``(False, 0, L_before, 0)`` when
    no candidate passes. ``evaluate`` may leave its candidate in place: callers restore
    ``params`` on rejection.
    """
    fraction = 1.0
    for _ in range(steps):
        surrogate, kl = evaluate(params + fraction * full_step)
        if kl <= max_kl and surrogate > surrogate_before:
            return True, fraction, surrogate, kl
        fraction *= shrink
    return False, 0.0, surrogate_before, 0.0


class TRPO(ActorCritic):
    """``TRPO(env, seed=0, **hyperparameters)``; see :mod:`driftlab.rl.deep.presets`."""

    name = "trpo"

    def build(self) -> None:
        c = self.config
        self.build_actor_critic()
        # The policy as one flat vector theta: the natural-gradient step and the line search
        # move all of it at once.
        self.policy_params = list(self.policy.parameters())
        self.policy_flat = FlatParameters(self.policy_params)
        self.value_flat = FlatParameters(self.value.parameters())
        self.critic_optimizer = adam(self.value_flat, c["critic_learning_rate"], eps=1e-5)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic_optimizer": self.critic_optimizer}

    def iteration(self) -> dict[str, float]:
        self.collect()
        data = self.buffer.flat()
        metrics = self.update_policy(data)
        metrics.update(self.update_critic(data))
        self.num_updates += 1
        return metrics

    def update_policy(self, data: dict[str, torch.Tensor]) -> dict[str, float]:
        """One natural-gradient step on the whole batch, kept inside the KL trust region."""
        c = self.config
        obs, actions, old_log_probs = data["obs"], data["actions"], data["log_probs"]
        advantages = data["advantages"]
        if c["normalize_advantage"] and advantages.numel() > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        with torch.no_grad():
            # A copy, not a view: the Gaussian's log_std is the parameter itself, which the
            # line search moves in place.
            old = tuple(t.clone() for t in distribution(self.policy, obs))

        def surrogate_and_kl(dist: Distribution) -> tuple[torch.Tensor, torch.Tensor]:
            ratio = torch.exp(log_prob(dist, actions) - old_log_probs)
            return (ratio * advantages).mean(), kl_divergence(old, dist).mean()

        surrogate, kl = surrogate_and_kl(distribution(self.policy, obs))
        g = flat_grad(surrogate, self.policy_params, retain_graph=True)
        fvp = fisher_vector_product(kl, self.policy_params, c["cg_damping"])
        full_step = natural_gradient_step(fvp, g, c["max_kl"], c["cg_iterations"])
        del fvp  # frees the double-backprop graph before the line search

        theta = self.policy_flat.param.data
        theta_old = theta.clone()

        @torch.no_grad()
        def evaluate(candidate: torch.Tensor) -> tuple[float, float]:
            # Candidates are evaluated one at a time: the first or second usually passes
            # (about 2 tries on CartPole's preset, 1 on Pendulum's), so evaluating all
            # line_search_steps of them in one batch would cost more than it saves.
            theta.copy_(candidate)
            new_surrogate, new_kl = surrogate_and_kl(distribution(self.policy, obs))
            return float(new_surrogate), float(new_kl)

        accepted, fraction, new_surrogate, new_kl = line_search(
            evaluate,
            theta_old,
            full_step,
            float(surrogate.detach()),
            c["max_kl"],
            c["line_search_steps"],
            c["line_search_shrink"],
        )
        if not accepted:
            theta.copy_(theta_old)
        return {
            "surrogate_improvement": new_surrogate - float(surrogate.detach()),
            "kl": new_kl,
            "line_search_accepted": float(accepted),
            "step_fraction": fraction,
            "step_norm": float(fraction * torch.linalg.vector_norm(full_step)),
        }

    def update_critic(self, data: dict[str, torch.Tensor]) -> dict[str, float]:
        """``n_critic_updates`` epochs of minibatch Adam on ``E[(v(s) - R)^2]``."""
        c = self.config
        lr = self.scheduled(c["critic_learning_rate"], c["lr_schedule"])
        self.set_learning_rate(self.critic_optimizer, lr)
        obs, returns = data["obs"], data["returns"]
        n = obs.shape[0]
        for _ in range(c["n_critic_updates"]):
            for index in minibatches(n, c["batch_size"], self.generator):
                value_loss = (self.value(obs[index]) - returns[index]).pow(2).mean()
                self.value_flat.zero_grad()
                value_loss.backward()
                self.value_flat.clip_grad_norm(c["max_grad_norm"])
                self.critic_optimizer.step()
        return {"value_loss": float(value_loss.detach()), "critic_learning_rate": lr}
