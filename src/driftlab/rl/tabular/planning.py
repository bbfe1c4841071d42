"""Model-based planning on the grid world (Zhao ch. 2-4).

With the model known, a policy's state values solve the Bellman equation (Zhao ch. 2.6,
matrix-vector form)

    v_pi = r_pi + gamma P_pi v_pi,

either in closed form, v_pi = (I - gamma P_pi)^-1 r_pi, or iteratively,
v_{j+1} = r_pi + gamma P_pi v_j (ch. 2.7). Action values follow from state values
(ch. 2.8): q(s, a) = r(s, a) + gamma sum_s' p(s'|s, a) v(s').

Optimal values solve the Bellman optimality equation v = max_pi (r_pi + gamma P_pi v)
(Zhao ch. 3.3); value iteration, policy iteration and truncated policy iteration
(Zhao ch. 4) find them. Every function here returns a :class:`PlanningResult`.

Terminal states (a target with ``terminal_target=True``) have value 0 by definition; the
linear solve runs over the other states only, so an undiscounted task (gamma = 1) is solvable
whenever the policy reaches the target from every state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from driftlab.core.config import (
    ConfigError,
    check_choice,
    check_in_range,
    check_int,
    check_positive,
)
from driftlab.rl.tabular.gridworld import GridWorld


@dataclass
class PlanningResult:
    """What a planning (or model-free control) method found.

    Attributes:
        values: ``[n_states]`` state values of the final iterate.
        q_values: ``[n_states, n_actions]`` action values derived from ``values``.
        policy: ``[n_states, n_actions]`` action probabilities (greedy for control methods).
        value_history: ``[iterations + 1, n_states]``, the value iterate ``v_k`` at each k.
        policy_history: ``[iterations + 1, n_states, n_actions]``, the policy at each k.
        iterations: number of iterations run.
        converged: whether the stopping criterion was met within the iteration budget.
    """

    values: np.ndarray
    q_values: np.ndarray
    policy: np.ndarray
    value_history: np.ndarray
    policy_history: np.ndarray
    iterations: int
    converged: bool = True


def q_from_v(world: GridWorld, v: np.ndarray) -> np.ndarray:
    """Action values from state values (Zhao ch. 2.8).

    ``q(s, a) = r(s, a) + gamma * sum_s' p(s'|s, a) v(s')``; shape ``[n_states, n_actions]``.
    """
    v = np.asarray(v, dtype=np.float64)
    if v.shape != (world.n_states,):
        raise ConfigError(f"v must have shape ({world.n_states},), got {v.shape}")
    return world.reward + world.gamma * world.transition @ v


def greedy_policy(q: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """The deterministic greedy policy ``pi(s) = argmax_a q(s, a)`` (Zhao ch. 3.4).

    Ties go to the first action within ``tol`` of the maximum, so that round-off in ``q``
    never decides between equally good actions and every method breaks ties the same way.
    Works on any leading batch shape ``[..., n_states, n_actions]``.
    """
    q = np.asarray(q, dtype=np.float64)
    near_max = q >= q.max(axis=-1, keepdims=True) - tol
    best = near_max.argmax(axis=-1)
    policy = np.zeros_like(q)
    np.put_along_axis(policy, best[..., None], 1.0, axis=-1)
    return policy


def epsilon_greedy_policy(q: np.ndarray, epsilon: float, tol: float = 1e-9) -> np.ndarray:
    """The epsilon-greedy policy of ``q`` (Zhao ch. 5.4).

    The greedy action gets ``1 - epsilon * (|A| - 1) / |A|``, every other ``epsilon / |A|``.
    """
    n_actions = np.shape(q)[-1]
    return (1.0 - epsilon) * greedy_policy(q, tol) + epsilon / n_actions


def _bellman_operator(world: GridWorld, policy: np.ndarray, v: np.ndarray) -> np.ndarray:
    P_pi, r_pi = world.policy_model(policy)
    return r_pi + world.gamma * P_pi @ v


def _closed_form_values(world: GridWorld, policy: np.ndarray) -> np.ndarray:
    """``v_pi = (I - gamma P_pi)^-1 r_pi`` (Zhao ch. 2.7.1), terminal states at 0."""
    P_pi, r_pi = world.policy_model(policy)
    live = ~world.terminal
    A = np.eye(int(live.sum())) - world.gamma * P_pi[np.ix_(live, live)]
    v = np.zeros(world.n_states)
    try:
        v[live] = np.linalg.solve(A, r_pi[live])
    except np.linalg.LinAlgError:
        raise ConfigError(
            "the Bellman equation of this policy has no unique solution: with gamma = "
            f"{world.gamma} the policy must reach the terminal target from every state"
        ) from None
    return v


def evaluate_policy(
    world: GridWorld,
    policy: np.ndarray,
    method: str = "closed-form",
    tol: float = 1e-12,
    max_iterations: int = 100_000,
) -> PlanningResult:
    """State and action values of ``policy`` (Zhao ch. 2).

    ``method="closed-form"`` solves ``(I - gamma P_pi) v = r_pi`` (ch. 2.7.1);
    ``method="iterative"`` runs ``v_{j+1} = r_pi + gamma P_pi v_j`` from ``v_0 = 0``
    (ch. 2.7.2) until ``max |v_{j+1} - v_j| < tol``; the error to the exact answer is then
    below ``gamma / (1 - gamma) * tol``. ``value_history`` holds every ``v_j``.
    """
    policy = world.check_policy(policy)
    check_choice("method", method, ("closed-form", "iterative"))
    check_positive("tol", tol)
    check_int("max_iterations", max_iterations, minimum=1)
    if method == "closed-form":
        v = _closed_form_values(world, policy)
        history = [v]
        converged = True
    else:
        v = np.zeros(world.n_states)
        history = [v]
        converged = False
        for _ in range(max_iterations):
            v_next = _bellman_operator(world, policy, v)
            history.append(v_next)
            delta = np.abs(v_next - v).max()
            v = v_next
            if delta < tol:
                converged = True
                break
    return PlanningResult(
        values=v,
        q_values=q_from_v(world, v),
        policy=policy,
        value_history=np.stack(history),
        policy_history=policy[None],
        iterations=len(history) - 1,
        converged=converged,
    )


def _initial_values(world: GridWorld, v0: np.ndarray | None) -> np.ndarray:
    if v0 is None:
        return np.zeros(world.n_states)
    v0 = np.array(v0, dtype=np.float64)
    if v0.shape != (world.n_states,):
        raise ConfigError(f"v0 must have shape ({world.n_states},), got {v0.shape}")
    return v0


def value_iteration(
    world: GridWorld,
    tol: float = 1e-10,
    max_iterations: int = 10_000,
    v0: np.ndarray | None = None,
) -> PlanningResult:
    """Value iteration (Zhao ch. 4, Algorithm 4.1).

    Each iteration updates the policy, ``pi_{k+1} = argmax_pi (r_pi + gamma P_pi v_k)``
    (policy update), then the value, ``v_{k+1} = r_{pi_{k+1}} + gamma P_{pi_{k+1}} v_k``
    (value update), i.e. ``v_{k+1}(s) = max_a q_k(s, a)``. Starts at ``v0`` (zeros by default)
    and stops when ``max |v_{k+1} - v_k| < tol``. ``policy_history[k]`` is the greedy policy
    of ``v_k``; ``values`` is the last ``v_k``.
    """
    check_positive("tol", tol)
    check_int("max_iterations", max_iterations, minimum=1)
    return truncated_policy_iteration(
        world, truncation=1, tol=tol, max_iterations=max_iterations, v0=v0
    )


def truncated_policy_iteration(
    world: GridWorld,
    truncation: int,
    tol: float = 1e-10,
    max_iterations: int = 10_000,
    v0: np.ndarray | None = None,
) -> PlanningResult:
    """Truncated policy iteration (Zhao ch. 4, Algorithm 4.3).

    Policy improvement, ``pi_{k+1} = greedy(q_k)`` with ``q_k = q_from_v(v_k)``, then a
    policy evaluation truncated after ``truncation`` sweeps of
    ``v^(j+1) = r_pi + gamma P_pi v^(j)`` started from ``v^(0) = v_k``. ``truncation = 1`` is
    value iteration; as ``truncation`` grows it becomes policy iteration (Zhao ch. 4.3).
    Stops when ``max |v_{k+1} - v_k| < tol``.
    """
    check_int("truncation", truncation, minimum=1)
    check_positive("tol", tol)
    check_int("max_iterations", max_iterations, minimum=1)
    v = _initial_values(world, v0)
    policy = greedy_policy(q_from_v(world, v))
    values, policies = [v], [policy]
    converged = False
    for _ in range(max_iterations):
        v_next = v
        for _ in range(truncation):
            v_next = _bellman_operator(world, policy, v_next)
        delta = np.abs(v_next - v).max()
        v = v_next
        policy = greedy_policy(q_from_v(world, v))
        values.append(v)
        policies.append(policy)
        if delta < tol:
            converged = True
            break
    return PlanningResult(
        values=v,
        q_values=q_from_v(world, v),
        policy=policy,
        value_history=np.stack(values),
        policy_history=np.stack(policies),
        iterations=len(values) - 1,
        converged=converged,
    )


def policy_iteration(
    world: GridWorld,
    initial_policy: np.ndarray | None = None,
    evaluation: str = "closed-form",
    max_iterations: int = 1_000,
    epsilon: float = 0.0,
) -> PlanningResult:
    """Policy iteration (Zhao ch. 4, Algorithm 4.2).

    Policy evaluation solves ``v_{pi_k} = r_{pi_k} + gamma P_{pi_k} v_{pi_k}``
    by ``evaluation`` (``"closed-form"`` or ``"iterative"``), then policy improvement takes
    ``pi_{k+1} = greedy(q_{pi_k})`` ; it stops when the policy no longer changes.
    The default ``pi_0`` is the greedy policy of ``v = 0``, the same start as value iteration
    (for gamma = 1 the uniform policy, which reaches the terminal target from every state).
    ``value_history[k]`` is ``v_{pi_k}``.

    With ``epsilon > 0`` the improvement step takes the epsilon-greedy policy of ``q_{pi_k}``
    instead (ch. 5.4); the policy improvement theorem holds within epsilon-greedy policies
    (Zhao ch. 5.4), so this finds the best epsilon-greedy policy, the answer MC
    epsilon-greedy estimates.
    """
    check_choice("evaluation", evaluation, ("closed-form", "iterative"))
    check_int("max_iterations", max_iterations, minimum=1)
    check_in_range("epsilon", epsilon, 0.0, 1.0)

    def improve(v: np.ndarray) -> np.ndarray:
        q = q_from_v(world, v)
        return epsilon_greedy_policy(q, epsilon) if epsilon > 0 else greedy_policy(q)

    if initial_policy is not None:
        policy = world.check_policy(initial_policy)
    elif world.gamma == 1.0 and epsilon == 0.0:
        # Undiscounted: pi_0 must reach the terminal target, and a random walk does.
        policy = world.uniform_policy()
    else:
        policy = improve(np.zeros(world.n_states))
    v = evaluate_policy(world, policy, method=evaluation).values
    values, policies = [v], [policy]
    converged = False
    for _ in range(max_iterations):
        improved = improve(v)
        if np.array_equal(improved, policy):
            converged = True
            break
        policy = improved
        v = evaluate_policy(world, policy, method=evaluation).values
        values.append(v)
        policies.append(policy)
    return PlanningResult(
        values=v,
        q_values=q_from_v(world, v),
        policy=policy,
        value_history=np.stack(values),
        policy_history=np.stack(policies),
        iterations=len(values) - 1,
        converged=converged,
    )
