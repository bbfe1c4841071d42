"""``driftlab diffusion ...``: diffusion subcommands."""

from __future__ import annotations

import argparse


def add_parser(families: argparse._SubParsersAction, formatter: type) -> None:
    families.add_parser("diffusion", help="diffusion models", formatter_class=formatter)
