"""The openai SDK as users write it, through a real Scheduler: leases the scheduler owns.

Streams cancelled inside ``async for`` without ``async with``, streams left
unread, trickled error bodies, refusals the SDK must not retry, typed
per-request options, and URL credentials that must never show.  Servers are
``lmgate.sim``'s HTTP simulators on loopback (real time, bounded waits) or
an in-process transport (virtual time, exact).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import msgspec
import openai
import pytest

import lmgate
from lmgate import Endpoint, Fixed, QueueOptions, Scheduler
from lmgate.sim.http import SimHTTPServer

from ._live import live_server, until

MESSAGES = [{"role": "user", "content": "Tell me a long story."}]
#: The openai SDK's stream decoder leaves async generators for trio to warn
#: about at exit (an SDK trait), so its streams are exercised on asyncio.
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])


@pytest.fixture
async def server() -> AsyncIterator[SimHTTPServer]:
    async with live_server() as s:
        yield s


@pytest.mark.anyio
@asyncio_only
async def test_cancel_inside_async_for_gives_slots_back(server: SimHTTPServer) -> None:
    """Tasks cancelled mid-stream, their exceptions kept alive: slots return, no deadlock."""
    ep = Endpoint("e", server.url + "/v1", models=["m"])
    async with Scheduler([ep], limit=Fixed(2)) as sched:
        client = lmgate.openai_client(sched, max_retries=0)
        streaming = asyncio.Semaphore(0)

        async def reader() -> None:
            stream = await client.chat.completions.create(
                model="m", messages=MESSAGES, max_tokens=2000, stream=True
            )
            async for _ in stream:  # no `async with stream:`, as the SDK's docs often show
                streaming.release()
                await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(reader()) for _ in range(4)]
        await streaming.acquire()
        await streaming.acquire()
        for task in tasks:
            task.cancel()
        kept = await asyncio.gather(*tasks, return_exceptions=True)  # exceptions stay referenced
        assert all(isinstance(e, asyncio.CancelledError) for e in kept)
        await until(lambda: sched.stats().in_flight == 0, within=2.0)
        # The scheduler is not wedged: 20 more calls all complete.
        done = await asyncio.gather(
            *[
                client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
                for _ in range(20)
            ]
        )
        assert len(done) == 20
        stats = sched.stats()
        assert stats.in_flight == 0
        assert stats.outcomes["completed"] == 20
        assert stats.submitted == sum(stats.outcomes.values())
        await client.close()
    del kept


@pytest.mark.anyio
@asyncio_only
async def test_a_stream_left_unread_is_reclaimed_at_its_deadline(server: SimHTTPServer) -> None:
    """A partly read stream its task keeps but never closes gives its slot back at the deadline."""
    ep = Endpoint("e", server.url + "/v1", models=["m"])
    async with Scheduler([ep], limit=Fixed(1)) as sched:
        client = lmgate.openai_client(sched, max_retries=0)
        with lmgate.request_options(timeout=1.0):
            stream = await client.chat.completions.create(
                model="m", messages=MESSAGES, max_tokens=5000, stream=True
            )
        chunks = stream.__aiter__()
        await chunks.__anext__()
        assert sched.stats().in_flight == 1
        await until(lambda: sched.stats().in_flight == 0, within=3.0)
        assert sched.stats().outcomes["deadline_exceeded"] == 1
        # The slot is usable again at once.
        r = await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2)
        assert r.choices
        await client.close()


@pytest.mark.anyio
@asyncio_only
async def test_a_stream_not_read_for_stream_idle_is_reclaimed(server: SimHTTPServer) -> None:
    """No deadline, task alive, nobody reading: the idle bound takes the slot back."""
    ep = Endpoint("e", server.url + "/v1", models=["m"])
    async with Scheduler([ep], limit=Fixed(1)) as sched:
        client = lmgate.openai_client(sched, max_retries=0, stream_idle=0.3)
        stream = await client.chat.completions.create(
            model="m", messages=MESSAGES, max_tokens=5000, stream=True
        )
        await stream.__aiter__().__anext__()
        await until(lambda: sched.stats().in_flight == 0, within=3.0)
        assert sched.stats().outcomes["cancelled"] == 1
        await client.close()


class _Inner(httpx.AsyncBaseTransport):
    """An in-process server: records what it serves, answers as told."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.seen: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        result: httpx.Response = await self.answer(request)
        return result


def _chat(content: str = "hi") -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


@pytest.fixture
def anyio_backend(virtual_backends: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Both backends in virtual time (the real-server tests above pin asyncio)."""
    return virtual_backends


@pytest.mark.anyio
async def test_a_trickled_error_body_ends_at_the_deadline_and_under_the_cap() -> None:
    """A 500 whose body trickles is cut at the deadline; a huge one is read to 1 MiB only."""
    sent = {"bytes": 0}

    class Body(httpx.AsyncByteStream):
        def __init__(self, slow: bool) -> None:
            self.slow = slow

        async def __aiter__(self) -> AsyncIterator[bytes]:
            for _ in range(300):
                if self.slow:
                    await anyio.sleep(0.5)
                    yield b"x"
                else:
                    sent["bytes"] += 64 << 10
                    yield b"y" * (64 << 10)

    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, stream=Body(b"slow" in request.content))

    inner = _Inner(answer)
    async with Scheduler([Endpoint("e", "http://gpu:8080/v1", models=["m"])]) as sched:
        transport = lmgate.transports.SchedulingTransport(sched, inner)
        async with httpx.AsyncClient(transport=transport) as client:
            start = anyio.current_time()
            with lmgate.request_options(timeout=0.7), pytest.raises(lmgate.DeadlineExceeded):
                await client.post("http://x/v1/chat/completions", json={"model": "m", "slow": 1})
            assert anyio.current_time() - start == pytest.approx(0.7, abs=1e-9)
            r = await client.post("http://x/v1/chat/completions", json={"model": "m"})
            assert r.status_code == 500
            assert len(r.content) == 1 << 20
            assert sent["bytes"] <= (1 << 20) + (64 << 10)
        stats = sched.stats()
    assert stats.outcomes["deadline_exceeded"] == 1
    assert stats.outcomes["failed"] == 1
    assert stats.in_flight == 0


@pytest.mark.anyio
async def test_request_options_priority_overtakes_queued_calls() -> None:
    """``request_options(priority=-5)`` goes ahead of priority-0 calls queued before it."""
    release = anyio.Event()
    order: list[str] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        tag = json.loads(request.content)["messages"][0]["content"]
        order.append(tag)
        if tag == "first":
            await release.wait()
        return httpx.Response(200, json=_chat(tag))

    inner = _Inner(answer)
    async with Scheduler([Endpoint("e", "http://gpu:8080/v1", models=["m"])], limit=Fixed(1)) as s:
        client = lmgate.openai_client(s, inner=inner, max_retries=0)

        async def ask(tag: str, priority: int | None = None) -> None:
            messages = [{"role": "user", "content": tag}]
            with lmgate.request_options(priority=priority):
                await client.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]

        # The SDK's first call looks its platform up in a worker thread; make
        # that call first, so the queue below fills in the order it is sent.
        await ask("warm-up")
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, "first")
            await anyio.wait_all_tasks_blocked()
            for i in range(3):
                tg.start_soon(ask, f"batch-{i}")
                await anyio.wait_all_tasks_blocked()
            tg.start_soon(ask, "urgent", -5)
            await anyio.wait_all_tasks_blocked()
            release.set()
        await client.close()
    assert order == ["warm-up", "first", "urgent", "batch-0", "batch-1", "batch-2"]


@pytest.mark.anyio
async def test_refusals_are_the_sdks_own_errors_counted_once() -> None:
    """Each lmgate refusal raises its openai error; SDK retries never resubmit it."""
    hold = anyio.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        if b"hold" in request.content:
            await hold.wait()
        return httpx.Response(200, json=_chat())

    inner = _Inner(answer)
    ep = Endpoint("e", "http://gpu:8080/v1", models=["m"], context_window=512)
    sched = Scheduler([ep], limit=Fixed(1), queue=QueueOptions(size=0))
    async with sched:
        client = lmgate.openai_client(sched, inner=inner, max_retries=3)
        # The SDK's first call looks its platform up in a worker thread: make
        # it before the holder, so the holder has the slot when the test looks.
        await client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
        async with anyio.create_task_group() as tg:
            hold_messages = [{"role": "user", "content": "hold"}]
            tg.start_soon(
                lambda: client.chat.completions.create(model="m", messages=hold_messages)  # type: ignore[arg-type]
            )
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(openai.RateLimitError) as full:
                await client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
            assert full.value.response.headers["x-lmgate-outcome"] == "rejected"
            assert full.value.response.headers["x-should-retry"] == "false"
            assert sched.stats().submitted == 3  # warm-up, holder, one refusal: no retries
            hold.set()
        with pytest.raises(openai.NotFoundError) as unknown:
            await client.chat.completions.create(model="nope", messages=MESSAGES)  # type: ignore[arg-type]
        assert "served: 'm'" in unknown.value.message
        big = [{"role": "user", "content": "word " * 2000}]
        with pytest.raises(openai.BadRequestError) as overflow:
            await client.chat.completions.create(model="m", messages=big, max_tokens=8)  # type: ignore[arg-type]
        assert overflow.value.code == "context_length_exceeded"
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=-5)  # type: ignore[arg-type]
        assert bad.value.response.headers["x-lmgate-outcome"] == "invalid"
        stats = sched.stats()
        await client.close()
    # Unknown model and malformed body are bad input: nothing counted for them.
    assert stats.submitted == 4
    assert stats.outcomes["rejected"] == 2  # queue full, and the prompt no window takes
    assert stats.outcomes["completed"] == 2
    assert len(inner.seen) == 2


@pytest.mark.anyio
async def test_url_credentials_never_show_and_401_bodies_are_scrubbed() -> None:
    """A password in the URL is basic auth on the wire and appears nowhere else."""

    async def answer(request: httpx.Request) -> httpx.Response:
        echoed = {"error": {"message": f"bad credentials: {request.headers['authorization']}"}}
        return httpx.Response(401, json=echoed)

    inner = _Inner(answer)
    ep = Endpoint("e", "http://alice:PASSWORD@gpu:8080/v1", models=["m"])
    assert "PASSWORD" not in repr(ep)
    assert ep.url == "http://gpu:8080/v1"
    assert ep.credentials is not None
    async with Scheduler([ep]) as sched:
        transport = lmgate.transports.SchedulingTransport(sched, inner)
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.post("http://x/v1/chat/completions", json={"model": "m"})
        stats_json = msgspec.json.encode(sched.stats()).decode()
    assert inner.seen[0].headers["authorization"].startswith("Basic ")
    assert r.status_code == 401
    for shown in (r.text, stats_json, repr(sched), repr(ep)):
        assert "PASSWORD" not in shown
        assert "YWxpY2U6UEFTU1dPUkQ" not in shown  # base64 of alice:PASSWORD
    with pytest.raises(lmgate.InvalidParameter) as info:
        Endpoint("e", "http://alice:PASSWORD@gpu:99999/v1", models=["m"])
    assert "PASSWORD" not in str(info.value)


@pytest.mark.anyio
@asyncio_only
async def test_url_passwords_never_reach_httpx_log_lines(
    server: SimHTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx logs each request's URL; a probe of a URL with userinfo must not show it."""
    import logging

    from lmgate.detect import probe

    caplog.set_level(logging.DEBUG)
    url = server.url.replace("http://", "http://alice:PASSWORD@") + "/v1"
    await probe(url, refresh=True, timeout=2.0)
    ep = Endpoint("e", url, models=["m"])
    async with Scheduler([ep]) as sched:
        client = lmgate.openai_client(sched, max_retries=0)
        await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2)
        await client.close()
    http_records = [r for r in caplog.records if r.name.startswith(("httpx", "httpcore"))]
    assert any("HTTP Request" in r.getMessage() for r in http_records)
    for record in caplog.records:
        assert "PASSWORD" not in record.getMessage(), record.name
