"""Tabular RL on the book's grid world, each learner checked against the exact Bellman solution."""

from driftlab.rl.tabular.dqn_grid import DQNResult, collect_transitions, dqn_grid
from driftlab.rl.tabular.features import (
    fourier_features,
    normalised_coordinates,
    polynomial_features,
    state_action_features,
    state_features,
)
from driftlab.rl.tabular.gridworld import ACTIONS, GridWorld
from driftlab.rl.tabular.linear import (
    LinearResult,
    q_learning_linear,
    sarsa_linear,
    stationary_distribution,
    td_fixed_point,
    td_linear,
)
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
from driftlab.rl.tabular.policy_gradient import (
    PolicyGradientResult,
    policy_values,
    qac,
    reinforce,
)
from driftlab.rl.tabular.runs import decaying_step_size, linear_schedule
from driftlab.rl.tabular.stochastic_approximation import incremental_mean, robbins_monro
from driftlab.rl.tabular.td import (
    TDResult,
    expected_sarsa,
    nstep_sarsa,
    q_learning,
    sarsa,
    td0,
)

__all__ = [
    "ACTIONS",
    "DQNResult",
    "GridWorld",
    "LinearResult",
    "MonteCarloResult",
    "PlanningResult",
    "PolicyGradientResult",
    "TDResult",
    "collect_transitions",
    "decaying_step_size",
    "dqn_grid",
    "epsilon_greedy_policy",
    "evaluate_policy",
    "expected_sarsa",
    "fourier_features",
    "greedy_policy",
    "incremental_mean",
    "linear_schedule",
    "mc_basic",
    "mc_epsilon_greedy",
    "mc_exploring_starts",
    "normalised_coordinates",
    "nstep_sarsa",
    "plot_grid",
    "plot_learning_curves",
    "policy_iteration",
    "policy_values",
    "polynomial_features",
    "q_from_v",
    "q_learning",
    "q_learning_linear",
    "qac",
    "reinforce",
    "robbins_monro",
    "sarsa",
    "sarsa_linear",
    "state_action_features",
    "state_features",
    "stationary_distribution",
    "td0",
    "td_fixed_point",
    "td_linear",
    "truncated_policy_iteration",
    "value_iteration",
]
