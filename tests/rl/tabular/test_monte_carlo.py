"""Monte Carlo control (Zhao ch. 5) against value iteration and the exact optimal values."""

from __future__ import annotations

import time

import numpy as np
import pytest

from driftlab.core.config import ConfigError
from driftlab.rl.tabular import (
    GridWorld,
    evaluate_policy,
    greedy_policy,
    mc_basic,
    mc_epsilon_greedy,
    mc_exploring_starts,
    policy_iteration,
    value_iteration,
)
from driftlab.rl.tabular.monte_carlo import _first_visits, discounted_returns, return_horizon
from driftlab.rl.tabular.runs import decaying_step_size


@pytest.fixture(scope="module")
def world() -> GridWorld:
    return GridWorld()


@pytest.fixture(scope="module")
def v_star(world: GridWorld) -> np.ndarray:
    return policy_iteration(world).values


def test_discounted_returns_by_hand() -> None:
    rewards = np.array([[1.0, 0.0, 2.0], [0.0, 0.0, 1.0]])
    # G_2 = r_3, G_1 = r_2 + g G_2, G_0 = r_1 + g G_1 with g = 0.5.
    np.testing.assert_allclose(discounted_returns(rewards, 0.5), [[1.5, 1.0, 2.0], [0.25, 0.5, 1]])
    np.testing.assert_allclose(discounted_returns(rewards, 0.0), rewards)


def test_first_visits() -> None:
    pairs = np.array([[3, 1, 3, 2, 1], [0, 0, 0, 0, 4]])
    expected = [[True, True, False, True, False], [True, False, False, False, True]]
    np.testing.assert_array_equal(_first_visits(pairs), expected)


def test_return_horizon(world: GridWorld) -> None:
    # 0.9^H * 1 / 0.1 < 1e-4  <=>  H >= log(1e-5) / log(0.9) = 109.3
    assert return_horizon(world) == 110
    assert return_horizon(GridWorld(gamma=0.0)) == 0


# ----- MC Basic ----------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [1, 2, 4, 14, 15, 30, 100])
def test_mc_basic_equals_value_iteration_rounds(world: GridWorld, length: int) -> None:
    """With a deterministic world and policy, one episode of length L per (s, a) gives the exact
    L-step return, and MC Basic ends at L rounds of value iteration from v = 0 (Zhao ch. 5.2
    illustrates lengths 1 to 100)."""
    result = mc_basic(world, episode_length=length)
    rounds = value_iteration(world, max_iterations=length, tol=1e-300)
    assert result.converged
    np.testing.assert_allclose(result.values, rounds.values, atol=1e-12)


def test_mc_basic_short_episodes_can_stop_at_a_stationary_policy(world: GridWorld) -> None:
    """For L = 3 (and 5) the equality fails at one state: L rounds of value iteration are the
    best *non-stationary* L-step plan, while MC Basic improves a stationary policy and, as
    truncated returns break the policy improvement theorem, stops at a stable policy that
    is not L-step optimal. From (5, 1) going up earns 0 - 0.9 + 0.81 = -0.09; staying earns 0."""
    result = mc_basic(world, episode_length=3)
    rounds = value_iteration(world, max_iterations=3, tol=1e-300)
    differ = np.flatnonzero(np.abs(result.values - rounds.values) > 1e-12)
    assert [world.cell(s) for s in differ] == [(5, 1)]
    s = world.state_index(5, 1)
    assert result.values[s] == pytest.approx(-0.09) and rounds.values[s] == pytest.approx(0.0)


def test_mc_basic_long_episodes_find_an_optimal_policy(world: GridWorld, v_star) -> None:
    result = mc_basic(world, episode_length=100)
    # The 100-step return misses gamma^100 v*(target) = 10 * 0.9^100 = 2.7e-4 at most.
    assert np.abs(result.values - v_star).max() <= 10 * 0.9**100 + 1e-12
    np.testing.assert_allclose(evaluate_policy(world, result.policy).values, v_star, atol=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mc_basic_from_a_random_policy(world: GridWorld, seed: int) -> None:
    """A stochastic pi_0 makes iteration 0 noisy (20 episodes per pair); later iterations
    follow greedy, deterministic policies and end at the same answer."""
    result = mc_basic(
        world, episode_length=15, episodes_per_pair=20, initial_policy=world.uniform_policy(),
        seed=seed,
    )  # fmt: skip
    rounds = value_iteration(world, max_iterations=15, tol=1e-300)
    np.testing.assert_allclose(result.values, rounds.values, atol=1e-12)


# ----- MC Exploring Starts -----------------------------------------------------------------------
@pytest.mark.parametrize("visit", ["first", "every"])
def test_mc_exploring_starts_finds_the_optimal_policy(world: GridWorld, v_star, visit) -> None:
    """Budget: 10 seeds x 3000 episodes of 10 learned steps (+60 for the returns), constant
    step 0.5. Returns of a deterministic policy are exact, so q converges geometrically once
    the policy settles; the 60-step horizon bounds the bias by 0.9^60 * 10 = 0.018."""
    result = mc_exploring_starts(
        world, episodes=3000, episode_length=10, visit=visit, step_size=0.5, n_runs=10,
        horizon=60, seed=7, eval_every=500,
    )  # fmt: skip
    assert result.value_error.shape == (10, 7)
    assert (result.optimal_fraction[:, -1] == 1.0).all()
    assert np.abs(result.values - v_star).max() < 0.02
    for run in range(10):
        policy_values = evaluate_policy(world, result.greedy[run]).values
        np.testing.assert_allclose(policy_values, v_star, atol=1e-8)
    assert (result.value_error[:, -1] < 0.01).all()


def test_mc_exploring_starts_with_sample_averages(world: GridWorld) -> None:
    """The book's mean of all returns: early returns of poor policies fade only as 1/n, so the
    error falls steadily but slowly (8 seeds x 2000 episodes)."""
    result = mc_exploring_starts(world, episodes=2000, n_runs=8, horizon=60, seed=3)
    _, mean, _ = result.curve()
    assert mean[0] > 7.5 and mean[-1] < 1.5
    assert mean[-1] < mean[len(mean) // 4] < mean[1]
    assert result.optimal_fraction[:, -1].mean() > 0.75


# ----- MC epsilon-greedy -------------------------------------------------------------------------
def test_best_epsilon_greedy_policy_is_greedy_optimal_for_small_epsilon(world, v_star) -> None:
    best = policy_iteration(world, epsilon=0.1)
    assert best.converged
    greedy = greedy_policy(best.q_values)
    np.testing.assert_allclose(evaluate_policy(world, greedy).values, v_star, atol=1e-8)
    # Its values are lower than v*: exploration costs (Zhao ch. 5.4).
    assert (best.values < v_star).all()


def test_mc_with_epsilon_one_evaluates_the_uniform_policy(world: GridWorld) -> None:
    """epsilon = 1 never acts greedily: MC prediction of the uniform policy, checked against
    its closed-form values (10 seeds, 600 episodes of 20 learned steps)."""
    result = mc_epsilon_greedy(
        world, epsilon=1.0, episodes=600, episode_length=20, n_runs=10, seed=0, eval_every=600
    )
    np.testing.assert_allclose(
        result.target_values, evaluate_policy(world, world.uniform_policy()).values
    )
    assert result.value_error[:, 0].mean() > 3.0
    assert result.value_error[:, -1].max() < 0.2


def test_mc_epsilon_greedy_approaches_the_best_epsilon_greedy_policy(world: GridWorld) -> None:
    """Budget: 10 seeds x 3000 episodes of 20 learned steps, first visits, step size
    n^-0.6 (Robbins-Monro conditions hold). The error to v of the best epsilon-greedy policy
    falls from 6.5 to below 0.7; rarely tried actions in far states stay uncertain."""
    result = mc_epsilon_greedy(
        world, epsilon=0.1, episodes=3000, episode_length=20, visit="first",
        step_size=decaying_step_size(1.0, 0.6), n_runs=10, seed=11, eval_every=300,
    )  # fmt: skip
    _, mean, _ = result.curve()
    assert mean[0] > 6.0
    assert mean[-1] < 0.7
    assert result.optimal_fraction[:, -1].mean() > 0.6


def test_learners_are_deterministic_given_the_seed(world: GridWorld) -> None:
    a = mc_epsilon_greedy(world, episodes=20, n_runs=3, seed=5)
    b = mc_epsilon_greedy(world, episodes=20, n_runs=3, seed=5)
    c = mc_epsilon_greedy(world, episodes=20, n_runs=3, seed=6)
    np.testing.assert_array_equal(a.q_values, b.q_values)
    assert not np.array_equal(a.q_values, c.q_values)
    # Runs in one call are independent: they differ from each other.
    assert not np.array_equal(a.q_values[0], a.q_values[1])


def test_hundred_runs_advance_together(world: GridWorld) -> None:
    """100 seeds x 500 episodes of exploring starts take about as long as one seed."""
    start = time.perf_counter()
    result = mc_exploring_starts(world, episodes=500, n_runs=100, step_size=0.5, horizon=40)
    elapsed = time.perf_counter() - start
    assert result.q_values.shape == (100, 25, 5)
    assert elapsed < 10.0


def test_bad_arguments_name_the_value(world: GridWorld) -> None:
    with pytest.raises(ConfigError, match="episode_length must be >= 1, got 0"):
        mc_basic(world, episode_length=0)
    with pytest.raises(ConfigError, match="visit must be one of 'first', 'every'; got 'all'"):
        mc_exploring_starts(world, visit="all")
    with pytest.raises(ConfigError, match="epsilon must be > 0"):
        mc_epsilon_greedy(world, epsilon=0.0)
    with pytest.raises(ConfigError, match=r"epsilon must be in \[0.0, 1.0\], got 1.5"):
        mc_epsilon_greedy(world, epsilon=1.5)
