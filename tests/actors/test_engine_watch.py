"""EngineWatch: when it reads the server's metrics, how often, and when it stops."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest

from lmgate.actors._engine_watch import EngineWatch
from lmgate.policies import EngineReading


@pytest.fixture
def anyio_backend(virtual_backends: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return virtual_backends


class _Server:
    def __init__(self, status: int = 200, text: str = "vllm:num_requests_waiting 0\n") -> None:
        self.status = status
        self.text = text
        self.hits: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.hits.append(anyio.current_time())
        assert request.url.path == "/metrics"
        assert request.headers["authorization"] == "Bearer k"
        return httpx.Response(self.status, text=self.text)


async def _watch(
    steps: Callable[[EngineWatch], Awaitable[None]],
    *,
    server: _Server | None = None,
    source: Callable[[], Awaitable[str]] | None = None,
) -> tuple[EngineWatch, list[EngineReading]]:
    send, receive = anyio.create_memory_object_stream[Any](64)
    watch = EngineWatch(
        lambda: "http://vllm.test:8000/v1",
        send,
        source=source,
        api_key="k",
        idle=5.0,
        transport=None if server is None else httpx.MockTransport(server),
    )
    got: list[EngineReading] = []
    async with receive, anyio.create_task_group() as tg:
        tg.start_soon(watch.run)
        await steps(watch)
        tg.cancel_scope.cancel()
        while True:
            try:
                got.append(receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
    return watch, got


@pytest.mark.anyio
async def test_reads_once_a_second_while_busy_and_rests_when_idle() -> None:
    server = _Server()

    async def steps(watch: EngineWatch) -> None:
        await anyio.sleep(20)  # read from the start for ``idle`` seconds, then rest
        assert 5 <= len(server.hits) <= 6
        assert watch.statistics().state == "idle"
        watch.busy(anyio.current_time())
        await anyio.sleep(2.5)
        assert watch.statistics().state == "reading"

    watch, got = await _watch(steps, server=server)
    gaps = [b - a for a, b in zip(server.hits, server.hits[1:], strict=False)]
    assert min(gaps) >= 1.0 - 1e-9
    assert len(got) == len(server.hits) == watch.reads
    assert all(r.waiting == 0 for r in got)
    assert watch.statistics().last == got[-1]


@pytest.mark.anyio
@pytest.mark.parametrize("status", [404, 501])
async def test_a_server_without_metrics_is_asked_once(status: int) -> None:
    server = _Server(status=status)

    async def steps(watch: EngineWatch) -> None:
        await anyio.sleep(3)
        watch.busy(anyio.current_time())
        await anyio.sleep(3)

    watch, got = await _watch(steps, server=server)
    assert len(server.hits) == 1
    assert got == []
    assert watch.statistics().state == "off"


@pytest.mark.anyio
async def test_metrics_that_name_none_of_the_figures_stop_the_reads() -> None:
    server = _Server(text="process_cpu_seconds_total 3\n")

    async def steps(watch: EngineWatch) -> None:
        await anyio.sleep(4)

    _, got = await _watch(steps, server=server)
    assert len(server.hits) == 1
    assert got == []


@pytest.mark.anyio
async def test_a_server_in_trouble_is_asked_again_and_counted() -> None:
    server = _Server(status=503)

    async def steps(watch: EngineWatch) -> None:
        await anyio.sleep(3.5)

    watch, got = await _watch(steps, server=server)
    assert got == []
    assert watch.failures == len(server.hits) == 4


@pytest.mark.anyio
async def test_a_body_past_the_cap_is_not_read() -> None:
    server = _Server(text="vllm:num_requests_waiting 0\n" + "#" * (2 << 20))

    async def steps(watch: EngineWatch) -> None:
        await anyio.sleep(1.5)

    watch, got = await _watch(steps, server=server)
    assert got == []
    assert watch.failures >= 1


@pytest.mark.anyio
async def test_a_metrics_source_replaces_http_and_its_failures_are_counted() -> None:
    calls: list[float] = []

    async def source() -> str:
        calls.append(anyio.current_time())
        if len(calls) == 2:
            raise OSError("down")
        if len(calls) == 3:
            await anyio.sleep_forever()  # hangs: the read's timeout ends it
        return "llamacpp:requests_processing 2\nllamacpp:requests_deferred 1\n"

    async def steps(watch: EngineWatch) -> None:
        await anyio.sleep(6)

    watch, got = await _watch(steps, source=source)
    assert watch.failures == 2
    assert got
    assert all((r.running, r.waiting) == (2, 1) for r in got)
    assert "EngineWatch" in repr(watch)
