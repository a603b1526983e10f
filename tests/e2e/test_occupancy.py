"""A real llama-server never runs more than lmgate's limit, however often callers give up.

llama.cpp runs a non-streaming request to its end whether or not anyone
still waits for it.  Clients that give up after 0.15 s, again and again,
must not leave the server more busy slots than the limit: the server's own
``/slots`` is the judge.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import openai
import pytest

import lmgate
from lmgate.policies import Fixed
from lmgate.transports import SchedulingTransport

from .conftest import ALIAS, LlamaServer, _server

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

LIMIT = 2


@pytest.fixture(scope="module")
def long_server(
    llama_binary: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    """Four slots with room for answers that take seconds on this machine."""
    yield from _server(
        llama_binary, tiny_model, tmp_path_factory.mktemp("long"), slots=4, n_ctx=4096
    )


async def _busy_slots(url: str, peak: list[int], stop: anyio.Event) -> None:
    async with httpx.AsyncClient(timeout=5.0) as client:
        while not stop.is_set():
            slots = (await client.get(url + "/slots")).json()
            peak.append(sum(1 for s in slots if s["is_processing"]))
            await anyio.sleep(0.02)


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_given_up_requests_keep_their_slot_until_the_server_stops(
    long_server: LlamaServer,
) -> None:
    ep = lmgate.Endpoint("llama", url=long_server.url + "/v1", limit=Fixed(LIMIT), probe=True)
    busy: list[int] = []
    gave_up = 0
    async with lmgate.Scheduler([ep]) as sched:
        client = openai.AsyncOpenAI(
            base_url="http://lmgate.invalid/v1",
            api_key="unused",
            max_retries=0,
            http_client=httpx.AsyncClient(transport=SchedulingTransport(sched)),
        )

        async def impatient() -> None:
            nonlocal gave_up
            deadline = anyio.current_time() + 8.0
            while anyio.current_time() < deadline:
                try:
                    await client.chat.completions.create(
                        model=ALIAS,
                        messages=[{"role": "user", "content": "tell me everything"}],
                        max_tokens=1900,
                        extra_body={"ignore_eos": True},
                        timeout=0.15,
                    )
                except (openai.APITimeoutError, lmgate.DeadlineExceeded):
                    gave_up += 1

        stop = anyio.Event()
        async with client, anyio.create_task_group() as outer:
            outer.start_soon(_busy_slots, long_server.url, busy, stop)
            async with anyio.create_task_group() as tg:
                for _ in range(6):
                    tg.start_soon(impatient)
            stop.set()
        stats = sched.stats()
    assert gave_up >= 6
    assert busy, "the server's /slots was never read"
    # The server itself never ran more than the limit, and it did run that many.
    assert max(busy) <= LIMIT, busy
    assert max(busy) == LIMIT
    assert stats.in_flight == 0
