"""``driftlab rl tabular <method>``: every grid-world method from the command line.

The methods form one table, :data:`COMMANDS`: each entry names its options and a function that
runs the method on a :class:`GridWorld` and returns an :class:`Outcome`. The shared runner
builds the world from the world options, creates the run directory, prints the values and the
policy as a table, and writes the pictures (``grid.png``, and ``learning_curve.png`` for the
learners) with ``config.json``, ``metrics.jsonl`` and ``summary.txt``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from driftlab.core.config import ConfigError
from driftlab.core.metrics import MetricsLogger
from driftlab.core.rundir import RunDir
from driftlab.rl.tabular.gridworld import DEFAULT_FORBIDDEN, DEFAULT_TARGET, GridWorld
from driftlab.rl.tabular.monte_carlo import (
    MonteCarloResult,
    mc_basic,
    mc_epsilon_greedy,
    mc_exploring_starts,
)
from driftlab.rl.tabular.planning import (
    PlanningResult,
    evaluate_policy,
    policy_iteration,
    truncated_policy_iteration,
    value_iteration,
)
from driftlab.rl.tabular.plots import format_value, plot_grid, plot_learning_curves

ARROWS = ("^", ">", "v", "<", "o")  # up, right, down, left, stay; ASCII prints anywhere
Curve = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class Outcome:
    """What a method found, in the form the runner prints and draws.

    ``values``/``policy`` are one run's (or the mean over runs of values and the first run's
    policy); ``curves`` maps a label to ``(x, mean, std)``; ``lines`` are extra summary lines.
    """

    values: np.ndarray
    policy: np.ndarray
    lines: list[str] = field(default_factory=list)
    curves: dict[str, Curve] = field(default_factory=dict)
    x_label: str = "episodes"
    y_label: str = "value error (RMS over states)"
    log_y: bool = False


@dataclass(frozen=True)
class Command:
    """One row of the command table: ``driftlab rl tabular <name> [options]``."""

    name: str
    help: str
    options: tuple[Callable[[argparse.ArgumentParser], None], ...]
    run: Callable[[GridWorld, argparse.Namespace], Outcome]


# ----- option groups -----------------------------------------------------------------------------
def _cell(text: str) -> tuple[int, int]:
    parts = text.strip().split(",")
    try:
        row, col = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"a cell must be 'row,col' with integers, got {text!r}") from None
    return row, col


def parse_cells(text: str) -> list[tuple[int, int]]:
    """``"2,2;2,3"`` -> ``[(2, 2), (2, 3)]``; an empty string means no cells."""
    return [_cell(part) for part in text.split(";") if part.strip()]


def _format_cells(cells: tuple[tuple[int, int], ...]) -> str:
    return ";".join(f"{r},{c}" for r, c in cells)


def world_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("grid world (Zhao ch. 1)")
    group.add_argument("--rows", type=int, default=5, help="grid rows")
    group.add_argument("--cols", type=int, default=5, help="grid columns")
    group.add_argument(
        "--forbidden", default=_format_cells(DEFAULT_FORBIDDEN),
        help="forbidden cells 'row,col;row,col' (1-indexed; '' for none)",
    )  # fmt: skip
    group.add_argument(
        "--target", default=_format_cells((DEFAULT_TARGET,)), help="target cell 'row,col'"
    )
    group.add_argument("--r-boundary", type=float, default=-1.0, help="reward for hitting a wall")
    group.add_argument(
        "--r-forbidden", type=float, default=-1.0, help="reward for entering a forbidden cell"
    )
    group.add_argument("--r-target", type=float, default=1.0, help="reward for entering the target")
    group.add_argument("--r-other", type=float, default=0.0, help="reward for any other move")
    group.add_argument("--gamma", type=float, default=0.9, help="discount rate in [0, 1)")
    group.add_argument(
        "--terminal-target", action="store_true",
        help="end episodes at the target (episodic task; allows gamma = 1)",
    )  # fmt: skip
    group.add_argument(
        "--start", default=None, help="start cell 'row,col' of every episode (default: random)"
    )


def run_options(parser: argparse.ArgumentParser, name: str) -> None:
    group = parser.add_argument_group("run")
    group.add_argument(
        "--seed", type=int, default=0, help="seed of the generator that drives all runs"
    )
    group.add_argument(
        "--run-dir", default=f"runs/rl-tabular/{name}", help="where outputs are written"
    )
    group.add_argument("--overwrite", action="store_true", help="replace an existing run dir")
    group.add_argument(
        "--resume", action="store_true",
        help="rerun an existing run dir with its saved config (tabular runs take seconds, so "
        "resuming recomputes them in place)",
    )  # fmt: skip


def planning_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("planning")
    group.add_argument("--tol", type=float, default=1e-10, help="stop when max|v_k+1 - v_k| < tol")
    group.add_argument("--max-iterations", type=int, default=10_000, help="iteration budget")


def truncation_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--truncation", type=int, default=5, help="policy-evaluation sweeps per iteration"
    )


def evaluation_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--evaluation", default="closed-form", choices=("closed-form", "iterative"),
        help="how each policy is evaluated",
    )  # fmt: skip


def mc_basic_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("MC Basic")
    group.add_argument("--episode-length", type=int, default=100, help="steps per episode")
    group.add_argument(
        "--iterations", type=int, default=None,
        help="policy iterations (default: until the policy is stable)",
    )  # fmt: skip
    group.add_argument(
        "--episodes-per-pair", type=int, default=1, help="episodes averaged per (s, a)"
    )


def learner_options(
    episodes: int, episode_length: int, runs: int
) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("learning")
        group.add_argument("--episodes", type=int, default=episodes, help="episodes per run")
        group.add_argument(
            "--episode-length", type=int, default=episode_length, help="steps per episode"
        )
        group.add_argument(
            "--runs", type=int, default=runs,
            help="independent runs (seeds) advanced together; curves show mean and std",
        )  # fmt: skip
        group.add_argument(
            "--eval-every", type=int, default=max(1, episodes // 50),
            help="episodes between points of the learning curve",
        )  # fmt: skip

    return add


def monte_carlo_options(visit: str, alpha: float | None, epsilon: float | None):
    def add(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("Monte Carlo")
        group.add_argument(
            "--visit", default=visit, choices=("first", "every"), help="which visits learn"
        )
        group.add_argument(
            "--alpha", type=float, default=alpha,
            help="constant step size; default: the mean of all returns (step 1/n, the book's)",
        )  # fmt: skip
        if epsilon is not None:
            group.add_argument(
                "--epsilon", type=float, default=epsilon, help="exploration rate in (0, 1]"
            )

    return add


# ----- methods -----------------------------------------------------------------------------------
def _planning_outcome(world: GridWorld, result: PlanningResult, name: str) -> Outcome:
    v_star = policy_iteration(world).values
    errors = np.abs(result.value_history - v_star).max(axis=1)
    k = np.arange(len(errors))
    status = "converged" if result.converged else "did NOT converge"
    return Outcome(
        values=result.values,
        policy=result.policy,
        lines=[
            f"{name}: {status} after {result.iterations} iterations; "
            f"max |v - v*| = {errors[-1]:.2e}"
        ],
        curves={name: (k, np.maximum(errors, 1e-16), np.zeros_like(errors))},
        x_label="iteration k",
        y_label="max |v_k - v*|",
        log_y=True,
    )


def run_value_iteration(world: GridWorld, args: argparse.Namespace) -> Outcome:
    result = value_iteration(world, tol=args.tol, max_iterations=args.max_iterations)
    return _planning_outcome(world, result, "value iteration")


def run_policy_iteration(world: GridWorld, args: argparse.Namespace) -> Outcome:
    result = policy_iteration(world, evaluation=args.evaluation, max_iterations=args.max_iterations)
    return _planning_outcome(world, result, "policy iteration")


def run_truncated_policy_iteration(world: GridWorld, args: argparse.Namespace) -> Outcome:
    """Also draws value and policy iteration from the same start, as Zhao ch. 4.3 compares."""
    result = truncated_policy_iteration(
        world, args.truncation, tol=args.tol, max_iterations=args.max_iterations
    )
    outcome = _planning_outcome(world, result, f"truncated policy iteration ({args.truncation})")
    for name, other in (
        ("value iteration", value_iteration(world, tol=args.tol)),
        ("policy iteration", policy_iteration(world)),
    ):
        comparison = _planning_outcome(world, other, name)
        outcome.curves.update(comparison.curves)
        outcome.lines.extend(comparison.lines)
    return outcome


def run_mc_basic(world: GridWorld, args: argparse.Namespace) -> Outcome:
    result = mc_basic(
        world, episode_length=args.episode_length, iterations=args.iterations,
        episodes_per_pair=args.episodes_per_pair, seed=args.seed,
    )  # fmt: skip
    outcome = _planning_outcome(world, result, f"MC Basic (episode length {args.episode_length})")
    vi = value_iteration(world, max_iterations=args.episode_length, tol=1e-300)
    outcome.lines.append(
        f"max |v - v_L| = {np.abs(result.values - vi.values).max():.2e}, where v_L is "
        f"{args.episode_length} rounds of value iteration from 0"
    )
    return outcome


def _monte_carlo_outcome(result: MonteCarloResult, name: str, answer: str) -> Outcome:
    error, optimal = result.value_error[:, -1], result.optimal_fraction[:, -1]
    n_runs = error.shape[0]
    return Outcome(
        values=result.values.mean(axis=0),
        policy=result.greedy[0],
        lines=[
            f"{name}: {n_runs} runs x {result.episodes[-1]} episodes; RMS error to {answer} "
            f"{error.mean():.4f} +- {error.std():.4f} (worst {error.max():.4f})",
            f"greedy action best in {100 * optimal.mean():.1f}% of states on average; "
            f"{int((optimal == 1.0).sum())}/{n_runs} runs best in every state",
        ],
        curves={name: result.curve()},
    )


def run_mc_es(world: GridWorld, args: argparse.Namespace) -> Outcome:
    result = mc_exploring_starts(
        world, episodes=args.episodes, episode_length=args.episode_length, visit=args.visit,
        step_size=args.alpha, n_runs=args.runs, seed=args.seed, eval_every=args.eval_every,
    )  # fmt: skip
    return _monte_carlo_outcome(result, f"MC Exploring Starts ({args.visit}-visit)", "v*")


def run_mc_egreedy(world: GridWorld, args: argparse.Namespace) -> Outcome:
    result = mc_epsilon_greedy(
        world, epsilon=args.epsilon, episodes=args.episodes, episode_length=args.episode_length,
        visit=args.visit, step_size=args.alpha, n_runs=args.runs, seed=args.seed,
        eval_every=args.eval_every,
    )  # fmt: skip
    name = f"MC epsilon-greedy (epsilon={args.epsilon})"
    return _monte_carlo_outcome(result, name, "the best epsilon-greedy policy's v")


def td_options(epsilon: bool, behavior: bool = False, n: bool = False, policy: bool = False):
    def add(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("temporal difference")
        group.add_argument("--alpha", type=float, default=0.1, help="constant step size")
        if epsilon:
            group.add_argument(
                "--epsilon", type=float, default=0.1, help="exploration rate of epsilon-greedy"
            )
            group.add_argument(
                "--exploring-starts", action="store_true",
                help="start each episode with a random action",
            )  # fmt: skip
        if behavior:
            group.add_argument(
                "--behavior", default="uniform", choices=("uniform", "epsilon-greedy"),
                help="off-policy from uniform random actions (Zhao ch. 7.4's example) or "
                "on-policy (epsilon-greedy in q)",
            )  # fmt: skip
        if n:
            group.add_argument("--n", type=int, default=3, help="steps of the n-step return")
        if policy:
            group.add_argument(
                "--policy", default="uniform", choices=("uniform", "optimal"),
                help="the policy whose values are learned",
            )  # fmt: skip

    return add


def _optimal_runs(world: GridWorld, policies: np.ndarray) -> int:
    """Runs whose greedy action is optimal (best under q*) in every state."""
    optimal = policy_iteration(world)
    best = optimal.q_values.max(axis=1)
    chosen = np.take_along_axis(optimal.q_values[None], policies.argmax(axis=2)[..., None], 2)
    return int((chosen[..., 0] >= best - 1e-6).all(axis=1).sum())


def _td_outcome(world: GridWorld, result: Any, name: str, answer: str) -> Outcome:
    errors = result.errors  # [episodes, n_runs]
    episodes = np.arange(1, errors.shape[0] + 1)
    final = errors[-1]
    lines = [
        f"{name}: {final.shape[0]} runs x {errors.shape[0]} episodes; RMS error to {answer} "
        f"{final.mean():.4f} +- {final.std():.4f} (worst {final.max():.4f})"
    ]
    if result.q_values is not None:
        values = result.q_values.max(axis=2).mean(axis=0)
        lines.append(
            f"greedy policy optimal in every state in "
            f"{_optimal_runs(world, result.policy)}/{final.shape[0]} runs"
        )
    else:
        values = result.values.mean(axis=0)
    return Outcome(
        values=values,
        policy=result.policy[0],
        lines=lines,
        curves={name: (episodes, errors.mean(axis=1), errors.std(axis=1))},
    )


def _td_budget(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "alpha": args.alpha, "episodes": args.episodes, "episode_length": args.episode_length,
        "n_runs": args.runs, "seed": args.seed,
    }  # fmt: skip


def run_td0(world: GridWorld, args: argparse.Namespace) -> Outcome:
    from driftlab.rl.tabular.td import td0

    policy = world.uniform_policy() if args.policy == "uniform" else policy_iteration(world).policy
    v_pi = evaluate_policy(world, policy).values
    result = td0(world, policy, reference=v_pi, **_td_budget(args))
    return _td_outcome(world, result, f"TD(0), {args.policy} policy", "v_pi")


def _sarsa_family(
    learner_name: str, label: str
) -> Callable[[GridWorld, argparse.Namespace], Outcome]:
    def run(world: GridWorld, args: argparse.Namespace) -> Outcome:
        from driftlab.rl.tabular import td

        learner = getattr(td, learner_name)
        extra = {"n": args.n} if learner_name == "nstep_sarsa" else {}
        # With a fixed epsilon these learn q of the best epsilon-greedy policy (Zhao ch. 7.2).
        reference = policy_iteration(world, epsilon=args.epsilon).q_values
        result = learner(
            world, epsilon=args.epsilon, exploring_starts=args.exploring_starts,
            reference=reference, **extra, **_td_budget(args),
        )  # fmt: skip
        name = f"{label} (epsilon={args.epsilon})"
        return _td_outcome(world, result, name, "q of the best epsilon-greedy policy")

    return run


def run_q_learning(world: GridWorld, args: argparse.Namespace) -> Outcome:
    from driftlab.rl.tabular.td import q_learning

    behavior = world.uniform_policy() if args.behavior == "uniform" else None
    result = q_learning(
        world, behavior_policy=behavior, epsilon=args.epsilon,
        exploring_starts=args.exploring_starts, reference=policy_iteration(world).q_values,
        **_td_budget(args),
    )  # fmt: skip
    mode = "off-policy, uniform behaviour" if behavior is not None else "on-policy"
    return _td_outcome(world, result, f"Q-learning ({mode})", "q*")


def linear_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("linear function approximation")
    group.add_argument(
        "--features", default="polynomial", choices=("polynomial", "fourier", "onehot"),
        help="state features phi(s) of the normalised cell coordinates",
    )  # fmt: skip
    group.add_argument("--order", type=int, default=1, help="order of the features")
    group.add_argument("--alpha", type=float, default=0.0005, help="constant step size")
    group.add_argument(
        "--policy", default="uniform", choices=("uniform", "optimal"),
        help="the policy whose values are learned",
    )  # fmt: skip


def run_td_linear(world: GridWorld, args: argparse.Namespace) -> Outcome:
    from driftlab.rl.tabular.linear import td_linear

    policy = world.uniform_policy() if args.policy == "uniform" else policy_iteration(world).policy
    v_pi = evaluate_policy(world, policy).values
    result = td_linear(
        world, policy, features=args.features, order=args.order, reference=v_pi,
        **_td_budget(args),
    )  # fmt: skip
    name = f"TD-linear, {args.features} features of order {args.order}, {args.policy} policy"
    return _td_outcome(world, result, name, "v_pi")


def dqn_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("deep Q-learning")
    group.add_argument(
        "--transitions", type=int, default=3000, help="uniform-behaviour steps in each replay"
    )
    group.add_argument("--iterations", type=int, default=2000, help="gradient steps")
    group.add_argument("--batch-size", type=int, default=100, help="minibatch size")
    group.add_argument(
        "--target-update", type=int, default=20, help="iterations between target-network copies"
    )
    group.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    group.add_argument("--hidden", type=int, default=64, help="width of the two hidden layers")
    group.add_argument(
        "--inputs", default="onehot", choices=("onehot", "coordinates"),
        help="network input: one-hot state or normalised (column, row)",
    )  # fmt: skip
    group.add_argument("--runs", type=int, default=5, help="independent runs trained together")
    group.add_argument(
        "--eval-every", type=int, default=100, help="iterations between points of the curve"
    )


def run_dqn_grid(world: GridWorld, args: argparse.Namespace) -> Outcome:
    from driftlab.rl.tabular.dqn_grid import dqn_grid

    optimal = policy_iteration(world)
    result = dqn_grid(
        world, transitions=args.transitions, iterations=args.iterations,
        batch_size=args.batch_size, target_update=args.target_update, lr=args.lr,
        hidden=args.hidden, inputs=args.inputs, n_runs=args.runs, seed=args.seed,
        reference=optimal.q_values, eval_every=args.eval_every,
    )  # fmt: skip
    errors, final = result.errors, result.errors[-1]
    name = f"deep Q-learning ({args.inputs} input)"
    return Outcome(
        values=result.q_values.max(axis=2).mean(axis=0),
        policy=result.policy[0],
        lines=[
            f"{name}: {final.shape[0]} runs x {args.iterations} iterations; RMS error to q* "
            f"{final.mean():.4f} +- {final.std():.4f} (worst {final.max():.4f})",
            f"greedy policy optimal in every state in "
            f"{_optimal_runs(world, result.policy)}/{final.shape[0]} runs",
        ],
        curves={name: (result.eval_iterations, errors.mean(axis=1), errors.std(axis=1))},
        x_label="iterations",
        y_label="q error (RMS over state-action pairs)",
        log_y=True,
    )


def policy_gradient_options(critic: bool) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("policy gradient")
        if critic:
            group.add_argument("--alpha-theta", type=float, default=0.05, help="actor step")
            group.add_argument("--alpha-w", type=float, default=0.1, help="critic step")
        else:
            group.add_argument("--alpha", type=float, default=0.05, help="policy step size")
            group.add_argument(
                "--baseline", type=float, default=None,
                help="step of the running-mean baseline b(s) (default: none, plain REINFORCE)",
            )  # fmt: skip

    return add


def _policy_gradient_outcome(world: GridWorld, result: Any, name: str) -> Outcome:
    from driftlab.rl.tabular.policy_gradient import policy_values

    errors, final = result.errors, result.errors[-1]
    return Outcome(
        values=policy_values(world, result.policy).mean(axis=0),
        policy=result.policy[0],
        lines=[
            f"{name}: {final.shape[0]} runs x {result.episode_returns.shape[0]} episodes; "
            f"RMS error of v_pi to v* {final.mean():.4f} +- {final.std():.4f}",
            f"mean episode length over the last 10% of episodes "
            f"{result.episode_lengths[-max(1, len(result.episode_lengths) // 10) :].mean():.2f}",
        ],
        curves={name: (result.eval_episodes, errors.mean(axis=1), errors.std(axis=1))},
        y_label="RMS error of v_pi to v*",
    )


def run_reinforce_grid(world: GridWorld, args: argparse.Namespace) -> Outcome:
    from driftlab.rl.tabular.policy_gradient import reinforce

    result = reinforce(
        world, alpha=args.alpha, baseline=args.baseline, episodes=args.episodes,
        episode_length=args.episode_length, n_runs=args.runs, seed=args.seed,
        reference=policy_iteration(world).values, eval_every=args.eval_every,
    )  # fmt: skip
    label = "REINFORCE" if args.baseline is None else "REINFORCE with baseline"
    return _policy_gradient_outcome(world, result, label)


def run_qac_grid(world: GridWorld, args: argparse.Namespace) -> Outcome:
    from driftlab.rl.tabular.policy_gradient import qac

    result = qac(
        world, alpha_theta=args.alpha_theta, alpha_w=args.alpha_w, episodes=args.episodes,
        episode_length=args.episode_length, n_runs=args.runs, seed=args.seed,
        reference=policy_iteration(world).values, eval_every=args.eval_every,
    )  # fmt: skip
    return _policy_gradient_outcome(world, result, "QAC")


COMMANDS: tuple[Command, ...] = (
    Command(
        "value-iteration", "value iteration (Zhao ch. 4.1)", (planning_options,),
        run_value_iteration,
    ),
    Command(
        "policy-iteration", "policy iteration (Zhao ch. 4.2)",
        (planning_options, evaluation_option), run_policy_iteration,
    ),
    Command(
        "truncated-policy-iteration", "truncated policy iteration (Zhao ch. 4.3)",
        (planning_options, truncation_option), run_truncated_policy_iteration,
    ),
    Command("mc-basic", "MC Basic (Zhao ch. 5.2)", (mc_basic_options,), run_mc_basic),
    Command(
        "mc-es", "MC Exploring Starts (Zhao ch. 5.3)",
        (learner_options(2000, 10, 20), monte_carlo_options("first", None, None)), run_mc_es,
    ),
    Command(
        "mc-egreedy", "MC epsilon-greedy (Zhao ch. 5.4)",
        (learner_options(2000, 20, 20), monte_carlo_options("every", None, 0.1)),
        run_mc_egreedy,
    ),
    Command(
        "td0", "TD(0) policy evaluation (Zhao ch. 7.1)",
        (learner_options(500, 100, 20), td_options(epsilon=False, policy=True)), run_td0,
    ),
    Command(
        "sarsa", "Sarsa (Zhao ch. 7.2)", (learner_options(500, 100, 20), td_options(True)),
        _sarsa_family("sarsa", "Sarsa"),
    ),
    Command(
        "expected-sarsa", "Expected Sarsa (Zhao ch. 7.3)",
        (learner_options(500, 100, 20), td_options(True)),
        _sarsa_family("expected_sarsa", "Expected Sarsa"),
    ),
    Command(
        "nstep-sarsa", "n-step Sarsa (Zhao ch. 7.3)",
        (learner_options(500, 100, 20), td_options(True, n=True)),
        _sarsa_family("nstep_sarsa", "n-step Sarsa"),
    ),
    Command(
        "q-learning", "Q-learning (Zhao ch. 7.4)",
        (learner_options(100, 1000, 20), td_options(True, behavior=True)), run_q_learning,
    ),
    Command(
        "td-linear", "TD with linear function approximation (Zhao ch. 8.2)",
        (learner_options(500, 500, 20), linear_options), run_td_linear,
    ),
    Command(
        "dqn-grid", "deep Q-learning from uniform replay data (Zhao ch. 8.4)", (dqn_options,),
        run_dqn_grid,
    ),
    Command(
        "reinforce-grid", "REINFORCE, tabular softmax policy (Zhao ch. 9.4)",
        (learner_options(2000, 50, 20), policy_gradient_options(critic=False)),
        run_reinforce_grid,
    ),
    Command(
        "qac-grid", "QAC actor-critic, tabular softmax policy (Zhao ch. 10.1)",
        (learner_options(2000, 50, 20), policy_gradient_options(critic=True)), run_qac_grid,
    ),
)  # fmt: skip


# ----- the shared runner -------------------------------------------------------------------------
def make_world(args: argparse.Namespace) -> GridWorld:
    target = parse_cells(args.target)
    if len(target) != 1:
        raise ConfigError(f"--target must be one cell 'row,col', got {args.target!r}")
    return GridWorld(
        rows=args.rows, cols=args.cols, forbidden=parse_cells(args.forbidden), target=target[0],
        r_boundary=args.r_boundary, r_forbidden=args.r_forbidden, r_target=args.r_target,
        r_other=args.r_other, gamma=args.gamma, terminal_target=args.terminal_target,
        start=None if args.start is None else _cell(args.start),
    )  # fmt: skip


def format_values(world: GridWorld, values: np.ndarray, decimals: int = 2) -> str:
    """The values as a grid: one line per row, columns numbered from 1 as in the book."""
    cells = [format_value(v, decimals) for v in values]
    width = max(len(c) for c in cells) + 1
    lines = ["   " + "".join(f"{c:>{width}}" for c in range(1, world.cols + 1))]
    for r in range(world.rows):
        row = cells[r * world.cols : (r + 1) * world.cols]
        lines.append(f"{r + 1:>3}" + "".join(f"{c:>{width}}" for c in row))
    return "\n".join(lines)


def format_policy(world: GridWorld, policy: np.ndarray) -> str:
    """The most probable action of each state as an arrow (``o`` = stay)."""
    arrows = [ARROWS[a] for a in np.asarray(policy).argmax(axis=1)]
    lines = ["   " + "".join(f"{c:>2}" for c in range(1, world.cols + 1))]
    for r in range(world.rows):
        lines.append(
            f"{r + 1:>3}" + "".join(f"{a:>2}" for a in arrows[r * world.cols :][: world.cols])
        )
    return "\n".join(lines)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"handler", "family", "verb", "method", "overwrite", "resume"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def run_command(command: Command, args: argparse.Namespace) -> str:
    """Run one method: world, run dir, method, table, pictures. Returns the printed summary.

    The world is built before the run directory is created, so a bad world option leaves
    nothing behind. ``--resume`` reruns the saved configuration of an existing run dir.
    """
    world = None if args.resume else make_world(args)
    run = RunDir.create(
        args.run_dir, {"method": command.name, **_config(args)}, resume=args.resume,
        overwrite=args.overwrite,
    )  # fmt: skip
    if args.resume:
        args = argparse.Namespace(**{**vars(args), **run.config})
    with run:
        if world is None:
            world = make_world(args)
        outcome = command.run(world, args)
        title = f"{command.help} — {world.rows}x{world.cols}, gamma={world.gamma}"
        plot_grid(world, outcome.values, outcome.policy, path=run.file("grid.png"), title=title)
        if outcome.curves:
            plot_learning_curves(
                outcome.curves, run.file("learning_curve.png"), xlabel=outcome.x_label,
                ylabel=outcome.y_label, title=command.help, log_y=outcome.log_y,
            )  # fmt: skip
            # A resumed run recomputes its curves, so old records are replaced, not appended to.
            run.file("metrics.jsonl").unlink(missing_ok=True)
            with MetricsLogger(run.path) as metrics:
                for label, (x, mean, std) in outcome.curves.items():
                    for xi, m, s in zip(x, mean, std, strict=True):
                        metrics.log(int(xi), curve=label, error_mean=float(m), error_std=float(s))
        summary = "\n".join(
            [
                *outcome.lines,
                "state values:",
                format_values(world, outcome.values),
                "policy (o = stay):",
                format_policy(world, outcome.policy),
                f"pictures and metrics in {run.path}",
            ]
        )
        run.file("summary.txt").write_text(summary + "\n", encoding="utf-8")
    return summary


def add_parser(verbs: argparse._SubParsersAction, formatter: type) -> None:
    tabular = verbs.add_parser(
        "tabular",
        help="tabular methods on the grid world",
        description="Tabular methods on the book's grid world (Zhao, Mathematical Foundations "
        "of Reinforcement Learning). Each prints the values and the policy and writes "
        "pictures into its run directory.",
        formatter_class=formatter,
    )
    methods = tabular.add_subparsers(dest="method", required=True, metavar="METHOD")
    for command in COMMANDS:
        parser = methods.add_parser(
            command.name, help=command.help, description=command.help, formatter_class=formatter
        )
        world_options(parser)
        for add in command.options:
            add(parser)
        run_options(parser, command.name)
        parser.set_defaults(handler=lambda args, command=command: print(run_command(command, args)))
