"""TD learners against the exact Bellman solution of the grid world (Zhao ch. 7).

Every learner runs 100 independent runs in one vectorised call; budgets (episodes x steps,
step size) are in each test, and the errors are RMSEs over all states (or state-action pairs)
against the linear-solve answer of ``driftlab.rl.tabular.planning``.
"""

import numpy as np
import pytest

from driftlab.core.config import ConfigError
from driftlab.rl.tabular.gridworld import GridWorld
from driftlab.rl.tabular.planning import (
    epsilon_greedy_policy,
    evaluate_policy,
    value_iteration,
)
from driftlab.rl.tabular.runs import decaying_step_size
from driftlab.rl.tabular.td import expected_sarsa, nstep_sarsa, q_learning, sarsa, td0


def episodic_world(**options):
    """Zhao's setting for Sarsa and Q-learning: the target ends the episode, each step costs."""
    return GridWorld(
        terminal_target=True, r_boundary=-10, r_forbidden=-10, r_target=0, r_other=-1, **options
    )


def optimality_gaps(world, policies):
    """``max_s |v_pi(s) - v*(s)|`` of each run's policy: 0 iff optimal from every state."""
    v_star = value_iteration(world).values
    return np.array([np.abs(evaluate_policy(world, p).values - v_star).max() for p in policies])


def optimal_epsilon_greedy_q(world, epsilon):
    """q of the best epsilon-greedy policy: policy iteration within epsilon-soft policies."""
    q = value_iteration(world).q_values
    for _ in range(100):
        q_next = evaluate_policy(world, epsilon_greedy_policy(q, epsilon)).q_values
        if np.abs(q_next - q).max() < 1e-12:
            return q_next
        q = q_next
    raise AssertionError("epsilon-soft policy iteration did not converge")


@pytest.mark.parametrize("seed", [0, 1])
def test_td0_converges_to_v_pi_of_the_uniform_policy(seed):
    world = GridWorld()
    uniform = world.uniform_policy()
    v_pi = evaluate_policy(world, uniform).values
    result = td0(
        world,
        uniform,
        alpha=decaying_step_size(0.5, 1.0, offset=20),
        episodes=300,
        episode_length=100,
        n_runs=100,
        seed=seed,
        start="random",
        reference=v_pi,
    )
    assert result.values.shape == (100, 25) and result.errors.shape == (300, 100)
    # measured: mean RMSE 1.41 after 10 episodes, 0.098 after 300 (|v_pi| is 2.9..4.5)
    assert result.errors[-1].mean() < 0.12
    assert result.errors[-1].max() < 0.2
    assert result.errors[-1].mean() < result.errors[9].mean() / 10
    # the average over runs removes the noise: what is left is the bias of a finite budget
    # (the 1/k step size forgets the initial v = 0 slowly), measured 0.087
    assert np.abs(result.values.mean(axis=0) - v_pi).max() < 0.1


def test_td0_does_not_bootstrap_from_the_terminal_target():
    world = GridWorld(terminal_target=True)
    uniform = world.uniform_policy()
    v_pi = evaluate_policy(world, uniform).values
    result = td0(
        world,
        uniform,
        alpha=decaying_step_size(0.5, 1.0, offset=20),
        episodes=300,
        episode_length=100,
        n_runs=100,
        seed=1,
        reference=v_pi,
    )
    assert np.all(result.values[:, world.target_state] == 0.0)
    # measured 0.165 (fewer steps than the continuing task: episodes end at the target)
    assert result.errors[-1].mean() < 0.2
    assert result.episode_lengths.mean() < 100


EVALUATION_BUDGET = dict(
    alpha=decaying_step_size(0.5, 1.0, offset=20),
    episodes=1000,
    episode_length=20,
    n_runs=100,
    start="random",
    exploring_starts=True,
)


@pytest.mark.parametrize(
    "learner, bound",
    [
        (sarsa, 0.25),  # measured 0.184
        (expected_sarsa, 0.08),  # measured 0.053: no sampling noise in its target
        (lambda world, **kw: nstep_sarsa(world, n=3, **kw), 0.35),  # measured 0.290
    ],
    ids=["sarsa", "expected-sarsa", "nstep-sarsa"],
)
def test_sarsa_family_evaluates_a_fixed_policy(learner, bound):
    world = GridWorld()
    policy = epsilon_greedy_policy(value_iteration(world).q_values, 0.5)
    q_pi = evaluate_policy(world, policy).q_values
    result = learner(world, policy=policy, seed=0, reference=q_pi, **EVALUATION_BUDGET)
    assert result.q_values.shape == (100, 25, 5)
    assert result.errors[-1].mean() < bound
    assert result.errors[-1].mean() < result.errors[99].mean() / 1.5


def test_one_step_nstep_sarsa_is_sarsa():
    world = episodic_world()
    options = dict(epsilon=0.2, alpha=0.3, episodes=40, episode_length=30, n_runs=10, seed=3)
    np.testing.assert_array_equal(
        nstep_sarsa(world, n=1, **options).q_values, sarsa(world, **options).q_values
    )


def test_step_into_the_terminal_target_is_worth_its_reward_only():
    world = GridWorld(terminal_target=True)
    result = expected_sarsa(
        world,
        policy=world.uniform_policy(),
        alpha=0.5,
        episodes=200,
        episode_length=50,
        n_runs=20,
        seed=0,
    )
    above = world.state_index(3, 3)  # "down" from the cell above the target enters it
    np.testing.assert_allclose(result.q_values[:, above, 2], world.r_target, atol=1e-6)
    assert np.all(result.q_values[:, world.target_state] == 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_off_policy_q_learning_from_uniform_data_finds_q_star(seed):
    world = GridWorld()
    optimal = value_iteration(world)
    result = q_learning(
        world,
        behavior_policy=world.uniform_policy(),
        alpha=1.0,  # the model is deterministic, so the Q-learning target is noise-free
        episodes=150,
        episode_length=100,
        n_runs=100,
        seed=seed,
        reference=optimal.q_values,
    )
    assert result.errors[-1].max() < 1e-3
    assert np.all(optimality_gaps(world, result.policy) < 1e-6)


def test_on_policy_q_learning_is_optimal_from_every_state():
    world = episodic_world()
    optimal = value_iteration(world)
    result = q_learning(
        world,
        epsilon=0.1,
        alpha=1.0,
        episodes=1000,
        episode_length=20,
        n_runs=100,
        seed=0,
        start="random",
        exploring_starts=True,
        reference=optimal.q_values,
    )
    assert result.errors[-1].mean() < 0.01
    assert np.all(optimality_gaps(world, result.policy) < 1e-6)


def test_expected_sarsa_control_converges_to_the_best_epsilon_greedy_q():
    world = episodic_world()
    q_eps = optimal_epsilon_greedy_q(world, 0.1)
    result = expected_sarsa(
        world,
        epsilon=0.1,
        alpha=0.2,
        episodes=3000,
        episode_length=20,
        n_runs=100,
        seed=0,
        start="random",
        exploring_starts=True,
        reference=q_eps,
    )
    # measured 0.24 after 2000 episodes, 0.049 after 3000, 0.002 after 5000
    assert result.errors[-1].mean() < 0.08
    # with epsilon = 0.1 the greedy policy of q_eps is optimal (checked by the planner)
    assert np.all(optimality_gaps(world, result.policy) < 1e-6)


@pytest.mark.parametrize(
    "learner", [sarsa, lambda world, **kw: nstep_sarsa(world, n=3, **kw)], ids=["sarsa", "nstep"]
)
def test_sarsa_control_is_optimal_from_every_state_of_the_shortest_path_world(learner):
    """Every step costs 1 (forbidden cells and the boundary too): exploring costs no more
    than the path, so the best epsilon-greedy policy's greedy policy is optimal with wide
    margins, and Sarsa's sampling noise cannot flip it."""
    world = GridWorld(terminal_target=True, r_boundary=-1, r_forbidden=-1, r_target=0, r_other=-1)
    result = learner(
        world,
        epsilon=0.1,
        alpha=decaying_step_size(1.0, 0.6),
        episodes=1000,
        episode_length=20,
        n_runs=100,
        seed=0,
        start="random",
        exploring_starts=True,
    )
    assert np.all(optimality_gaps(world, result.policy) < 1e-6)


@pytest.mark.parametrize("n", [1, 3])
def test_sarsa_control_finds_a_path_from_the_start_cell(n):
    world = episodic_world(start=(1, 1))
    optimal = value_iteration(world)
    result = nstep_sarsa(
        world, n=n, epsilon=0.1, alpha=0.1, episodes=1000, episode_length=100, n_runs=100, seed=0
    )
    start = world.state_index(1, 1)
    values = np.array([evaluate_policy(world, p).values[start] for p in result.policy])
    # Sarsa learns q of its epsilon-greedy policy along the paths it takes; its greedy
    # policy is optimal from the start in most runs (measured 81% for n = 1, 92% for n = 3)
    assert np.mean(np.isclose(values, optimal.values[start])) > 0.75
    # episodes shorten from the 100-step cut to near the 8-step shortest path
    assert result.episode_lengths[:5].mean() > 40
    assert result.episode_lengths[-50:].mean() < 16


def test_runs_are_seeded_and_independent():
    world = GridWorld()
    options = dict(episodes=5, episode_length=20, n_runs=3)
    first = sarsa(world, seed=7, **options).q_values
    np.testing.assert_array_equal(first, sarsa(world, seed=7, **options).q_values)
    assert not np.array_equal(first, sarsa(world, seed=8, **options).q_values)
    assert not np.array_equal(first[0], first[1])


def test_bad_settings_name_the_value():
    world = GridWorld()
    with pytest.raises(ConfigError, match="n must be >= 1, got 0"):
        nstep_sarsa(world, n=0)
    with pytest.raises(ConfigError, match="alpha must be in"):
        sarsa(world, alpha=1.5)
    with pytest.raises(ConfigError, match="epsilon must be in"):
        q_learning(world, epsilon=-0.1)
    with pytest.raises(ConfigError, match="reference must have shape"):
        sarsa(world, reference=np.zeros(25), episodes=1)
    with pytest.raises(ConfigError, match="policy must have shape"):
        td0(world, np.ones((25, 4)) / 4)
    with pytest.raises(ConfigError, match="start must be"):
        td0(world, world.uniform_policy(), start=99)
