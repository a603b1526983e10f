"""Turning each server's error responses into lmgate's errors.

The adaptive limit and the circuit breaker need to tell three things apart
that servers spell in many ways: the prompt did not fit (the caller's
problem, with the two numbers needed to cut it), the server is overloaded
or still loading a model (back off, count no fault), and everything else.
Shapes recognised, each from the server's own source or documentation:

* llama.cpp: 400 ``{"error": {"type": "exceed_context_size_error",
  "n_prompt_tokens": N, "n_ctx": M}}``; 503 ``Loading model``.
* OpenAI: 400 ``code: context_length_exceeded``; 429 with ``Retry-After``.
* vLLM: 400 ``This model's maximum context length is M tokens. However, ...``
  (old top-level ``message`` and new nested ``error`` shapes).
* TGI: 422 ``\\`inputs\\` tokens + \\`max_new_tokens\\` must be <= M. Given: N ...``;
  429 ``Model is overloaded``.
* LM Studio: ``Trying to keep the first N tokens ... context length of only M``.
* Ollama: 503 ``server busy, please try again.  maximum pending requests
  exceeded`` (it truncates over-long prompts silently instead of failing).
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from lmgate._errors import ContextOverflow, LmgateError, Overloaded

__all__ = ["error_from_response", "error_message", "parse_retry_after"]

_MAX_ERROR_BODY = 1 << 20

_WINDOW = re.compile(r"maximum context length is (\d+)", re.IGNORECASE)
_TOKENS = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"for a total of (?:at least )?(\d+) tokens",
        r"you requested (\d+) tokens",
        r"resulted in (\d+) tokens",
        r"your (?:request|prompt) (?:has|contains)(?: at least)? (\d+) (?:input )?tokens",
        r"request \((\d+) tokens\) exceeds",
    )
)
_TGI_TOTAL = re.compile(
    r"must be <= (\d+)\. Given: (\d+) `inputs` tokens and (\d+) `max_new_tokens`"
)
_TGI_INPUT = re.compile(r"`inputs` must have less than (\d+) tokens\. Given: (\d+)")
_LMSTUDIO = re.compile(
    r"keep the first (\d+) tokens.*context length of only (\d+) tokens", re.IGNORECASE | re.DOTALL
)
_LLAMACPP_TEXT = re.compile(r"request \((\d+) tokens\) exceeds the available context size \((\d+)")
_CONTEXT_WORDS = re.compile(
    r"context (length|window|size)|maximum context|too many tokens"
    r"|exceeds? the (available )?context",
    re.IGNORECASE,
)


def _int(x: Any) -> int | None:
    if isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**40:
        return x
    return None


def _decode(body: bytes) -> Any:
    if not body or len(body) > _MAX_ERROR_BODY:
        return None
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


def error_message(body: bytes) -> str:
    """The human-readable message in an error body, whatever its shape."""
    data = _decode(body)
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            msg = err.get("message")
            if isinstance(msg, str):
                return msg[:2000]
        if isinstance(err, str):
            return err[:2000]
        for key in ("message", "detail"):
            msg = data.get(key)
            if isinstance(msg, str):
                return msg[:2000]
    if data is None and body:
        return body[:2000].decode("utf-8", "replace").strip()
    return ""


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """``Retry-After`` (seconds or HTTP date) or ``retry-after-ms``, in seconds."""
    lowered = {k.lower(): v for k, v in headers.items()}
    ms = lowered.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = -1.0
        if 0.0 <= value < 86400.0:
            return value
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        value = when.timestamp() - (time.time() if now is None else now)
        value = max(value, 0.0)
    if value != value or not 0.0 <= value < 86400.0:
        return None
    return value


def _context_overflow(status: int, data: Any, message: str) -> ContextOverflow | None:
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict) and err.get("type") == "exceed_context_size_error":
        return ContextOverflow(
            message or "prompt exceeds the context size",
            tokens=_int(err.get("n_prompt_tokens")),
            window=_int(err.get("n_ctx")),
        )
    m = _TGI_TOTAL.search(message)
    if m:
        window, given, new = (int(g) for g in m.groups())
        return ContextOverflow(message, tokens=given + new, window=window)
    m = _TGI_INPUT.search(message)
    if m:
        return ContextOverflow(message, tokens=int(m.group(2)), window=int(m.group(1)))
    m = _LMSTUDIO.search(message)
    if m:
        return ContextOverflow(message, tokens=int(m.group(1)), window=int(m.group(2)))
    m = _LLAMACPP_TEXT.search(message)
    if m:
        return ContextOverflow(message, tokens=int(m.group(1)), window=int(m.group(2)))
    code = err.get("code") if isinstance(err, dict) else None
    window_m = _WINDOW.search(message)
    if code == "context_length_exceeded" or window_m:
        found = (p.search(message) for p in _TOKENS)
        tokens = next((int(f.group(1)) for f in found if f), None)
        limit = int(window_m.group(1)) if window_m else None
        return ContextOverflow(message, tokens=tokens, window=limit)
    if status in (400, 413, 422) and _CONTEXT_WORDS.search(message):
        return ContextOverflow(message)
    return None


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> LmgateError | None:
    """The lmgate error an HTTP error response means, or None if it means none.

    ``ContextOverflow`` carries the server's token count and window when it
    gave them; ``Overloaded`` carries ``status`` and ``retry_after``, and its
    message contains ``loading`` when the server is loading a model.
    """
    if status < 400:
        return None
    data = _decode(body)
    message = error_message(body)
    if status in (400, 413, 422, 500):
        overflow = _context_overflow(status, data, message)
        if overflow is not None:
            return overflow
    if status in (429, 503, 529):
        retry = parse_retry_after(headers)
        lowered = message.lower()
        if status == 503 and "loading" in lowered:
            text = f"server is loading the model: {message}"
        elif "busy" in lowered or "overloaded" in lowered:
            text = f"server overloaded: {message}"
        else:
            text = f"server overloaded (HTTP {status})" + (f": {message}" if message else "")
        return Overloaded(text[:2000], retry_after=retry, status=status)
    return None
