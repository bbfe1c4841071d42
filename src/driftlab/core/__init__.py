"""Shared mechanics: seeding, config validation, run directories, checkpoints, metrics, progress."""

from driftlab.core.checkpoint import load_checkpoint, save_checkpoint
from driftlab.core.config import (
    ConfigError,
    check_choice,
    check_in_range,
    check_int,
    check_nonnegative,
    check_positive,
)
from driftlab.core.metrics import MetricsLogger
from driftlab.core.progress import progress
from driftlab.core.rundir import RunDir
from driftlab.core.seeding import make_generator, seed_everything

__all__ = [
    "ConfigError",
    "MetricsLogger",
    "RunDir",
    "check_choice",
    "check_in_range",
    "check_int",
    "check_nonnegative",
    "check_positive",
    "load_checkpoint",
    "make_generator",
    "progress",
    "save_checkpoint",
    "seed_everything",
]
