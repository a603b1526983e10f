"""A default Scheduler in virtual time: no side effects, exact timings, clean close.

Each test runs under a clock that jumps whenever every task is blocked --
trio's ``MockClock(autojump_threshold=0)`` and an asyncio loop with the same
rule (``tests/_virtual.py``).  A scheduler that started a worker thread,
resolved a name or waited on real I/O would let that clock leap past its
deadlines; here every timing is asserted exactly.
"""

from __future__ import annotations

import builtins
import functools
import math
import os
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import pytest

import lmgate
from lmgate import (
    DeadlineExceeded,
    Lease,
    QueueOptions,
    Rejected,
    Scheduler,
    SchedulerClosed,
)
from lmgate.policies import Fixed

from ._support import check_identity, endpoint, lmgate_tasks

pytestmark = pytest.mark.anyio

EXACT = 1e-9


@pytest.fixture
def anyio_backend(virtual_backends: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Both backends, each with a clock that jumps when every task is blocked."""
    return virtual_backends


async def test_the_clock_is_virtual() -> None:
    """An hour of sleeping passes in (real) milliseconds on both backends."""
    real = time.monotonic()
    start = anyio.current_time()
    async with Scheduler([endpoint("a", "m")]):
        await anyio.sleep(3600)
    assert anyio.current_time() - start == pytest.approx(3600, abs=EXACT)
    assert time.monotonic() - real < 30


def _refuse(what: str) -> Any:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a default Scheduler must not {what}")

    return refused


async def test_default_start_touches_no_thread_file_socket_or_resolver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Entering, using and closing a default Scheduler starts no thread and does no I/O."""
    threads = threading.active_count()
    monkeypatch.setattr(anyio.to_thread, "run_sync", _refuse("start a worker thread"))
    monkeypatch.setattr(threading.Thread, "start", _refuse("start a thread"))
    monkeypatch.setattr(anyio, "getaddrinfo", _refuse("resolve a name"))
    monkeypatch.setattr(socket, "getaddrinfo", _refuse("resolve a name"))
    monkeypatch.setattr(socket.socket, "connect", _refuse("open a connection"))
    monkeypatch.setattr(os, "open", _refuse("open a file"))
    monkeypatch.setattr(os, "scandir", _refuse("list a directory"))
    monkeypatch.setattr(builtins, "open", _refuse("open a file"))
    eps = [
        # Loopback on purpose: the exposure check would inspect its listener.
        lmgate.Endpoint("local", url="http://127.0.0.1:8080", models=["m"]),
        lmgate.Endpoint("named", url="http://gpu-box.internal:8000/v1", models=["m"]),
    ]

    async def call(lease: Lease) -> str:
        await anyio.sleep(0.5)
        return lease.endpoint.name

    start = anyio.current_time()
    async with Scheduler(eps) as sched:
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(functools.partial(sched.run, call, model="m"))
        assert anyio.current_time() - start < 60
        await anyio.sleep(30)  # actors tick, probe schedules run: still no I/O
    monkeypatch.undo()
    assert threading.active_count() == threads
    assert sched.stats().outcomes["completed"] == 20


async def test_a_timeout_fires_at_exactly_its_deadline() -> None:
    """10 s means 10 s: in the queue, and during the call."""
    async with Scheduler([endpoint("a", "m")], limit=Fixed(1)) as sched:
        hold = anyio.Event()

        async def blocker(lease: Lease) -> None:
            await hold.wait()

        async def forever(lease: Lease) -> None:
            await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: sched.run(blocker, model="m"))
            await anyio.wait_all_tasks_blocked()
            t0 = anyio.current_time()
            with pytest.raises(DeadlineExceeded):
                await sched.run(forever, model="m", timeout=10.0)  # waits in the queue
            assert anyio.current_time() == pytest.approx(t0 + 10.0, abs=EXACT)
            hold.set()
        t1 = anyio.current_time()
        with pytest.raises(DeadlineExceeded):
            await sched.run(forever, model="m", timeout=10.0)  # runs into it
        assert anyio.current_time() == pytest.approx(t1 + 10.0, abs=EXACT)
        stats = sched.stats()
    assert stats.outcomes["deadline_exceeded"] == 2
    assert stats.outcomes["completed"] == 1


async def test_aging_promotes_at_exactly_aging_seconds() -> None:
    """A priority-1 request waiting ``aging`` seconds ranks with a fresh priority-0 one."""
    aging = 4.0
    sched = Scheduler([endpoint("a", "m")], limit=Fixed(1), queue=QueueOptions(aging=aging))
    order: list[str] = []
    async with sched:
        hold = anyio.Event()

        async def blocker(lease: Lease) -> None:
            await hold.wait()

        async def record(name: str) -> None:
            async def call(lease: Lease) -> None:
                order.append(name)

            await sched.run(call, model="m", priority=0 if name != "low" else 1)

        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: sched.run(blocker, model="m"))
            await anyio.wait_all_tasks_blocked()
            t0 = anyio.current_time()
            tg.start_soon(record, "low")
            await anyio.sleep(aging - 0.5)
            tg.start_soon(record, "before")  # ranks t0 + 3.5: ahead of low (t0 + 4)
            await anyio.sleep(0.5)
            assert anyio.current_time() == pytest.approx(t0 + aging, abs=EXACT)
            tg.start_soon(record, "tie")  # ranks t0 + 4, like low: FIFO, so after it
            await anyio.sleep(0.5)
            tg.start_soon(record, "after")  # ranks t0 + 4.5
            await anyio.wait_all_tasks_blocked()
            hold.set()
    assert order == ["before", "low", "tie", "after"]


async def test_close_completes_at_exactly_grace() -> None:
    """Leaving the block gives running calls exactly ``grace`` seconds, then cancels them."""
    grace = 2.5
    outcome: list[tuple[str, float]] = []
    sched = Scheduler([endpoint("a", "m")], limit=Fixed(4), grace=grace)

    async def forever(lease: Lease) -> None:
        await anyio.sleep_forever()

    async def quick(lease: Lease) -> None:
        await anyio.sleep(1.0)

    async def client(call: Any) -> None:
        try:
            await sched.run(call, model="m")
            outcome.append(("completed", anyio.current_time()))
        except SchedulerClosed:
            outcome.append(("closed", anyio.current_time()))

    async with anyio.create_task_group() as tg:
        async with sched:
            tg.start_soon(client, forever)
            tg.start_soon(client, quick)
            await anyio.wait_all_tasks_blocked()
            closing = anyio.current_time()
        assert anyio.current_time() == pytest.approx(closing + grace, abs=EXACT)
    assert sorted(outcome) == [
        ("closed", pytest.approx(closing + grace, abs=EXACT)),
        ("completed", pytest.approx(closing + 1.0, abs=EXACT)),
    ]
    assert lmgate_tasks() == []
    check_identity(sched.stats())


async def test_closing_from_inside_a_call_is_refused_and_changes_nothing() -> None:
    """``__aexit__`` from a call, a lease block or another task raises; the real exit works."""
    sched = Scheduler([endpoint("a", "m")], limit=Fixed(2))
    with pytest.raises(SchedulerClosed):
        await sched.__aexit__(None, None, None)  # never entered
    async with sched:
        with pytest.raises(SchedulerClosed):
            async with sched:  # re-entry is refused
                pass

        async def closes(lease: Lease) -> str:
            with pytest.raises(SchedulerClosed, match="cannot be closed from inside"):
                await sched.__aexit__(None, None, None)
            return "still running"

        assert await sched.run(closes, model="m") == "still running"
        async with sched.lease(model="m") as lease:
            with pytest.raises(SchedulerClosed):
                await sched.__aexit__(None, None, None)
            assert not lease.released

        async def other_task() -> None:
            with pytest.raises(SchedulerClosed):
                await sched.__aexit__(None, None, None)

        async with anyio.create_task_group() as tg:
            tg.start_soon(other_task)
        assert await sched.run(closes, model="m") == "still running"
        assert sched.stats().in_flight == 0
    await sched.__aexit__(None, None, None)  # closed already: nothing happens
    stats = sched.stats()
    assert stats.outcomes["completed"] == 3
    check_identity(stats)
    assert lmgate_tasks() == []


@dataclass
class _Req:
    arrival: float
    priority: int
    timeout: float | None
    duration: float
    cancel_after: float | None
    outcome: str | None = None
    submitted: float = math.nan
    granted: float = math.nan
    ended: float = math.nan


def _workload(seed: int, n: int) -> list[_Req]:
    rng = random.Random(seed)
    t = 0.0
    reqs = []
    for _ in range(n):
        t += rng.expovariate(8.0)
        reqs.append(
            _Req(
                arrival=round(t, 3),
                priority=rng.choice([0, 0, 1, 2]),
                timeout=rng.choice([None, 0.5, 2.0, 5.0, 30.0]),
                duration=rng.choice([0.0, 0.05, 0.2, 0.4, 1.0, 3.0]),
                cancel_after=rng.choice([None] * 8 + [0.1, 1.5]),
            )
        )
    return reqs


@pytest.mark.parametrize("seed", range(20))
async def test_a_mixed_workload_keeps_exact_time(seed: int) -> None:
    """Every completion, deadline, cancellation and refusal lands at its exact virtual time."""
    reqs = _workload(seed, 600)
    limit = 3
    busy = {"now": 0, "peak": 0}
    sched = Scheduler(
        [endpoint("a", "m", limit=Fixed(2)), endpoint("b", "m", limit=Fixed(1))],
        queue=QueueOptions(size=64, aging=2.0, control=None),  # the reference is a plain queue
        grace=1.0,
    )

    async def one(r: _Req) -> None:
        async def call(lease: Lease) -> None:
            r.granted = anyio.current_time()
            busy["now"] += 1
            busy["peak"] = max(busy["peak"], busy["now"])
            try:
                await anyio.sleep(r.duration)
            finally:
                busy["now"] -= 1

        await anyio.sleep(r.arrival)
        r.submitted = anyio.current_time()
        with anyio.CancelScope() as scope:
            if r.cancel_after is not None:
                scope.deadline = r.submitted + r.cancel_after
            try:
                await sched.run(call, model="m", priority=r.priority, timeout=r.timeout)
                r.outcome = "completed"
            except DeadlineExceeded:
                r.outcome = "deadline_exceeded"
            except Rejected:
                r.outcome = "rejected"
            except SchedulerClosed:
                r.outcome = "closed"
            finally:
                r.ended = anyio.current_time()
        if scope.cancelled_caught and r.outcome is None:
            r.outcome = "cancelled"

    async with sched:
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for r in reqs:
                tg.start_soon(one, r)
        check_identity(sched.stats())
    assert busy["peak"] <= limit
    for r in reqs:
        r.arrival += start
        assert r.submitted == pytest.approx(r.arrival, abs=EXACT), r
        if r.outcome == "completed":
            assert r.ended == pytest.approx(r.granted + r.duration, abs=EXACT), r
        elif r.outcome == "deadline_exceeded":
            assert r.timeout is not None
            assert r.ended == pytest.approx(r.submitted + r.timeout, abs=EXACT), r
        elif r.outcome == "cancelled":
            assert r.cancel_after is not None
            assert r.ended == pytest.approx(r.submitted + r.cancel_after, abs=EXACT), r
        elif r.outcome == "rejected":
            assert r.ended == pytest.approx(r.submitted, abs=EXACT), r
        else:
            pytest.fail(f"unexpected outcome {r}")
    stats = sched.stats()
    assert stats.submitted == len(reqs)
    got = Counter(r.outcome for r in reqs)
    assert {k: v for k, v in stats.outcomes.items() if v} == dict(got)
    assert got["completed"] > len(reqs) // 4
