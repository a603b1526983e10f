"""Each server's documented error responses map onto lmgate's errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmgate._errors import ContextOverflow, Overloaded
from lmgate.transports import error_from_response, error_message, parse_retry_after

FIXTURES = Path(__file__).parent.parent / "detect" / "fixtures"


def fixture(server: str, route: str) -> tuple[int, dict[str, str], bytes]:
    spec = json.loads((FIXTURES / f"{server}.json").read_text())["routes"][route]
    body = spec["body"]
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return spec["status"], spec.get("headers", {}), raw


@pytest.mark.parametrize(
    ("server", "route", "tokens", "window"),
    [
        ("llamacpp", "POST /v1/chat/completions#overflow", 2053, 256),  # captured from llama-server
        ("vllm", "POST /v1/chat/completions#overflow", 17000, 16384),
        ("tgi", "POST /v1/chat/completions#overflow", 4200, 4096),
        ("lmstudio", "POST /v1/chat/completions#overflow", 4513, 4096),
        ("openai", "POST /v1/chat/completions#overflow", 130532, 128000),
    ],
)
def test_context_overflow_carries_both_numbers(
    server: str, route: str, tokens: int, window: int
) -> None:
    """A context error becomes ContextOverflow with the server's numbers."""
    err = error_from_response(*fixture(server, route))
    assert isinstance(err, ContextOverflow)
    assert (err.tokens, err.window) == (tokens, window)


@pytest.mark.parametrize(
    ("message", "tokens", "window"),
    [
        (
            "This model's maximum context length is 4096 tokens. However, you requested 1000"
            " output tokens and your prompt contains at least 3097 input tokens, for a total of"
            " at least 4097 tokens.",
            4097,
            4096,
        ),
        (
            "This model's maximum context length is 8192 tokens. However, your request has 9000"
            " input tokens. Please reduce the length of the input messages.",
            9000,
            8192,
        ),
        ("`inputs` must have less than 2048 tokens. Given: 3000", 3000, 2048),
        ("the request exceeds the available context size, try increasing it", None, None),
    ],
)
def test_context_wordings(message: str, tokens: int | None, window: int | None) -> None:
    """Other wordings of the same error, numbers where given."""
    body = json.dumps({"error": {"message": message, "type": "BadRequestError"}}).encode()
    err = error_from_response(400, {}, body)
    assert isinstance(err, ContextOverflow)
    assert (err.tokens, err.window) == (tokens, window)


def test_old_vllm_top_level_message() -> None:
    """vLLM's older ErrorResponse puts the message at the top level."""
    status, headers, body = fixture("vllm", "POST /v1/chat/completions#overflow")
    assert json.loads(body)["object"] == "error"
    assert isinstance(error_from_response(status, headers, body), ContextOverflow)


def test_rate_limit_carries_retry_after() -> None:
    """429 + Retry-After becomes Overloaded(retry_after=, status=429)."""
    err = error_from_response(*fixture("openai", "POST /v1/chat/completions#ratelimit"))
    assert isinstance(err, Overloaded)
    assert (err.retry_after, err.status) == (20.0, 429)


def test_ollama_busy() -> None:
    """Ollama's queue-full answer is Overloaded, not a loading hint."""
    err = error_from_response(*fixture("ollama", "POST /api/chat#busy"))
    assert isinstance(err, Overloaded)
    assert err.status == 503
    assert "loading" not in str(err).lower()
    assert "busy" in str(err)


def test_tgi_overloaded() -> None:
    """TGI's 429 overloaded answer is Overloaded."""
    err = error_from_response(*fixture("tgi", "POST /generate#overloaded"))
    assert isinstance(err, Overloaded)
    assert err.status == 429


def test_loading_is_visible_to_the_classifier() -> None:
    """A 503 while loading says 'loading' so it is not counted as a failure."""
    body = b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}'
    err = error_from_response(503, {"retry-after": "3"}, body)
    assert isinstance(err, Overloaded)
    assert "loading" in str(err)
    assert err.status == 503
    assert err.retry_after == 3.0


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"{}"),
        (404, b'{"error":{"message":"File Not Found","type":"not_found_error","code":404}}'),
        (401, b'{"error":{"message":"Invalid API Key","type":"authentication_error"}}'),
        (400, b'{"error":{"message":"messages must be a list","type":"invalid_request_error"}}'),
        (500, b"internal error"),
    ],
)
def test_other_errors_map_to_nothing(status: int, body: bytes) -> None:
    """Errors that are neither overload nor context are left to the caller."""
    assert error_from_response(status, {}, body) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-3"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "1e9"}, None),
        ({}, None),
    ],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    """Retry-After in seconds or milliseconds; junk is ignored."""
    assert parse_retry_after(headers) == expected


def test_retry_after_http_date() -> None:
    """An HTTP-date Retry-After is turned into seconds from now."""
    now = datetime(2025, 1, 1, tzinfo=UTC)
    when = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after({"retry-after": when}, now=now.timestamp()) == 30.0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": {"message": "a"}}', "a"),
        (b'{"error": "b"}', "b"),
        (b'{"message": "c"}', "c"),
        (b'{"detail": "d"}', "d"),
        (b"plain text", "plain text"),
        (b"", ""),
    ],
)
def test_error_message_shapes(body: bytes, message: str) -> None:
    """The message is found whatever the server's error shape."""
    assert error_message(body) == message


@given(st.integers(min_value=100, max_value=599), st.binary(max_size=300))
def test_never_raises(status: int, body: bytes) -> None:
    """Any status and body maps to an error or None, never an exception."""
    err: Any = error_from_response(status, {"retry-after": "x"}, body)
    assert err is None or isinstance(err, ContextOverflow | Overloaded)
