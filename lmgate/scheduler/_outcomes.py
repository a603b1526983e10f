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
    try:
        from lmgate.policies._classify import compose
    except ImportError:  # pragma: no cover - the full classifier ships with lmgate
        return _basic(error), getattr(error, "retry_after", None)
    # compose() ignores a user hook that raises or answers junk (release must
    # never fail, and a bad class would break the endpoint actor), and keeps
    # a cancellation a cancellation.  Both backends' cancellation classes are
    # BaseExceptions the classifier knows, so no event loop is needed here.
    c = compose(user)(error)
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
