"""Argument checks shared by every layer: typed, clear refusals before any state changes.

Bad input must fail where it was written, with ``InvalidParameter`` naming
the field, and must never half-apply.  These helpers refuse bools posing as
numbers, non-finite floats and out-of-range values in one place, so every
config struct and constructor says the same thing about the same mistake.
"""

from __future__ import annotations

from typing import Any

from lmgate._errors import InvalidParameter

__all__ = ["check_float", "check_int"]


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
