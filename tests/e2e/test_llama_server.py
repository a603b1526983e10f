"""End to end against a real llama.cpp server (marker ``e2e``)."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import httpx
import openai
import pytest

import lmgate
from lmgate.detect import Locality, count_tokens, probe
from lmgate.detect._probe import _CACHE
from lmgate.policies import Fixed
from lmgate.transports import ClientPool, SchedulingTransport, openai_chat

from .conftest import ALIAS, N_CTX, SLOTS, LlamaServer

pytestmark = pytest.mark.e2e

#: The openai SDK leaves its stream decoder's generators unexhausted, which
#: trio reports; its streaming runs on asyncio here (see tests/transports).
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])


@pytest.mark.anyio
async def test_probe_identifies_llama_server(llama_server: LlamaServer) -> None:
    """probe() says llama.cpp, local, per-slot n_ctx, the slot count."""
    _CACHE.clear()
    for url in (llama_server.url, llama_server.url + "/v1"):
        info = await probe(url, refresh=True)
        assert info.kind == "llamacpp"
        assert info.local is True
        assert info.locality is Locality.LOOPBACK
        assert info.slots == SLOTS
        assert info.context_windows[ALIAS] == N_CTX
        assert info.window_sources[ALIAS] == "server"
        assert info.health_route == "/health"
        assert info.tokenize_route == "/tokenize"
        assert any(e.signal.startswith("Server: llama.cpp") for e in info.evidence)


@pytest.mark.anyio
async def test_server_tokenizer_counts(llama_server: LlamaServer) -> None:
    """Token counts come from the server's own tokenizer."""
    count = await count_tokens(llama_server.url, "hello world!", kind="llamacpp")
    assert count.exact
    assert count.tokens > 0


async def _metrics_sampler(url: str, peaks: dict[str, float], stop: anyio.Event) -> None:
    async with httpx.AsyncClient(timeout=5.0) as client:
        while not stop.is_set():
            text = (await client.get(url + "/metrics")).text
            for line in text.splitlines():
                if line.startswith(("llamacpp:requests_processing", "llamacpp:requests_deferred")):
                    name, value = line.rsplit(" ", 1)
                    peaks[name] = max(peaks.get(name, 0.0), float(value))
            await anyio.sleep(0.005)


@pytest.mark.anyio
@asyncio_only
async def test_openai_sdk_hundreds_of_requests_within_slots(
    llama_server: LlamaServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hundreds of concurrent SDK calls, streaming and not; in-flight <= slots."""
    n = 300
    ep = lmgate.Endpoint(
        "llama", url=llama_server.url + "/v1", models=[ALIAS], kind="llamacpp", limit=Fixed(SLOTS)
    )
    peaks: dict[str, float] = {}
    stop = anyio.Event()
    failures: list[BaseException] = []
    async with lmgate.Scheduler([ep], queue=lmgate.QueueOptions(size=n)) as sched:
        transport = SchedulingTransport(sched)
        client = openai.AsyncOpenAI(
            base_url="http://lmgate.invalid/v1",
            api_key="unused",
            max_retries=0,
            http_client=httpx.AsyncClient(transport=transport, timeout=120),
        )

        async def one(i: int) -> None:
            messages = [{"role": "user", "content": f"hello world {i}"}]
            try:
                if i % 2:
                    r = await client.chat.completions.create(
                        model=ALIAS,
                        messages=messages,
                        max_tokens=8,  # type: ignore[arg-type]
                    )
                    assert r.usage is not None
                else:
                    s = await client.chat.completions.create(
                        model=ALIAS,
                        messages=messages,
                        max_tokens=8,
                        stream=True,  # type: ignore[arg-type]
                    )
                    async for _ in s:
                        pass
            except BaseException as exc:
                failures.append(exc)
                raise

        started = time.perf_counter()
        async with client, anyio.create_task_group() as tg:
            tg.start_soon(_metrics_sampler, llama_server.url, peaks, stop)
            async with anyio.create_task_group() as calls:
                for i in range(n):
                    calls.start_soon(one, i)
            stop.set()
        elapsed = time.perf_counter() - started
        stats = sched.stats()
    assert failures == []
    (eps,) = stats.endpoints
    assert stats.outcomes["completed"] == n
    assert stats.in_flight == 0
    assert eps.peak_in_flight <= SLOTS
    assert peaks["llamacpp:requests_processing"] <= SLOTS
    assert peaks.get("llamacpp:requests_deferred", 0.0) == 0.0
    assert transport.statistics().open_streams == 0
    figures = {
        "requests": n,
        "seconds": round(elapsed, 3),
        "requests_per_second": round(n / elapsed, 1),
        "peak_in_flight_scheduler": eps.peak_in_flight,
        "peak_processing_server": peaks["llamacpp:requests_processing"],
        "peak_deferred_server": peaks.get("llamacpp:requests_deferred", 0.0),
    }
    with capsys.disabled():
        print("\ne2e figures:", json.dumps(figures))


@pytest.mark.anyio
@asyncio_only
async def test_probed_endpoint_learns_the_server_and_keeps_to_its_slots(
    llama_server: LlamaServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Endpoint(probe=True) learns kind, model, window and slots; SDK traffic keeps to them."""
    n = 200
    ep = lmgate.Endpoint("llama", url=llama_server.url + "/v1", probe=True)
    peaks: dict[str, float] = {}
    stop = anyio.Event()
    started = time.perf_counter()
    async with lmgate.Scheduler([ep]) as sched:  # the default adaptive limit
        learned_in = time.perf_counter() - started
        (learned,) = sched.endpoints
        assert (learned.kind, learned.models, learned.local) == ("llamacpp", (ALIAS,), True)
        assert learned.window_for(ALIAS) == N_CTX
        (before,) = sched.stats().endpoints
        assert before.limit == SLOTS
        assert before.discovery is not None
        assert (before.discovery.state, before.discovery.slots) == ("learned", SLOTS)
        assert learned.health is not None
        report = await learned.health(learned)
        assert getattr(report, "ok", False) is True
        client = openai.AsyncOpenAI(
            base_url="http://lmgate.invalid/v1",
            api_key="unused",
            max_retries=0,
            http_client=httpx.AsyncClient(transport=SchedulingTransport(sched), timeout=120),
        )

        async def one(i: int) -> None:
            messages = [{"role": "user", "content": f"hello world {i}"}]
            if i % 2:
                await client.chat.completions.create(
                    model=ALIAS,
                    messages=messages,
                    max_tokens=8,  # type: ignore[arg-type]
                )
                return
            s = await client.chat.completions.create(
                model=ALIAS,
                messages=messages,
                max_tokens=8,
                stream=True,  # type: ignore[arg-type]
            )
            async for _ in s:
                pass

        t0 = time.perf_counter()
        async with client, anyio.create_task_group() as tg:
            tg.start_soon(_metrics_sampler, llama_server.url, peaks, stop)
            async with anyio.create_task_group() as calls:
                for i in range(n):
                    calls.start_soon(one, i)
            stop.set()
        elapsed = time.perf_counter() - t0
        stats = sched.stats()
        pool = sched.clients
    assert pool.statistics().closed
    (eps,) = stats.endpoints
    assert stats.outcomes["completed"] == n
    assert eps.peak_in_flight <= SLOTS
    assert peaks["llamacpp:requests_processing"] <= SLOTS
    assert peaks.get("llamacpp:requests_deferred", 0.0) == 0.0
    # The server's own metrics reached the limit policy: read, parsed, counted.
    assert eps.engine is not None
    assert eps.engine.state != "off", eps.engine
    assert eps.engine.reads >= 1
    assert eps.engine.failures == 0
    last = eps.engine.last
    assert last is not None
    assert last.running is not None
    assert last.waiting is not None
    assert eps.policy.detail["readings"] >= 1
    figures = {
        "probed_requests": n,
        "learned_in_seconds": round(learned_in, 3),
        "seconds": round(elapsed, 3),
        "requests_per_second": round(n / elapsed, 1),
        "limit_from_slots": before.limit,
        "peak_in_flight_scheduler": eps.peak_in_flight,
        "peak_processing_server": peaks["llamacpp:requests_processing"],
    }
    with capsys.disabled():
        print("\ne2e probe figures:", json.dumps(figures))


@pytest.mark.anyio
async def test_oversize_prompt_raises_context_overflow(llama_server: LlamaServer) -> None:
    """An oversize prompt raises ContextOverflow with the server's numbers."""
    ep = lmgate.Endpoint("llama", url=llama_server.url, models=[ALIAS], limit=Fixed(SLOTS))
    async with lmgate.Scheduler([ep]) as sched, ClientPool([ep]) as pool:

        async def call(lease: lmgate.Lease) -> Any:
            messages = [{"role": "user", "content": "hello world " * 200}]
            return await openai_chat(pool.client(lease.endpoint), lease, messages, max_tokens=4)

        with pytest.raises(lmgate.ContextOverflow) as err:
            await sched.run(call, model=ALIAS, timeout=30)
        stats = sched.stats()
    assert err.value.window == N_CTX
    assert err.value.tokens is not None
    assert err.value.tokens > N_CTX
    assert stats.in_flight == 0


async def _wait_state(sched: lmgate.Scheduler, want_healthy: bool, limit: float) -> str:
    with anyio.move_on_after(limit):
        while True:
            state = sched.stats().endpoints[0].state
            if (state == "healthy") is want_healthy:
                return state
            await anyio.sleep(0.1)
    return sched.stats().endpoints[0].state


@pytest.mark.anyio
@asyncio_only
@pytest.mark.parametrize("checked_by", ["own_check", "probe"])
async def test_kill_mid_stream_releases_leases_and_trips_breaker(
    crashable_server: LlamaServer, checked_by: str
) -> None:
    """Killing the server mid-stream frees every lease; restart heals (own check or probe)."""
    url = crashable_server.url

    async def health(_: lmgate.Endpoint) -> bool:
        try:
            async with httpx.AsyncClient(timeout=1.0) as c:
                return (await c.get(url + "/health")).status_code == 200
        except httpx.HTTPError:
            return False

    if checked_by == "probe":
        ep = lmgate.Endpoint("llama", url=url + "/v1", limit=Fixed(2), probe=True)
    else:
        ep = lmgate.Endpoint(
            "llama", url=url + "/v1", models=[ALIAS], kind="llamacpp", limit=Fixed(2), health=health
        )
    errors: list[BaseException] = []
    async with lmgate.Scheduler([ep]) as sched:
        client = openai.AsyncOpenAI(
            base_url="http://lmgate.invalid/v1",
            api_key="unused",
            max_retries=0,
            http_client=httpx.AsyncClient(transport=SchedulingTransport(sched), timeout=60),
        )
        first_chunk = anyio.Event()
        started = 0

        async def stream_long() -> None:
            nonlocal started
            try:
                s = await client.chat.completions.create(
                    model=ALIAS,
                    messages=[{"role": "user", "content": "hello"}],  # type: ignore[list-item]
                    max_tokens=1900,
                    stream=True,
                    extra_body={"ignore_eos": True},
                )
                async for _ in s:
                    started += 1
                    if started >= 2:
                        first_chunk.set()
                    await anyio.sleep(0.01)  # a slow reader: the answer is still coming
            except (openai.APIError, httpx.HTTPError) as exc:
                errors.append(exc)

        async with client, anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(stream_long)
            with anyio.fail_after(30):
                await first_chunk.wait()
            crashable_server.stop()
        assert len(errors) == 2
        assert sched.stats().in_flight == 0
        down = await _wait_state(sched, False, 30.0)
        assert down != "healthy"
        crashable_server.start()
        up = await _wait_state(sched, True, 60.0)
        assert up == "healthy"
        stats = sched.stats()
    assert stats.in_flight == 0
    assert stats.submitted == sum(stats.outcomes.values())
    if checked_by == "probe":
        (eps,) = stats.endpoints
        assert eps.discovery is not None
        assert eps.discovery.failures >= 1  # the cache was dropped when it failed
        assert eps.discovery.state == "learned"
