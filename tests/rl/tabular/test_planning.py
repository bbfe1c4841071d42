"""Planning (Zhao ch. 2-4) against the Bellman linear solve and hand-computed 2x2 examples."""

from __future__ import annotations

import numpy as np
import pytest

from driftlab.core.config import ConfigError
from driftlab.rl.tabular import (
    GridWorld,
    evaluate_policy,
    greedy_policy,
    policy_iteration,
    q_from_v,
    truncated_policy_iteration,
    value_iteration,
)

UP, RIGHT, DOWN, LEFT, STAY = range(5)

WORLDS = {
    "default": {},
    "r_forbidden=-10": {"r_forbidden": -10.0},
    "gamma=0.5": {"gamma": 0.5},
    "gamma=0": {"gamma": 0.0},
}


def deterministic(world: GridWorld, actions: list[int]) -> np.ndarray:
    return np.eye(world.n_actions)[actions]


def random_policy(world: GridWorld, seed: int) -> np.ndarray:
    p = np.random.default_rng(seed).random((world.n_states, world.n_actions))
    return p / p.sum(axis=1, keepdims=True)


def small_world() -> GridWorld:
    """The book's 2x2 example (Zhao ch. 2): s2 = (1, 2) forbidden, s4 = (2, 2) the target."""
    return GridWorld(rows=2, cols=2, forbidden=[(1, 2)], target=(2, 2))


# ----- policy evaluation -----------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", WORLDS.values(), ids=WORLDS.keys())
def test_closed_form_and_iterative_evaluation_agree(kwargs: dict) -> None:
    world = GridWorld(**kwargs)
    optimal = policy_iteration(world).policy
    policies = [world.uniform_policy(), optimal, *(random_policy(world, s) for s in range(3))]
    for policy in policies:
        exact = evaluate_policy(world, policy)
        iterative = evaluate_policy(world, policy, method="iterative", tol=1e-12)
        assert iterative.converged
        assert np.abs(exact.values - iterative.values).max() < 1e-8
        # The solution satisfies the Bellman equation v = r_pi + gamma P_pi v (ch. 2.6).
        P_pi, r_pi = world.policy_model(policy)
        residual = exact.values - (r_pi + world.gamma * P_pi @ exact.values)
        assert np.abs(residual).max() < 1e-10


def test_two_by_two_policy_values_by_hand() -> None:
    world = small_world()
    gamma = world.gamma
    # s1 down, s2 down, s3 right, s4 stay: v4 = 1/(1-g), v3 = v2 = 1 + g v4, v1 = 0 + g v3.
    good = evaluate_policy(world, deterministic(world, [DOWN, DOWN, RIGHT, STAY])).values
    v4 = 1 / (1 - gamma)
    np.testing.assert_allclose(good, [gamma * (1 + gamma * v4), 1 + gamma * v4, 1 + gamma * v4, v4])
    np.testing.assert_allclose(good, [9.0, 10.0, 10.0, 10.0])
    # s1 right (into the forbidden cell): v1 = -1 + g v2 = 8.
    worse = evaluate_policy(world, deterministic(world, [RIGHT, DOWN, RIGHT, STAY])).values
    np.testing.assert_allclose(worse, [8.0, 10.0, 10.0, 10.0])
    # The uniform policy: P_pi and r_pi written out by hand from the five moves of each cell
    # (s1: up/left/stay stay at s1, right -> s2 forbidden (-1), down -> s3; ...).
    P_pi = np.array(
        [[0.6, 0.2, 0.2, 0.0], [0.2, 0.6, 0.0, 0.2], [0.2, 0.0, 0.6, 0.2], [0.0, 0.2, 0.2, 0.6]]
    )
    r_pi = np.array([-3.0, -2.0, -1.0, -2.0]) / 5
    np.testing.assert_allclose(world.policy_model(world.uniform_policy())[0], P_pi)
    np.testing.assert_allclose(world.policy_model(world.uniform_policy())[1], r_pi)
    by_hand = np.linalg.solve(np.eye(4) - gamma * P_pi, r_pi)
    uniform = evaluate_policy(world, world.uniform_policy()).values
    np.testing.assert_allclose(uniform, by_hand, atol=1e-12)


def test_q_from_v_by_hand() -> None:
    world = small_world()
    q = q_from_v(world, np.array([9.0, 10.0, 10.0, 10.0]))
    # s1: up -1 + .9*9, right -1 + .9*10, down 0 + .9*10, left -1 + .9*9, stay 0 + .9*9.
    np.testing.assert_allclose(q[0], [7.1, 8.0, 9.0, 7.1, 8.1])
    # s4 (target): up into s2 (forbidden) -1 + 9, ..., stay +1 + 9.
    np.testing.assert_allclose(q[3], [8.0, 8.0, 8.0, 9.0, 10.0])


# ----- value iteration by hand ------------------------------------------------------------------
def test_two_by_two_first_value_iteration_steps_by_hand() -> None:
    result = value_iteration(small_world(), max_iterations=2, tol=1e-300)
    v = result.value_history
    np.testing.assert_allclose(v[0], [0.0, 0.0, 0.0, 0.0])
    # q_0 = r: max over actions is 0 at s1 (down or stay), +1 elsewhere.
    np.testing.assert_allclose(v[1], [0.0, 1.0, 1.0, 1.0])
    # q_1(s1, down) = 0 + 0.9 * 1; q_1(s2, down) = 1 + 0.9 * 1; likewise s3 right, s4 stay.
    np.testing.assert_allclose(v[2], [0.9, 1.9, 1.9, 1.9])
    # Greedy policies: ties go to the first action (down before stay at s1 in step 1).
    pi1 = result.policy_history[1].argmax(axis=1)
    np.testing.assert_array_equal(pi1, [DOWN, DOWN, RIGHT, STAY])
    assert not result.converged and result.iterations == 2


# ----- optimal values --------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", WORLDS.values(), ids=WORLDS.keys())
def test_planners_reach_the_same_optimum(kwargs: dict) -> None:
    world = GridWorld(**kwargs)
    results = {
        "value iteration": value_iteration(world, tol=1e-12),
        "policy iteration": policy_iteration(world),
        "policy iteration (iterative evaluation)": policy_iteration(world, evaluation="iterative"),
        "truncated (3)": truncated_policy_iteration(world, truncation=3, tol=1e-12),
        "truncated (50)": truncated_policy_iteration(world, truncation=50, tol=1e-12),
    }
    v_star = results["policy iteration"].values
    for name, result in results.items():
        assert result.converged, name
        assert np.abs(result.values - v_star).max() < 1e-8, name
        # The greedy policy is optimal: its exact value is v*.
        assert np.abs(evaluate_policy(world, result.policy).values - v_star).max() < 1e-8, name
    # v* solves the Bellman optimality equation v = max_a q(s, a) (Zhao ch. 3.3).
    assert np.abs(q_from_v(world, v_star).max(axis=1) - v_star).max() < 1e-9


def test_default_world_optimal_values_match_the_book() -> None:
    """Zhao ch. 3: the optimal state values of the default world, as printed in the book."""
    v = policy_iteration(GridWorld()).values.reshape(5, 5)
    book = [
        [5.8, 5.6, 6.2, 6.5, 5.8],
        [6.5, 7.2, 8.0, 7.2, 6.5],
        [7.2, 8.0, 10.0, 8.0, 7.2],
        [8.0, 10.0, 10.0, 10.0, 8.0],
        [7.2, 9.0, 10.0, 9.0, 8.1],
    ]
    np.testing.assert_allclose(v, book, atol=0.05)
    assert v[3, 2] == pytest.approx(1 / (1 - 0.9), abs=1e-10)


def test_large_forbidden_penalty_avoids_forbidden_cells() -> None:
    world = GridWorld(r_forbidden=-10.0)
    policy = policy_iteration(world).policy
    nxt = world.next_state[np.arange(world.n_states), policy.argmax(axis=1)]
    outside = ~np.isin(np.arange(world.n_states), world.forbidden_states)
    assert not np.isin(nxt[outside], world.forbidden_states).any()


def test_gamma_zero_is_myopic() -> None:
    world = GridWorld(gamma=0.0)
    result = value_iteration(world)
    np.testing.assert_allclose(result.values, world.reward.max(axis=1))
    np.testing.assert_array_equal(result.policy, greedy_policy(world.reward))


def test_value_iteration_is_truncation_one() -> None:
    world = GridWorld()
    vi = value_iteration(world)
    tpi = truncated_policy_iteration(world, truncation=1)
    np.testing.assert_array_equal(vi.value_history, tpi.value_history)
    np.testing.assert_array_equal(vi.policy_history, tpi.policy_history)


def test_truncation_length_trades_sweeps_for_iterations() -> None:
    """Zhao ch. 4.3: longer truncation needs fewer outer iterations (PI is the limit)."""
    world = GridWorld()
    iterations = [
        truncated_policy_iteration(world, t, tol=1e-10).iterations for t in (1, 3, 10, 100)
    ]
    assert iterations == sorted(iterations, reverse=True)
    assert iterations[0] > 100 and iterations[-1] < 10


def test_policy_iteration_improves_monotonically() -> None:
    """Policy improvement theorem (Zhao ch. 4, Lemma 4.1): v_{pi_{k+1}} >= v_{pi_k}."""
    world = GridWorld(r_forbidden=-10.0)
    result = policy_iteration(world, initial_policy=world.uniform_policy())
    history = result.value_history
    assert np.all(np.diff(history, axis=0) >= -1e-10)
    assert 1 <= result.iterations <= 10


def test_undiscounted_terminal_target_gives_shortest_paths() -> None:
    """gamma = 1, a step cost of 1 and a terminal target: v*(s) = -(distance - 1)."""
    world = GridWorld(forbidden=[], r_other=-1.0, r_target=0.0, gamma=1.0, terminal_target=True)
    result = value_iteration(world)
    tr, tc = world.target
    for s in range(world.n_states):
        r, c = world.cell(s)
        distance = abs(r - tr) + abs(c - tc)
        assert result.values[s] == pytest.approx(0.0 if distance == 0 else -(distance - 1))
    np.testing.assert_allclose(evaluate_policy(world, result.policy).values, result.values)
    # Policy iteration starts from the uniform policy here (it reaches the target).
    np.testing.assert_allclose(policy_iteration(world).values, result.values, atol=1e-10)
    # A policy that never reaches the target has no finite undiscounted value.
    stay = deterministic(world, [STAY] * world.n_states)
    with pytest.raises(ConfigError, match="reach the terminal target"):
        evaluate_policy(world, stay)


def test_greedy_policy_breaks_ties_with_the_first_action() -> None:
    q = np.array([[1.0, 3.0, 3.0 - 1e-12, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(greedy_policy(q).argmax(axis=1), [1, 0])


def test_bad_arguments_name_the_value() -> None:
    world = GridWorld()
    with pytest.raises(ConfigError, match=r"policy must have shape \(25, 5\)"):
        evaluate_policy(world, np.ones((3, 5)) / 5)
    with pytest.raises(ConfigError, match="method must be one of"):
        evaluate_policy(world, world.uniform_policy(), method="magic")
    with pytest.raises(ConfigError, match="truncation must be >= 1, got 0"):
        truncated_policy_iteration(world, truncation=0)
    with pytest.raises(ConfigError, match=r"v0 must have shape \(25,\)"):
        value_iteration(world, v0=np.zeros(3))
