"""Reading lmgate's parameters off a request and shaping what goes out.

Helpers of :class:`~lmgate.transports.SchedulingTransport`: the model,
priority and timeout a request asks for, the prompt size it carries (to
calibrate token estimates), the per-endpoint timeouts merged with the
caller's, the prompt it carries for routing by context window, and the
HTTP answer a refusal becomes when asked for one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

import anyio
import httpx
import msgspec

from lmgate._endpoint import Endpoint
from lmgate._errors import (
    ContextOverflow,
    DeadlineExceeded,
    InvalidParameter,
    LmgateError,
    Rejected,
)
from lmgate.context._messages import Message, to_messages

__all__ = [
    "chat_prompt",
    "json_object",
    "params",
    "prompt_chars",
    "read_bounded",
    "refusal",
    "timeouts",
]

_MAX_ERROR_BODY = 1 << 20


class _HasDeadline(Protocol):
    deadline: float


def json_object(request: httpx.Request, body: bytes) -> dict[str, Any] | None:
    if not body or "json" not in request.headers.get("content-type", "json"):
        return None
    try:
        obj = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def params(
    request: httpx.Request, payload: Mapping[str, Any] | None
) -> tuple[str, int, float | None]:
    ext = request.extensions
    model = payload.get("model") if payload is not None else None
    if not isinstance(model, str) or not model:
        model = ext.get("lmgate.model") or request.headers.get("x-lmgate-model")
    if not isinstance(model, str) or not model:
        raise InvalidParameter(
            "request has no model: put it in the JSON body or the X-Lmgate-Model header",
            field="model",
        )
    raw_p = ext.get("lmgate.priority", request.headers.get("x-lmgate-priority"))
    raw_t = ext.get("lmgate.timeout", request.headers.get("x-lmgate-timeout"))
    try:
        priority = 0 if raw_p is None else int(raw_p)
    except (TypeError, ValueError):
        raise InvalidParameter(f"bad priority {str(raw_p)[:40]!r}", field="priority") from None
    timeout: float | None = None
    if raw_t is not None:
        try:
            timeout = float(raw_t)
        except (TypeError, ValueError):
            raise InvalidParameter(f"bad timeout {str(raw_t)[:40]!r}", field="timeout") from None
        if not (0.0 <= timeout < math.inf):
            raise InvalidParameter("timeout must be finite and >= 0", field="timeout")
    return model, priority, timeout


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
    budget = payload.get("max_completion_tokens", payload.get("max_tokens"))
    options = payload.get("options")
    if budget is None and isinstance(options, dict):
        budget = options.get("num_predict")
    if type(budget) is not int or not 0 <= budget <= 100_000_000:
        budget = None
    return messages, budget


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


async def read_bounded(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        if size < _MAX_ERROR_BODY:
            chunks.append(chunk[: _MAX_ERROR_BODY - size])
        size += len(chunk)
    return b"".join(chunks)


def refusal(exc: LmgateError) -> httpx.Response:
    if isinstance(exc, ContextOverflow):
        # What the servers themselves say, so SDKs raise their usual error.
        overflow = {
            "error": {
                "message": str(exc),
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        }
        return httpx.Response(
            400, json=overflow, headers={"x-lmgate-error": "lmgate_context_overflow"}
        )
    if isinstance(exc, Rejected):
        status, kind, headers = 429, "lmgate_rejected", {"retry-after": "1"}
    elif isinstance(exc, DeadlineExceeded):
        status, kind, headers = 504, "lmgate_deadline_exceeded", {}
    else:
        status, kind, headers = 503, "lmgate_unavailable", {}
    reason = getattr(exc, "reason", None)
    body = {"error": {"message": str(exc), "type": kind, "param": None, "code": reason}}
    return httpx.Response(status, json=body, headers={**headers, "x-lmgate-error": kind})
