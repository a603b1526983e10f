"""A virtual-time soak: 100,000 requests from 200 clients over faulty simulated servers.

The servers are ``lmgate.sim.SimServer``s (continuous batching, token
budgets) with faults injected on a timer -- crashes, black holes, 429s with
Retry-After, 503 while loading -- and the calls add their own: some raise,
some hang past their deadline, some callers give up.  A trio instrument
checks the outcome identity and the bounds after every task step; each
request checks it ended within 100 ms of its deadline; tracemalloc shows the
scheduler's memory at 20,000 requests is what it is at 100,000.
"""

from __future__ import annotations

import math
import os
import random
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing

import lmgate
from lmgate import (
    DeadlineExceeded,
    EndpointUnavailable,
    Lease,
    Overloaded,
    QueueOptions,
    Rejected,
    Scheduler,
    SchedulerClosed,
)
from lmgate.actors._resilience import Resilience
from lmgate.policies import Fixed
from lmgate.scheduler._admission import Admission
from lmgate.sim import Dist, SimServer

from ._support import lmgate_tasks

#: The outcomes the issue names; each must occur for the soak to count.
OUTCOMES = (
    "completed",
    "failed",
    "rejected",
    "deadline_exceeded",
    "cancelled",
    "unavailable",
    "closed",
)
TOTAL = 100_000
EARLY = 20_000
CLIENTS = 200
SLACK = 0.1
#: Virtual seconds an up endpoint may sit with a trial cap of 0 and nothing running.
STRANDED = 5.0
_LMGATE = os.path.dirname(lmgate.__file__)
#: The scheduler's own code: what must not grow with the request count.
_SCHEDULER_FILES = [
    os.path.join(_LMGATE, part, "*")
    for part in ("scheduler", "actors", "policies", "_events.py", "_endpoint.py")
]


class Boom(Exception):
    """A call's own failure."""


class Watch(trio.abc.Instrument):
    """Checks the counters after every task step and keeps the peaks."""

    def __init__(self, adm: Admission) -> None:
        self.adm = adm
        self.violations: list[str] = []
        self.steps = 0
        self.peak_queued = 0
        self.peak_in_flight = 0
        self.stranded: dict[int, float] = {}

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        a = self.adm
        self.steps += 1
        if a.submitted != sum(a.outcomes.values()) + a.queued + a.in_flight:
            self.violations.append(f"identity broken by {task.name}")
        if a.queued > a.queue_size:
            self.violations.append("queue over its bound")
        for s in a.slots:
            if s.in_flight > s.limit:
                self.violations.append(f"{s.endpoint.name} over its limit")
            # An endpoint that is up but takes nothing (a half-open trial cap
            # of 0 with nothing running) must be answered by its actor soon.
            if s.routing == "up" and s.effective_limit == 0 and s.in_flight == 0:
                since = self.stranded.setdefault(s.index, trio.current_time())
                if trio.current_time() - since > STRANDED:
                    self.violations.append(f"{s.endpoint.name} stranded since {since}")
            else:
                self.stranded.pop(s.index, None)
        self.peak_queued = max(self.peak_queued, a.queued)
        self.peak_in_flight = max(self.peak_in_flight, a.in_flight)
        if len(self.violations) > 20:
            del self.violations[10:]


@dataclass
class Figures:
    issued: int = 0
    seen: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    late: list[float] = field(default_factory=list)
    memory: dict[int, int] = field(default_factory=dict)
    heap_entries: dict[int, int] = field(default_factory=dict)
    all_issued: trio.Event = field(default_factory=trio.Event)


def _servers() -> dict[str, SimServer]:
    tokens = Dist.lognormal(120, 0.6, min=8, max=1000)
    return {
        "fast": SimServer(
            name="fast",
            model="llama",
            port=8001,
            slots=16,
            base_step=0.004,
            output_tokens=tokens,
            seed=1,
        ),
        "slow": SimServer(
            name="slow",
            model="llama",
            port=8002,
            slots=4,
            base_step=0.02,
            output_tokens=tokens,
            seed=2,
        ),
        "flaky": SimServer(
            name="flaky",
            model="qwen",
            port=8003,
            slots=8,
            base_step=0.006,
            output_tokens=tokens,
            max_queue=4,
            queue_full_retry_after=1.0,
            seed=3,
        ),
    }


async def _faults(servers: dict[str, SimServer], rng: random.Random) -> None:
    """Every so often, something goes wrong with one server for a while."""
    while True:
        await trio.sleep(rng.uniform(20, 60))
        server = servers[rng.choice(["flaky", "flaky", "slow", "fast"])]
        kind = rng.choice(["crash", "hang", "rate_limit", "loading"])
        if kind == "crash":
            server.crash()
            await trio.sleep(rng.uniform(3, 15))
            server.restart()
        elif kind == "hang":
            server.hang()
            await trio.sleep(rng.uniform(3, 15))
            server.unhang()
        elif kind == "rate_limit":
            server.rate_limit(rng.uniform(2, 10), retry_after=rng.choice([None, 1.0, 3.0]))
        else:
            server.start_loading(rng.uniform(2, 8))


async def _client(
    sched: Scheduler,
    servers: dict[str, SimServer],
    figures: Figures,
    seed: int,
    snapshot: Any,
) -> None:
    rng = random.Random(seed)
    while figures.issued < TOTAL:
        figures.issued += 1
        if figures.issued in (EARLY, TOTAL):
            snapshot(figures.issued)
        if figures.issued == TOTAL:
            figures.all_issued.set()
        pick = rng.random()
        model = "llama" if pick < 0.65 else ("qwen" if pick < 0.9 else "phi")
        timeout = None if rng.random() < 0.2 else rng.uniform(2.0, 30.0)
        priority = rng.choice([0, 0, 1, 2, 3])
        fault = rng.random()
        api = rng.random()
        give_up = rng.uniform(0.0, 3.0) if rng.random() < 0.02 else 120.0

        async def call(lease: Lease, fault: float = fault) -> object:
            if fault < 0.01:
                raise Boom
            if fault < 0.015:
                await trio.sleep_forever()  # a call that hangs past its deadline
            return await servers[lease.endpoint.name](lease)

        deadline = math.inf if timeout is None else trio.current_time() + timeout
        outcome = "cancelled"
        revoked = False  # an acquire()d lease the closing scheduler took back
        with trio.move_on_after(give_up):
            try:
                if api < 0.8:
                    await sched.run(call, model=model, priority=priority, timeout=timeout)
                elif api < 0.95:
                    async with sched.lease(model=model, priority=priority, timeout=timeout) as le:
                        await call(le)
                else:
                    # A transport's way: acquire, enforce the deadline, release.
                    lease = await sched.acquire(model=model, priority=priority, timeout=timeout)
                    try:
                        with trio.fail_at(lease.deadline):
                            await call(lease)
                    except trio.TooSlowError:
                        revoked = lease.released
                        lease.release(DeadlineExceeded("deadline passed in the call"))
                        raise DeadlineExceeded("deadline passed in the call") from None
                    except BaseException as exc:
                        revoked = lease.released
                        lease.release(exc)
                        raise
                    revoked = lease.released
                    lease.release()
                outcome = "completed"
            except DeadlineExceeded:  # before OSError: it is a TimeoutError
                outcome = "deadline_exceeded"
            except (Boom, Overloaded, OSError, lmgate.ContextOverflow):
                outcome = "failed"
            except Rejected as exc:
                outcome = "rejected"
                figures.rejected[exc.reason] += 1
            except EndpointUnavailable:
                outcome = "unavailable"
            except SchedulerClosed:
                outcome = "closed"
        figures.seen["closed" if revoked else outcome] += 1
        late = trio.current_time() - deadline
        if late > SLACK:
            figures.late.append(late)
        await trio.sleep(rng.expovariate(0.5))


async def _soak() -> tuple[Scheduler, Watch, Figures, float]:
    servers = _servers()
    endpoints = [
        servers["fast"].endpoint(models=["llama", "qwen"], limit=Fixed(16)),
        servers["slow"].endpoint(limit=Fixed(4)),
        servers["flaky"].endpoint(models=["qwen", "phi"], limit=Fixed(8)),
    ]
    sched = Scheduler(
        endpoints, limit=Fixed(8), queue=QueueOptions(size=128), resilience=Resilience(seed=5)
    )
    figures = Figures()

    def snapshot(at: int) -> None:
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(True, pattern) for pattern in _SCHEDULER_FILES]
        )
        figures.memory[at] = sum(stat.size for stat in snap.statistics("filename"))
        figures.heap_entries[at] = sched._admission.queue.heap_entries()

    watch = Watch(sched._admission)
    trio.lowlevel.add_instrument(watch)
    async with trio.open_nursery() as outer:
        outer.start_soon(_faults, servers, random.Random(7))
        async with trio.open_nursery() as clients:
            async with sched:
                for i in range(CLIENTS):
                    clients.start_soon(_client, sched, servers, figures, 1000 + i, snapshot)
                await figures.all_issued.wait()
            # Closed under full load: what was queued ends closed, what ran
            # had the grace period, and the clients stop issuing.
            assert lmgate_tasks() == []
        outer.cancel_scope.cancel()
    trio.lowlevel.remove_instrument(watch)
    assert lmgate_tasks() == []
    return sched, watch, figures, trio.current_time()


@pytest.mark.slow  # about a minute of CPU: tracemalloc traces every allocation
@pytest.mark.timeout(900)
def test_soak_100k_requests() -> None:
    """100k requests over faulty servers: identity every step, deadlines kept, memory flat."""
    # Trio shuffles tasks woken together; seed it so every run is the same run.
    shuffle = getattr(trio._core._run, "_r", None)
    if isinstance(shuffle, random.Random):
        shuffle.seed(2024)
    tracemalloc.start(1)
    t0 = time.perf_counter()
    try:
        sched, watch, figures, virtual = trio.run(
            _soak, clock=trio.testing.MockClock(autojump_threshold=0)
        )
    finally:
        tracemalloc.stop()
    wall = time.perf_counter() - t0
    stats = sched.stats()
    report = {
        "wall_s": round(wall, 1),
        "virtual_s": round(virtual, 1),
        "submitted": stats.submitted,
        "outcomes": stats.outcomes,
        "rejected_by_reason": dict(figures.rejected),
        "peak_queued": watch.peak_queued,
        "peak_in_flight": watch.peak_in_flight,
        "peak_in_flight_per_endpoint": {e.name: e.peak_in_flight for e in stats.endpoints},
        "memory_bytes": figures.memory,
        "heap_entries": figures.heap_entries,
        "task_steps": watch.steps,
    }
    print("\nsoak:", report)
    assert watch.violations == []
    assert stats.submitted == TOTAL
    assert stats.queued == 0
    assert stats.in_flight == 0
    # What the callers saw is what was counted, request by request.
    assert {k: v for k, v in stats.outcomes.items() if v} == dict(figures.seen)
    assert figures.late == []
    # Every kind of ending happened, so the run exercised every path.
    for outcome in OUTCOMES:
        assert stats.outcomes[outcome] > 0, outcome
    # Memory of the scheduler does not grow with the number of requests.
    early, late = figures.memory[EARLY], figures.memory[TOTAL]
    assert late <= early * 1.10 + 64 * 1024, figures.memory
    assert figures.heap_entries[TOTAL] <= 2 * 128 + 64 * 3  # compaction bound, 3 models
