"""A granted slot (``Lease``) and a request waiting for one (``Waiter``).

A lease is the caller's proof that an endpoint slot is theirs until they
release it.  Release is synchronous and idempotent: every exit path of
``run()`` and ``lease()`` -- return, raise, deadline, cancellation, scheduler
close -- calls it, and no path can block in it, so a slot cannot leak.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol, final

import anyio

from lmgate._endpoint import EndpointRef
from lmgate._errors import InvalidParameter
from lmgate.context._strategies import Fitted
from lmgate.policies._sample import OutcomeClass
from lmgate.scheduler._hooks import HookedRequest
from lmgate.scheduler._slot import EndpointSlot

__all__ = ["EventLike", "Lease", "Reclaimable", "Releaser", "ScopeLike", "SubmitWatch", "Waiter"]


class Releaser(Protocol):
    """Who takes a lease back (``Admission``): one synchronous, idempotent call."""

    def finish(
        self, lease: Lease, error: BaseException | None, *, outcome: OutcomeClass | None = None
    ) -> None: ...


class ScopeLike(Protocol):
    """The part of a cancel scope used here (anyio's, or trio's own, faster one)."""

    @property
    def cancel_called(self) -> bool: ...

    @property
    def cancelled_caught(self) -> bool: ...

    def cancel(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> bool | None: ...


class Reclaimable(Protocol):
    """Work the scheduler can take back by itself (a response stream handed to a caller).

    The admission controller sweeps the leases nobody scopes: past its
    deadline, after its ``owner`` task has ended (once that task has read
    from it), or unread past ``idle_at``, it calls :meth:`reclaim`, which
    releases the lease at once and returns the closing to await (the
    response, so the server stops too), or None.
    """

    @property
    def owner(self) -> object: ...
    @property
    def owner_read(self) -> bool: ...
    @property
    def idle_at(self) -> float: ...

    def reclaim(self, reason: str) -> Callable[[], Awaitable[None]] | None: ...


class EventLike(Protocol):
    """The part of ``anyio.Event`` (and of the backends' own events) used here."""

    def set(self) -> None: ...

    async def wait(self) -> Any: ...


@final
class Lease:
    """A slot on one endpoint, held by the caller for one call (or a stream).

    ``endpoint`` says where to send the call, ``deadline`` (absolute, on the
    ``anyio.current_time()`` clock; ``math.inf`` without timeout) when the
    whole request must be done.  ``report()`` adds what only the caller knows
    -- time to first token and token counts -- to the feedback the limit
    policy learns from.
    """

    __slots__ = (
        "_admission",
        "_charge",
        "_coordinated",
        "_output_tokens",
        "_prompt_tokens",
        "_released",
        "_request",
        "_result",
        "_revoked",
        "_scope",
        "_sent",
        "_slot",
        "_streaming",
        "_ttft",
        "_watch",
        "deadline",
        "endpoint",
        "fitted",
        "granted_at",
        "in_flight_at_grant",
        "messages",
        "priority",
        "queued_for",
    )

    def __init__(
        self,
        admission: Releaser,
        slot: EndpointSlot,
        endpoint: EndpointRef,
        priority: int,
        deadline: float,
        granted_at: float,
        in_flight: int,
        queued_for: float,
    ) -> None:
        self._admission = admission
        self._slot = slot
        self.endpoint = endpoint
        self.priority = priority
        self.deadline = deadline
        self.granted_at = granted_at
        self.in_flight_at_grant = in_flight
        self.queued_for = queued_for
        self._released = False
        self._coordinated = False
        self._revoked = False
        self._scope: ScopeLike | None = None
        self._ttft: float | None = None
        self._prompt_tokens: int | None = None
        self._output_tokens: int | None = None
        #: Tokens charged to the endpoint's KV budget while this lease holds it.
        self._charge = 0
        #: Whether the call may have reached the server (a transport says:
        #: False until it sends, then True; None for a caller's own call) and
        #: whether it streams (None: unknown); together they say how long a
        #: cancelled call holds its place (``_occupancy``).
        self._sent: bool | None = None
        self._streaming: bool | None = None
        #: Set by whoever hands the lease's work to other code (a transport's
        #: response stream): a weak reference to how the controller reclaims
        #: it (``Reclaimable``), so the work can still be garbage-collected.
        self._watch: weakref.ref[Reclaimable] | None = None
        self._result: str | None = None
        #: The request's hook handles (``_hooks.HookedRequest``), if hooks run.
        self._request: HookedRequest | None = None
        #: With ``messages=``: the prompt fitted to this endpoint's window, and
        #: the same as OpenAI-shaped dicts, ready to send.
        self.fitted: Fitted | None = None
        self.messages: list[dict[str, Any]] | None = None

    def remaining(self) -> float:
        """Seconds left before the deadline (``inf`` without one)."""
        if self.deadline == math.inf:
            return math.inf
        return max(0.0, self.deadline - anyio.current_time())

    def report(
        self,
        *,
        ttft: float | None = None,
        prompt_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> None:
        """Record time to first token (seconds) and token counts for feedback."""
        if ttft is not None:
            if (
                isinstance(ttft, bool)
                or not isinstance(ttft, int | float)
                or not (0.0 <= ttft < math.inf)
            ):
                raise InvalidParameter("ttft must be a finite number >= 0", field="ttft")
            self._ttft = float(ttft)
        if prompt_tokens is not None:
            self._prompt_tokens = _check_tokens("prompt_tokens", prompt_tokens)
        if output_tokens is not None:
            self._output_tokens = _check_tokens("output_tokens", output_tokens)

    @property
    def released(self) -> bool:
        return self._released

    @property
    def outcome(self) -> str | None:
        """How the request ended (``completed``, ``deadline_exceeded``, ...), once released.

        Useful after an ``acquire()``d lease was taken back by the scheduler
        itself (its deadline passed, or its stream was abandoned).
        """
        return self._result

    def release(
        self, error: BaseException | None = None, *, outcome: OutcomeClass | None = None
    ) -> None:
        """Give the slot back; for leases taken with ``Scheduler.acquire()``.

        ``error`` is what the call raised, if anything; it is classified like
        in ``run()``.  Releasing twice is harmless.
        """
        if self._released:
            return
        self._admission.finish(self, error, outcome=outcome)

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return (
            f"<Lease {self.endpoint.name}/{self.endpoint.model} priority={self.priority} {state}>"
        )


def _check_tokens(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**40:
        raise InvalidParameter(f"{name} must be a non-negative int", field=name)
    return value


@final
class Waiter:
    """A request in the queue: the caller's task sleeps on ``event``.

    Exactly one of three things ends a wait: the controller sets ``lease``
    (granted), sets ``error`` (refused while queued, e.g. scheduler closed),
    or the caller leaves (deadline or cancellation).  ``queued`` is true only
    while it is in the queue, which is what makes lazy deletion safe.
    """

    __slots__ = (
        "_request",
        "deadline",
        "enqueued_at",
        "error",
        "event",
        "lease",
        "min_window",
        "model",
        "predicted_wait",
        "priority",
        "queued",
        "size",
    )

    def __init__(
        self,
        model: str,
        priority: int,
        deadline: float,
        now: float,
        event: EventLike,
        min_window: int | None = None,
        size: tuple[int | None, int | None] | None = None,
    ) -> None:
        self.model = model
        self.priority = priority
        self.deadline = deadline
        self.enqueued_at = now
        self.event = event
        self.lease: Lease | None = None
        self.error: BaseException | None = None
        self.queued = True
        #: The queue wait predicted when it joined (NaN: none).
        self.predicted_wait = math.nan
        self._request: HookedRequest | None = None
        #: The smallest context window that can take its prompt (None: any).
        self.min_window = min_window
        #: (prompt tokens, max_tokens) as far as known, for the KV budget.
        self.size = size

    def take_error(self) -> BaseException | None:
        """The refusal to raise, handed over once.

        Raising it gives it a traceback that holds the caller's frames; a
        waiter that still held it while it waits to be trimmed from the
        queue's lines would keep those frames alive.
        """
        error, self.error = self.error, None
        return error

    def __repr__(self) -> str:
        return f"<Waiter {self.model} priority={self.priority} queued={self.queued}>"


class SubmitWatch(Protocol):
    """The slow path of :meth:`Admission.submit` (``_watch.Watch``), when installed."""

    def submit(
        self,
        model: str,
        priority: int,
        deadline: float,
        now: float,
        exclude: Collection[int] | None,
        count: bool,
        request: HookedRequest | None,
        **options: Any,
    ) -> Lease | Waiter: ...

    def refused(
        self, model: str, priority: int, outcome: str, error: BaseException, now: float
    ) -> None: ...
