"""pydantic-ai and langchain-openai through lmgate, used the way their docs show.

Both reach the server through the openai SDK on a ``SchedulingTransport``:
calls share the scheduler's slots, a refusal is one submission however the
framework and the SDK retry, streams left early or cancelled give their
slot back, and a deadline mid-stream is reported as lmgate's deadline, not
as a framework's own chunk timeout.  asyncio only: both frameworks are.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI, StreamChunkTimeoutError
from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelHTTPError, ModelTimeoutError
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

import lmgate
from lmgate import Endpoint, Fixed, QueueOptions, Scheduler
from lmgate.sim.http import SimHTTPServer
from lmgate.transports import SchedulingTransport, StreamDeadlineExceeded

from ._live import live_server, until

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]


@pytest.fixture
async def server() -> AsyncIterator[SimHTTPServer]:
    async with live_server() as s:
        yield s


def _agent(sched: Scheduler, **kw: Any) -> Agent[None, str]:
    provider = OpenAIProvider(openai_client=lmgate.openai_client(sched, **kw))
    return Agent(OpenAIChatModel("m", provider=provider))


def _chat(sched: Scheduler, **kw: Any) -> ChatOpenAI:
    transport = SchedulingTransport(sched, refusal_responses=True)
    return ChatOpenAI(
        model="m",
        base_url="http://lmgate/v1",
        api_key="lmgate",  # type: ignore[arg-type]
        http_async_client=httpx.AsyncClient(transport=transport, timeout=None),
        **kw,
    )


def _causes(exc: BaseException | None) -> list[BaseException]:
    chain = []
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _balanced(sched: Scheduler) -> None:
    stats = sched.stats()
    assert stats.in_flight == 0
    assert stats.submitted == sum(stats.outcomes.values())


# pydantic-ai


async def test_pydantic_ai_runs_share_the_slots(server: SimHTTPServer) -> None:
    ep = Endpoint("e", server.url + "/v1", models=["m"])
    async with Scheduler([ep], limit=Fixed(2)) as sched:
        agent = _agent(sched)
        results = await asyncio.gather(*[agent.run("hi") for _ in range(6)])
        assert all(r.output for r in results)
        stats = sched.stats()
        assert stats.outcomes["completed"] == 6
        assert server.statistics().max_in_flight <= 2  # the server saw no more than the limit
        _balanced(sched)


async def test_pydantic_ai_stream_left_early_or_cancelled_gives_the_slot_back(
    server: SimHTTPServer,
) -> None:
    ep = Endpoint("e", server.url + "/v1", models=["m"])
    async with Scheduler([ep], limit=Fixed(1)) as sched:
        agent = _agent(sched)
        async with agent.run_stream("a long story", model_settings={"max_tokens": 2000}) as r:
            async for _ in r.stream_text(delta=True):
                break
        await until(lambda: sched.stats().in_flight == 0, within=2.0)

        reading = asyncio.Event()

        async def reader() -> None:
            async with agent.run_stream("a long story", model_settings={"max_tokens": 2000}) as r:
                async for _ in r.stream_text(delta=True):
                    reading.set()

        task = asyncio.create_task(reader())
        await reading.wait()
        task.cancel()
        kept = await asyncio.gather(task, return_exceptions=True)
        await until(lambda: sched.stats().in_flight == 0, within=2.0)
        assert (await agent.run("again")).output
        _balanced(sched)
        del kept


async def test_pydantic_ai_refusal_is_a_model_http_error_counted_once(
    server: SimHTTPServer,
) -> None:
    ep = Endpoint("e", server.url + "/v1", models=["m"])
    async with Scheduler([ep], limit=Fixed(1), queue=QueueOptions(size=1)) as sched:
        agent = _agent(sched)  # the SDK's default retries stay on
        results = await asyncio.gather(
            *[agent.run("hi", model_settings={"max_tokens": 30}) for _ in range(20)],
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, BaseException)]
        assert refused
        assert all(isinstance(e, ModelHTTPError) and e.status_code == 429 for e in refused)
        stats = sched.stats()
        assert stats.submitted == 20
        assert stats.outcomes["rejected"] == len(refused)
        _balanced(sched)


async def test_pydantic_ai_deadline_mid_stream_is_reported_as_lmgates(
    server: SimHTTPServer,
) -> None:
    """The SDK turns lmgate's mid-stream deadline (an ``httpx.ReadTimeout``) into its
    ``APITimeoutError`` and pydantic-ai into its ``ModelTimeoutError``: each layer's
    own timeout, with lmgate's error, naming the deadline, as the cause."""
    ep = Endpoint("e", server.url + "/v1", models=["m"])
    async with Scheduler([ep], limit=Fixed(1)) as sched:
        agent = _agent(sched)
        settings: Any = {"max_tokens": 2000}
        with pytest.raises(ModelTimeoutError) as caught, lmgate.request_options(timeout=0.3):  # noqa: PT012
            async with agent.run_stream("story", model_settings=settings) as r:
                async for _ in r.stream_text(delta=True):
                    pass
        lmgates = [e for e in _causes(caught.value) if isinstance(e, StreamDeadlineExceeded)]
        assert lmgates
        assert "deadline" in str(lmgates[0])
        assert sched.stats().outcomes["deadline_exceeded"] == 1
        _balanced(sched)


# langchain-openai


async def test_langchain_invoke_and_stream_left_early(server: SimHTTPServer) -> None:
    ep = Endpoint("e", server.url + "/v1", models=["m"])
    async with Scheduler([ep], limit=Fixed(1)) as sched:
        llm = _chat(sched, max_tokens=2000)
        assert (await _chat(sched, max_tokens=5).ainvoke("hi")).content
        async for chunk in llm.astream("a long story"):  # the docs' pattern: no aclosing
            if chunk.content:
                break
        await until(lambda: sched.stats().in_flight == 0, within=2.0)
        _balanced(sched)


async def test_langchain_cancelled_stream_gives_the_slot_back(server: SimHTTPServer) -> None:
    ep = Endpoint("e", server.url + "/v1", models=["m"])
    async with Scheduler([ep], limit=Fixed(1)) as sched:
        llm = _chat(sched, max_tokens=2000)
        reading = asyncio.Event()

        async def reader() -> None:
            async for _ in llm.astream("a long story"):
                reading.set()

        tasks = [asyncio.create_task(reader()) for _ in range(3)]
        await reading.wait()
        for task in tasks:
            task.cancel()
        kept = await asyncio.gather(*tasks, return_exceptions=True)
        await until(lambda: sched.stats().in_flight == 0, within=2.0)
        assert (await _chat(sched, max_tokens=3).ainvoke("again")).content
        _balanced(sched)
        del kept


async def test_langchain_deadline_mid_stream_is_not_a_chunk_timeout(
    server: SimHTTPServer,
) -> None:
    """langchain wraps each chunk read in ``wait_for``; a ``TimeoutError`` from below
    would come out as "no streaming chunk received for 120 s"."""
    ep = Endpoint("e", server.url + "/v1", models=["m"])
    async with Scheduler([ep], limit=Fixed(1)) as sched:
        llm = _chat(sched, max_tokens=2000, stream_chunk_timeout=120.0)
        start = anyio.current_time()
        with pytest.raises(openai.APITimeoutError) as caught, lmgate.request_options(timeout=0.3):
            async for _ in llm.astream("story"):
                pass
        chain = _causes(caught.value)
        assert not any(isinstance(e, StreamChunkTimeoutError) for e in chain)
        assert any(isinstance(e, StreamDeadlineExceeded) for e in chain)
        assert anyio.current_time() - start < 5.0
        assert sched.stats().outcomes["deadline_exceeded"] == 1
        _balanced(sched)


async def test_langchain_refusals_count_once_with_retries_on(server: SimHTTPServer) -> None:
    ep = Endpoint("e", server.url + "/v1", models=["m"])
    async with Scheduler([ep], limit=Fixed(1), queue=QueueOptions(size=1)) as sched:
        llm = _chat(sched, max_tokens=30, max_retries=3)
        results = await asyncio.gather(
            *[llm.ainvoke("hi") for _ in range(20)], return_exceptions=True
        )
        refused = [r for r in results if isinstance(r, BaseException)]
        assert refused
        assert all(isinstance(e, openai.RateLimitError) for e in refused)
        stats = sched.stats()
        assert stats.submitted == 20
        _balanced(sched)
