"""Run directories: ``config.json``, ``metrics.jsonl``, checkpoints and plots of one run.

A run directory is never overwritten by accident: creating one that exists is an error unless
the caller asks to resume or to overwrite. ``run.json`` records the status (``running``,
``complete``, ``interrupted``, ``failed``) so a partial run never looks complete.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from driftlab.core.config import ConfigError

_MARKERS = ("run.json", "config.json")


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON atomically: to a temporary file first, then renamed over the target."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def check_resume(run_dir: str | Path, algorithm: str, given: list[str]) -> None:
    """Refuse ``--resume`` with options that would change a saved run (``given``: the flags
    the user passed), or on a run directory of another algorithm."""
    if given:
        raise ConfigError(
            f"--resume continues the run's saved configuration; drop {', '.join(given)}"
        )
    saved = Path(run_dir) / "config.json"
    if saved.exists():
        name = json.loads(saved.read_text(encoding="utf-8")).get("algorithm")
        if name != algorithm:
            raise ConfigError(f"{str(run_dir)!r} is a {name} run, not {algorithm}")


class RunDir:
    """One run's directory. Use as a context manager to record how the run ended."""

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        self.path = path
        self.config = config

    @classmethod
    def create(
        cls,
        path: str | Path,
        config: dict[str, Any],
        *,
        resume: bool = False,
        overwrite: bool = False,
        resumable: bool = True,
    ) -> RunDir:
        """Create (or, with ``resume``, reopen) the run directory at ``path``.

        ``resumable=False`` is for jobs that cannot be resumed: the error for an existing
        directory then only offers ``--overwrite``.
        """
        if resume and overwrite:
            raise ConfigError("choose at most one of resume and overwrite, got both")
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"run directory {str(path)!r} exists and is not a directory")
        exists = path.exists() and any(path.iterdir())
        if exists and not (resume or overwrite):
            hint = "pass --resume to continue it or " if resumable else "pass "
            raise ConfigError(
                f"run directory {str(path)!r} already exists; {hint}--overwrite to replace it"
            )
        if resume and not (path / "config.json").exists():
            raise ConfigError(f"cannot resume {str(path)!r}: it has no config.json")
        if exists and overwrite:
            if not any((path / m).exists() for m in _MARKERS):
                raise ConfigError(
                    f"refusing to overwrite {str(path)!r}: it is not a driftlab run directory"
                )
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        if resume:
            saved = json.loads((path / "config.json").read_text(encoding="utf-8"))
            config = {**saved, **{k: v for k, v in config.items() if k in ("resume",)}}
        else:
            write_json(path / "config.json", config)
        run = cls(path, config)
        run.set_status("running")
        return run

    def set_status(self, status: str, **extra: Any) -> None:
        write_json(self.path / "run.json", {"status": status, "time": time.time(), **extra})

    def status(self) -> str:
        return json.loads((self.path / "run.json").read_text(encoding="utf-8"))["status"]

    def file(self, name: str) -> Path:
        return self.path / name

    def __enter__(self) -> RunDir:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.set_status("complete")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.set_status("interrupted")
        else:
            self.set_status("failed", error=f"{exc_type.__name__}: {exc}")
