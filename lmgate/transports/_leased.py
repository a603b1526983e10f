"""The response body a scheduling transport hands back, holding the lease.

Reading it to the end, closing it, or losing it to the garbage collector
releases the lease exactly once; the first body chunk is the time to first
token, and the usage the server reports (in the JSON body or the last
stream event) goes back to the scheduler and calibrates the endpoint's
token estimate.  Each read is bounded by the request's deadline.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

import anyio
import httpx

from lmgate._endpoint import EndpointRef
from lmgate._errors import DeadlineExceeded
from lmgate.detect._tokens import TokenEstimator
from lmgate.policies._sample import OutcomeClass
from lmgate.transports._usage import UsageSniffer


class LeaseLike(Protocol):
    """What the transport needs of a lease."""

    endpoint: EndpointRef
    deadline: float

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


__all__ = ["LeaseLike", "LeasedStream", "StreamOwner"]


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
        self._it: AsyncIterator[bytes] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._it is None:
            self._it = self._response.stream.__aiter__()  # type: ignore[union-attr]
        try:
            with anyio.move_on_at(self._lease.deadline) as scope:
                chunk: bytes = await self._it.__anext__()
        except StopAsyncIteration:
            self._done = True
            raise
        except BaseException as exc:
            self._finish(exc)
            raise
        if scope.cancelled_caught:
            name = self._lease.endpoint.name
            err = DeadlineExceeded(f"deadline passed while reading from {name}")
            self._finish(err)
            raise err
        if chunk:
            if self._first:
                self._first = False
                self._lease.report(ttft=max(0.0, anyio.current_time() - self._start))
            self._sniffer.feed(chunk)
        return chunk

    async def aclose(self) -> None:
        try:
            it, self._it = self._it, None
            closer = getattr(it, "aclose", None)
            if closer is not None:
                await closer()
            await self._response.aclose()
        finally:
            self._finish(None)

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
        # A body nobody closed must not hold its slot forever.
        if not self._released:
            with contextlib.suppress(Exception):
                self._finish(None)
