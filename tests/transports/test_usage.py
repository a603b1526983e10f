"""Usage sniffed from JSON, SSE and NDJSON bodies however they are chunked."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from lmgate.transports._usage import UsageSniffer

SSE = (
    b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":5}}\n\n'
    b"data: [DONE]\n\n"
)
NDJSON = (
    b'{"message":{"content":"a"},"done":false}\n'
    b'{"message":{"content":""},"done":true,"prompt_eval_count":26,"eval_count":290}\n'
)
JSON = json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}).encode()


def feed(ctype: str, data: bytes, cuts: list[int]) -> UsageSniffer:
    s = UsageSniffer(ctype)
    points = sorted({c % (len(data) + 1) for c in cuts})
    prev = 0
    for p in [*points, len(data)]:
        s.feed(data[prev:p])
        prev = p
    s.close()
    return s


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
def test_sse_usage_any_chunking(cuts: list[int]) -> None:
    """The SSE usage event is found wherever the chunk boundaries fall."""
    s = feed("text/event-stream", SSE, cuts)
    assert (s.prompt_tokens, s.output_tokens) == (11, 5)


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
def test_ndjson_usage_any_chunking(cuts: list[int]) -> None:
    """Ollama's final object gives prompt_eval_count and eval_count."""
    s = feed("application/x-ndjson", NDJSON, cuts)
    assert (s.prompt_tokens, s.output_tokens) == (26, 290)


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
def test_json_usage_any_chunking(cuts: list[int]) -> None:
    """A plain JSON body's usage is read at close."""
    s = feed("application/json", JSON, cuts)
    assert (s.prompt_tokens, s.output_tokens) == (3, 4)


def test_oversized_line_is_skipped_not_buffered() -> None:
    """A line over 1 MiB is dropped; usage after it is still found."""
    s = UsageSniffer("text/event-stream")
    s.feed(b"data: " + b"x" * (2 << 20))
    s.feed(b"\n" + SSE)
    s.close()
    assert s.prompt_tokens == 11
    assert len(s._buf) < 1 << 20


@given(st.binary(max_size=2000))
def test_garbage_never_raises(data: bytes) -> None:
    """Any bytes are fed without error."""
    for ctype in ("text/event-stream", "application/x-ndjson", "application/json"):
        s = UsageSniffer(ctype)
        s.feed(data)
        s.close()
