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

import base64
from collections.abc import Sequence
from typing import Any, Protocol, final

import anyio
import httpx
import msgspec

from lmgate._endpoint import Endpoint
from lmgate._errors import (
    ContextOverflow,
    DeadlineExceeded,
    EndpointUnavailable,
    InvalidParameter,
    LmgateError,
    Overloaded,
    Rejected,
    SchedulerClosed,
)
from lmgate._validate import check_float
from lmgate.context._messages import Message
from lmgate.detect._learn import endpoint_key
from lmgate.detect._locality import classify_url
from lmgate.detect._tokens import TokenEstimator
from lmgate.policies._sample import OutcomeClass
from lmgate.security._secrets import redact
from lmgate.transports._errors import error_from_response
from lmgate.transports._leased import LeasedStream, LeaseLike
from lmgate.transports._pool import ClientPool, pooled_transport
from lmgate.transports._request import (
    caller_gave_up,
    chat_prompt,
    json_object,
    output_budget,
    params,
    prompt_chars,
    read_bounded,
    refusal,
    streams,
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
        messages: Sequence[Message] | None = None,
        max_tokens: int | None = None,
        prompt_tokens: int | None = None,
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

    Chat requests are routed by context window: their messages and output
    budget (``max_tokens``) go to the scheduler's context gate, which
    grants only an endpoint whose window can take them, fits the prompt to
    that window with the endpoint's context strategy (the fitted messages
    are what is sent), and refuses a prompt no endpoint could take with
    ``ContextOverflow`` before anything is sent.  ``context=False`` sends
    every body as it came.

    Connections come from the scheduler's own per-endpoint pools
    (``sched.clients``, closed with the scheduler) when it has them, else
    from pools of the transport's own; ``inner`` replaces both (tests use
    an ``httpx.MockTransport``).  With ``raise_errors`` a mapped server error
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
        context: bool = True,
        stream_idle: float | None = 60.0,
    ) -> None:
        if not hasattr(sched, "acquire") or not hasattr(sched, "endpoints"):
            raise InvalidParameter("sched must be an lmgate Scheduler", field="sched")
        self._sched = sched
        self._inner = inner
        self._forward_auth = forward_auth
        self._raise = raise_errors
        self._refusals = refusal_responses
        self._context = context
        if stream_idle is not None:
            stream_idle = check_float("stream_idle", stream_idle, low=0.0, low_open=True)
        self._idle = stream_idle
        self._invalid = 0
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
            shared = getattr(self._sched, "clients", None)
            if isinstance(shared, ClientPool):
                return shared.transport(ep if ep is not None else name)
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
        try:
            body = await request.aread()
            if len(body) > _MAX_REQUEST:
                raise InvalidParameter("request body larger than 32 MiB", field="body")
            payload = json_object(request, body)
            model, opts = params(request, payload)
            prompt = chat_prompt(request, payload) if self._context else None
        except InvalidParameter as exc:
            self._invalid += 1
            if self._refusals:
                return refusal(exc)
            raise
        window: dict[str, Any] = {}
        if prompt is not None:
            window = {"messages": prompt[0], "max_tokens": prompt[1]}
        elif payload is not None:
            # Sent as is: the output budget still sizes it for a KV budget
            # (the prompt, not counted, is charged at the endpoint's typical size).
            window = {"max_tokens": output_budget(payload)}
        self._requests += 1
        try:
            lease = await self._sched.acquire(
                model=model, priority=opts.priority or 0, timeout=opts.timeout, **window
            )
        except ContextOverflow as exc:
            self._overflows += 1
            if self._refusals:
                return refusal(exc)
            raise
        except (Rejected, EndpointUnavailable, SchedulerClosed, DeadlineExceeded) as exc:
            if self._refusals:
                return refusal(exc)
            raise
        ep = self._endpoint(lease.endpoint.name)
        # Until it is handed to the connection the server cannot have started
        # it, so a call cancelled before then holds no place after (``_occupancy``).
        lease._sent = False
        lease._streaming = streams(request, payload)
        try:
            outbound = self._outbound(request, body, payload, lease, ep)
            start = anyio.current_time()
            pool = self._pool(ep, lease.endpoint.name)
            with anyio.move_on_at(lease.deadline) as scope:
                lease._sent = True
                response = await pool.handle_async_request(outbound)
            if scope.cancelled_caught:
                raise DeadlineExceeded(
                    f"no response from {lease.endpoint.name} before the deadline"
                )
        except BaseException as exc:
            self._failed += 1
            if caller_gave_up(exc, request, ep):
                # The caller's own timeout, shorter than the endpoint's: it
                # gave up, which says nothing about the server's health.
                lease.release(exc, outcome="cancelled")
            else:
                lease.release(exc)
            if self._refusals and isinstance(exc, DeadlineExceeded):
                return refusal(exc)
            raise
        if response.status_code >= 400:
            return await self._error_response(response, lease)
        sniffer = UsageSniffer(response.headers.get("content-type", ""))
        chars = prompt_chars(payload)
        self._open += 1
        stream = LeasedStream(self, response, lease, start, sniffer, chars, idle=self._idle)
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
        elif ep is not None and ep.credentials is not None:
            basic = base64.b64encode(ep.credentials.get_secret_value().encode()).decode()
            headers.append(("authorization", f"Basic {basic}"))
        elif self._forward_auth and "authorization" in request.headers:
            headers.append(("authorization", request.headers["authorization"]))
        changes: dict[str, Any] = {}
        if payload is not None and payload.get("model") != ref.model and ref.model:
            changes["model"] = ref.model
        fitted = getattr(lease, "fitted", None)
        if payload is not None and fitted is not None and fitted.applied:
            changes["messages"] = lease.messages  # type: ignore[attr-defined]
        if payload is not None and changes:
            body = msgspec.json.encode({**payload, **changes})
        extensions = dict(request.extensions)
        extensions["timeout"] = timeouts(request, ep, lease)
        return httpx.Request(
            request.method, url, headers=headers, content=body, extensions=extensions
        )

    async def _error_response(self, response: httpx.Response, lease: LeaseLike) -> httpx.Response:
        try:
            body = await read_bounded(response, lease.deadline)
        except BaseException as exc:
            lease.release(exc)
            if self._refusals and isinstance(exc, DeadlineExceeded):
                return refusal(exc)
            raise
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await response.aclose()
        if response.status_code in (401, 403):
            body = self._scrubbed(body, lease)
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
            (k, v)
            for k, v in response.headers.multi_items()
            if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        return httpx.Response(
            response.status_code, headers=headers, content=body, extensions=response.extensions
        )

    def _scrubbed(self, body: bytes, lease: LeaseLike) -> bytes:
        """A 401/403 body with the endpoint's own key and credentials masked.

        Some servers echo the ``Authorization`` they refused; that is the
        endpoint's real key, which the caller of the transport must not see.
        """
        ep = self._endpoint(lease.endpoint.name)
        if ep is None:
            return body
        secrets: list[str] = []
        key = endpoint_key(ep)
        if key:
            secrets.append(key)
        if ep.credentials is not None:
            plain = ep.credentials.get_secret_value()
            secrets += [plain, base64.b64encode(plain.encode()).decode()]
            secrets += [part for part in plain.split(":", 1)[1:] if part]
        if not secrets:
            return body
        return redact(body.decode("utf-8", "replace"), secrets).encode()

    def stream_closed(self) -> None:
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
