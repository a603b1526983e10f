"""Admission by tokens: ``Endpoint(kv_tokens=)`` and ``run(prompt_tokens=, max_tokens=)``."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from lmgate import ContextOverflow, InvalidParameter, Lease, Scheduler
from lmgate.detect import ServerInfo
from lmgate.detect._learn import learn
from lmgate.detect._locality import classify_url
from lmgate.policies import Fixed

from ._support import check_identity, endpoint

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(virtual_backends: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return virtual_backends


def _sleeper(seconds: float, log: list[tuple[str, float]], name: str) -> Any:
    async def call(lease: Lease) -> str:
        log.append((name, anyio.current_time()))
        await anyio.sleep(seconds)
        return name

    return call


async def test_requests_wait_for_tokens_even_below_the_request_limit() -> None:
    ep = endpoint("a", "m", kv_tokens=1000, limit=Fixed(8))
    log: list[tuple[str, float]] = []
    async with Scheduler([ep]) as sched, anyio.create_task_group() as tg:
        t0 = anyio.current_time()
        for i in range(3):
            tg.start_soon(
                lambda i=i: sched.run(
                    _sleeper(1.0, log, f"r{i}"), model="m", prompt_tokens=400, max_tokens=100
                )
            )
        await anyio.sleep(0.5)
        stats = sched.stats()
        assert stats.in_flight == 2
        assert stats.queued == 1
        tokens = stats.endpoints[0].tokens
        assert tokens is not None
        assert (tokens.budget, tokens.source, tokens.in_flight) == (1000, "user", 1000)
    starts = sorted(t - t0 for _, t in log)
    assert starts == pytest.approx([0.0, 0.0, 1.0])
    final = sched.stats()
    assert final.endpoints[0].tokens is not None
    assert final.endpoints[0].tokens.in_flight == 0
    check_identity(final)


async def test_a_small_request_goes_past_a_head_that_does_not_fit_yet() -> None:
    ep = endpoint("a", "m", kv_tokens=1000, limit=Fixed(8))
    log: list[tuple[str, float]] = []
    async with Scheduler([ep]) as sched, anyio.create_task_group() as tg:
        tg.start_soon(lambda: sched.run(_sleeper(2.0, log, "big0"), model="m", prompt_tokens=700))
        await anyio.sleep(0.1)
        tg.start_soon(lambda: sched.run(_sleeper(1.0, log, "big1"), model="m", prompt_tokens=700))
        await anyio.sleep(0.1)
        tg.start_soon(lambda: sched.run(_sleeper(1.0, log, "small"), model="m", prompt_tokens=200))
    order = [name for name, _ in sorted(log, key=lambda x: x[1])]
    assert order == ["big0", "small", "big1"]


async def test_a_request_larger_than_every_budget_is_refused_before_anything_is_sent() -> None:
    eps = [endpoint("a", "m", kv_tokens=1000), endpoint("b", "m", kv_tokens=2000)]
    called = []

    async def call(lease: Lease) -> None:
        called.append(lease)

    async with Scheduler(eps) as sched:
        with pytest.raises(ContextOverflow) as info:
            await sched.run(call, model="m", prompt_tokens=1500, max_tokens=600)
        assert info.value.tokens == 2100
        assert info.value.window == 2000
        assert info.value.before_send
        assert "2100 tokens of KV cache" in str(info.value)
        await sched.run(call, model="m", prompt_tokens=1500, max_tokens=500)  # fits b
        stats = sched.stats()
    assert len(called) == 1
    assert called[0].endpoint.name == "b"
    assert stats.outcomes["rejected"] == 1
    assert stats.outcomes["completed"] == 1
    check_identity(stats)


async def test_an_endpoint_without_a_budget_takes_what_no_budget_can() -> None:
    eps = [endpoint("a", "m", kv_tokens=1000), endpoint("b", "m")]

    async def call(lease: Lease) -> str:
        return lease.endpoint.name

    async with Scheduler(eps) as sched:
        assert await sched.run(call, model="m", prompt_tokens=5000) == "b"


@pytest.mark.parametrize(
    ("field", "value"),
    [("prompt_tokens", -1), ("prompt_tokens", 1.5), ("max_tokens", True), ("max_tokens", 10**9)],
)
async def test_bad_sizes_are_refused_and_count_nothing(field: str, value: object) -> None:
    async def call(lease: Lease) -> None:
        pass

    async with Scheduler([endpoint("a", "m", kv_tokens=1000)]) as sched:
        with pytest.raises(InvalidParameter) as info:
            await sched.run(call, model="m", **{field: value})
        assert info.value.field == field
        with pytest.raises(InvalidParameter):
            async with sched.lease(model="m", **{field: value}):
                pass
        assert sched.stats().submitted == 0


async def test_the_charge_learns_real_output_lengths() -> None:
    ep = endpoint("a", "m", kv_tokens=100_000, limit=Fixed(64))

    async def call(lease: Lease) -> None:
        lease.report(output_tokens=50)

    async with Scheduler([ep]) as sched:
        for _ in range(20):
            await sched.run(call, model="m", prompt_tokens=100, max_tokens=4000)
        async with sched.lease(model="m", prompt_tokens=100, max_tokens=4000):
            tokens = sched.stats().endpoints[0].tokens
            assert tokens is not None
            assert tokens.in_flight == 150
            assert tokens.expected_output == 50


async def test_messages_are_counted_for_the_budget() -> None:
    ep = endpoint("a", "m", kv_tokens=100_000, context_window=50_000)
    messages = [{"role": "user", "content": "word " * 400}]
    async with (
        Scheduler([ep]) as sched,
        sched.lease(model="m", messages=messages, max_tokens=10) as lease,
    ):
        tokens = sched.stats().endpoints[0].tokens
        assert tokens is not None
        assert 300 < tokens.in_flight < 700
        assert lease._prompt_tokens == tokens.in_flight - 10


def test_a_probe_of_llama_cpp_gives_the_budget_as_slots_times_their_context() -> None:
    base = endpoint("a")
    info = ServerInfo(
        url=base.url,
        kind="llamacpp",
        local=True,
        locality=classify_url(base.url).locality,
        reason="test",
        reachable=True,
        models=("m",),
        slots=4,
        kv_tokens=4 * 2048,
        kv_source="props",
    )
    learned = learn(base, info)
    assert (learned.kv_tokens, learned.kv_source) == (8192, "props")
    mine = learn(endpoint("b", kv_tokens=1000), info)
    assert (mine.kv_tokens, mine.kv_source) == (1000, "user")  # the user's figure wins


@pytest.mark.parametrize("value", [0, -5, 1.5, "10"])
def test_a_bad_budget_is_refused_where_it_is_written(value: object) -> None:
    with pytest.raises(InvalidParameter) as info:
        endpoint("a", "m", kv_tokens=value)
    assert info.value.field == "kv_tokens"
    with pytest.raises(InvalidParameter):
        endpoint("a", "m", kv_tokens=100, kv_source="guess")
