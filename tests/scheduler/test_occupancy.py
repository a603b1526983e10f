"""A given-up call keeps its place while its server may still run it."""

from __future__ import annotations

import math
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from lmgate import DeadlineExceeded, Endpoint, Lease, Scheduler
from lmgate.policies import Fixed
from lmgate.scheduler._occupancy import LINGER_MAX, STREAM_NOTICE

from ._support import check_identity, endpoint

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(virtual_backends: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return virtual_backends


def _work(seconds: float) -> Any:
    async def call(lease: Lease) -> None:
        await anyio.sleep(seconds)

    return call


async def _give_up_then_wait(
    sched: Scheduler, after: float, *, streaming: bool | None = None, sent: bool = True
) -> float:
    """Cancel a call ``after`` seconds in; return how long the next one waits for its slot."""

    async def call(lease: Lease) -> None:
        lease._streaming = streaming
        lease._sent = sent
        await anyio.sleep(math.inf)

    with anyio.move_on_after(after):
        await sched.run(call, model="m")
    gave_up = anyio.current_time()
    granted = math.nan

    async def next_call(lease: Lease) -> None:
        nonlocal granted
        granted = anyio.current_time()

    await sched.run(next_call, model="m")
    return granted - gave_up


async def test_llama_cpp_keeps_a_cancelled_call_until_it_would_have_finished() -> None:
    ep = endpoint("a", "m", kind="llamacpp", limit=Fixed(1))
    async with Scheduler([ep]) as sched:
        for _ in range(10):
            await sched.run(_work(2.0), model="m")
        waited = await _give_up_then_wait(sched, 0.5)
        stats = sched.stats()
    assert waited == pytest.approx(1.5, abs=1e-6)  # its 2 s, counted from the grant
    assert stats.endpoints[0].lingering == 0
    assert stats.outcomes["cancelled"] == 1
    check_identity(stats)


async def test_without_a_service_time_a_cancelled_call_holds_for_the_longest_bound() -> None:
    ep = endpoint("a", "m", kind="llamacpp", limit=Fixed(1))
    async with Scheduler([ep]) as sched:
        assert await _give_up_then_wait(sched, 0.15) == pytest.approx(LINGER_MAX, abs=1e-6)


@pytest.mark.parametrize(
    ("kind", "streaming", "held"),
    [
        ("llamacpp", True, STREAM_NOTICE),  # the server notices at its next token
        ("vllm", None, STREAM_NOTICE),  # vLLM and Ollama stop on disconnect
        ("ollama", False, STREAM_NOTICE),
        ("openai", None, 0.0),  # a cloud API's capacity is not ours to keep
        ("sim", None, 0.0),  # simulated servers stop when their caller leaves
    ],
)
async def test_how_long_a_given_up_call_holds(
    kind: str, streaming: bool | None, held: float
) -> None:
    ep = endpoint("a", "m", kind=kind, limit=Fixed(1))
    async with Scheduler([ep]) as sched:
        waited = await _give_up_then_wait(sched, 0.3, streaming=streaming)
    assert waited == pytest.approx(held, abs=1e-6)


async def test_an_unknown_local_server_is_assumed_to_keep_generating() -> None:
    local = endpoint("a", "m", limit=Fixed(1))  # 127.0.0.1
    remote = Endpoint("b", url="https://api.example.com/v1", models=["m"], limit=Fixed(1))
    async with Scheduler([local]) as sched:
        assert await _give_up_then_wait(sched, 0.3) == pytest.approx(LINGER_MAX, abs=1e-6)
    async with Scheduler([remote]) as sched:
        assert await _give_up_then_wait(sched, 0.3) == 0.0


async def test_a_call_cancelled_before_it_was_sent_costs_nothing() -> None:
    ep = endpoint("a", "m", kind="llamacpp", limit=Fixed(1))
    async with Scheduler([ep]) as sched:
        assert await _give_up_then_wait(sched, 0.3, sent=False) == 0.0


async def test_a_call_past_its_deadline_lingers_with_its_tokens() -> None:
    ep = endpoint("a", "m", kind="llamacpp", limit=Fixed(4), kv_tokens=1000)
    async with Scheduler([ep]) as sched:
        for _ in range(10):
            await sched.run(_work(2.0), model="m", prompt_tokens=100)
        with pytest.raises(DeadlineExceeded):
            await sched.run(_work(10.0), model="m", timeout=0.5, prompt_tokens=700)
        stats = sched.stats().endpoints[0]
        assert stats.lingering == 1
        assert stats.in_flight == 0
        assert stats.tokens is not None
        assert stats.tokens.in_flight == 700  # its tokens are still in the cache
        await anyio.sleep(1.6)
        stats = sched.stats().endpoints[0]
        assert stats.lingering == 0
        assert stats.tokens is not None
        assert stats.tokens.in_flight == 0


async def test_the_servers_own_view_lets_a_lingering_call_go_early() -> None:
    ep = endpoint("a", "m", kind="llamacpp", limit=Fixed(1))
    async with Scheduler([ep]) as sched:
        adm = sched._admission

        async def call(lease: Lease) -> None:
            await anyio.sleep(math.inf)

        with anyio.move_on_after(0.2):
            await sched.run(call, model="m")
        t = anyio.current_time()
        # A reading from before the cancel cannot judge it.
        adm.server_busy(0, 0, frozenset(), t - 0.1, t)
        assert adm.slots[0].held == 1
        # The tasks busy just after the cancel are the ones it can be...
        adm.server_busy(0, 2, frozenset({7, 8}), t + 0.1, t)
        adm.server_busy(0, 2, frozenset({8, 9}), t + 0.2, t)
        assert adm.slots[0].held == 1  # 8 is still busy: it may be ours
        adm.server_busy(0, 1, frozenset({9}), t + 0.3, t)  # 7 and 8 are done
        assert adm.slots[0].held == 0
        assert not adm.lingering


async def test_a_count_of_busy_requests_caps_the_lingering_calls() -> None:
    ep = endpoint("a", "m", kind="llamacpp", limit=Fixed(3))
    async with Scheduler([ep]) as sched, anyio.create_task_group() as tg:
        adm = sched._admission

        async def call(lease: Lease) -> None:
            await anyio.sleep(math.inf)

        async def give_up() -> None:
            with anyio.move_on_after(0.2):
                await sched.run(call, model="m")

        for _ in range(3):
            tg.start_soon(give_up)
        await anyio.sleep(0.5)
        assert adm.slots[0].held == 3
        t = anyio.current_time()
        adm.server_busy(0, 1, None, t, t)
        assert adm.slots[0].held == 1
        adm.server_busy(0, 0, None, t + 0.1, t)
        assert adm.slots[0].held == 0


async def test_a_lingering_call_keeps_its_cross_process_slot_until_it_ends() -> None:
    """The other processes must not count on room the server has not given back."""
    ep = endpoint("a", "m", kind="llamacpp", limit=Fixed(1))
    released: list[float] = []
    async with Scheduler([ep]) as sched:
        sched._admission.on_release = lambda lease: released.append(anyio.current_time())
        for _ in range(10):
            await sched.run(_work(2.0), model="m")
        assert released == []  # not coordinated: nothing to give back

        async def call(lease: Lease) -> None:
            lease._coordinated = True
            lease._sent = True
            await anyio.sleep(math.inf)

        with anyio.move_on_after(0.5):
            await sched.run(call, model="m")
        gave_up = anyio.current_time()
        await anyio.lowlevel.checkpoint()
        assert released == []
        await anyio.sleep(3.0)
        (st,) = sched.stats().endpoints
    assert st.lingering == 0
    assert len(released) == 1
    assert 1.0 <= released[0] - gave_up <= 2.0  # when the server would have finished
