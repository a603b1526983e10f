"""Reading lmgate's parameters off a request and shaping what goes out.

Helpers of :class:`~lmgate.transports.SchedulingTransport`: the model,
priority and timeout a request asks for, the prompt size it carries (to
calibrate token estimates), the per-endpoint timeouts merged with the
caller's, the prompt it carries for routing by context window, and the
HTTP answer a refusal becomes when asked for one.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

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
    Rejected,
    SchedulerClosed,
)
from lmgate.context._messages import Message, to_messages
from lmgate.transports._options import RequestOptions, current_options, options_of

__all__ = [
    "caller_gave_up",
    "chat_prompt",
    "json_object",
    "output_budget",
    "params",
    "prompt_chars",
    "read_bounded",
    "refusal",
    "streams",
    "timeouts",
]

_MAX_ERROR_BODY = 1 << 20


class _HasDeadline(Protocol):
    deadline: float


def json_object(request: httpx.Request, body: bytes) -> dict[str, Any] | None:
    """The request's JSON object body; None for a body that is not JSON.

    A body that says it is JSON and is not -- malformed, nested absurdly
    deep, or not an object -- is refused here, before any lease is taken.
    """
    if not body or "json" not in request.headers.get("content-type", "json"):
        return None
    try:
        obj = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidParameter(
            f"request body is not valid JSON: {exc}"[:200], field="body"
        ) from None
    if not isinstance(obj, dict):
        raise InvalidParameter("the JSON body must be an object", field="body")
    check_body(obj)
    return obj


def check_body(payload: Mapping[str, Any]) -> None:
    """Refuse the fields lmgate reads when they have the wrong shape."""
    messages = payload.get("messages")
    if messages is not None and not isinstance(messages, list):
        raise InvalidParameter("messages must be a list of messages", field="messages")
    if isinstance(messages, list):
        for m in messages:
            if not isinstance(m, dict):
                raise InvalidParameter("each message must be an object", field="messages")
    for name in ("max_tokens", "max_completion_tokens"):
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 100_000_000:
            raise InvalidParameter(
                f"{name} must be a positive integer, got {str(value)[:40]!r}", field=name
            )
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidParameter("stream must be a bool", field="stream")


def params(request: httpx.Request, payload: Mapping[str, Any] | None) -> tuple[str, RequestOptions]:
    """The model and the scheduling options of one request.

    Options come, first source first: the ``lmgate.options`` extension, the
    ``lmgate.priority`` / ``lmgate.timeout`` extensions, the innermost
    ``lmgate.request_options`` block, then the ``X-Lmgate-Priority`` /
    ``X-Lmgate-Timeout`` headers.
    """
    ext = request.extensions
    model = payload.get("model") if payload is not None else None
    if model is not None and not isinstance(model, str):
        raise InvalidParameter("model must be a string", field="model")
    if not model:
        model = ext.get("lmgate.model") or request.headers.get("x-lmgate-model")
    if not isinstance(model, str) or not model:
        raise InvalidParameter(
            "request has no model: put it in the JSON body or the X-Lmgate-Model header",
            field="model",
        )
    opts = options_of(ext.get("lmgate.options"))
    legacy = _parsed(ext.get("lmgate.priority"), ext.get("lmgate.timeout"))
    headers = _parsed(
        request.headers.get("x-lmgate-priority"), request.headers.get("x-lmgate-timeout")
    )
    merged = legacy.over(current_options()).over(headers)
    return model, merged if opts is None else opts.over(merged)


def _parsed(raw_p: object, raw_t: object) -> RequestOptions:
    priority: int | None = None
    if raw_p is not None:
        try:
            priority = int(raw_p)  # type: ignore[call-overload]
        except (TypeError, ValueError, OverflowError):
            raise InvalidParameter(f"bad priority {str(raw_p)[:40]!r}", field="priority") from None
    timeout: float | None = None
    if raw_t is not None:
        try:
            timeout = float(raw_t)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            raise InvalidParameter(f"bad timeout {str(raw_t)[:40]!r}", field="timeout") from None
        if not (0.0 <= timeout < math.inf):
            raise InvalidParameter("timeout must be finite and >= 0", field="timeout")
    return RequestOptions(priority=priority, timeout=timeout)


def prompt_chars(payload: Mapping[str, Any] | None) -> int | None:
    if payload is None:
        return None
    total = 0
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        total += len(prompt)
    messages = payload.get("messages")
    if isinstance(messages, list):
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                total += len(content)
            elif isinstance(content, list):
                for part in content:
                    text = part.get("text") if isinstance(part, dict) else None
                    if isinstance(text, str):
                        total += len(text)
    return total or None


def chat_prompt(
    request: httpx.Request, payload: Mapping[str, Any] | None
) -> tuple[tuple[Message, ...], int | None] | None:
    """The chat messages and output budget of a chat request, for the context gate.

    Only OpenAI-style ``/chat/completions`` and Ollama's ``/api/chat``
    bodies are read; the budget is ``max_completion_tokens`` or
    ``max_tokens`` (``options.num_predict`` for Ollama), None when unsaid.
    A message list lmgate cannot read goes through untouched (None): the
    server is the judge of its own API.
    """
    if payload is None:
        return None
    path = request.url.path.rstrip("/")
    if not path.endswith(("/chat/completions", "/api/chat")):
        return None
    raw = payload.get("messages")
    if not isinstance(raw, list) or not raw:
        return None
    try:
        messages = to_messages(raw)
    except InvalidParameter:
        return None
    return messages, output_budget(payload)


def streams(request: httpx.Request, payload: Mapping[str, Any] | None) -> bool | None:
    """Whether the body asks for a streamed answer (Ollama's chat streams unless told not)."""
    if payload is None:
        return None
    stream = payload.get("stream")
    if stream is None and request.url.path.rstrip("/").endswith(("/api/chat", "/api/generate")):
        return True
    return stream is True


def output_budget(payload: Mapping[str, Any] | None) -> int | None:
    """A body's output budget: ``max_completion_tokens`` or ``max_tokens``
    (``n_predict`` for llama.cpp, ``options.num_predict`` for Ollama)."""
    if payload is None:
        return None
    budget = payload.get("max_completion_tokens", payload.get("max_tokens"))
    if budget is None:
        budget = payload.get("n_predict")
    options = payload.get("options")
    if budget is None and isinstance(options, dict):
        budget = options.get("num_predict")
    if type(budget) is not int or not 0 <= budget <= 100_000_000:
        return None
    return budget


def caller_gave_up(exc: BaseException, request: httpx.Request, ep: Endpoint | None) -> bool:
    """Whether ``exc`` is the caller's own read timeout firing, one shorter than the
    endpoint's (an SDK call's ``timeout=``): the caller gave up, the server did not fail."""
    if not isinstance(exc, httpx.ReadTimeout):
        return False
    theirs = (request.extensions.get("timeout") or {}).get("read")
    ours = ep.read_timeout if ep is not None else 600.0
    return isinstance(theirs, int | float) and 0 < theirs < ours


def timeouts(request: httpx.Request, ep: Endpoint | None, lease: _HasDeadline) -> dict[str, float]:
    mine = {"connect": 5.0, "read": 600.0, "write": 600.0, "pool": 5.0}
    if ep is not None:
        mine = {
            "connect": ep.connect_timeout,
            "read": ep.read_timeout,
            "write": ep.read_timeout,
            "pool": ep.connect_timeout,
        }
    theirs = request.extensions.get("timeout") or {}
    out: dict[str, float] = {}
    for k, v in mine.items():
        t = theirs.get(k)
        out[k] = min(v, t) if isinstance(t, int | float) and t > 0 else v
    left = lease.deadline - anyio.current_time()
    if left < math.inf:
        for k in ("connect", "pool"):
            out[k] = max(0.001, min(out[k], left))
    return out


async def read_bounded(response: httpx.Response, deadline: float = math.inf) -> bytes:
    """An (error) body read under the request's deadline and cut at 1 MiB.

    A body that trickles past the deadline raises ``DeadlineExceeded``;
    past the cap the rest is not read at all.  The transport's byte stream
    is read (and closed) directly, so no half-read generator is left for
    the garbage collector; gzip and deflate bodies are inflated here.
    """
    chunks: list[bytes] = []
    size = 0
    inflate = _inflater(response.headers.get("content-encoding", ""))
    stream = response.stream
    it = stream.__aiter__()  # type: ignore[union-attr]
    with anyio.move_on_at(deadline) as scope:
        try:
            async for raw in it:
                chunk = inflate(raw) if inflate is not None else raw
                chunks.append(chunk[: _MAX_ERROR_BODY - size])
                size += len(chunks[-1])
                if size >= _MAX_ERROR_BODY:
                    break
        finally:
            closer = getattr(it, "aclose", None)
            if closer is not None:
                with anyio.CancelScope(shield=True):
                    await closer()
    if scope.cancelled_caught:
        raise DeadlineExceeded("deadline passed while reading the error body")
    return b"".join(chunks)


def _inflater(encoding: str) -> Callable[[bytes], bytes] | None:
    encoding = encoding.strip().lower()
    if encoding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress
    if encoding == "deflate":
        return zlib.decompressobj().decompress
    return None


#: What each refusal becomes in SDK-native mode: HTTP status, OpenAI error
#: type, and the outcome name in ``x-lmgate-outcome``.
_REFUSALS: tuple[tuple[type[LmgateError], int, str, str], ...] = (
    (ContextOverflow, 400, "invalid_request_error", "rejected"),
    (InvalidParameter, 400, "invalid_request_error", "invalid"),
    (Rejected, 429, "rate_limit_exceeded", "rejected"),
    (DeadlineExceeded, 504, "timeout", "deadline_exceeded"),
    (SchedulerClosed, 503, "service_unavailable", "closed"),
    (EndpointUnavailable, 503, "service_unavailable", "unavailable"),
)


def refusal(exc: LmgateError) -> httpx.Response:
    """lmgate's refusal as the OpenAI-shaped error response an SDK raises as its own.

    ``x-should-retry: false`` tells the openai SDK (and those modelled on
    it) not to retry lmgate's own decision; ``x-lmgate-outcome`` names it.
    The lmgate error rides on the response as the ``lmgate.error`` extension.
    """
    status, kind, outcome = 500, "api_error", "failed"
    for cls, s, k, o in _REFUSALS:
        if isinstance(exc, cls):
            status, kind, outcome = s, k, o
            break
    code = getattr(exc, "reason", None)
    param: str | None = getattr(exc, "field", None)
    if isinstance(exc, ContextOverflow):
        code, param = "context_length_exceeded", "messages"
    elif isinstance(exc, EndpointUnavailable) and exc.reason == "unknown_model":
        status, code, param = 404, "model_not_found", "model"
    body = {"error": {"message": str(exc), "type": kind, "param": param, "code": code}}
    headers = {
        "x-should-retry": "false",
        "x-lmgate-outcome": outcome,
        "x-lmgate-error": type(exc).__name__,
    }
    return httpx.Response(status, json=body, headers=headers, extensions={"lmgate.error": exc})
