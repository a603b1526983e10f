"""``lmgate demo``: the scheduler driving three simulated endpoints, live.

It needs no model server.  Several clients with different priorities send a
few thousand requests through one scheduler over a fast, a slow and a flaky
simulated endpoint for about ten seconds of real time; a live table shows
queue, in-flight and limit per endpoint and the outcome counters, and a
summary follows.  The flaky endpoint loads a model (503) at the start,
rate-limits for a while, and crashes and restarts once.
"""

from __future__ import annotations

import math
import random
from typing import Any

import anyio

import lmgate
from lmgate.actors import Resilience
from lmgate.policies import Adaptive, Fixed, HealthSchedule, LimitPolicy
from lmgate.scheduler import QueueOptions
from lmgate.sim import Dist, SimServer, sim_health

__all__ = ["run_demo"]


def _servers() -> dict[str, SimServer]:
    common: dict[str, Any] = {"model": "demo-8b", "prompt_tokens": Dist.fixed(64)}
    return {
        "fast": SimServer(
            name="fast",
            port=8080,
            slots=24,
            knee=16,
            base_step=0.001,
            slope_below=0.00005,
            slope_above=0.0004,
            output_tokens=Dist.uniform(8, 32),
            seed=1,
            **common,
        ),
        "slow": SimServer(
            name="slow",
            port=11434,
            slots=6,
            knee=4,
            base_step=0.01,
            slope_above=0.004,
            output_tokens=Dist.uniform(8, 32),
            seed=2,
            **common,
        ),
        "flaky": SimServer(
            name="flaky",
            port=8000,
            slots=12,
            knee=8,
            base_step=0.002,
            slope_below=0.0001,
            slope_above=0.001,
            output_tokens=Dist.uniform(8, 32),
            seed=3,
            **common,
        ),
    }


async def _chaos(flaky: SimServer, seconds: float) -> None:
    flaky.start_loading(0.15 * seconds)
    await anyio.sleep(0.35 * seconds)
    flaky.rate_limit(0.1 * seconds, retry_after=0.2)
    await anyio.sleep(0.2 * seconds)
    flaky.crash()
    await anyio.sleep(0.1 * seconds)
    flaky.restart()


def _table(sched: lmgate.Scheduler, servers: dict[str, SimServer], elapsed: float) -> Any:
    from rich.table import Table

    stats = sched.stats()
    table = Table(title=f"lmgate demo — {elapsed:5.1f}s", expand=False)
    for col in ("endpoint", "state", "limit", "in flight", "peak", "samples", "server"):
        table.add_column(col, justify="right" if col not in ("endpoint", "state") else "left")
    for ep in stats.endpoints:
        srv = servers[ep.name].statistics()
        table.add_row(
            ep.name,
            f"{ep.state}/{ep.routing}",
            str(ep.limit),
            str(ep.in_flight),
            str(ep.peak_in_flight),
            str(ep.samples),
            srv.state,
        )
    outcomes = "  ".join(f"{k}={v}" for k, v in stats.outcomes.items() if v)
    table.caption = (
        f"submitted={stats.submitted}  queued={stats.queued}  in flight={stats.in_flight}\n"
        f"{outcomes}"
    )
    return table


async def run_demo(
    *, seconds: float = 10.0, clients: int = 6, live: bool = True, policy: str = "adaptive"
) -> int:
    """Run the demo; returns a process exit code."""
    limit: LimitPolicy = Fixed(12) if policy == "fixed" else Adaptive()
    servers = _servers()
    health = sim_health(servers)
    endpoints = [s.endpoint(limit=None, health=health) for s in servers.values()]
    latencies: list[float] = []
    rng = random.Random(7)

    async def call(lease: lmgate.Lease) -> Any:
        return await servers[lease.endpoint.name](lease)

    # Probe often: the demo's faults last seconds, not minutes.
    probes = HealthSchedule(interval=1.0, recovering_interval=0.1, down_max=1.0, probe_timeout=0.2)
    async with lmgate.Scheduler(
        endpoints,
        limit=limit,
        queue=QueueOptions(size=512),
        grace=1.0,
        resilience=Resilience(probes=probes, seed=7),
    ) as sched:
        start = anyio.current_time()
        stop_at = start + seconds

        async def client(index: int) -> None:
            priority = index % 3
            while anyio.current_time() < stop_at:
                t0 = anyio.current_time()
                try:
                    await sched.run(call, model="demo-8b", priority=priority, timeout=2.0)
                    latencies.append(anyio.current_time() - t0)
                except lmgate.LmgateError:
                    await anyio.sleep(0.01)
                except (OSError, RuntimeError):
                    await anyio.sleep(0.005)
                await anyio.sleep(rng.random() * 0.004)

        async def workers() -> None:
            async with anyio.create_task_group() as tg:
                for i in range(clients):
                    for _ in range(12):
                        tg.start_soon(client, i)
                tg.start_soon(_chaos, servers["flaky"], seconds)

        if live:
            from rich.live import Live

            with Live(_table(sched, servers, 0.0), refresh_per_second=8) as view:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(workers)
                    while anyio.current_time() < stop_at:
                        await anyio.sleep(0.125)
                        view.update(_table(sched, servers, anyio.current_time() - start))
                view.update(_table(sched, servers, anyio.current_time() - start))
        else:
            await workers()
        elapsed = anyio.current_time() - start
        final = sched.stats()

    _summary(final, latencies, elapsed)
    return 0 if final.outcomes["completed"] > 0 else 1


def _summary(stats: lmgate.Stats, latencies: list[float], elapsed: float) -> None:
    latencies.sort()

    def q(p: float) -> float:
        if not latencies:
            return math.nan
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    done = stats.outcomes["completed"]
    ended = sum(stats.outcomes.values())
    print()
    print(f"requests submitted : {stats.submitted}")
    print(
        f"ended              : {ended} (every request ended exactly once: "
        f"{ended + stats.queued + stats.in_flight == stats.submitted})"
    )
    for name, count in stats.outcomes.items():
        print(f"  {name:18}: {count}")
    print(f"throughput         : {done / elapsed:.0f} completed/s over {elapsed:.1f}s")
    print(f"latency p50 / p99  : {q(0.5) * 1000:.0f} ms / {q(0.99) * 1000:.0f} ms")
    for ep in stats.endpoints:
        print(
            f"  {ep.name:6} limit={ep.limit:3d} highest limit={ep.peak_limit:3d}"
            f" peak in flight={ep.peak_in_flight:3d} samples={ep.samples}"
        )
        if (why := _policy_story(ep.policy.detail)) is not None:
            print(f"         {why}")
    print(
        "peak in flight never passes the highest limit: that is reached while a\n"
        "probe step or a startup doubling is measured, and a cut lowers the limit\n"
        "for new grants while requests already granted finish."
    )


def _policy_story(detail: dict[str, float]) -> str | None:
    """How an adaptive limit got where it is, from its counters; None for a fixed one."""
    if "probes" not in detail:
        return None
    counts = {k: int(detail.get(k, 0.0)) for k in ("probes", "kept", "cuts", "shifts")}
    phase = "still in startup" if detail.get("startup") else "past startup"
    return (
        f"{phase}; {counts['probes']} probe steps, {counts['kept']} kept;"
        f" {counts['cuts']} cuts on overload; {counts['shifts']} latency shifts"
    )
