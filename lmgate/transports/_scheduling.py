"""An httpx transport that puts every request through the scheduler.

Give it to any httpx-based client -- the official ``openai`` SDK included --
and each request waits for a lease, is rewritten onto the endpoint the
lease grants (URL, model name, that endpoint's key and timeouts) and holds
the lease until its response body is closed, streaming or not.  What the
response says goes back to the scheduler: 429/503 as ``Overloaded``, a
context error as ``ContextOverflow``, time to first body chunk, and the
token usage from the JSON body or the last stream event.

The lease is taken with ``sched.acquire()`` and given back with the
synchronous ``lease.release()``, because the body is usually closed in a
different frame (and, with some clients, a different task) from the one
that sent the request; a cancel scope cannot span that, so the deadline is
enforced per read instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol, final

import anyio
import httpx
import msgspec

from lmgate._endpoint import Endpoint, EndpointRef
from lmgate._errors import (
    DeadlineExceeded,
    EndpointUnavailable,
    InvalidParameter,
    LmgateError,
    Overloaded,
    Rejected,
    SchedulerClosed,
)
from lmgate.detect._learn import endpoint_key
from lmgate.detect._locality import classify_url
from lmgate.detect._tokens import TokenEstimator
from lmgate.policies._sample import OutcomeClass
from lmgate.transports._errors import error_from_response
from lmgate.transports._pool import pooled_transport
from lmgate.transports._request import (
    json_object,
    params,
    prompt_chars,
    read_bounded,
    refusal,
    timeouts,
)
from lmgate.transports._urls import rebase
from lmgate.transports._usage import UsageSniffer

__all__ = ["LeaseLike", "LeaseSource", "SchedulingTransport", "SchedulingTransportStatistics"]

_MAX_REQUEST = 32 << 20
_MAX_ERROR_BODY = 1 << 20
_DROP = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "authorization",
        "api-key",
        "x-api-key",
        "x-lmgate-priority",
        "x-lmgate-timeout",
        "x-lmgate-model",
    }
)


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


class LeaseSource(Protocol):
    """What the transport needs of a scheduler."""

    @property
    def endpoints(self) -> Sequence[Endpoint]: ...

    async def acquire(
        self,
        *,
        model: str,
        priority: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 -- the scheduler's own signature
    ) -> Any: ...


@final
class SchedulingTransportStatistics(msgspec.Struct, frozen=True, kw_only=True):
    requests: int
    open_streams: int
    overloaded: int
    context_overflows: int
    failed: int


@final
class SchedulingTransport(httpx.AsyncBaseTransport):
    """Send each request on the endpoint a scheduler lease grants.

    The model comes from the JSON body's ``model`` (or the ``lmgate.model``
    extension / ``X-Lmgate-Model`` header for requests without a body);
    priority and timeout from the ``lmgate.priority`` / ``lmgate.timeout``
    extensions or the ``X-Lmgate-Priority`` / ``X-Lmgate-Timeout`` headers,
    which are stripped.  The caller's ``Authorization`` is never forwarded
    (the endpoint's own key is sent instead) unless ``forward_auth``.
    ``inner`` replaces the per-endpoint connection pools (tests use an
    ``httpx.MockTransport``).  With ``raise_errors`` a mapped server error
    is raised instead of returned; with ``refusal_responses`` a scheduler
    refusal becomes an HTTP response (429/503/504) instead of an exception,
    which suits SDKs that would otherwise retry it as a connection error.
    """

    def __init__(
        self,
        sched: LeaseSource,
        inner: httpx.AsyncBaseTransport | None = None,
        *,
        forward_auth: bool = False,
        raise_errors: bool = False,
        refusal_responses: bool = False,
    ) -> None:
        if not hasattr(sched, "acquire") or not hasattr(sched, "endpoints"):
            raise InvalidParameter("sched must be an lmgate Scheduler", field="sched")
        self._sched = sched
        self._inner = inner
        self._forward_auth = forward_auth
        self._raise = raise_errors
        self._refusals = refusal_responses
        self._pools: dict[str, httpx.AsyncBaseTransport] = {}
        self._estimators: dict[str, TokenEstimator] = {}
        self._closed = False
        self._requests = self._open = self._overloaded = self._overflows = self._failed = 0

    # -- configuration lookups -------------------------------------------------------------

    def _endpoint(self, name: str) -> Endpoint | None:
        for ep in self._sched.endpoints:
            if ep.name == name:
                return ep
        return None

    def _pool(self, ep: Endpoint | None, name: str) -> httpx.AsyncBaseTransport:
        if self._inner is not None:
            return self._inner
        pool = self._pools.get(name)
        if pool is None:
            limit = ep.max_connections if ep is not None else 100
            sock = classify_url(ep.url).socket_path if ep is not None else None
            pool = pooled_transport(limit, uds=sock)
            self._pools[name] = pool
        return pool

    def estimator(self, endpoint: str) -> TokenEstimator:
        """The token estimator calibrated by this endpoint's usage reports."""
        est = self._estimators.get(endpoint)
        if est is None:
            est = self._estimators[endpoint] = TokenEstimator()
        return est

    # -- the request path -------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise SchedulerClosed("the transport is closed")
        body = await request.aread()
        if len(body) > _MAX_REQUEST:
            raise InvalidParameter("request body larger than 32 MiB", field="body")
        payload = json_object(request, body)
        model, priority, timeout = params(request, payload)
        self._requests += 1
        try:
            lease = await self._sched.acquire(model=model, priority=priority, timeout=timeout)
        except (Rejected, EndpointUnavailable, SchedulerClosed, DeadlineExceeded) as exc:
            if self._refusals:
                return refusal(exc)
            raise
        ep = self._endpoint(lease.endpoint.name)
        try:
            outbound = self._outbound(request, body, payload, lease, ep)
            start = anyio.current_time()
            with anyio.move_on_at(lease.deadline) as scope:
                response = await self._pool(ep, lease.endpoint.name).handle_async_request(outbound)
            if scope.cancelled_caught:
                raise DeadlineExceeded(
                    f"no response from {lease.endpoint.name} before the deadline"
                )
        except BaseException as exc:
            self._failed += 1
            lease.release(exc)
            raise
        if response.status_code >= 400:
            return await self._error_response(response, lease)
        sniffer = UsageSniffer(response.headers.get("content-type", ""))
        chars = prompt_chars(payload)
        self._open += 1
        stream = _LeasedStream(self, response, lease, start, sniffer, chars)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=stream,
            extensions=response.extensions,
        )

    def _outbound(
        self,
        request: httpx.Request,
        body: bytes,
        payload: dict[str, Any] | None,
        lease: LeaseLike,
        ep: Endpoint | None,
    ) -> httpx.Request:
        ref = lease.endpoint
        base = ref.url
        where = classify_url(base)
        if where.socket_path is not None:
            base = "http://localhost" + where.path
        url = rebase(base, request.url.path, request.url.query)
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() not in _DROP]
        key = endpoint_key(ep) if ep is not None else None
        if key:
            headers.append(("authorization", f"Bearer {key}"))
        elif self._forward_auth and "authorization" in request.headers:
            headers.append(("authorization", request.headers["authorization"]))
        if payload is not None and payload.get("model") != ref.model and ref.model:
            body = msgspec.json.encode({**payload, "model": ref.model})
        extensions = dict(request.extensions)
        extensions["timeout"] = timeouts(request, ep, lease)
        return httpx.Request(
            request.method, url, headers=headers, content=body, extensions=extensions
        )

    async def _error_response(self, response: httpx.Response, lease: LeaseLike) -> httpx.Response:
        try:
            body = await read_bounded(response)
        except BaseException as exc:
            lease.release(exc)
            raise
        finally:
            await response.aclose()
        error = error_from_response(response.status_code, response.headers, body)
        outcome: OutcomeClass | None = None
        if error is None:
            self._failed += 1
            status = response.status_code
            error = _HTTPError(f"HTTP {status} from {lease.endpoint.name}", status)
            outcome = "error" if status >= 500 else "client_error"
        elif isinstance(error, Overloaded):
            self._overloaded += 1
        else:
            self._overflows += 1
        lease.release(error, outcome=outcome)
        if self._raise and isinstance(error, LmgateError) and not isinstance(error, _HTTPError):
            raise error
        headers = [
            (k, v) for k, v in response.headers.multi_items() if k.lower() != "content-encoding"
        ]
        return httpx.Response(
            response.status_code, headers=headers, content=body, extensions=response.extensions
        )

    def _stream_closed(self) -> None:
        self._open -= 1

    async def aclose(self) -> None:
        self._closed = True
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()
        if self._inner is not None:
            await self._inner.aclose()

    def statistics(self) -> SchedulingTransportStatistics:
        return SchedulingTransportStatistics(
            requests=self._requests,
            open_streams=self._open,
            overloaded=self._overloaded,
            context_overflows=self._overflows,
            failed=self._failed,
        )

    def __repr__(self) -> str:
        return f"<SchedulingTransport requests={self._requests} open_streams={self._open}>"


class _HTTPError(LmgateError):
    """An unmapped HTTP error, given to the lease so the outcome is counted."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _LeasedStream(httpx.AsyncByteStream):
    """The response body; closing it (or reading it to the end) releases the lease."""

    def __init__(
        self,
        owner: SchedulingTransport,
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
        self._owner._stream_closed()
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
