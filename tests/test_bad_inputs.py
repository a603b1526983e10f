"""Hostile and mistaken inputs get a typed error at the call that received them.

One table per door: ``Endpoint``, the scheduler's options, and the bodies
the scheduling transport is handed.  Each bad value must raise
``InvalidParameter`` (naming the field) at once -- never be accepted and
fail later, untyped -- and a refused body must take no lease.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import httpx
import pytest

import lmgate
from lmgate import Endpoint, InvalidParameter, QueueOptions, Scheduler
from lmgate.transports import SchedulingTransport

URL = "http://gpu:8080/v1"

BAD_ENDPOINTS: list[tuple[str, dict[str, Any]]] = [
    ("context_windows", {"context_windows": "x"}),
    ("context_windows", {"context_windows": {"m": -5}}),
    ("context_windows", {"context_windows": {"m": math.nan}}),
    ("context_window", {"context_window": 0}),
    ("max_connections", {"max_connections": 0}),
    ("max_connections", {"max_connections": -1}),
    ("max_connections", {"max_connections": math.nan}),
    ("health", {"health": 5}),
    ("probe", {"probe": "yes"}),
    ("local", {"local": "yes"}),
    ("models", {"models": "m"}),
    ("models", {"models": ["m", "m"]}),
    ("models", {"models": [""]}),
    ("ports", {"ports": [99999]}),
    ("ports", {"ports": "8080"}),
    ("connect_timeout", {"connect_timeout": -1}),
    ("read_timeout", {"read_timeout": math.inf}),
    ("kind", {"kind": "gpt"}),
]

BAD_URLS = [
    "http://h:99999/v1",
    "http://h:-1/v1",
    "http://h:abc/v1",
    "http://h\r\nx:1/v1",
    "http://h x:1/v1",
    "unix:",
    "http://[::1",
    "ftp://h/v1",
    "",
    "http://",
]


@pytest.mark.parametrize(("field", "kw"), BAD_ENDPOINTS)
def test_bad_endpoint_fields(field: str, kw: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameter) as info:
        Endpoint("e", URL, **{"models": ["m"], **kw})
    assert info.value.field.startswith(field)


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_urls(url: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        Endpoint("e", url, models=["m"])
    assert info.value.field == "url"


def test_too_many_positional_arguments_is_a_clear_error() -> None:
    with pytest.raises(TypeError):
        Endpoint("e", URL, ["m"])  # type: ignore[misc]


@pytest.mark.parametrize(
    "kw",
    [
        {"limit": 8},
        {"queue": 5},
        {"grace": -1},
        {"grace": math.nan},
    ],
)
def test_bad_scheduler_arguments(kw: dict[str, Any]) -> None:
    with pytest.raises((InvalidParameter, TypeError)):
        Scheduler([Endpoint("e", URL, models=["m"])], **kw)


@pytest.mark.parametrize("kw", [{"size": -1}, {"size": 1.5}, {"aging": math.nan}])
def test_bad_queue_options(kw: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameter):
        QueueOptions(**kw)


@pytest.mark.parametrize(
    "kw",
    [{"priority": "high"}, {"timeout": -1}, {"timeout": math.nan}, {"session": 5}],
)
def test_bad_request_options(kw: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameter), lmgate.request_options(**kw):
        pass


BAD_BODIES: list[bytes] = [
    b"[" * 100_000,
    b"{not json",
    b'{"model": "m", "messages": "x"}',
    b'{"model": "m", "messages": [], "max_tokens": -5}',
    b'{"model": "m", "messages": [], "max_tokens": 1e309}',
    b'{"model": "m", "messages": [], "max_tokens": "1e309"}',
    b'{"model": 5, "messages": []}',
    b"[1, 2, 3]",
]


@pytest.mark.anyio
@pytest.mark.parametrize("body", BAD_BODIES, ids=lambda b: b[:24].decode(errors="replace"))
async def test_malformed_bodies_are_a_400_before_any_lease(body: bytes) -> None:
    served: list[httpx.Request] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        served.append(request)
        return httpx.Response(200, json={})

    async with Scheduler([Endpoint("e", URL, models=["m"])]) as sched:
        transport = SchedulingTransport(sched, httpx.MockTransport(answer), refusal_responses=True)
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.post(
                "http://x/v1/chat/completions",
                content=body,
                headers={"content-type": "application/json"},
            )
        assert r.status_code == 400
        assert r.headers["x-should-retry"] == "false"
        stats = sched.stats()
        assert stats.submitted == 0
        assert stats.in_flight == 0
    assert served == []
    await anyio.lowlevel.checkpoint()
