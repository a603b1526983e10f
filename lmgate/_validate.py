"""Argument checks shared by every layer: typed, clear refusals before any state changes.

Bad input must fail where it was written, with ``InvalidParameter`` naming
the field, and must never half-apply.  These helpers refuse bools posing as
numbers, non-finite floats and out-of-range values in one place, so every
config struct and constructor says the same thing about the same mistake.
"""

from __future__ import annotations

from typing import Any

from lmgate._errors import InvalidParameter

__all__ = ["MAX_PRIORITY", "check_float", "check_int", "check_label", "check_priority"]

#: Priorities run from -MAX_PRIORITY (most urgent) to MAX_PRIORITY.
MAX_PRIORITY = 1_000_000


def check_int(name: str, value: Any, *, low: int = 1, high: int | None = None) -> int:
    """Validate an integer setting, refusing bools and out-of-range values."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(f"{name} must be an int, got {type(value).__name__}", field=name)
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise InvalidParameter(f"{name} must be {bound}, got {value}", field=name)
    return value


def check_float(
    name: str,
    value: Any,
    *,
    low: float = 0.0,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """Validate a finite float setting (ints accepted, bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParameter(f"{name} must be a number, got {type(value).__name__}", field=name)
    v = float(value)
    if v != v or v in (float("inf"), float("-inf")):
        raise InvalidParameter(f"{name} must be finite, got {v}", field=name)
    if (v <= low if low_open else v < low) or (high is not None and v > high):
        raise InvalidParameter(f"{name} out of range: {v}", field=name)
    return v


def check_priority(priority: object, name: str = "priority") -> int:
    """A request priority: a plain int (an ``IntEnum`` level counts as its value)."""
    if isinstance(priority, int) and not isinstance(priority, bool):
        value = int.__index__(priority)
        if -MAX_PRIORITY <= value <= MAX_PRIORITY:
            return value
    raise InvalidParameter(
        f"{name} must be an int in [-{MAX_PRIORITY}, {MAX_PRIORITY}]", field=name
    )


def check_label(name: str, value: object, *, limit: int = 256) -> str:
    """A short identifier (a session, a tenant): printable, no NUL or line breaks."""
    if not isinstance(value, str) or not value:
        raise InvalidParameter(f"{name} must be a non-empty string", field=name)
    if len(value) > limit:
        raise InvalidParameter(f"{name} is longer than {limit} characters", field=name)
    if any(c in value for c in "\x00\r\n"):
        raise InvalidParameter(f"{name} must not hold NUL or line breaks", field=name)
    return value
