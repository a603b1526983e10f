"""The exceptions lmgate raises.

Every error derives from :class:`LmgateError` so a caller can catch the
library's refusals in one place while its own call errors pass through
untouched.  Each class maps to exactly one request outcome, which is why
there are few of them and why they carry numbers rather than prose.
"""

from __future__ import annotations

from typing import final

__all__ = [
    "ContextOverflow",
    "DeadlineExceeded",
    "EndpointUnavailable",
    "InvalidParameter",
    "LmgateError",
    "Overloaded",
    "Rejected",
    "SchedulerClosed",
]


class LmgateError(Exception):
    """Base class of every error raised by lmgate.

    ``message`` says what happened in words a log reader can act on; the
    subclasses add the numbers (``reason``, ``tokens``, ``retry_after``...).
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(message)


@final
class Rejected(LmgateError):
    """The request was refused before it ran: queue full, shed or throttled.

    ``reason`` is one of ``"queue_full"``, ``"deadline"`` (the predicted wait
    exceeds the time left), ``"shed"`` (resource pressure) or
    ``"throttled"`` (client-side throttling of a failing endpoint).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@final
class DeadlineExceeded(LmgateError, TimeoutError):
    """The request's one deadline passed while it waited or ran."""


@final
class EndpointUnavailable(LmgateError):
    """No endpoint that serves the model can take the request now.

    ``reason`` is ``"unknown_model"`` when no endpoint serves it at all
    (``models`` then lists those that are served), else ``"down"``.
    """

    def __init__(
        self, message: str = "", *, reason: str = "down", models: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.models = models


@final
class ContextOverflow(LmgateError):
    """The prompt plus reserved output does not fit the model's window.

    Carries both numbers so a caller can decide how much to cut.
    """

    def __init__(
        self,
        message: str,
        *,
        tokens: int | None = None,
        window: int | None = None,
        before_send: bool = False,
    ):
        super().__init__(message)
        self.tokens = tokens
        self.window = window
        #: True when lmgate refused the prompt itself, before anything was
        #: sent (the request ends ``rejected``); False when a server said so.
        self.before_send = before_send


@final
class InvalidParameter(LmgateError, ValueError):
    """An argument or configuration value was refused; ``field`` names it."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@final
class SchedulerClosed(LmgateError):
    """The scheduler is closing or closed and admits nothing more."""


@final
class Overloaded(LmgateError):
    """The server said it is overloaded (HTTP 429 or 503).

    A call raises it so the limit policy and circuit breaker can tell
    overload apart from other failures; ``retry_after`` is the server's
    ``Retry-After`` in seconds when it gave one.
    """

    def __init__(
        self,
        message: str = "server overloaded",
        *,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status
