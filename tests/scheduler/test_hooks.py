"""Request hooks: start, grant and end exactly once per request, refusals included."""

from __future__ import annotations

import contextlib
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lmgate
from lmgate import EndpointRef, InvalidParameter
from lmgate.observability._logging import RateLimitedLogger
from lmgate.policies import Fixed
from lmgate.scheduler import _hooks
from lmgate.scheduler._hooks import HookedRequest

from ._support import check_identity, endpoint


class Recorder:
    """A hook that records every call, and the task each came from."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, dict[str, Any]]] = []
        self._next = 0

    def on_request_start(self, *, model: str, priority: int) -> int:
        self._next += 1
        self.calls.append(("start", self._next, {"model": model, "task": _task()}))
        return self._next

    def on_request_granted(self, handle: int, *, endpoint: EndpointRef, queue_wait: float) -> None:
        self.calls.append(("granted", handle, {"endpoint": endpoint.name, "task": _task()}))

    def on_request_end(self, handle: int, **kw: Any) -> None:
        self.calls.append(("end", handle, kw))

    def outcomes(self) -> Counter[str]:
        """Check each request's sequence; return the count of each end outcome."""
        by_handle: dict[int, list[str]] = {}
        for kind, handle, _ in self.calls:
            by_handle.setdefault(handle, []).append(kind)
        for handle, kinds in by_handle.items():
            assert kinds in (["start", "end"], ["start", "granted", "end"]), (handle, kinds)
        ends = [kw for kind, _, kw in self.calls if kind == "end"]
        for kw in ends:
            assert kw["queue_wait"] >= 0.0
            assert (kw["endpoint"] is None) == (kw["duration"] is None)
        return Counter(kw["outcome"] for kw in ends)

    def starts(self) -> int:
        return sum(1 for kind, _, _ in self.calls if kind == "start")


async def swallow(fn: Callable[[], Awaitable[Any]]) -> None:
    with contextlib.suppress(RuntimeError):
        await fn()


def _task() -> int:
    try:
        return anyio.get_current_task().id
    except anyio.NoEventLoopError:
        return -1


def run_virtual(fn: Callable[[], Awaitable[Any]]) -> Any:
    clock = trio.testing.MockClock(autojump_threshold=0)
    return anyio.run(fn, backend="trio", backend_options={"clock": clock})


def nonzero(outcomes: dict[str, int]) -> Counter[str]:
    return Counter({k: v for k, v in outcomes.items() if v})


@pytest.mark.anyio
async def test_every_outcome_reaches_the_hooks_once() -> None:
    """Completed, failed, refused, timed out, cancelled and closed: hook ends match stats()."""
    rec = Recorder()
    gate = anyio.Event()

    async def slow(lease: lmgate.Lease) -> None:
        await gate.wait()

    async def boom(lease: lmgate.Lease) -> None:
        raise RuntimeError("call failed")

    sched = lmgate.Scheduler(
        [endpoint("gpu", "m")], limit=Fixed(1), queue=lmgate.QueueOptions(size=2), hooks=[rec]
    )
    async with sched:
        with pytest.raises(lmgate.EndpointUnavailable):
            await sched.run(slow, model="unknown")
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(sched.run, slow, model="m"))  # holds the one slot
            await anyio.wait_all_tasks_blocked()
            waiting = anyio.CancelScope()

            async def cancelled_in_queue() -> None:
                with waiting:
                    await sched.run(slow, model="m")

            tg.start_soon(cancelled_in_queue)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(lmgate.DeadlineExceeded):
                await sched.run(slow, model="m", timeout=0.01)  # times out in the queue
            tg.start_soon(swallow, partial(sched.run, boom, model="m"))  # queued
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(lmgate.Rejected):
                await sched.run(slow, model="m")  # queue full
            waiting.cancel()
            gate.set()
        with pytest.raises(RuntimeError):
            await sched.run(boom, model="m")
        lease = await sched.acquire(model="m")
        lease.release()
        stats = sched.stats()
    check_identity(stats)
    # The unknown model is bad input, not a request: no hook hears of it.
    assert rec.starts() == stats.submitted == 7
    assert rec.outcomes() == nonzero(stats.outcomes)
    assert rec.outcomes() == Counter(
        completed=2, failed=2, rejected=1, deadline_exceeded=1, cancelled=1
    )


@pytest.mark.anyio
async def test_grants_are_reported_in_the_requesting_task() -> None:
    """A queued request hears of its grant from its own task, not the releasing one."""
    rec = Recorder()
    gate = anyio.Event()

    async def call(lease: lmgate.Lease) -> None:
        await gate.wait()

    sched = lmgate.Scheduler([endpoint("gpu", "m")], limit=Fixed(1), hooks=[rec])
    async with sched, anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(partial(sched.run, call, model="m"))
        await anyio.wait_all_tasks_blocked()
        gate.set()
    starts = {h: kw["task"] for kind, h, kw in rec.calls if kind == "start"}
    grants = {h: kw["task"] for kind, h, kw in rec.calls if kind == "granted"}
    assert len(grants) == 3
    assert grants == starts
    assert rec.outcomes() == Counter(completed=3)


@pytest.mark.anyio
async def test_closing_ends_queued_requests_in_the_hooks() -> None:
    """Requests queued or in flight at close end as ``closed``, each once."""
    rec = Recorder()
    gate = anyio.Event()
    errors: list[str] = []

    async def call(lease: lmgate.Lease) -> None:
        await gate.wait()

    async def client(sched: lmgate.Scheduler) -> None:
        try:
            await sched.run(call, model="m")
        except lmgate.LmgateError as exc:
            errors.append(type(exc).__name__)

    async with anyio.create_task_group() as tg:
        async with lmgate.Scheduler(
            [endpoint("gpu", "m")], limit=Fixed(1), grace=0.0, hooks=[rec]
        ) as sched:
            for _ in range(3):
                tg.start_soon(client, sched)
            await anyio.wait_all_tasks_blocked()
        stats = sched.stats()
    check_identity(stats)
    assert rec.outcomes() == nonzero(stats.outcomes)
    assert rec.outcomes() == Counter(closed=3)  # two queued, one revoked in flight
    assert errors == ["SchedulerClosed"] * 3


class Broken:
    def __init__(self) -> None:
        self.calls = 0

    def on_request_start(self, *, model: str, priority: int) -> None:
        self.calls += 1
        raise ValueError("sk-hook-secret")

    def on_request_granted(self, handle: object, **kw: Any) -> None:
        raise ValueError("sk-hook-secret")

    def on_request_end(self, handle: object, **kw: Any) -> None:
        raise ValueError("sk-hook-secret")


@pytest.mark.anyio
async def test_a_raising_hook_is_logged_rate_limited_and_harmless(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests and the other hooks go on; the log names the hook and the error type only."""
    # A frozen clock: the buckets never refill, so exactly the bursts get through.
    monkeypatch.setattr(_hooks, "_log", RateLimitedLogger("lmgate.hooks", clock=lambda: 0.0))
    rec, broken = Recorder(), Broken()

    async def call(lease: lmgate.Lease) -> int:
        await anyio.lowlevel.checkpoint()
        return 7

    with caplog.at_level(logging.WARNING, logger="lmgate.hooks"):
        async with lmgate.Scheduler([endpoint("gpu", "m")], hooks=[broken, rec]) as sched:
            results = [await sched.run(call, model="m") for _ in range(50)]
            stats = sched.stats()
    assert results == [7] * 50
    assert broken.calls == 50
    assert rec.outcomes() == Counter(completed=50)
    check_identity(stats)
    assert stats.in_flight == 0
    records = [r for r in caplog.records if r.name == "lmgate.hooks"]
    assert len(records) == 3 * 5  # each method's burst, no more
    assert all("Broken" in r.getMessage() for r in records)
    assert all("ValueError" in r.getMessage() for r in records)
    assert not any("sk-hook-secret" in r.getMessage() for r in records)


@pytest.mark.anyio
async def test_hooks_added_later_see_only_later_requests() -> None:
    """add_hook() affects requests submitted after it; earlier ones end quietly."""
    rec = Recorder()
    gate = anyio.Event()

    async def call(lease: lmgate.Lease) -> None:
        await gate.wait()

    async with lmgate.Scheduler([endpoint("gpu", "m")], limit=Fixed(1)) as sched:
        assert sched._admission.watch is None
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(sched.run, call, model="m"))
            tg.start_soon(partial(sched.run, call, model="m"))
            await anyio.wait_all_tasks_blocked()
            sched.add_hook(rec)
            assert sched._admission.watch is not None
            tg.start_soon(partial(sched.run, call, model="m"))
            await anyio.wait_all_tasks_blocked()
            gate.set()
    assert rec.starts() == 1
    assert rec.outcomes() == Counter(completed=1)


@pytest.mark.parametrize(
    "hooks",
    [object(), "hook", [object()], [Recorder(), 3], [Recorder()] * 33],
)
def test_bad_hooks_are_refused(hooks: Any) -> None:
    """A hook must have the three methods; hooks must be a bounded list."""
    with pytest.raises(InvalidParameter) as info:
        lmgate.Scheduler([endpoint("gpu", "m")], hooks=hooks)
    assert info.value.field == "hooks"


def test_add_hook_refuses_a_non_hook_and_changes_nothing() -> None:
    """A bad add_hook() raises and leaves the hooks as they were."""
    sched = lmgate.Scheduler([endpoint("gpu", "m")])
    with pytest.raises(InvalidParameter):
        sched.add_hook(object())  # type: ignore[arg-type]
    assert sched._watch.hooks == ()
    assert sched._admission.watch is None


REQUEST = st.tuples(
    st.integers(0, 3),  # priority
    st.floats(0.0, 2.0),  # call duration
    st.one_of(st.none(), st.floats(0.0, 3.0)),  # timeout
    st.booleans(),  # the call fails
    st.one_of(st.none(), st.floats(0.0, 3.0)),  # the caller gives up after
    st.floats(0.0, 1.0),  # arrival gap
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.lists(REQUEST, min_size=1, max_size=30),
    limit=st.integers(1, 3),
    queue=st.integers(0, 5),
    close_at=st.one_of(st.none(), st.floats(0.5, 10.0)),
)
def test_hook_outcomes_always_match_the_counters(
    requests: list[tuple[int, float, float | None, bool, float | None, float]],
    limit: int,
    queue: int,
    close_at: float | None,
) -> None:
    """Any mix of calls, failures, timeouts, cancellations and a close: hooks agree with stats."""

    async def main() -> tuple[Recorder, lmgate.Stats]:
        rec = Recorder()

        async def one(priority: int, took: float, within: float | None, fails: bool,
                      give_up: float | None, sched: lmgate.Scheduler) -> None:  # fmt: skip
            async def call(lease: lmgate.Lease) -> None:
                await anyio.sleep(took)
                if fails:
                    raise RuntimeError("failed")

            with anyio.move_on_after(math.inf if give_up is None else give_up):
                with contextlib.suppress(lmgate.LmgateError, RuntimeError):
                    await sched.run(call, model="m", priority=priority, timeout=within)

        sched = lmgate.Scheduler(
            [endpoint("gpu", "m")],
            limit=Fixed(limit),
            queue=lmgate.QueueOptions(size=queue),
            grace=0.5,
            hooks=[rec],
        )
        close = math.inf if close_at is None else close_at
        async with anyio.create_task_group() as tg, sched:
            # The scheduler closes at close_at, or once every request is in.
            with anyio.move_on_after(close):
                for priority, took, timeout, fails, give_up, gap in requests:
                    tg.start_soon(one, priority, took, timeout, fails, give_up, sched)
                    await anyio.sleep(gap)
                    check_identity(sched.stats())
                    ended = sum(1 for k, _, _ in rec.calls if k == "end")
                    assert ended == sum(sched.stats().outcomes.values())
                await anyio.sleep(2.0)
        return rec, sched.stats()

    rec, stats = run_virtual(main)
    check_identity(stats)
    assert rec.starts() == stats.submitted
    assert rec.outcomes() == nonzero(stats.outcomes)


def test_hooked_request_ends_once_even_if_told_twice() -> None:
    """end() and granted() are idempotent; granted() after end() is ignored."""
    rec = Recorder()
    req = HookedRequest((rec,), "m", 0, 0.0)
    req.end("rejected", 1.0)
    req.end("completed", 2.0)
    assert rec.outcomes() == Counter(rejected=1)
    assert "ended" in repr(req)


def test_a_refusal_counted_outside_admission_reaches_the_hooks() -> None:
    """Watch.refused() gives such a request its start and end, nothing else."""
    rec = Recorder()
    sched = lmgate.Scheduler([endpoint("gpu", "m")], hooks=[rec])
    error = lmgate.ContextOverflow("too long", tokens=10, window=5)
    sched._watch.refused("m", 3, "rejected", error, 1.0)
    assert rec.outcomes() == Counter(rejected=1)
    ((_, _, kw),) = [c for c in rec.calls if c[0] == "end"]
    assert kw["error"] is error
    assert kw["endpoint"] is None


@pytest.mark.anyio
async def test_a_request_queued_and_granted_within_submit_still_ends_once() -> None:
    """Behind a head that needs a larger window, a new request takes the small free slot."""
    rec = Recorder()
    gate = anyio.Event()

    async def hold(lease: lmgate.Lease) -> None:
        await gate.wait()

    async def quick(lease: lmgate.Lease) -> str:
        return lease.endpoint.name

    endpoints = [
        endpoint("small", "m", context_window=100),
        endpoint("big", "m", context_window=10_000),
    ]
    async with lmgate.Scheduler(endpoints, limit=Fixed(1), hooks=[rec]) as sched:
        adm = sched._admission
        async with anyio.create_task_group() as tg:
            big = adm.by_model["m"][1]
            lease = await sched.acquire(model="m")
            if lease.endpoint.name != "big":  # make sure the big one is the busy one
                other = await sched.acquire(model="m")
                lease.release()
                lease = other
            assert lease.endpoint.name == "big"
            head = adm.submit("m", 0, math.inf, adm.clock(), min_window=5_000)
            assert not isinstance(head, lmgate.Lease)
            assert (big.in_flight, adm.queued) == (1, 1)
            assert await sched.run(quick, model="m") == "small"
            adm.leave(head, "cancelled")
            lease.release()
            tg.start_soon(hold, lease)
            gate.set()
        stats = sched.stats()
    check_identity(stats)
    assert rec.outcomes() == nonzero(stats.outcomes)
    assert rec.starts() == stats.submitted
