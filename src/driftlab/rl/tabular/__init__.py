"""Tabular RL on the book's grid world, each learner checked against the exact Bellman solution."""

from driftlab.rl.tabular.gridworld import ACTIONS, GridWorld

__all__ = ["ACTIONS", "GridWorld"]
