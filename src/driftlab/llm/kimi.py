"""Kimi k1.5 online policy mirror descent (Kimi Team 2025, "Kimi k1.5: Scaling Reinforcement
Learning with LLMs", sec. 2.3).

Iteration ``i`` solves a relative-entropy regularised problem around the current policy
``pi_theta_i`` (sec. 2.3.2):

    max_theta  E_x [ E_{y ~ pi_theta}[ r(x, y) ] - tau KL(pi_theta(.|x) || pi_theta_i(.|x)) ],

whose solution is ``pi*(y|x) = pi_theta_i(y|x) exp(r(x, y) / tau) / Z``, i.e.
``r(x, y) - tau log Z = tau log(pi*(y|x) / pi_theta_i(y|x))``. The policy is fitted to that
identity on ``k`` samples ``y_1 .. y_k ~ pi_theta_i`` of each prompt by the squared loss

    L(theta) = E_x (1/k) sum_j ( r(x, y_j) - tau log Z - tau log rho_j(theta) )^2,
    rho_j(theta) = pi_theta(y_j|x) / pi_theta_i(y_j|x),

with ``tau log Z`` estimated by the mean reward of the ``k`` samples (:func:`kimi_baseline`) and
the log-ratio at the sequence level (the sum of the token log-ratios). Its gradient, the
paper's update (the equation after the surrogate),

    (1/k) sum_j [ grad log pi_theta(y_j|x) (r_j - mean r) - tau/2 grad (log rho_j(theta))^2 ],

is a policy gradient with the mean reward as baseline plus an l2 pull of the log-ratio
towards 0. ``pi_theta_i`` is the policy that sampled the batch, reset every iteration (the
recorded sampling log-probs are its log-probs); there is no value network, and no KL to a
frozen reference unless ``beta > 0``.

The rest of sec. 2.3: the length reward (sec. 2.3.3, :func:`length_reward`), curriculum and
prioritised sampling (sec. 2.3.4, :class:`driftlab.llm.curriculum.ProblemSampler`) and partial
rollouts (sec. 2.6.2, :class:`KimiTrainer`'s ``collect``).
"""

from __future__ import annotations

import torch

from driftlab.core.config import check_int, check_nonnegative, check_positive
from driftlab.rl.losses import kimi_length_reward


def kimi_baseline(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """The estimate of ``tau log Z`` of each row: the mean reward of its group of ``k``
    samples (sec. 2.3.2), ``[rows]`` for ``rewards`` ``[rows]`` ordered group by group."""
    check_int("group_size", group_size, minimum=1)
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be [rows] with rows a multiple of group_size={group_size}, got "
            f"shape {tuple(rewards.shape)}"
        )
    means = rewards.view(-1, group_size).mean(dim=1, keepdim=True)
    return means.expand(-1, group_size).reshape(-1)


def kimi_surrogate(
    log_ratio: torch.Tensor, rewards: torch.Tensor, baseline: torch.Tensor, tau: float
) -> torch.Tensor:
    """Per-sequence squared surrogate ``(r - tau log Z - tau log(pi_theta / pi_old))^2`` of
    sec. 2.3.2; ``log_ratio`` is the sequence-level ``log pi_theta(y|x) - log pi_old(y|x)``
    and ``baseline`` the estimate of ``tau log Z`` (:func:`kimi_baseline`)."""
    check_positive("tau", tau)
    return (rewards - baseline - tau * log_ratio) ** 2


def kimi_gradient_loss(
    log_ratio: torch.Tensor,
    rewards: torch.Tensor,
    baseline: torch.Tensor,
    tau: float,
    num_sequences: int,
) -> torch.Tensor:
    """The loss the trainer minimises: ``sum_j surrogate_j / (2 tau num_sequences)``.

    Its gradient is exactly minus the paper's update direction (the ``1 / 2 tau`` undoes the
    chain rule's ``-2 tau``), so at ``theta = theta_i`` it is REINFORCE with the mean-reward
    baseline and the learning rate means the same for every ``tau``. ``num_sequences`` is the
    number of rows of the *whole* batch, so summing the losses of its minibatches gives the
    loss of the batch however it is split.
    """
    check_int("num_sequences", num_sequences, minimum=1)
    surrogate = kimi_surrogate(log_ratio, rewards, baseline, tau)
    return surrogate.sum() / (2.0 * tau * num_sequences)


def length_reward(
    lengths: torch.Tensor,
    correct: torch.Tensor,
    group_size: int,
    weight: float,
    step: int,
    warmup_steps: int = 0,
) -> torch.Tensor:
    """The weighted length reward of sec. 2.3.3, ``[rows]``, added to the task reward.

    Per group: ``lambda = 0.5 - (len - min_len) / (max_len - min_len)``, ``lambda`` for a
    correct answer, ``min(0, lambda)`` for a wrong one, 0 when all lengths are equal
    (:func:`driftlab.rl.losses.kimi_length_reward`), times ``weight``. The paper warms up
    without it ("standard policy optimization without length penalty, followed by a constant
    length penalty"): it is 0 while ``step < warmup_steps``.
    """
    check_int("group_size", group_size, minimum=1)
    check_nonnegative("weight", weight)
    check_int("warmup_steps", warmup_steps, minimum=0)
    if step < warmup_steps or weight == 0.0:
        return torch.zeros(lengths.shape, dtype=torch.get_default_dtype())
    grouped = lengths.to(torch.get_default_dtype()).view(-1, group_size)
    reward = kimi_length_reward(grouped, correct.view(-1, group_size))
    return weight * reward.reshape(-1)
