"""Config validation: every bad value gets a one-line error naming the value and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A configuration value outside what is allowed. The message names both."""


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    allowed = list(allowed)
    if value not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        raise ConfigError(f"{name} must be one of {shown}; got {value!r}")
    return value


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ConfigError(f"{name} must be a number, got nan")
    return value


def check_positive(name: str, value: Any) -> float:
    value = _check_real(name, value)
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")
    return value


def check_nonnegative(name: str, value: Any) -> float:
    value = _check_real(name, value)
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    return value


def check_in_range(name: str, value: Any, low: float, high: float) -> float:
    """Check ``low <= value <= high`` (closed interval)."""
    value = _check_real(name, value)
    if not low <= value <= high:
        raise ConfigError(f"{name} must be in [{low}, {high}], got {value}")
    return value
