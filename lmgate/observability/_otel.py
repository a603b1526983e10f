"""OpenTelemetry spans per request (optional extra ``lmgate[otel]``).

Uses the API package only: with no SDK configured every call is a no-op, and
an application that configures one sees, per request, a ``lmgate.request``
span with two children -- ``lmgate.queue`` (submit to grant or refusal) and
``lmgate.call`` (grant to release).  While the call runs, ``lmgate.call`` is
the current span, so the HTTP client's own spans nest under it.

The scheduler calls ``on_request_start`` and ``on_request_granted`` in the
requesting task, so the call span is attached to the caller's context.  An
end usually comes from the same task too; when it comes from elsewhere (a
release in another task, a refusal by the controller, shutdown) the spans
still end, but the caller's context can only be restored from the caller's
own task: that happens at its next request.  Exceptions are recorded by
type only -- their messages may quote a prompt or a key.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any, Final, final
from urllib.parse import urlsplit

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "lmgate's OpenTelemetry spans need opentelemetry-api: pip install 'lmgate[otel]'"
    ) from exc

__all__ = ["ERROR_OUTCOMES", "OtelHook", "RequestSpans"]

#: Outcomes that mark the spans as errors; ``completed`` and ``cancelled`` do not.
ERROR_OUTCOMES: Final = frozenset(
    {"failed", "rejected", "deadline_exceeded", "unavailable", "closed"}
)


@final
class RequestSpans:
    """The spans of one request in flight; the handle the hook methods pass around."""

    __slots__ = ("call", "ended", "mark", "queue", "request", "token")

    def __init__(self, request: Span, queue: Span) -> None:
        self.request = request
        self.queue: Span | None = queue
        self.call: Span | None = None
        self.ended = False
        #: The OpenTelemetry context token, and our own marker of the same
        #: attach (resetting it tells whether this is the attaching context).
        self.token: Any = None
        self.mark: Token[RequestSpans | None] | None = None

    def __repr__(self) -> str:
        state = "call" if self.call is not None else "queue" if self.queue is not None else "done"
        return f"<RequestSpans {state}>"


#: The request whose call span this context made current, if any.
_ATTACHED: ContextVar[RequestSpans | None] = ContextVar("lmgate_otel_attached", default=None)


def _detach(handle: RequestSpans) -> None:
    """Restore the caller's context, if this is the caller's context."""
    if handle.mark is None:
        return
    try:
        _ATTACHED.reset(handle.mark)
    except (ValueError, RuntimeError):
        return  # another task's context: the caller restores it itself later
    handle.mark = None
    token, handle.token = handle.token, None
    otel_context.detach(token)


@final
class OtelHook:
    """A scheduler request hook that emits one span tree per request."""

    __slots__ = ("_tracer",)

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        tracer_name: str = "lmgate",
    ) -> None:
        self._tracer = trace.get_tracer(tracer_name, tracer_provider=tracer_provider)

    def on_request_start(self, *, model: str, priority: int) -> RequestSpans:
        """At submit, in the caller's task: the request and queue spans begin."""
        stale = _ATTACHED.get()
        if stale is not None and stale.ended:
            _detach(stale)  # ended from another task: restore this context now
        request = self._tracer.start_span(
            "lmgate.request",
            kind=SpanKind.INTERNAL,
            attributes={"lmgate.model": model, "lmgate.priority": priority},
        )
        parent = trace.set_span_in_context(request)
        queue = self._tracer.start_span("lmgate.queue", context=parent)
        return RequestSpans(request, queue)

    def on_request_granted(self, handle: object, *, endpoint: Any, queue_wait: float) -> None:
        """At grant, in the caller's task: the queue span ends, the call span becomes current."""
        if not isinstance(handle, RequestSpans):
            return
        if handle.queue is not None:
            handle.queue.set_attribute("lmgate.queue_wait", float(queue_wait))
            handle.queue.end()
            handle.queue = None
        attrs: dict[str, str | int | bool] = {}
        name = getattr(endpoint, "name", None)
        if name is not None:
            attrs["lmgate.endpoint"] = str(name)
        kind = getattr(endpoint, "kind", None)
        if kind is not None:
            attrs["lmgate.endpoint.kind"] = str(kind)
        local = getattr(endpoint, "local", None)
        if isinstance(local, bool):
            attrs["lmgate.endpoint.local"] = local
        attrs.update(_server(getattr(endpoint, "url", None)))
        handle.request.set_attributes(attrs)
        handle.call = self._tracer.start_span(
            "lmgate.call",
            context=trace.set_span_in_context(handle.request),
            kind=SpanKind.CLIENT,
            attributes=attrs,
        )
        handle.token = otel_context.attach(trace.set_span_in_context(handle.call))
        handle.mark = _ATTACHED.set(handle)

    def on_request_end(
        self,
        handle: object,
        *,
        endpoint: str | None,
        model: str,
        outcome: str,
        queue_wait: float,
        duration: float | None,
        ttft: float | None = None,
        error: BaseException | None = None,
    ) -> None:
        """At release or refusal, in the caller's task: every open span ends."""
        if not isinstance(handle, RequestSpans) or handle.ended:
            return
        handle.ended = True
        _detach(handle)
        attrs: dict[str, str | float] = {"lmgate.outcome": outcome}
        attrs["lmgate.queue_wait"] = float(queue_wait)
        if duration is not None:
            attrs["lmgate.duration"] = float(duration)
        if ttft is not None:
            attrs["lmgate.ttft"] = float(ttft)
        if error is not None:
            attrs["error.type"] = type(error).__qualname__
        elif outcome in ERROR_OUTCOMES:
            attrs["error.type"] = outcome
        status = Status(StatusCode.ERROR, outcome) if outcome in ERROR_OUTCOMES else None
        for span in (handle.queue, handle.call, handle.request):
            if span is None:
                continue
            span.set_attributes(attrs)
            if status is not None:
                span.set_status(status)
            span.end()
        handle.queue = handle.call = None

    def __repr__(self) -> str:
        return "<OtelHook>"


def _server(url: Any) -> dict[str, str | int]:
    """``server.address``/``server.port`` only: a URL may carry credentials."""
    if not isinstance(url, str):
        return {}
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return {}
    out: dict[str, str | int] = {}
    if host:
        out["server.address"] = host
    if port:
        out["server.port"] = port
    return out
