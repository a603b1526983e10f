"""A request's arguments, checked at the door: model, priority, timeout.

Bad input fails here, with ``InvalidParameter`` naming the field, before
anything is counted or queued.  ``timeout=`` (seconds from now) becomes
the request's one absolute deadline on the loop's clock, computed once.
The backend's own clock, event and cancel scope are looked up once per
scheduler, since anyio's portable wrappers cost more than a grant on the
per-request path.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import anyio

from lmgate._backend import backend_clock, running_backend
from lmgate._errors import (
    DeadlineExceeded,
    EndpointUnavailable,
    InvalidParameter,
    LmgateError,
    SchedulerClosed,
)
from lmgate.scheduler._lease import EventLike, ScopeLike

__all__ = [
    "MAX_PRIORITY",
    "as_priority",
    "backend_primitives",
    "check_model",
    "check_priority",
    "coordination_outcome",
    "deadline_of",
    "size_of",
]

MAX_PRIORITY = 1_000_000
MAX_TOKENS = 100_000_000


def check_model(model: object) -> None:
    if not isinstance(model, str) or not model or len(model) > 4096 or "\x00" in model:
        raise InvalidParameter("model must be a non-empty string without NUL", field="model")


def check_priority(priority: object) -> None:
    if type(priority) is not int or not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidParameter(
            f"priority must be an int in [-{MAX_PRIORITY}, {MAX_PRIORITY}]", field="priority"
        )


def size_of(
    prompt_tokens: object, max_tokens: object, estimate: int | None = None
) -> tuple[int | None, int | None] | None:
    """A request's (prompt, max_tokens) size for the KV budget, checked.

    ``estimate`` is the prompt's size counted from its messages, used when
    the caller gave no ``prompt_tokens``; None when nothing is known.
    """
    for field, value in (("prompt_tokens", prompt_tokens), ("max_tokens", max_tokens)):
        if value is not None and (type(value) is not int or not 0 <= value <= MAX_TOKENS):
            raise InvalidParameter(
                f"{field} must be None or an int in [0, {MAX_TOKENS}]", field=field
            )
    prompt = prompt_tokens if prompt_tokens is not None else estimate
    if prompt is None and max_tokens is None:
        return None
    return (prompt, max_tokens)  # type: ignore[return-value]


def deadline_of(timeout: object, clock: Callable[[], float]) -> float:
    """The absolute deadline for ``timeout`` seconds from now (``inf`` for None)."""
    if timeout is None:
        return math.inf
    if (
        type(timeout) not in (int, float)
        and isinstance(timeout, int | float)
        and not isinstance(timeout, bool)
    ):
        # A float or int subclass (numpy.float64, IntEnum) counts as its value.
        timeout = float.__float__(timeout) if isinstance(timeout, float) else int.__index__(timeout)
    if type(timeout) not in (int, float) or timeout != timeout or timeout < 0:  # type: ignore[operator]
        raise InvalidParameter("timeout must be None or a number >= 0", field="timeout")
    if timeout == math.inf:
        return math.inf
    return clock() + float(timeout)  # type: ignore[arg-type]


def as_priority(priority: object) -> int:
    """An int subclass (an ``IntEnum`` level) as its plain value; anything else refused.

    The plain value is what the queue hashes and compares, so a subclass
    with odd comparisons cannot reach it.
    """
    if isinstance(priority, int) and not isinstance(priority, bool):
        return int.__index__(priority)
    raise InvalidParameter(
        f"priority must be an int in [-{MAX_PRIORITY}, {MAX_PRIORITY}]", field="priority"
    )


def coordination_outcome(exc: BaseException) -> str:
    """The outcome of a request whose shared slot could not be taken."""
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return "cancelled"
    if isinstance(exc, SchedulerClosed):
        return "closed"
    if isinstance(exc, DeadlineExceeded):
        return "deadline_exceeded"
    if isinstance(exc, EndpointUnavailable):
        return "unavailable"
    return "rejected" if isinstance(exc, LmgateError) else "failed"


def backend_primitives() -> tuple[
    Callable[[], float], Callable[[], EventLike], Callable[..., ScopeLike]
]:
    """The running backend's clock, event and cancel scope, looked up once.

    anyio's portable wrappers find the backend on every call; on the
    per-request path that lookup costs more than the work it wraps.
    """
    clock = backend_clock()
    if running_backend() == "trio":
        import trio

        return clock, trio.Event, trio.CancelScope
    import asyncio

    return clock, asyncio.Event, anyio.CancelScope
