"""The Scheduler facade end to end, on asyncio and trio, and in trio virtual time."""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
import trio
import trio.testing

import lmgate
from lmgate import (
    DeadlineExceeded,
    EndpointUnavailable,
    InvalidParameter,
    Lease,
    Overloaded,
    QueueOptions,
    Rejected,
    Resilience,
    Scheduler,
    SchedulerClosed,
)
from lmgate.policies import Fixed, LimitStatistics, Sample

from ._support import check_identity, endpoint, lmgate_tasks

pytestmark = pytest.mark.anyio


class Boom(Exception):
    """The call's own error."""


def _sched(limit: int = 1, **kwargs: Any) -> Scheduler:
    return Scheduler([endpoint("a", "m")], limit=Fixed(limit), **kwargs)


async def _settle() -> None:
    await anyio.wait_all_tasks_blocked()


def _start(tg: anyio.abc.TaskGroup, fn: Callable[..., Awaitable[Any]], *a: Any, **kw: Any) -> None:
    tg.start_soon(functools.partial(fn, *a, **kw))


async def _sleep_forever(lease: Lease) -> None:
    await anyio.sleep_forever()


async def _identity(lease: Lease) -> str:
    return lease.endpoint.name


async def _until(condition: Callable[[], bool], *, within: float = 600.0) -> None:
    """Let virtual time pass until ``condition`` holds (the actor's policies decide when)."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - the actor's state has no event to wait on
            await anyio.sleep(0.25)


# -- basics ------------------------------------------------------------------------------


async def test_run_returns_the_calls_result() -> None:
    """run() hands the call a lease on the right endpoint and returns what it returns."""
    seen: list[Lease] = []

    async def call(lease: Lease) -> str:
        seen.append(lease)
        assert sched.stats().in_flight == 1
        return f"{lease.endpoint.name}:{lease.endpoint.model}"

    async with Scheduler(
        [endpoint("a", "m", kind="llamacpp"), endpoint("b", "other")], limit=Fixed(2)
    ) as sched:
        assert await sched.run(call, model="m") == "a:m"
        (lease,) = seen
        assert lease.endpoint == lmgate.EndpointRef(
            name="a", url="http://127.0.0.1:9/a", model="m", kind="llamacpp"
        )
        assert lease.deadline == math.inf
        assert lease.remaining() == math.inf
        assert lease.priority == 0
        assert lease.released
        stats = sched.stats()
        check_identity(stats)
        assert stats.submitted == 1
        assert stats.outcomes["completed"] == 1
        assert stats.in_flight == 0


async def test_lease_block() -> None:
    """A lease() block holds one slot for its duration and completes on exit."""
    async with _sched(2) as sched:
        async with sched.lease(model="m", priority=3, timeout=60) as lease:
            assert lease.priority == 3
            assert 0 < lease.remaining() <= 60
            assert sched.stats().in_flight == 1
            lease.report(ttft=0.1, prompt_tokens=5, output_tokens=7)
        assert lease.released
        stats = sched.stats()
        check_identity(stats)
        assert stats.outcomes["completed"] == 1
        assert stats.in_flight == 0


async def test_acquire_and_release_by_hand() -> None:
    """acquire() returns a held lease; release() counts it once, whatever follows."""
    async with _sched(2) as sched:
        ok = await sched.acquire(model="m")
        bad = await sched.acquire(model="m")
        assert sched.stats().in_flight == 2
        ok.release()
        bad.release(Boom("x"))
        ok.release(Boom("late"))
        bad.release()
        stats = sched.stats()
        check_identity(stats)
        assert stats.outcomes["completed"] == 1
        assert stats.outcomes["failed"] == 1
        assert stats.in_flight == 0


async def test_unknown_model_and_full_queue() -> None:
    """An unserved model is EndpointUnavailable (and not counted); past queue_size, Rejected."""
    async with _sched(1, queue=QueueOptions(size=1)) as sched:
        with pytest.raises(EndpointUnavailable):
            await sched.run(_sleep_forever, model="nobody")
        async with anyio.create_task_group() as tg:
            _start(tg, sched.run, _sleep_forever, model="m")
            _start(tg, sched.run, _sleep_forever, model="m")
            await _settle()
            with pytest.raises(Rejected) as info:
                await sched.run(_sleep_forever, model="m")
            assert info.value.reason == "queue_full"
            stats = sched.stats()
            check_identity(stats)
            assert (stats.in_flight, stats.queued) == (1, 1)
            tg.cancel_scope.cancel()
        stats = sched.stats()
        check_identity(stats)
        assert {k: n for k, n in stats.outcomes.items() if n} == {
            "rejected": 1,
            "cancelled": 2,
        }


async def test_lower_priority_numbers_first() -> None:
    """Queued requests are served by priority, FIFO within one."""
    order: list[str] = []
    async with _sched(1) as sched:
        async with anyio.create_task_group() as tg:
            gate = anyio.Event()

            async def hold(lease: Lease) -> None:
                await gate.wait()

            async def record(tag: str, lease: Lease) -> None:
                order.append(tag)

            _start(tg, sched.run, hold, model="m")
            await _settle()
            for tag, prio in [("p3", 3), ("p1a", 1), ("p2", 2), ("p0", 0), ("p1b", 1)]:
                _start(tg, sched.run, functools.partial(record, tag), model="m", priority=prio)
                await _settle()
            assert sched.stats().queued == 5
            gate.set()
        assert order == ["p0", "p1a", "p1b", "p2", "p3"]
        assert sched.stats().outcomes["completed"] == 6


async def test_exceptions_propagate_unchanged() -> None:
    """The call's own exception reaches the caller as the same object and counts as failed."""
    err = Boom("mine")

    async def call(lease: Lease) -> None:
        raise err

    async with _sched() as sched:
        with pytest.raises(Boom) as info:
            await sched.run(call, model="m")
        assert info.value is err
        with pytest.raises(Boom) as info:
            async with sched.lease(model="m"):
                raise err
        assert info.value is err
        stats = sched.stats()
        check_identity(stats)
        assert stats.outcomes["failed"] == 2
        assert stats.in_flight == 0


async def test_overloaded_reaches_the_caller() -> None:
    """An Overloaded from the call propagates as is and is fed back as an overload sample."""
    err = Overloaded("busy", retry_after=2.5, status=429)

    async def call(lease: Lease) -> None:
        raise err

    async with _sched() as sched:
        with pytest.raises(Overloaded) as info:
            await sched.run(call, model="m")
        assert info.value is err
        assert info.value.retry_after == 2.5
        await _settle()
        stats = sched.stats()
        check_identity(stats)
        assert stats.outcomes["failed"] == 1
        assert stats.endpoints[0].by_class["overload"] == 1


async def test_endpoint_limit_overrides_scheduler_limit() -> None:
    """Each endpoint builds its own limit state; Endpoint(limit=) wins over the default."""
    eps = [endpoint("a", "m", limit=Fixed(1)), endpoint("b", "m")]
    async with Scheduler(eps, limit=Fixed(3)) as sched:
        assert [e.limit for e in sched.stats().endpoints] == [1, 3]
        leases = [await sched.acquire(model="m") for _ in range(4)]
        assert [e.in_flight for e in sched.stats().endpoints] == [1, 3]
        for lease in leases:
            lease.release()
        check_identity(sched.stats())


async def test_not_running_refuses() -> None:
    """Before __aenter__ and after __aexit__ requests get SchedulerClosed; re-entry is refused."""
    sched = _sched()
    with pytest.raises(SchedulerClosed):
        await sched.run(_sleep_forever, model="m")
    async with sched:
        pass
    with pytest.raises(SchedulerClosed):
        await sched.acquire(model="m")
    with pytest.raises(SchedulerClosed):
        async with sched:
            pass  # pragma: no cover


async def test_body_exception_propagates_unwrapped() -> None:
    """An error raised in the ``async with Scheduler`` body comes out as itself, not a group."""
    err = Boom("body")
    with pytest.raises(Boom) as info:
        async with _sched() as sched:
            raise err
    assert info.value is err
    assert lmgate_tasks() == []
    assert sched.stats().closed


async def test_cancelled_body_closes_cleanly() -> None:
    """An outer cancellation of the body closes the scheduler and stays the outer scope's."""
    with anyio.CancelScope() as outer:
        async with _sched():
            outer.cancel()
            await anyio.sleep_forever()
    assert outer.cancelled_caught
    assert lmgate_tasks() == []
    await anyio.lowlevel.checkpoint()  # no stray cancellation is left behind


async def test_actor_crash_is_raised() -> None:
    """A limit policy that raises crashes its actor, and that error leaves __aexit__."""

    async def crash() -> None:
        async with Scheduler([endpoint("a", "m")], limit=_Crashy()) as sched:
            lease = await sched.acquire(model="m")
            lease.release()
            await anyio.sleep_forever()

    with pytest.raises(BaseExceptionGroup) as info:
        await crash()
    assert info.group_contains(RuntimeError, match="policy bug")
    assert lmgate_tasks() == []


# -- releasing on every path ----------------------------------------------------------------


async def _via_run(sched: Scheduler, body: Callable[[Lease], Awaitable[None]]) -> None:
    await sched.run(body, model="m", timeout=30)


async def _via_lease(sched: Scheduler, body: Callable[[Lease], Awaitable[None]]) -> None:
    async with sched.lease(model="m", timeout=30) as lease:
        await body(lease)


async def _ret(lease: Lease) -> None:
    await anyio.lowlevel.checkpoint()


async def _raise(lease: Lease) -> None:
    await anyio.lowlevel.checkpoint()
    raise Boom


@pytest.mark.parametrize("via", [_via_run, _via_lease], ids=["run", "lease"])
@pytest.mark.parametrize(
    ("path", "outcome"),
    [("return", "completed"), ("raise", "failed"), ("cancel", "cancelled")],
)
async def test_lease_released_on_every_path(
    via: Callable[..., Awaitable[None]], path: str, outcome: str
) -> None:
    """Return, raise and cancellation all give the slot back, counted once."""
    async with _sched(1) as sched:
        with anyio.CancelScope() as outer:
            if path == "return":
                await via(sched, _ret)
            elif path == "raise":
                with pytest.raises(Boom):
                    await via(sched, _raise)
            else:

                async def cancel_me(lease: Lease) -> None:
                    outer.cancel()
                    await anyio.sleep_forever()

                await via(sched, cancel_me)
        stats = sched.stats()
        check_identity(stats)
        assert stats.in_flight == 0
        assert stats.outcomes[outcome] == 1
        # The slot really is free: the next request is granted at once.
        lease = await sched.acquire(model="m")
        lease.release()


async def test_acquired_lease_released_by_scheduler_close_only_once() -> None:
    """A lease from acquire() still held at close ends 'closed'; a late release is a no-op."""
    async with _sched(1, grace=0) as sched:
        lease = await sched.acquire(model="m")
    assert lease.released
    lease.release(Boom())
    stats = sched.stats()
    check_identity(stats)
    assert stats.outcomes["closed"] == 1
    assert stats.outcomes["failed"] == 0


async def test_cancelled_while_queued_leaves_at_once() -> None:
    """A caller cancelled in the queue is gone from it before anything else runs."""
    async with _sched(1) as sched, anyio.create_task_group() as tg:
        _start(tg, sched.run, _sleep_forever, model="m")
        await _settle()
        scope = anyio.CancelScope()

        async def waiter() -> None:
            with scope:
                await sched.run(_sleep_forever, model="m")

        tg.start_soon(waiter)
        await _settle()
        assert sched.stats().queued == 1
        scope.cancel()
        await anyio.lowlevel.checkpoint()
        await _settle()
        stats = sched.stats()
        check_identity(stats)
        assert stats.queued == 0
        assert stats.outcomes["cancelled"] == 1
        assert stats.in_flight == 1
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("cancel_first", [False, True])
async def test_grant_and_cancel_in_the_same_instant(cancel_first: bool) -> None:
    """A waiter granted and cancelled before it runs gives the slot on; nothing leaks."""
    ran: list[str] = []

    async def note(tag: str, lease: Lease) -> None:
        ran.append(tag)
        await anyio.lowlevel.checkpoint()

    async with _sched(1) as sched, anyio.create_task_group() as tg:
        holder = await sched.acquire(model="m")
        scope = anyio.CancelScope()

        async def b() -> None:
            with scope:
                await sched.run(functools.partial(note, "b"), model="m")

        tg.start_soon(b)
        await _settle()
        _start(tg, sched.run, functools.partial(note, "c"), model="m")
        await _settle()
        assert sched.stats().queued == 2
        # No await between these two: on one event loop they are one instant.
        if cancel_first:
            scope.cancel()
            holder.release()
        else:
            holder.release()
            scope.cancel()
        await _settle()
        stats = sched.stats()
        check_identity(stats)
        assert (stats.queued, stats.in_flight) == (0, 0)
        assert stats.outcomes["cancelled"] == 1
        assert stats.outcomes["completed"] == 2
        assert "c" in ran


async def test_acquire_deadline_and_transport_timeout() -> None:
    """acquire() keeps its deadline while queued; a transport's DeadlineExceeded counts as one."""
    async with _sched(1) as sched:
        held = await sched.acquire(model="m", timeout=60)
        assert held.deadline != math.inf
        with pytest.raises(DeadlineExceeded):
            await sched.acquire(model="m", timeout=0.01)
        held.release(DeadlineExceeded("the transport gave up at the deadline"))
        stats = sched.stats()
        check_identity(stats)
        assert stats.outcomes["deadline_exceeded"] == 2
        assert stats.in_flight == 0


async def test_no_lmgate_task_survives_exit() -> None:
    """The controller, the actors and their helpers all end inside __aexit__."""
    eps = [endpoint("a", "m"), endpoint("b", "m"), endpoint("c", "n")]
    async with Scheduler(eps, limit=Fixed(1)) as sched:
        await _settle()
        running = lmgate_tasks()
        # one controller, then per endpoint an actor and its ticker
        assert len(running) >= 1 + 2 * len(eps), running
        await sched.run(_ret, model="m")
    assert lmgate_tasks() == []


async def test_stats_snapshot_is_frozen_and_encodable() -> None:
    """stats() is a frozen msgspec Struct that encodes to JSON, and it is a snapshot."""
    async with _sched(2) as sched:
        before = sched.stats()
        lease = await sched.acquire(model="m")
        after = sched.stats()
        lease.release()
    assert before.in_flight == 0
    assert after.in_flight == 1
    with pytest.raises(AttributeError):
        before.submitted = 5  # type: ignore[misc]
    decoded = msgspec.json.decode(msgspec.json.encode(after))
    assert decoded["submitted"] == 1
    assert decoded["endpoints"][0]["name"] == "a"
    assert set(after.outcomes) >= {
        "completed",
        "failed",
        "rejected",
        "deadline_exceeded",
        "cancelled",
        "unavailable",
        "closed",
    }


async def test_reprs() -> None:
    """The reprs say what each object is and its state, and never a secret."""
    eps = [
        lmgate.Endpoint(
            "cloud", url="https://127.0.0.1:1/v1", models=["m"], api_key_env="SECRET_ENV"
        )
    ]
    sched = Scheduler(eps, limit=Fixed(1))
    assert repr(sched).startswith("<Scheduler idle")
    async with sched:
        text = repr(sched)
        assert "running" in text
        assert "cloud" in text
        assert "in_flight=0" in text
        lease = await sched.acquire(model="m")
        assert "in_flight=1" in repr(sched)
        assert repr(lease) == "<Lease cloud/m priority=0 held>"
        lease.release()
        assert repr(lease) == "<Lease cloud/m priority=0 released>"
        ctx = sched.lease(model="m", priority=2)
        assert "model='m'" in repr(ctx)
        assert "priority=2" in repr(ctx)
    assert repr(sched).startswith("<Scheduler closed")
    assert "SECRET" not in repr(sched.stats())


# -- virtual time -----------------------------------------------------------------------------


class TestVirtualTime:
    """Exact times, in trio's virtual clock."""

    @pytest.fixture
    def anyio_backend(self) -> tuple[str, dict[str, Any]]:
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})

    async def test_deadline_is_absolute(self) -> None:
        """timeout= becomes one absolute deadline on the anyio clock."""
        async with _sched() as sched:
            await anyio.sleep(3)

            async def call(lease: Lease) -> float:
                assert lease.deadline == 13.0
                await anyio.sleep(4)
                return lease.remaining()

            assert await sched.run(call, model="m", timeout=10) == 6.0

    async def test_deadline_covers_queueing_and_call(self) -> None:
        """Time spent queued counts: a 5 s request queued 3 s is stopped 2 s into its call."""
        ends: dict[str, tuple[float, str]] = {}

        async def hold(lease: Lease) -> None:
            await anyio.sleep(3)

        async def client(name: str, via: Callable[..., Awaitable[None]], seconds: float) -> None:
            try:
                await via(seconds)
            except DeadlineExceeded:
                ends[name] = (anyio.current_time(), "deadline")
            else:
                ends[name] = (anyio.current_time(), "done")

        async with _sched(1) as sched:

            async def with_run(seconds: float) -> None:
                await sched.run(_sleep_forever, model="m", timeout=seconds)

            async def with_lease(seconds: float) -> None:
                t0 = anyio.current_time()
                async with sched.lease(model="m", timeout=seconds) as lease:
                    assert anyio.current_time() == t0 + 3.0
                    assert lease.deadline == t0 + seconds
                    await anyio.sleep_forever()

            async with anyio.create_task_group() as tg:
                _start(tg, sched.run, hold, model="m")
                await _settle()
                tg.start_soon(client, "run", with_run, 5.0)
                await _settle()
                tg.start_soon(client, "queued-out", with_run, 2.0)
                await _settle()
            assert ends == {"run": (5.0, "deadline"), "queued-out": (2.0, "deadline")}
            stats = sched.stats()
            check_identity(stats)
            assert stats.outcomes["deadline_exceeded"] == 2
            assert stats.outcomes["completed"] == 1

            ends.clear()
            start = anyio.current_time()
            async with anyio.create_task_group() as tg:
                _start(tg, sched.run, hold, model="m")
                await _settle()
                # 7 s: the queue (3 s) plus the observed 3 s service fit in it.
                tg.start_soon(client, "lease", with_lease, 7.0)
            assert ends == {"lease": (start + 7.0, "deadline")}
            assert sched.stats().outcomes["deadline_exceeded"] == 3

    async def test_timeout_releases_slot(self) -> None:
        """A call cut off by its deadline frees its slot for the next request at once."""
        async with _sched(1) as sched:
            with pytest.raises(DeadlineExceeded):
                await sched.run(_sleep_forever, model="m", timeout=1.5)
            assert anyio.current_time() == 1.5
            stats = sched.stats()
            check_identity(stats)
            assert stats.in_flight == 0
            assert stats.outcomes["deadline_exceeded"] == 1
            await _settle()
            assert sched.stats().endpoints[0].by_class["timeout"] == 1

    async def test_release_and_deadline_at_the_same_instant(self) -> None:
        """A slot freed at the very instant a waiter's deadline passes is not lost."""
        async with _sched(1) as sched, anyio.create_task_group() as tg:

            async def hold(lease: Lease) -> None:
                await anyio.sleep(5)

            _start(tg, sched.run, hold, model="m")
            await _settle()
            with pytest.raises(DeadlineExceeded):
                await sched.run(_sleep_forever, model="m", timeout=5)
            assert anyio.current_time() == 5.0
            await _settle()
            stats = sched.stats()
            check_identity(stats)
            assert (stats.queued, stats.in_flight) == (0, 0)
            assert await sched.run(_identity, model="m", timeout=0.5) == "a"

    async def test_cancel_while_queued_takes_no_time(self) -> None:
        """Leaving the queue on cancellation happens at the instant of the cancel."""
        async with _sched(1) as sched, anyio.create_task_group() as tg:
            _start(tg, sched.run, _sleep_forever, model="m")
            await anyio.sleep(1)
            with anyio.move_on_after(2.5):
                await sched.run(_sleep_forever, model="m")
            assert anyio.current_time() == 3.5
            stats = sched.stats()
            assert stats.queued == 0
            assert stats.outcomes["cancelled"] == 1
            tg.cancel_scope.cancel()

    async def test_close_grace_then_cancel(self) -> None:
        """Closing refuses the queue at once, lets work finish within grace, then cancels it."""
        ends: dict[str, tuple[float, str]] = {}

        async def client(name: str, fn: Callable[[], Awaitable[Any]]) -> None:
            try:
                await fn()
            except SchedulerClosed:
                ends[name] = (anyio.current_time(), "closed")
            else:
                ends[name] = (anyio.current_time(), "done")

        async def nap(seconds: float, lease: Lease) -> None:
            await anyio.sleep(seconds)

        async with anyio.create_task_group() as tg:
            async with _sched(4, grace=2.0) as sched:
                await anyio.sleep(10)

                async def in_block() -> None:
                    async with sched.lease(model="m"):
                        await anyio.sleep(10)

                async def by_hand() -> None:
                    await sched.acquire(model="m")

                tg.start_soon(
                    client,
                    "quick",
                    functools.partial(sched.run, functools.partial(nap, 1), model="m"),
                )
                tg.start_soon(
                    client,
                    "slow",
                    functools.partial(sched.run, functools.partial(nap, 10), model="m"),
                )
                tg.start_soon(client, "block", in_block)
                tg.start_soon(client, "manual", by_hand)
                await _settle()
                tg.start_soon(client, "queued", functools.partial(sched.run, _ret, model="m"))
                await _settle()
                stats = sched.stats()
                assert (stats.in_flight, stats.queued) == (4, 1)
            assert anyio.current_time() == 12.0
            assert lmgate_tasks() == []
            stats = sched.stats()
            check_identity(stats)
            assert stats.closed
            assert (stats.in_flight, stats.queued) == (0, 0)
            assert stats.outcomes["completed"] == 1
            assert stats.outcomes["closed"] == 4
            await _settle()
        assert ends == {
            "quick": (11.0, "done"),
            "slow": (12.0, "closed"),
            "block": (12.0, "closed"),
            "manual": (10.0, "done"),
            "queued": (10.0, "closed"),
        }
        with pytest.raises(SchedulerClosed):
            await sched.run(_ret, model="m")

    async def test_close_returns_when_drained(self) -> None:
        """With nothing left running, close does not wait out the grace period."""
        async with anyio.create_task_group() as tg:
            async with _sched(2, grace=30.0) as sched:

                async def nap(lease: Lease) -> None:
                    await anyio.sleep(1.25)

                _start(tg, sched.run, nap, model="m")
                await _settle()
            assert anyio.current_time() == 1.25
            assert sched.stats().outcomes["completed"] == 1

    async def test_health_down_fails_queue_and_recovers(self) -> None:
        """A failing health check takes the endpoint down; its queue ends unavailable."""
        healthy = {"ok": True}

        async def check(ep: lmgate.Endpoint) -> bool:
            return healthy["ok"]

        ep = endpoint("a", "m", health=check)
        async with Scheduler([ep], limit=Fixed(1)) as sched, anyio.create_task_group() as tg:
            errors: list[BaseException] = []

            async def queued() -> None:
                try:
                    await sched.run(_ret, model="m")
                except EndpointUnavailable as exc:
                    errors.append(exc)

            lease = await sched.acquire(model="m")
            tg.start_soon(queued)
            await _settle()
            assert sched.stats().queued == 1
            healthy["ok"] = False
            await _until(lambda: sched.stats().endpoints[0].routing == "down")
            assert len(errors) == 1
            assert sched.stats().queued == 0
            with pytest.raises(EndpointUnavailable):
                await sched.run(_ret, model="m")
            lease.release()
            healthy["ok"] = True
            await _until(lambda: sched.stats().endpoints[0].routing == "up")
            await sched.run(_ret, model="m")
            stats = sched.stats()
            check_identity(stats)
            assert stats.outcomes["unavailable"] == 2
            assert stats.outcomes["completed"] == 2

    async def test_half_open_trial_cut_short_does_not_strand_the_endpoint(self) -> None:
        """A half-open trial stopped by its deadline too early to count still frees the next one."""

        async def ok(lease: Lease) -> str:
            await anyio.sleep(1)
            return "ok"

        async def refused(lease: Lease) -> None:
            raise ConnectionResetError("reset")

        async with Scheduler(
            [endpoint("a", "m")], limit=Fixed(4), resilience=Resilience(throttle=None)
        ) as sched:
            for _ in range(5):  # learn a warm latency of one second
                assert await sched.run(ok, model="m") == "ok"
            while sched.stats().endpoints[0].routing != "down":
                with pytest.raises(ConnectionResetError):
                    await sched.run(refused, model="m")
                await _settle()
            await _until(lambda: sched.stats().endpoints[0].state == "half_open")
            # The trial hangs and its deadline ends it after 0.2 s: too soon to
            # say anything about the endpoint, so it counts as no evidence.
            with pytest.raises(DeadlineExceeded):
                await sched.run(_sleep_forever, model="m", timeout=0.2)
            await _settle()
            # The endpoint must take the next trial rather than wait forever.
            assert await sched.run(ok, model="m", timeout=30) == "ok"
            check_identity(sched.stats())

    async def test_limit_raise_dispatches_queue(self) -> None:
        """A limit raised by the policy (fed by samples) lets queued requests through."""
        async with (
            anyio.create_task_group() as tg,
            Scheduler([endpoint("a", "m")], limit=_StepUp()) as sched,
        ):
            lease = await sched.acquire(model="m")
            done: list[float] = []

            async def nap(lease: Lease) -> None:
                await anyio.sleep(2)

            async def queued() -> None:
                await sched.run(nap, model="m")
                done.append(anyio.current_time())

            for _ in range(3):
                tg.start_soon(queued)
            await _settle()
            assert sched.stats().queued == 3
            lease.release()  # one sample: the limit steps up to 4
            await _settle()
            stats = sched.stats()
            assert anyio.current_time() == 0.0
            assert stats.endpoints[0].limit == 4
            assert (stats.in_flight, stats.queued) == (3, 0)
        assert done == [2.0, 2.0, 2.0]


class _StepUp(msgspec.Struct, frozen=True):
    """A limit of 1 that becomes 4 after the first sample."""

    def build(self) -> _StepUpState:
        return _StepUpState()


class _StepUpState:
    def __init__(self) -> None:
        self.limit = 1
        self.samples = 0

    def update(self, sample: Sample, now: float) -> int:
        self.samples += 1
        self.limit = 4
        return self.limit

    def tick(self, now: float) -> int:
        return self.limit

    def statistics(self) -> LimitStatistics:
        return LimitStatistics(policy="StepUp", limit=self.limit, samples=self.samples)


class _Crashy(msgspec.Struct, frozen=True):
    """A limit policy whose update raises."""

    def build(self) -> _CrashyState:
        return _CrashyState()


class _CrashyState(_StepUpState):
    def update(self, sample: Sample, now: float) -> int:
        raise RuntimeError("policy bug")


@pytest.mark.anyio
async def test_intenum_priority_and_float_subclass_timeout_are_their_values() -> None:
    """An IntEnum priority level and a float-subclass timeout are taken as plain values."""
    import enum

    class Level(enum.IntEnum):
        URGENT = 0
        BATCH = 5

    class Seconds(float):
        pass

    async with _sched(1) as sched:

        async def call(lease: Lease) -> int:
            return lease.priority

        got = await sched.run(call, model="m", priority=Level.BATCH, timeout=Seconds(5.0))
        assert got == 5
        assert type(got) is int
        async with sched.lease(model="m", priority=Level.URGENT) as lease:
            assert type(lease.priority) is int
        with pytest.raises(InvalidParameter):
            await sched.run(call, model="m", priority=True)
