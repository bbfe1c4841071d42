"""Helpers for tests that spawn gloo process groups."""

from __future__ import annotations

from pathlib import Path


def rendezvous(directory: str | Path) -> str:
    """A gloo process group's ``init_method`` through a file in ``directory``: no TCP port to
    pick, so no race with another process taking a port between picking and binding it."""
    return f"file://{Path(directory).resolve() / 'rendezvous'}"
