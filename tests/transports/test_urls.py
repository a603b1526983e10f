"""Joining a request path onto an endpoint base URL."""

from __future__ import annotations

import pytest

from lmgate.transports import rebase


@pytest.mark.parametrize(
    ("base", "path", "expected"),
    [
        ("http://gpu:8080", "/v1/chat/completions", "http://gpu:8080/v1/chat/completions"),
        ("http://gpu:8080/", "/v1/chat/completions", "http://gpu:8080/v1/chat/completions"),
        ("http://gpu:8080/v1", "/v1/chat/completions", "http://gpu:8080/v1/chat/completions"),
        ("http://gpu:8080/v1/", "/v1/models", "http://gpu:8080/v1/models"),
        ("http://gpu:8080/v1", "/chat/completions", "http://gpu:8080/v1/chat/completions"),
        ("http://gpu:8080", "/chat/completions", "http://gpu:8080/v1/chat/completions"),
        (
            "https://api.groq.com/openai/v1",
            "/v1/chat/completions",
            "https://api.groq.com/openai/v1/chat/completions",
        ),
        ("http://proxy/ollama", "/v1/models", "http://proxy/ollama/v1/models"),
        ("http://gpu:11434/v1", "/api/chat", "http://gpu:11434/api/chat"),
        ("http://gpu:8080/v1", "/tokenize", "http://gpu:8080/tokenize"),
        ("http://proxy/llm/v1", "/health", "http://proxy/llm/health"),
        ("http://gpu:8080", "/", "http://gpu:8080/"),
    ],
)
def test_rebase(base: str, path: str, expected: str) -> None:
    """/v1 never doubles or goes missing; native routes go to the root."""
    assert str(rebase(base, path)) == expected


def test_query_is_kept() -> None:
    """The raw query string survives."""
    assert (
        str(rebase("http://gpu/v1", "/v1/models", b"a=1&b=%20")) == "http://gpu/v1/models?a=1&b=%20"
    )
