"""Deep Q-learning on the grid world against q* from value iteration (Zhao ch. 8.4).

Budget: 3000 uniform-behaviour transitions per run, minibatches of 100, target network
copied every 20 iterations, Adam with lr 3e-3; 5 runs (own data and initialisation) at once.
"""

import numpy as np
import pytest
import torch

from driftlab.core.config import ConfigError
from driftlab.rl.tabular.dqn_grid import RunsMLP, collect_transitions, dqn_grid
from driftlab.rl.tabular.gridworld import GridWorld
from driftlab.rl.tabular.planning import evaluate_policy, value_iteration


def optimality_gaps(world, policies):
    v_star = value_iteration(world).values
    return np.array([np.abs(evaluate_policy(world, p).values - v_star).max() for p in policies])


@pytest.mark.parametrize(
    "inputs, iterations, bound",
    [("onehot", 1500, 0.02), ("coordinates", 3000, 0.2)],  # measured 0.005 and 0.09
)
def test_dqn_learns_q_star_from_uniform_data(inputs, iterations, bound):
    world = GridWorld()
    q_star = value_iteration(world).q_values
    result = dqn_grid(
        world, iterations=iterations, inputs=inputs, n_runs=5, seed=0, reference=q_star
    )
    assert result.q_values.shape == (5, 25, 5)
    assert result.errors[-1].max() < bound
    assert result.errors[-1].mean() < result.errors[0].mean() / 10
    assert np.all(optimality_gaps(world, result.policy) < 1e-6)


def test_dqn_in_the_episodic_world_does_not_bootstrap_from_the_target():
    world = GridWorld(terminal_target=True)
    q_star = value_iteration(world).q_values
    result = dqn_grid(world, iterations=1500, n_runs=3, seed=1, reference=q_star)
    # measured 0.022-0.031 (from 0.48 at iteration 100): the values here are small (|q| <= 1.9)
    assert result.errors[-1].max() < 0.05
    into_target = world.state_index(3, 3), 2  # "down" from the cell above the target
    np.testing.assert_allclose(result.q_values[:, into_target[0], into_target[1]], 1.0, atol=0.05)
    assert np.all(result.q_values[:, world.target_state] == 0.0)


def test_replay_data_follow_the_model():
    world = GridWorld(terminal_target=True)
    data = collect_transitions(world, world.uniform_policy(), 500, n_runs=2, seed=0)
    assert data.states.shape == (2, 500)
    np.testing.assert_array_equal(data.next_states, world.next_state[data.states, data.actions])
    np.testing.assert_array_equal(data.rewards, world.reward[data.states, data.actions])
    np.testing.assert_array_equal(data.terminated, world.terminal[data.next_states])
    # after reaching the terminal target the trajectory restarts elsewhere
    restarts = data.terminated[:, :-1]
    assert not np.any(world.terminal[data.states[:, 1:][restarts]])


def test_runs_do_not_share_weights_and_are_seeded():
    network = RunsMLP(3, 4, 5, hidden=8, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 7, 4)
    out = network(x)
    assert out.shape == (3, 7, 5)
    # changing run 1's input leaves runs 0 and 2 untouched
    y = x.clone()
    y[1] += 1.0
    torch.testing.assert_close(network(y)[[0, 2]], out[[0, 2]])
    world = GridWorld()
    first = dqn_grid(world, transitions=200, iterations=20, n_runs=2, seed=3).q_values
    again = dqn_grid(world, transitions=200, iterations=20, n_runs=2, seed=3).q_values
    np.testing.assert_array_equal(first, again)


def test_bad_inputs_name_the_value():
    with pytest.raises(ConfigError, match="inputs must be one of"):
        dqn_grid(GridWorld(), inputs="pixels")
    with pytest.raises(ConfigError, match="iterations must be >= 1"):
        dqn_grid(GridWorld(), iterations=0)
