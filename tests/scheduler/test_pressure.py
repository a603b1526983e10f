"""Resource pressure applied by a real scheduler: shed low priority, pause, recover."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
import pytest
import trio.testing

import lmgate
from lmgate import Rejected
from lmgate.actors._resources import ResourceRecommendationChanged
from lmgate.policies import Fixed
from lmgate.policies.resources import ResourceGuard, ResourceReadings
from lmgate.scheduler._pressure import QueueShed, ResourcesStatistics
from lmgate.sim import Dist, SimServer

from ._support import check_identity

TOTAL = 1_000_000
MODEL = "sim-8b"


def run_virtual(fn: Callable[[], Awaitable[Any]]) -> Any:
    clock = trio.testing.MockClock(autojump_threshold=0)
    return anyio.run(fn, backend="trio", backend_options={"clock": clock})


def resources(stats: lmgate.Stats) -> ResourcesStatistics:
    assert stats.resources is not None
    return stats.resources


def memory(fraction: float) -> ResourceReadings:
    return ResourceReadings(memory_available=round(fraction * TOTAL), memory_total=TOTAL)


def server(name: str, port: int, seed: int) -> SimServer:
    return SimServer(
        name=name, port=port, model=MODEL, slots=8, knee=4, base_step=0.01,
        output_tokens=Dist.fixed(20), prompt_tokens=Dist.fixed(50), seed=seed,
    )  # fmt: skip


#: Free memory over (virtual) time: calm, tight, tighter, critical, calm again.
SQUEEZE = ((0.0, 0.5), (10.0, 0.13), (20.0, 0.09), (30.0, 0.04), (33.0, 0.5))


def squeeze_at(t: float) -> float:
    return [f for start, f in SQUEEZE if start <= t][-1]


def test_a_memory_squeeze_sheds_low_priority_first_pauses_and_recovers() -> None:
    """Calm, reduce_context, shed (priority 2 refused and evicted), pause, recovery."""

    async def main() -> dict[str, Any]:
        servers = {s.config.name: s for s in (server("a", 8080, 1), server("b", 8081, 2))}

        async def read() -> ResourceReadings:
            return memory(squeeze_at(anyio.current_time()))

        started: list[tuple[float, int]] = []  # (when a call began, priority)
        ended: list[tuple[float, int, str]] = []  # (when, priority, outcome)
        timeline: list[tuple[float, str, bool, float]] = []
        async with lmgate.Scheduler(
            [s.endpoint() for s in servers.values()],
            limit=Fixed(4),
            queue=lmgate.QueueOptions(size=64),
            resources=lmgate.ResourceOptions(
                guard=ResourceGuard(min_hold=5.0), interval=1.0, reader=read
            ),
        ) as sched:
            sub = sched.events.subscribe(maxlen=256)

            async def call(lease: lmgate.Lease) -> Any:
                started.append((anyio.current_time(), lease.priority))
                return await servers[lease.endpoint.name](lease)

            async def client(priority: int, stop: float) -> None:
                while anyio.current_time() < stop:
                    try:
                        await sched.run(call, model=MODEL, priority=priority, timeout=30.0)
                    except Rejected as exc:
                        ended.append((anyio.current_time(), priority, f"rejected:{exc.reason}"))
                        await anyio.sleep(0.5)
                    except lmgate.LmgateError as exc:
                        ended.append((anyio.current_time(), priority, type(exc).__name__))
                        await anyio.sleep(0.5)
                    else:
                        ended.append((anyio.current_time(), priority, "completed"))
                    await anyio.sleep(0.05)

            async def monitor(stop: float) -> None:
                while anyio.current_time() < stop:
                    s = sched.stats()
                    check_identity(s)
                    assert s.resources is not None
                    r = s.resources
                    timeline.append(
                        (anyio.current_time(), r.recommendation, r.paused, r.context_factor)
                    )
                    await anyio.sleep(0.25)

            async with anyio.create_task_group() as tg:
                tg.start_soon(monitor, 70.0)
                for i in range(12):
                    tg.start_soon(client, 0 if i < 4 else 2, 60.0)
            final = sched.stats()
            events = []
            while (e := sub.get_nowait()) is not None:
                events.append(e)
        check_identity(final)
        return {
            "started": started,
            "ended": ended,
            "timeline": timeline,
            "events": events,
            "final": final,
        }

    r = run_virtual(main)
    changes = [
        (e.at, e.recommendation)
        for e in r["events"]
        if isinstance(e, ResourceRecommendationChanged)
    ]
    assert changes == [
        (10.0, "reduce_context"),
        (20.0, "shed_low_priority"),
        (30.0, "pause_admission"),
        (35.0, "proceed"),  # calm at 33 is trusted only after min_hold
    ]
    by_phase: dict[str, tuple[float, float]] = {
        "calm": (0.0, 10.0),
        "reduce": (10.0, 20.0),
        "shed": (20.0, 30.0),
        "pause": (30.0, 35.0),
        "after": (35.0, 60.0),
    }

    def starts(phase: str, priority: int) -> int:
        lo, hi = by_phase[phase]
        return sum(1 for t, p in r["started"] if lo <= t < hi and p == priority)

    # Before the squeeze and while contexts shrink, everyone is served.
    assert starts("calm", 0) > 0
    assert starts("calm", 2) > 0
    assert starts("reduce", 2) > 0
    # Shedding: low priority stops, high priority goes on.
    assert starts("shed", 2) == 0
    assert starts("shed", 0) > 0
    shed_refusals = [e for e in r["ended"] if e[2] == "rejected:shed"]
    assert shed_refusals
    assert all(p == 2 for _, p, _ in shed_refusals)
    assert all(20.0 <= t < 35.0 for t, _, _ in shed_refusals)
    # Paused: nothing starts at all; queued high-priority work waits, then goes.
    assert starts("pause", 0) == 0
    assert starts("pause", 2) == 0
    assert any(t == 35.0 and p == 0 for t, p in r["started"])
    # Recovery: both priorities are served again.
    assert starts("after", 0) > 0
    assert starts("after", 2) > 0
    # High priority is never refused for pressure, and nothing failed.
    assert not [e for e in r["ended"] if e[1] == 0 and e[2] != "completed"]
    # stats() tracked it: factor halves from reduce_context, paused only at the worst.
    for t, rec, paused, factor in r["timeline"]:
        assert paused == (rec == "pause_admission"), (t, rec, paused)
        assert factor == (1.0 if rec == "proceed" else 0.5), (t, rec, factor)
    final = r["final"]
    assert final.outcomes["rejected"] == len(shed_refusals)
    assert final.resources.shed + final.resources.evicted == len(shed_refusals)
    assert final.resources.recommendation == "proceed"
    assert final.resources.guard.changes == 4


@pytest.mark.anyio
async def test_queued_low_priority_is_evicted_and_paused_work_resumes() -> None:
    """Readings pushed one at a time: eviction counts as rejected; the pause holds the queue."""
    with Feed() as readings:
        await squeeze_one_endpoint(readings)


async def squeeze_one_endpoint(readings: Feed) -> None:
    gate = anyio.Event()

    async def call(lease: lmgate.Lease) -> int:
        await gate.wait()
        return lease.priority

    ep = lmgate.Endpoint("gpu", url="http://10.0.0.1:1", models=("m",))  # no local listener
    async with lmgate.Scheduler(
        [ep],
        limit=Fixed(1),
        resources=lmgate.ResourceOptions(
            guard=ResourceGuard(min_hold=0.0), interval=0.001, reader=readings
        ),
    ) as sched:  # fmt: skip
        sub = sched.events.subscribe()
        results: dict[str, object] = {}

        async def request(key: str, priority: int) -> None:
            try:
                results[key] = await sched.run(call, model="m", priority=priority)
            except Rejected as exc:
                results[key] = exc.reason

        async with anyio.create_task_group() as tg:
            tg.start_soon(request, "busy", 0)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(request, "low", 5)
            tg.start_soon(request, "high", 0)
            await anyio.wait_all_tasks_blocked()
            assert sched.stats().queued == 2
            await readings.push(memory(0.09), sub)  # shed_low_priority
            await anyio.wait_all_tasks_blocked()
            assert results == {"low": "shed"}
            assert sched.stats().queued == 1
            await readings.push(memory(0.04), sub)  # pause_admission
            gate.set()  # the call in flight ends; its slot is not handed on
            await anyio.wait_all_tasks_blocked()
            s = sched.stats()
            check_identity(s)
            assert (s.in_flight, s.queued, resources(s).paused) == (0, 1, True)
            with pytest.raises(Rejected) as info:
                await sched.run(call, model="m", priority=1)
            assert info.value.reason == "shed"
            await readings.push(memory(0.5), sub)  # proceed: the queue moves
        assert results == {"low": "shed", "busy": 0, "high": 0}
        s = sched.stats()
        check_identity(s)
        assert s.outcomes["rejected"] == 2
        assert (resources(s).shed, resources(s).evicted) == (1, 1)
        while (e := sub.get_nowait()) is not None:
            readings.seen.append(e)
        shed = [e for e in readings.seen if isinstance(e, QueueShed)]
        assert [(e.priority_above, e.evicted) for e in shed] == [(0, 1)]


class Feed:
    """A reader that hands out exactly the readings a test pushes."""

    def __init__(self) -> None:
        self._send, self._recv = anyio.create_memory_object_stream[ResourceReadings](1)
        self._send.send_nowait(memory(0.5))
        self.seen: list[lmgate.events.Event] = []

    def __enter__(self) -> Feed:
        return self

    def __exit__(self, *exc: object) -> None:
        self._send.close()
        self._recv.close()

    async def __call__(self) -> ResourceReadings:
        return await self._recv.receive()

    async def push(self, readings: ResourceReadings, sub: lmgate.events.Subscription) -> None:
        """Send one reading and wait until the scheduler has applied its change."""
        await self._send.send(readings)
        while True:
            event = await sub.get()
            self.seen.append(event)
            if isinstance(event, ResourceRecommendationChanged):
                return


def test_the_plain_path_stays_plain() -> None:
    """Without hooks or pressure no watch is installed; shedding installs one, calm removes it."""

    async def main() -> list[bool]:
        with Feed() as readings:
            return await shed_then_calm(readings)

    assert run_virtual(main) == [False, False, True, False]


async def shed_then_calm(readings: Feed) -> list[bool]:
    seen: list[bool] = []
    ep = lmgate.Endpoint("gpu", url="http://10.0.0.1:1", models=("m",))
    async with lmgate.Scheduler(
        [ep],
        resources=lmgate.ResourceOptions(
            guard=ResourceGuard(min_hold=0.0), interval=1.0, reader=readings
        ),
    ) as sched:  # fmt: skip
        adm = sched._admission
        sub = sched.events.subscribe()
        seen.append(adm.watch is not None)
        await readings.push(memory(0.13), sub)  # reduce_context: nothing per request
        seen.append(adm.watch is not None)
        await readings.push(memory(0.09), sub)
        seen.append(adm.watch is not None)
        await readings.push(memory(0.5), sub)
        seen.append(adm.watch is not None)
        assert math.isclose(resources(sched.stats()).context_factor, 1.0)
    return seen


def test_queue_shed_event_encodes() -> None:
    """The eviction event is a tagged Event that round-trips through JSON."""
    event = QueueShed(at=1.0, priority_above=0, evicted=3)
    data = msgspec.json.encode(event)
    assert msgspec.json.decode(data)["type"] == "QueueShed"
    assert msgspec.json.decode(data, type=QueueShed) == event
