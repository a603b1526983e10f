"""Reading what an HTTP answer says about the server: Retry-After, hints in the body.

The classifier's helpers that need no exception types: parsing
``Retry-After`` (seconds or an HTTP date, measured against the response's
own ``Date`` when it has one), reading a bounded prefix of a body, and
spotting the phrases servers use for a model that is loading or a prompt
that does not fit.  Nothing here raises on junk: it runs while a lease is
released.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "CONTEXT_HINTS",
    "LOADING_HINTS",
    "MAX_TEXT",
    "body_text",
    "date_reference",
    "has_hint",
    "parse_retry_after",
    "response_text",
    "retry_after_from",
]

MAX_TEXT = 2048
LOADING_HINTS: Final = ("loading", "warming up", "starting up", "not yet loaded")
CONTEXT_HINTS: Final = (
    "context length",
    "context_length",
    "context window",
    "context size",
    "exceed_context",
    "exceeds the context",
    "maximum context",
    "too many tokens",
    "prompt is too long",
    "input is too long",
    "`inputs` tokens",  # TGI: "must be <= M. Given: N `inputs` tokens and ..."
    "`inputs` must have less than",  # TGI
)


def parse_retry_after(value: object, now_epoch: float | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, or None if unusable.

    Accepts delay-seconds (fractions tolerated, as some servers send them)
    and HTTP-dates, which need ``now_epoch`` (seconds since the epoch) as the
    reference.  Garbage of any kind -- negative, non-finite, overlong,
    non-text, unparsable dates -- gives None rather than an exception, since
    this runs while a lease is being released.
    """
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str) or len(value) > 64 or "\x00" in value:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            return None
        return seconds
    if now_epoch is None or not math.isfinite(now_epoch):
        return None
    try:
        when = email.utils.parsedate_to_datetime(text)
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            return None
        delay = when.timestamp() - now_epoch
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
    return max(0.0, delay) if math.isfinite(delay) else None


def retry_after_from(headers: Any, now_epoch: float | None) -> float | None:
    try:
        millis = headers.get("retry-after-ms")
        if millis is not None:
            ms = parse_retry_after(millis, None)
            if ms is not None:
                return ms / 1000.0
        value = headers.get("retry-after")
        if value is None:
            return None
        server_now = date_reference(headers.get("date"))
        return parse_retry_after(value, server_now if server_now is not None else now_epoch)
    except Exception:
        return None


def date_reference(value: object) -> float | None:
    """The epoch time of an HTTP ``Date`` header, or None."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            return None
        stamp = when.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
    return stamp if math.isfinite(stamp) else None


def response_text(response: Any) -> str:
    try:
        content = response.content  # raises if a streamed body was not read
    except Exception:
        return ""
    if not isinstance(content, bytes):
        return ""
    return content[:MAX_TEXT].decode("utf-8", "replace")


def body_text(body: object, code: object, message: str) -> str:
    parts = [message[:MAX_TEXT]]
    if isinstance(code, str):
        parts.append(code[:256])
    if isinstance(body, Mapping):
        for key in ("code", "type", "message"):
            v = body.get(key)
            if isinstance(v, str):
                parts.append(v[:MAX_TEXT])
    elif isinstance(body, str):
        parts.append(body[:MAX_TEXT])
    return " ".join(parts)


def has_hint(text: str, hints: tuple[str, ...]) -> bool:
    low = text[:MAX_TEXT].lower()
    return any(h in low for h in hints)
