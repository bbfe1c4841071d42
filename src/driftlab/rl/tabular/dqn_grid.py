"""Deep Q-learning on the grid world (Zhao ch. 8.4), vectorised over independent runs.

The book's setting: a behaviour policy (uniform by default) generates the data once; a small
network ``q(s, . ; w)`` is fitted to it by sampling minibatches from the replay buffer and
minimising ``(r + gamma max_a q(s', a; w_T) - q(s, a; w))^2``, with the target network
``w_T`` copied from ``w`` every ``target_update`` iterations. Since the target network is
fixed in between, each period is a regression and the whole is fitted Q-iteration, which
converges to ``q*`` when the data cover every state-action pair.

``n_runs`` runs (own data, own initialisation) train at once: every layer holds one weight
matrix per run and is applied with a batched matrix product, so the runs never mix.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from driftlab.core.config import check_choice, check_int, check_positive
from driftlab.rl.tabular.features import normalised_coordinates
from driftlab.rl.tabular.gridworld import GridWorld
from driftlab.rl.tabular.planning import greedy_policy
from driftlab.rl.tabular.runs import check_reference, cumulative_policy, rmse, sample_actions

INPUTS = ("onehot", "coordinates")


@dataclass
class Transitions:
    """Replay data of every run, ``[n_runs, n]`` each: ``s, a, r, s'`` and termination."""

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_states: np.ndarray
    terminated: np.ndarray


@dataclass
class DQNResult:
    """What :func:`dqn_grid` returns; arrays have a leading run axis.

    Attributes:
        q_values: ``[n_runs, S, A]`` the network's action values at every state.
        policy: ``[n_runs, S, A]`` their greedy policy.
        errors: ``[n_evals, n_runs]`` RMSE of ``q_values`` to ``reference`` (if given).
        losses: ``[n_evals, n_runs]`` mean TD loss over the iterations since the last eval.
        eval_iterations: ``[n_evals]`` iteration after which each row was recorded.
        network: the trained :class:`RunsMLP` (its input is :func:`state_inputs`).
    """

    q_values: np.ndarray
    policy: np.ndarray
    errors: np.ndarray | None
    losses: np.ndarray
    eval_iterations: np.ndarray
    network: RunsMLP


def collect_transitions(
    world: GridWorld,
    behavior_policy: np.ndarray,
    steps: int,
    n_runs: int = 1,
    seed: int | None = 0,
) -> Transitions:
    """``steps`` transitions per run of one trajectory under ``behavior_policy``.

    The trajectory starts at a random non-terminal state, like the book's single long episode;
    after a termination it restarts at a random non-terminal state.
    """
    policy = world.check_policy(behavior_policy)
    check_int("steps", steps, minimum=1)
    check_int("n_runs", n_runs, minimum=1)
    rng = np.random.default_rng(seed)
    cumulative = cumulative_policy(policy)
    live_states = np.flatnonzero(~world.terminal)
    states = live_states[rng.integers(live_states.size, size=n_runs)]
    columns: dict[str, list[np.ndarray]] = {k: [] for k in Transitions.__dataclass_fields__}
    for _ in range(steps):
        actions = sample_actions(rng.random(n_runs), cumulative[states])
        nxt, rewards, terminated = world.step_batch(states, actions)
        for name, value in zip(
            ("states", "actions", "rewards", "next_states", "terminated"),
            (states, actions, rewards, nxt, terminated),
            strict=True,
        ):
            columns[name].append(value)
        restart = live_states[rng.integers(live_states.size, size=n_runs)]
        states = np.where(terminated, restart, nxt)
    return Transitions(**{k: np.stack(v, axis=1) for k, v in columns.items()})


def state_inputs(world: GridWorld, inputs: str) -> torch.Tensor:
    """Network input of every state, ``[S, n_inputs]``: one-hot, or (x, y) in ``[0, 1]``."""
    check_choice("inputs", inputs, INPUTS)
    if inputs == "onehot":
        return torch.eye(world.n_states, dtype=torch.float32)
    return torch.as_tensor(normalised_coordinates(world), dtype=torch.float32)


class RunsMLP(torch.nn.Module):
    """``n_runs`` independent MLPs ``n_inputs -> hidden -> hidden -> n_actions`` (ReLU).

    Weights are ``[n_runs, fan_in, fan_out]``; the input is ``[n_runs, batch, n_inputs]``.
    Initialised like ``torch.nn.Linear`` (uniform in ``+-1/sqrt(fan_in)``), per run.
    """

    def __init__(
        self,
        n_runs: int,
        n_inputs: int,
        n_actions: int,
        hidden: int = 64,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        sizes = [n_inputs, hidden, hidden, n_actions]
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(sizes):
            bound = 1.0 / math.sqrt(fan_in)
            w = (torch.rand(n_runs, fan_in, fan_out, generator=generator) * 2 - 1) * bound
            b = (torch.rand(n_runs, 1, fan_out, generator=generator) * 2 - 1) * bound
            self.weights.append(torch.nn.Parameter(w))
            self.biases.append(torch.nn.Parameter(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w)
            if i < len(self.weights) - 1:
                x = torch.relu(x)
        return x


def dqn_grid(
    world: GridWorld,
    behavior_policy: np.ndarray | None = None,
    transitions: int = 3000,
    iterations: int = 2000,
    batch_size: int = 100,
    target_update: int = 20,
    lr: float = 3e-3,
    hidden: int = 64,
    inputs: str = "onehot",
    n_runs: int = 1,
    seed: int | None = 0,
    reference: np.ndarray | None = None,
    eval_every: int = 100,
) -> DQNResult:
    """Deep Q-learning from a behaviour policy's data (Zhao ch. 8.4, off-policy DQN).

    ``transitions`` steps of ``behavior_policy`` (uniform if ``None``) fill each run's replay
    buffer (the book uses 1000 steps; 3000 make a miss of any of the 125 state-action
    pairs, whose values nothing would then pin down, unlikely); ``iterations`` Adam steps
    on minibatches of ``batch_size`` minimise
    ``(r + gamma (1 - terminated) max_a q(s', a; w_T) - q(s, a; w))^2``; ``w_T <- w`` every
    ``target_update`` iterations. ``reference`` is ``q*`` for the error curve.
    """
    check_int("iterations", iterations, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_int("target_update", target_update, minimum=1)
    check_int("eval_every", eval_every, minimum=1)
    check_positive("lr", lr)
    reference = check_reference(reference, (world.n_states, world.n_actions))
    if behavior_policy is None:
        behavior_policy = world.uniform_policy()
    data = collect_transitions(world, behavior_policy, transitions, n_runs, seed)
    features = state_inputs(world, inputs)
    generator = torch.Generator().manual_seed(0 if seed is None else seed)

    def column(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(array, dtype=dtype)

    states, next_states = column(data.states, torch.long), column(data.next_states, torch.long)
    actions = column(data.actions, torch.long)
    rewards = column(data.rewards, torch.float32)
    continuation = world.gamma * (1.0 - column(data.terminated, torch.float32))

    network = RunsMLP(n_runs, features.shape[1], world.n_actions, hidden, generator)
    target = RunsMLP(n_runs, features.shape[1], world.n_actions, hidden)
    target.load_state_dict(network.state_dict())
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    all_states = features.expand(n_runs, -1, -1)
    terminal = world.terminal

    def q_table() -> np.ndarray:
        """The network's values at every state; a terminal state is worth 0 by definition
        (no transition leaves it, so the network's output there is never trained or used)."""
        with torch.no_grad():
            q = network(all_states).double().numpy()
        q[:, terminal] = 0.0
        return q

    errors, losses, evals, running = [], [], [], torch.zeros(n_runs)
    for iteration in range(1, iterations + 1):
        index = torch.randint(transitions, (n_runs, batch_size), generator=generator)
        s, s_next = states.gather(1, index), next_states.gather(1, index)
        with torch.no_grad():
            best_next = target(features[s_next]).max(dim=2).values
            y = rewards.gather(1, index) + continuation.gather(1, index) * best_next
        q_sa = network(features[s]).gather(2, actions.gather(1, index)[..., None])[..., 0]
        # Mean over the batch, summed over runs: each run's gradient is its own loss's.
        per_run = ((q_sa - y) ** 2).mean(dim=1)
        optimizer.zero_grad()
        per_run.sum().backward()
        optimizer.step()
        running += per_run.detach()
        if iteration % target_update == 0:
            target.load_state_dict(network.state_dict())
        if iteration % eval_every == 0 or iteration == iterations:
            if reference is not None:
                errors.append(rmse(q_table(), reference))
            since = iteration - (evals[-1] if evals else 0)
            losses.append((running / since).numpy())
            evals.append(iteration)
            running = torch.zeros(n_runs)
    q_values = q_table()
    return DQNResult(
        q_values=q_values,
        policy=greedy_policy(q_values, tol=1e-6),
        errors=np.stack(errors) if errors else None,
        losses=np.stack(losses),
        eval_iterations=np.array(evals),
        network=network,
    )
