"""``driftlab rl ...``: reinforcement-learning subcommands."""

from __future__ import annotations

import argparse


def add_parser(families: argparse._SubParsersAction, formatter: type) -> None:
    from driftlab.rl.deep import cli as deep_cli
    from driftlab.rl.tabular import cli as tabular_cli

    rl = families.add_parser(
        "rl",
        help="reinforcement learning",
        description="Reinforcement learning: tabular methods on the grid world, and deep RL "
        "(DQN, policy gradient, actor-critic, DDPG/TD3, TRPO, PPO) on Gymnasium environments.",
        formatter_class=formatter,
    )
    verbs = rl.add_subparsers(dest="verb", required=True, metavar="VERB")
    tabular_cli.add_parser(verbs, formatter)
    deep_cli.add_parsers(verbs, formatter)
