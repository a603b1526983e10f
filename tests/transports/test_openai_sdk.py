"""The official openai SDK works unchanged through SchedulingTransport."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx
import openai
import pytest

from lmgate._endpoint import Endpoint
from lmgate._errors import ContextOverflow, Overloaded
from lmgate.sim.http._app import SimHTTPConfig, SimHTTPServer, sim_transport
from lmgate.transports import SchedulingTransport

from ._standin import StandInScheduler

MESSAGES = [{"role": "user", "content": "Say something."}]

#: The SDK's stream decoder stops at ``[DONE]`` without exhausting its own
#: async generators; trio reports those as unraisable ResourceWarnings (an
#: SDK trait, not a leak here), so SDK streaming runs on asyncio only.
sdk_streaming = pytest.mark.parametrize("anyio_backend", ["asyncio"])


def sdk(transport: SchedulingTransport) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://lmgate.invalid/v1",
        api_key="unused",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=transport),
    )


@pytest.fixture
async def server() -> AsyncIterator[SimHTTPServer]:
    async with SimHTTPServer(
        SimHTTPConfig(kind="llamacpp", models=("m",), slots=4, n_ctx=512)
    ) as s:
        yield s


@pytest.mark.anyio
@sdk_streaming
async def test_sdk_over_mock_transport() -> None:
    """Non-streaming and streaming completions through a mock server."""
    sched = StandInScheduler([Endpoint("e", url="http://gpu:8080", models=["m"])])
    transport = SchedulingTransport(sched, sim_transport(SimHTTPConfig(models=("m",))))
    async with sdk(transport) as client:
        done = await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=5)
        stream = await client.chat.completions.create(
            model="m", messages=MESSAGES, max_tokens=5, stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert done.usage is not None
    assert done.usage.completion_tokens == 5
    assert len(done.choices[0].message.content or "") > 0
    assert "".join(parts).split() == (done.choices[0].message.content or "").split()
    assert [lease.releases for lease in sched.leases] == [[(None, None)], [(None, None)]]
    assert sched.leases[0].reported["prompt_tokens"] > 0


@pytest.mark.anyio
@sdk_streaming
async def test_sdk_over_http_sim_concurrently(server: SimHTTPServer) -> None:
    """Many concurrent SDK calls, streaming and not, over real sockets."""
    sched = StandInScheduler([Endpoint("e", url=server.url + "/v1", models=["m"])])
    transport = SchedulingTransport(sched)
    results: list[str] = []
    async with sdk(transport) as client:

        async def one(i: int) -> None:
            if i % 2:
                r = await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=4)
                results.append(r.choices[0].message.content or "")
            else:
                s = await client.chat.completions.create(
                    model="m",
                    messages=MESSAGES,
                    max_tokens=4,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                results.append(
                    "".join([c.choices[0].delta.content or "" async for c in s if c.choices])
                )

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
    assert len(results) == 40
    assert all(r.strip() for r in results)
    assert sched.in_flight == 0
    assert all(lease.releases == [(None, None)] for lease in sched.leases)
    assert all(lease.reported.get("output_tokens") == 4 for lease in sched.leases)
    assert server.statistics().max_in_flight <= 4
    assert transport.statistics().open_streams == 0


@pytest.mark.anyio
async def test_sdk_sees_context_error_and_lease_learns_it(server: SimHTTPServer) -> None:
    """The SDK raises its BadRequestError; the lease records ContextOverflow."""
    sched = StandInScheduler([Endpoint("e", url=server.url, models=["m"])])
    async with sdk(SchedulingTransport(sched)) as client:
        with pytest.raises(openai.BadRequestError) as err:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x" * 4000}]
            )
    assert err.value.status_code == 400
    ((error, _),) = sched.leases[0].releases
    assert isinstance(error, ContextOverflow)
    assert error.window == 512
    assert error.tokens is not None
    assert error.tokens > 512


@pytest.mark.anyio
@sdk_streaming
async def test_sdk_rate_limit_is_overload() -> None:
    """A cloud 429 reaches the SDK as RateLimitError and the lease as Overloaded."""
    cfg = SimHTTPConfig(kind="openai", models=("m",), rate_limit=1, retry_after=7, token_time=0.05)
    sched = StandInScheduler([Endpoint("e", url="https://api.example.com/v1", models=["m"])])
    async with sdk(SchedulingTransport(sched, sim_transport(cfg))) as client:
        first = await client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, max_tokens=50
        )
        chunks = first.__aiter__()
        await chunks.__anext__()  # the first call is generating now
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="m", messages=MESSAGES)
        async for _ in chunks:
            pass
    errors = [lease.releases[0][0] for lease in sched.leases]
    assert errors[0] is None
    assert isinstance(errors[1], Overloaded)
    assert errors[1].retry_after == 7.0


@pytest.mark.anyio
async def test_sdk_non_streaming_on_both_backends(server: SimHTTPServer) -> None:
    """Plain completions work on asyncio and trio alike."""
    sched = StandInScheduler([Endpoint("e", url=server.url, models=["m"])])
    async with sdk(SchedulingTransport(sched)) as client:
        r = await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
    assert r.usage is not None
    assert r.usage.completion_tokens == 3
    assert sched.leases[0].releases == [(None, None)]


@pytest.mark.anyio
@sdk_streaming
async def test_sdk_through_the_real_scheduler(server: SimHTTPServer) -> None:
    """With lmgate.Scheduler, the server never sees more than the limit at once."""
    import lmgate
    from lmgate.policies import Fixed

    ep = lmgate.Endpoint("sim", url=server.url + "/v1", models=["m"], limit=Fixed(2))
    async with lmgate.Scheduler([ep]) as sched:
        transport = SchedulingTransport(sched)
        async with sdk(transport) as client, anyio.create_task_group() as tg:

            async def one(i: int) -> None:
                if i % 2:
                    await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
                else:
                    s = await client.chat.completions.create(
                        model="m", messages=MESSAGES, max_tokens=3, stream=True
                    )
                    async for _ in s:
                        pass

            for i in range(30):
                tg.start_soon(one, i)
        stats = sched.stats()
    assert stats.outcomes["completed"] == 30
    assert stats.in_flight == 0
    assert server.statistics().max_in_flight <= 2
    assert stats.endpoints[0].peak_in_flight <= 2
