"""Tabular RL on the book's grid world, each learner checked against the exact Bellman solution."""

from driftlab.rl.tabular.gridworld import ACTIONS, GridWorld
from driftlab.rl.tabular.monte_carlo import (
    MonteCarloResult,
    mc_basic,
    mc_epsilon_greedy,
    mc_exploring_starts,
)
from driftlab.rl.tabular.planning import (
    PlanningResult,
    epsilon_greedy_policy,
    evaluate_policy,
    greedy_policy,
    policy_iteration,
    q_from_v,
    truncated_policy_iteration,
    value_iteration,
)
from driftlab.rl.tabular.plots import plot_grid, plot_learning_curves
from driftlab.rl.tabular.stochastic_approximation import incremental_mean, robbins_monro

__all__ = [
    "ACTIONS",
    "GridWorld",
    "MonteCarloResult",
    "PlanningResult",
    "epsilon_greedy_policy",
    "evaluate_policy",
    "greedy_policy",
    "incremental_mean",
    "mc_basic",
    "mc_epsilon_greedy",
    "mc_exploring_starts",
    "plot_grid",
    "plot_learning_curves",
    "policy_iteration",
    "q_from_v",
    "robbins_monro",
    "truncated_policy_iteration",
    "value_iteration",
]
