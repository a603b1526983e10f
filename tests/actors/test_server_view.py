"""Reading the server's own view of its busy work: parsing, and the reader's rhythm."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest

from lmgate.actors._server_view import (
    ServerView,
    ServerViewReader,
    busy_from_metrics,
    busy_from_slots,
)


def test_busy_slots_are_named_by_their_task() -> None:
    body = json.dumps(
        [
            {"id": 0, "is_processing": True, "id_task": 17},
            {"id": 1, "is_processing": False, "id_task": 3},
            {"id": 2, "is_processing": True},  # no task id: counted under its own
        ]
    ).encode()
    assert busy_from_slots(body) == frozenset({17, -3})


@pytest.mark.parametrize(
    "body", [b"", b"not json", b'{"slots": []}', b"[1, 2]", b'[{"is_processing": true}, 5]']
)
def test_an_unreadable_slots_body_says_nothing(body: bytes) -> None:
    assert busy_from_slots(body) is None


def test_running_requests_come_from_the_metrics_gauge() -> None:
    llama = "# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 3\n"
    vllm = 'vllm:num_requests_running{model_name="q"} 5.0\nvllm:num_requests_waiting 2\n'
    assert busy_from_metrics(llama) == 3
    assert busy_from_metrics(vllm) == 5
    assert busy_from_metrics("something_else 1\n") is None
    assert busy_from_metrics("llamacpp:requests_processing not-a-number\n") is None


class _Server:
    """A /slots that shows ``busy`` task ids, changed by the test."""

    def __init__(self, slots_status: int = 200) -> None:
        self.busy: set[int] = set()
        self.hits: list[str] = []
        self.slots_status = slots_status

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.hits.append(request.url.path)
        if request.url.path == "/slots":
            if self.slots_status != 200:
                return httpx.Response(self.slots_status)
            slots = [{"id": i, "is_processing": True, "id_task": i} for i in sorted(self.busy)]
            return httpx.Response(200, json=slots)
        if request.url.path == "/metrics":
            return httpx.Response(200, text=f"llamacpp:requests_processing {len(self.busy)}\n")
        return httpx.Response(404)


async def _run(server: _Server, steps: Any) -> list[ServerView]:
    send, receive = anyio.create_memory_object_stream[Any](16)
    reader = ServerViewReader(
        lambda: "http://llama.test:8080/v1",
        send,
        interval=0.25,
        window=10.0,
        transport=httpx.MockTransport(server),
    )
    views: list[ServerView] = []
    async with receive, anyio.create_task_group() as tg:
        tg.start_soon(reader.run)
        await steps(reader)
        tg.cancel_scope.cancel()
        while True:
            try:
                views.append(receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
    return views


@pytest.fixture
def anyio_backend(virtual_backends: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return virtual_backends


@pytest.mark.anyio
async def test_nothing_is_read_until_a_call_is_given_up() -> None:
    server = _Server()

    async def steps(reader: ServerViewReader) -> None:
        await anyio.sleep(5)
        assert server.hits == []
        server.busy = {4, 5}
        reader.cancelled(anyio.current_time())
        await anyio.sleep(1.0)
        server.busy = {5}
        await anyio.sleep(1.0)
        server.busy = set()
        await anyio.sleep(5)

    views = await _run(server, steps)
    seen = [v.tasks for v in views]
    assert seen[0] == frozenset({4, 5})
    assert frozenset({5}) in seen
    assert seen[-1] == frozenset()  # and then it stops reading
    assert len(server.hits) == len(views) <= 10


@pytest.mark.anyio
async def test_without_slots_it_counts_from_the_metrics() -> None:
    server = _Server(slots_status=501)

    async def steps(reader: ServerViewReader) -> None:
        server.busy = {1, 2}
        reader.cancelled(anyio.current_time())
        await anyio.sleep(0.6)
        server.busy = set()
        await anyio.sleep(2)

    views = await _run(server, steps)
    assert server.hits[0] == "/slots"
    assert set(server.hits[1:]) == {"/metrics"}
    assert views[0].busy == 2
    assert views[-1].busy == 0
    assert all(v.tasks is None for v in views)
