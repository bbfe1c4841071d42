"""Progress bars for anything that takes more than a few seconds."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    disable: bool = False,
    unit: str = "it",
) -> tqdm:
    """A tqdm bar that writes to stderr and clears itself when done; redrawn at most twice a
    second so that logs of non-interactive runs stay short."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        disable=disable,
        unit=unit,
        leave=False,
        mininterval=0.5,
        dynamic_ncols=True,
    )
