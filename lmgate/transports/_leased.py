"""The response body a scheduling transport hands back, holding the lease.

Reading it to the end or closing it releases the lease exactly once; the
first body chunk is the time to first token, and the usage the server
reports (in the JSON body or the last stream event) goes back to the
scheduler and calibrates the endpoint's token estimate.  Each read is
bounded by the request's deadline.

The scheduler owns the lease even while the caller holds the stream: the
admission controller reclaims it (``reclaim``) when its deadline passes,
when the task that last read from it has ended -- cancelled inside
``async for chunk in stream:`` with nobody closing the stream, say -- or
when nobody has read from it for ``stream_idle`` seconds.  Reclaiming frees
the slot at once and closes the response, so the server stops generating.
The garbage collector is only the last resort, and logs a warning.
"""

from __future__ import annotations

import contextlib
import logging
import math
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import anyio
import httpx

from lmgate._backend import task_getter
from lmgate._endpoint import EndpointRef
from lmgate._errors import DeadlineExceeded, LmgateError
from lmgate.detect._tokens import TokenEstimator
from lmgate.policies._sample import OutcomeClass
from lmgate.transports._usage import UsageSniffer

_log = logging.getLogger("lmgate.transports")


class LeaseLike(Protocol):
    """What the transport needs of a lease."""

    endpoint: EndpointRef
    deadline: float
    _watch: Any

    def report(
        self,
        *,
        ttft: float | None = None,
        prompt_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> None: ...

    def release(
        self, error: BaseException | None = None, *, outcome: OutcomeClass | None = None
    ) -> None: ...


class StreamOwner(Protocol):
    """What a leased stream tells its transport (``SchedulingTransport``)."""

    def stream_closed(self) -> None: ...

    def estimator(self, endpoint: str) -> TokenEstimator: ...


__all__ = ["LeaseLike", "LeasedStream", "StreamDeadlineExceeded", "StreamOwner", "StreamReclaimed"]


class StreamReclaimed(LmgateError):
    """The scheduler took the stream's slot back (its task ended, or nobody read it)."""


class StreamDeadlineExceeded(LmgateError, httpx.ReadTimeout):
    """The request's deadline passed while its response was being streamed.

    Deliberately not a ``TimeoutError``: frameworks wrap each chunk read in
    their own per-chunk timeout and take any ``TimeoutError`` escaping it
    for theirs (langchain-openai reports "no streaming chunk received for
    120 s" after 0.2 s).  As an ``httpx.ReadTimeout`` it is what an httpx
    transport raises when a read runs out of time, and it names lmgate's
    deadline.  The lease is recorded as ``deadline_exceeded`` all the same.
    """


class LeasedStream(httpx.AsyncByteStream):
    """The response body; closing it (or reading it to the end) releases the lease."""

    def __init__(
        self,
        owner: StreamOwner,
        response: httpx.Response,
        lease: LeaseLike,
        start: float,
        sniffer: UsageSniffer,
        prompt_chars: int | None,
        *,
        idle: float | None = None,
    ) -> None:
        self._owner = owner
        self._response = response
        self._lease = lease
        self._start = start
        self._sniffer = sniffer
        self._chars = prompt_chars
        self._first = True
        self._done = False
        self._released = False
        self._reclaimed: str | None = None
        self._reading = False
        self._it: AsyncIterator[bytes] | None = None
        self._idle = idle
        self._task = task_getter()
        #: The task that opened the stream, then the last one to read from it.
        self.owner: object = self._task()
        self.owner_read = False
        self.idle_at = math.inf if idle is None else anyio.current_time() + idle
        lease._watch = weakref.ref(self)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._reclaimed is not None:
            raise self._reclaim_error()
        if self._it is None:
            self._it = self._response.stream.__aiter__()  # type: ignore[union-attr]
        self.owner = self._task()
        self.owner_read = True
        self._reading = True
        try:
            with anyio.move_on_at(self._lease.deadline) as scope:
                chunk: bytes = await self._it.__anext__()
        except StopAsyncIteration:
            self._done = True
            raise
        except anyio.get_cancelled_exc_class():
            self._finish(None)
            raise
        except Exception as exc:
            if self._reclaimed is not None:
                raise self._reclaim_error() from exc
            self._finish(exc)
            raise
        finally:
            self._reading = False
            if self._idle is not None:
                self.idle_at = anyio.current_time() + self._idle
        if scope.cancelled_caught:
            name = self._lease.endpoint.name
            err = DeadlineExceeded(f"deadline passed while reading from {name}")
            self._finish(err)
            raise StreamDeadlineExceeded(
                f"lmgate's deadline for this request passed while streaming from {name}"
            ) from err
        if chunk:
            if self._first:
                self._first = False
                self._lease.report(ttft=max(0.0, anyio.current_time() - self._start))
            self._sniffer.feed(chunk)
        return chunk

    async def aclose(self) -> None:
        try:
            await self._close_response()
        finally:
            self._finish(None)

    async def _close_response(self) -> None:
        it, self._it = self._it, None
        closer = getattr(it, "aclose", None)
        if closer is not None:
            await closer()
        await self._response.aclose()

    def reclaim(self, reason: str) -> Callable[[], Awaitable[None]] | None:
        """The scheduler takes the slot back now; returns the response's closing.

        A deadline reached while a read is waiting on the server is left to
        that read (its own deadline fires at the same instant).
        """
        if self._released:
            return None
        if reason == "deadline" and self._reading:
            return None
        self._reclaimed = reason
        if reason == "deadline":
            name = self._lease.endpoint.name
            self._finish(DeadlineExceeded(f"deadline passed with the stream from {name} open"))
        else:
            self._finish(None)
        return self._close_response

    def _reclaim_error(self) -> LmgateError:
        name = self._lease.endpoint.name
        if self._reclaimed == "deadline":
            return StreamDeadlineExceeded(
                f"lmgate's deadline for this request passed with the stream from {name} open"
            )
        if self._reclaimed == "idle":
            return StreamReclaimed(
                f"the stream from {name} was not read for {self._idle} s: its slot was reclaimed"
            )
        return StreamReclaimed(f"the stream from {name} outlived its task: its slot was reclaimed")

    def _finish(self, error: BaseException | None) -> None:
        if self._released:
            return
        self._released = True
        self._owner.stream_closed()
        if error is not None:
            self._lease.release(error)
            return
        if not self._done:
            self._lease.release(None, outcome="cancelled")
            return
        self._sniffer.close()
        prompt, output = self._sniffer.prompt_tokens, self._sniffer.output_tokens
        if prompt is not None or output is not None:
            self._lease.report(prompt_tokens=prompt, output_tokens=output)
        if prompt is not None and self._chars:
            self._owner.estimator(self._lease.endpoint.name).observe(self._chars, prompt)
        self._lease.release(None)

    def __del__(self) -> None:
        # The last resort: the scheduler reclaims abandoned streams itself.
        if not self._released:
            with contextlib.suppress(Exception):
                _log.warning(
                    "a response stream from %s was garbage-collected unclosed; releasing its slot",
                    self._lease.endpoint.name,
                )
                self._finish(None)
