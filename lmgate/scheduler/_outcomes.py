"""Request outcomes, and turning a call's exception into a sample class.

Every request ends with exactly one of ``OUTCOMES``; the counters in
``stats()`` add up because admission is the only place that counts them.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from lmgate._errors import ContextOverflow, InvalidParameter, Overloaded
from lmgate.policies._sample import OutcomeClass

__all__ = ["OUTCOMES", "classify_error"]

OUTCOMES = (
    "completed",
    "failed",
    "rejected",
    "deadline_exceeded",
    "cancelled",
    "unavailable",
    "closed",
)


def classify_error(
    error: BaseException, user: Callable[[BaseException], OutcomeClass | None] | None
) -> tuple[OutcomeClass, float | None]:
    """The sample class of a call's error, and the server's Retry-After if any."""
    if user is not None:
        try:
            mapped = user(error)
        except Exception:  # a broken user hook must not break release
            mapped = None
        if mapped is not None:
            return mapped, getattr(error, "retry_after", None)
    try:
        from lmgate.policies._classify import classify
    except ImportError:  # pragma: no cover - the full classifier ships with lmgate
        return _basic(error), getattr(error, "retry_after", None)
    c = classify(error, cancelled_exc=anyio.get_cancelled_exc_class())
    return c.outcome, c.retry_after


def _basic(error: BaseException) -> OutcomeClass:
    if isinstance(error, anyio.get_cancelled_exc_class()):
        return "cancelled"
    if isinstance(error, Overloaded):
        return "overload"
    if isinstance(error, ContextOverflow | InvalidParameter):
        return "client_error"
    if isinstance(error, TimeoutError):
        return "timeout"
    return "error"
