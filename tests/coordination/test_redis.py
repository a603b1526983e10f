"""The Redis coordinator inside schedulers, several in one event loop, real Redis.

Each scheduler has its own coordinator (its own owner id), exactly as
separate processes would; what crosses between them goes through Redis.
This is real time: Redis cannot run on a virtual clock.  Waits poll a
condition with a deadline rather than sleeping a fixed time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import msgspec
import pytest
import redis.asyncio as aioredis

import lmgate
from lmgate.coordination import (
    CoordinationLost,
    CoordinationRejoining,
    CoordinationRestored,
    LeadershipChanged,
    Redis,
    SharedLimitPublished,
    SharedStateApplied,
)
from lmgate.policies import Fixed, LimitStatistics, Sample

from ._server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.anyio]

HOLDERS = "lmgate:{gpu}:h"
WAITING = "lmgate:{gpu}:q"


@pytest.fixture
def anyio_backend() -> str:
    """The redis client needs asyncio (trio is refused: see its own test)."""
    return "asyncio"


def endpoints() -> list[lmgate.Endpoint]:
    return [lmgate.Endpoint("gpu", url="http://127.0.0.1:9", models=["m"])]


def coordinator(url: str, **kw: Any) -> Redis:
    opts: dict[str, Any] = {"lease_ttl": 1.5, "poll": 0.05, "op_timeout": 0.3, "rejoin_delay": 0.2}
    opts.update(kw)
    return Redis(url, **opts)


async def until(pred: Callable[[], bool | Awaitable[bool]], within: float = 10.0) -> None:
    with anyio.fail_after(within):
        while True:
            got = pred()
            if not isinstance(got, bool):
                got = await got
            if got:
                return
            await anyio.sleep(0.01)


@asynccontextmanager
async def schedulers(
    url: str, n: int, *, limit: Any = None, **kw: Any
) -> AsyncIterator[list[tuple[lmgate.Scheduler, Redis]]]:
    async with AsyncExitStack() as stack:
        out = []
        for _ in range(n):
            c = coordinator(url, **kw)
            s = lmgate.Scheduler(endpoints(), limit=limit or Fixed(3), coordinator=c)
            out.append((await stack.enter_async_context(s), c))
        for _, c in out:
            await until(lambda c=c: c.link.mode == "connected")
        yield out


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_schedulers_share_one_limit(redis_url: str, r: aioredis.Redis) -> None:
    """Two schedulers with a shared limit of 3 never run more than 3 calls at once."""
    cur = peak = done = 0

    async def call(lease: lmgate.Lease) -> None:
        nonlocal cur, peak, done
        cur += 1
        peak = max(peak, cur)
        await anyio.sleep(0.005)
        cur -= 1
        done += 1

    async with schedulers(redis_url, 2) as pair:
        async with anyio.create_task_group() as tg:
            for s, _ in pair:
                for _ in range(5):

                    async def worker(s: lmgate.Scheduler = s) -> None:
                        for _ in range(10):
                            await s.run(call, model="m")

                    tg.start_soon(worker)
        stats = [c.statistics() for _, c in pair]
    assert done == 100
    assert peak == 3
    assert sum(st.endpoints[0].granted for st in stats) == 100
    assert await r.zcard(HOLDERS) == 0
    assert await r.zcard(WAITING) == 0


def test_trio_is_refused_with_a_clear_error() -> None:
    """On trio the coordinator refuses to start rather than half-working."""

    class Handle:
        closed = False

        def close(self) -> None:
            self.closed = True

    handle = Handle()

    async def main() -> None:
        await Redis("redis://127.0.0.1:9/0").run(handle)  # type: ignore[arg-type]

    with pytest.raises(lmgate.InvalidParameter, match="asyncio") as info:
        anyio.run(main, backend="trio")
    assert info.value.field == "coordinator"
    assert handle.closed

    async def build() -> None:
        lmgate.Scheduler(endpoints(), coordinator=Redis("redis://127.0.0.1:9/0"))

    with pytest.raises(lmgate.InvalidParameter, match="trio"):
        anyio.run(build, backend="trio")


async def test_priority_is_respected_across_schedulers(redis_url: str, r: aioredis.Redis) -> None:
    """A more urgent request from another process is served before an earlier one."""
    order: list[str] = []
    async with (
        schedulers(redis_url, 3, limit=Fixed(1)) as [(a, _), (b, _), (c, _)],
        anyio.create_task_group() as tg,
        a.lease(model="m"),
    ):

        async def run(s: lmgate.Scheduler, name: str, priority: int) -> None:
            async def call(lease: lmgate.Lease) -> None:
                order.append(name)

            await s.run(call, model="m", priority=priority)

        tg.start_soon(run, b, "b-low", 5)
        await until(lambda: _zcard(r, 1))
        tg.start_soon(run, c, "c-high", 0)
        await until(lambda: _zcard(r, 2))
    assert order == ["c-high", "b-low"]


async def _zcard(r: aioredis.Redis, n: int) -> bool:
    return int(await r.zcard(WAITING)) == n


async def test_no_process_starves(redis_url: str) -> None:
    """Two equally busy schedulers on one slot get about equal service."""
    counts = [0, 0]
    async with (
        schedulers(redis_url, 2, limit=Fixed(1)) as pair,
        anyio.create_task_group() as tg,
    ):
        for i, (s, _) in enumerate(pair):
            for _ in range(3):

                async def worker(s: lmgate.Scheduler = s, i: int = i) -> None:
                    async def call(lease: lmgate.Lease) -> None:
                        counts[i] += 1
                        await anyio.sleep(0.002)

                    while sum(counts) < 80:
                        await s.run(call, model="m")

                tg.start_soon(worker)
    assert min(counts) >= 0.3 * sum(counts)


async def test_a_deadline_while_waiting_for_a_shared_slot(
    redis_url: str, r: aioredis.Redis
) -> None:
    """The request's one deadline covers the shared wait; its queue entry is removed."""
    async with schedulers(redis_url, 2, limit=Fixed(1)) as [(a, _), (b, cb)]:
        async with a.lease(model="m"):
            with pytest.raises(lmgate.DeadlineExceeded):
                await b.run(_noop, model="m", timeout=0.3)
            await until(lambda: _zcard(r, 0))
        assert await b.run(_noop, model="m", timeout=5.0) == "ok"
        assert b.stats().outcomes["deadline_exceeded"] == 1
        assert cb.statistics().endpoints[0].running == 0


async def _noop(lease: lmgate.Lease) -> str:
    return "ok"


async def test_closing_while_waiting_for_a_shared_slot(redis_url: str) -> None:
    """A scheduler closing under a request waiting for a shared slot ends it at once."""
    c = coordinator(redis_url)
    got: list[BaseException] = []

    async def waiting(b: lmgate.Scheduler) -> None:
        try:
            await b.run(_noop, model="m")
        except lmgate.LmgateError as exc:
            got.append(exc)

    async with schedulers(redis_url, 1, limit=Fixed(1)) as [(a, _)], a.lease(model="m"):
        with anyio.fail_after(8.0):  # well within the grace of 10 s
            async with anyio.create_task_group() as tg:
                b = lmgate.Scheduler(endpoints(), limit=Fixed(1), coordinator=c, grace=10.0)
                async with b:
                    tg.start_soon(waiting, b)
                    await until(lambda: bool(c.statistics().endpoints[0].waiting))
    assert len(got) == 1
    assert isinstance(got[0], lmgate.SchedulerClosed)
    assert b.stats().in_flight == 0


async def test_redis_outage_falls_back_and_rejoins(
    redis_server: RedisServer, redis_url: str, r: aioredis.Redis
) -> None:
    """Redis stops: shares apply, calls go on; Redis returns: leases are counted back in."""
    hold = 0.02
    stop = anyio.Event()
    phase = "before"
    cur = 0
    peaks: dict[str, int] = {}
    done = [0, 0]
    async with schedulers(redis_url, 2, limit=Fixed(4)) as pair:
        subs = [s.events.subscribe() for s, _ in pair]

        async def worker(i: int, s: lmgate.Scheduler) -> None:
            async def call(lease: lmgate.Lease) -> None:
                nonlocal cur
                cur += 1
                peaks[phase] = max(peaks.get(phase, 0), cur)
                await anyio.sleep(hold)
                cur -= 1

            while not stop.is_set():
                await s.run(call, model="m")
                done[i] += 1

        async with anyio.create_task_group() as tg:
            for i, (s, _) in enumerate(pair):
                for _ in range(4):
                    tg.start_soon(worker, i, s)
            await until(lambda: min(done) > 5)
            phase = "switch"  # calls granted through Redis just before the loss may overlap
            redis_server.stop()
            await until(lambda: all(c.link.mode == "fallback" for _, c in pair))
            await until(lambda: all(s.stats().endpoints[0].limit == 2 for s, _ in pair))
            await anyio.sleep(3 * hold)
            phase = "fallback"
            before = list(done)
            await until(lambda: all(d > b + 5 for d, b in zip(done, before, strict=True)))
            for _, c in pair:
                assert c.statistics().endpoints[0].share == 2
            phase = "rejoin"
            redis_server.start()
            await until(lambda: all(c.link.mode == "connected" for _, c in pair))
            await until(lambda: _holders_match(r, pair))
            await until(lambda: all(s.stats().endpoints[0].limit == 4 for s, _ in pair))
            stop.set()
        events = [e for sub in subs for e in _drain(sub)]
    assert peaks["before"] == 4
    assert peaks["fallback"] <= 4  # two shares of two
    assert peaks["rejoin"] <= 4
    kinds = [type(e) for e in events]
    assert kinds.count(CoordinationLost) == 2
    assert kinds.count(CoordinationRejoining) >= 2
    assert kinds.count(CoordinationRestored) >= 2
    lost = [e for e in events if isinstance(e, CoordinationLost)]
    assert all(e.shares == {"gpu": 2} for e in lost)


async def _holders_match(r: aioredis.Redis, pair: list[tuple[lmgate.Scheduler, Redis]]) -> bool:
    """Redis counts exactly the leases that run (checked between syncs)."""
    held = {m.decode() for m in await r.zrange(HOLDERS, 0, -1)}
    mine = set().union(*(set(c.eps["gpu"].book.held) for _, c in pair))
    return held == mine


class Growing(msgspec.Struct, frozen=True):
    """A test policy: the limit grows by one per five successes, up to six."""

    def build(self) -> GrowingState:
        return GrowingState()


class GrowingState:
    def __init__(self) -> None:
        self.limit = 2
        self.n = 0

    def update(self, sample: Sample, now: float) -> int:
        if sample.outcome == "success":
            self.n += 1
            self.limit = min(6, 2 + self.n // 5)
        return self.limit

    def tick(self, now: float) -> int:
        return self.limit

    def statistics(self) -> LimitStatistics:
        return LimitStatistics(policy="Growing", limit=self.limit, samples=self.n)


async def test_one_leader_computes_the_shared_limit_and_fails_over(redis_url: str) -> None:
    """The leader learns from every process's samples; when it leaves, another leads."""
    ca, cb = coordinator(redis_url), coordinator(redis_url)
    leave = anyio.Event()
    seen_a: list[Any] = []

    async def leader(task_status: anyio.abc.TaskStatus[lmgate.Scheduler]) -> None:
        async with lmgate.Scheduler(endpoints(), limit=Growing(), coordinator=ca) as a:
            with a.events.subscribe() as sub:
                await until(lambda: ca.eps["gpu"].leading)
                task_status.started(a)
                await leave.wait()
                seen_a.extend(_drain(sub))

    async with anyio.create_task_group() as tg:
        a = await tg.start(leader)
        async with lmgate.Scheduler(endpoints(), limit=Growing(), coordinator=cb) as b:
            sub_b = b.events.subscribe()
            await until(lambda: cb.link.mode == "connected")
            assert not cb.eps["gpu"].leading
            for _ in range(25):  # only the follower runs calls
                await b.run(_noop, model="m")
            await until(lambda: b.stats().endpoints[0].limit == 6)
            assert a.stats().endpoints[0].limit == 6
            assert cb.statistics().endpoints[0].samples_shipped >= 20
            leave.set()  # the leader's process goes away
            await until(lambda: cb.eps["gpu"].leading, within=5.0)
            assert any(isinstance(e, LeadershipChanged) and e.leader for e in _drain(sub_b))
    assert any(isinstance(e, SharedLimitPublished) and e.new == 6 for e in seen_a)
    assert any(isinstance(e, LeadershipChanged) and e.leader for e in seen_a)


def _drain(sub: lmgate.events.Subscription) -> list[Any]:
    out = []
    while (e := sub.get_nowait()) is not None:
        out.append(e)
    return out


async def test_a_breaker_opening_in_one_process_stops_the_others(redis_url: str) -> None:
    """One process's open breaker routes the endpoint down everywhere until it closes."""
    async with schedulers(redis_url, 2) as [(_, ca), (b, _)]:
        sub = b.events.subscribe()
        await ca.handle.set_local_state("gpu", "down", "open")
        await until(lambda: b.stats().endpoints[0].state == "shared:open")
        with pytest.raises(lmgate.EndpointUnavailable):
            await b.run(_noop, model="m")
        await ca.handle.set_local_state("gpu", "up", "healthy")
        await until(lambda: b.stats().endpoints[0].state == "healthy")
        assert await b.run(_noop, model="m") == "ok"
        applied = [e for e in _drain(sub) if isinstance(e, SharedStateApplied)]
        assert [e.shared for e in applied] == [True, False]


async def test_starting_without_redis_serves_from_one_slot() -> None:
    """No Redis at start: the scheduler still serves, within one slot, and says why."""
    from ._server import free_port

    c = coordinator(f"redis://127.0.0.1:{free_port()}/0")
    async with lmgate.Scheduler(endpoints(), limit=Fixed(8), coordinator=c) as s:
        assert c.link.mode == "fallback"
        assert s.stats().endpoints[0].limit == 1
        assert await s.run(_noop, model="m") == "ok"
        st = c.statistics()
        assert st.mode == "fallback"
        assert st.errors >= 1
        assert st.endpoints[0].local_grants == 1
        assert st.endpoints[0].share == 1
        assert "fallback" in repr(c)


async def test_a_slow_redis_counts_as_down_until_it_answers_again(
    redis_server: RedisServer, redis_url: str
) -> None:
    """Commands slower than op_timeout send processes to their shares; they rejoin after."""
    async with schedulers(redis_url, 2, limit=Fixed(4)) as pair:
        subs = [s.events.subscribe() for s, _ in pair]
        # Every client's commands wait 1.5 s: Redis is up but too slow.
        await anyio.to_thread.run_sync(redis_server.command, "CLIENT", "PAUSE", "1500")
        await until(lambda: all(c.link.mode == "fallback" for _, c in pair))
        results = []
        async with anyio.create_task_group() as tg:
            for s, _ in pair:

                async def one(s: lmgate.Scheduler = s) -> None:
                    results.append(await s.run(_noop, model="m", timeout=1.0))

                tg.start_soon(one)
        assert results == ["ok", "ok"]  # served from the shares while Redis stalls
        await until(lambda: all(c.link.mode == "connected" for _, c in pair))
        for sub in subs:
            lost = [e for e in _drain(sub) if isinstance(e, CoordinationLost)]
            assert lost
            assert "Timeout" in lost[0].reason


async def test_each_endpoint_has_its_own_shared_limit(redis_url: str) -> None:
    """Two endpoints (one with an awkward name) keep separate shared limits."""
    names = ["gpu-a", "gpu {b}:x"]
    eps = [lmgate.Endpoint(n, url="http://127.0.0.1:9", models=["m"]) for n in names]
    cur = dict.fromkeys(names, 0)
    peak = dict.fromkeys(names, 0)

    async def call(lease: lmgate.Lease) -> None:
        n = lease.endpoint.name
        cur[n] += 1
        peak[n] = max(peak[n], cur[n])
        await anyio.sleep(0.005)
        cur[n] -= 1

    async with AsyncExitStack() as stack:
        scheds = []
        for _ in range(2):
            c = coordinator(redis_url)
            scheds.append(
                await stack.enter_async_context(
                    lmgate.Scheduler(eps, limit=Fixed(2), coordinator=c)
                )
            )
        async with anyio.create_task_group() as tg:
            for s in scheds:
                for _ in range(6):

                    async def worker(s: lmgate.Scheduler = s) -> None:
                        for _ in range(8):
                            await s.run(call, model="m")

                    tg.start_soon(worker)
    assert peak == dict.fromkeys(names, 2)
