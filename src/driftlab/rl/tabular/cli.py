"""``driftlab rl tabular ...``: grid-world methods from the command line."""

from __future__ import annotations

import argparse


def add_parser(verbs: argparse._SubParsersAction, formatter: type) -> None:
    verbs.add_parser(
        "tabular",
        help="tabular methods on the grid world",
        description="Tabular methods on the book's grid world.",
        formatter_class=formatter,
    )
