"""Twenty-four hours of faults in virtual time: does every request end exactly once?

Eight simulated endpoints (five serve ``small`` with an 8k window, three
``big`` with 32k; each falls back to the other) take a day of Poisson
traffic whose rate follows a day/night curve, with random priorities,
deadlines (some none), idempotency, prompts that sometimes overflow the
small window, and callers that give up at random.  Each endpoint suffers
faults drawn at random: crash and restart, restart on another port, hang
(black hole), 503 while loading a model, 429 storms with or without
Retry-After, slow tokens, and a model swapped under its name.  The
scheduler runs with its breakers, health probes, retries and fallbacks.

It reports, from the scheduler's counters and from each caller's own
record: requests submitted and each outcome's count; requests lost (no
outcome) and duplicated (more outcomes than requests, by class); leases
leaked after close; requests that returned more than 100 ms after their
deadline; resident memory every simulated hour (peak and final); wall
time.  Targets: 0, 0, 0, 0, flat memory.  Results go to
``benchmarks/results/chaos.json``.

    nice python benchmarks/chaos.py [--hours 24] [--requests 1100000] [--seed 1]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import psutil
import trio
import trio.testing

import lmgate
from lmgate.actors._resilience import Resilience
from lmgate.policies._resilience_events import BreakerOpened
from lmgate.policies._retry import Retry
from lmgate.sim import Dist, SimServer, sim_health

LATE = 0.1
FAULTS = ("crash", "move", "hang", "loading", "rate_limit", "slow", "swap")


def _servers(seed: int) -> dict[str, SimServer]:
    servers = {}
    for i in range(8):
        big = i >= 5
        name = f"{'big' if big else 'small'}-{i}"
        servers[name] = SimServer(
            name=name,
            model="big" if big else "small",
            port=9000 + 10 * i,
            slots=16,
            knee=8,
            base_step=0.02,
            max_queue=32,
            context_window=32768 if big else 8192,
            prompt_tokens=Dist.lognormal(mean=900, sigma=1.0, min=16, max=30000),
            output_tokens=Dist.lognormal(mean=80, sigma=0.6, min=4, max=400),
            seed=seed * 100 + i,
        )
    return servers


async def _faults(
    srv: SimServer, rng: random.Random, mean_gap: float, counts: Counter[str], stop: float
) -> None:
    base = srv.config.port
    swaps = 0
    while True:
        await anyio.sleep(rng.expovariate(1.0 / mean_gap))
        if anyio.current_time() >= stop:
            return
        kind = rng.choice(FAULTS)
        counts[kind] += 1
        if kind == "crash":
            srv.crash()
            await anyio.sleep(rng.uniform(5, 120))
            srv.restart()
        elif kind == "move":
            srv.crash()
            await anyio.sleep(rng.uniform(5, 60))
            srv.restart(port=rng.choice([p for p in (base, base + 1, base + 2) if p != srv.port]))
        elif kind == "hang":
            srv.hang()
            await anyio.sleep(rng.uniform(10, 180))
            srv.unhang()
        elif kind == "loading":
            seconds = rng.uniform(10, 90)
            srv.start_loading(seconds)
            await anyio.sleep(seconds)
        elif kind == "rate_limit":
            seconds = rng.uniform(5, 60)
            srv.rate_limit(seconds, retry_after=rng.choice([None, 1.0, 5.0, 30.0]))
            await anyio.sleep(seconds)
        elif kind == "slow":
            srv.slow_tokens(rng.uniform(3, 10))
            await anyio.sleep(rng.uniform(30, 300))
            srv.slow_tokens(1.0)
        else:
            swaps += 1
            srv.swap_model(f"sha256:{srv.config.seed:04d}{swaps:04d}")


def _heal(servers: dict[str, SimServer]) -> None:
    for srv in servers.values():
        st = srv.statistics()
        if st.state == "crashed":
            srv.restart()
        elif st.state == "hung":
            srv.unhang()
        srv.slow_tokens(1.0)


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


async def run_chaos(
    *, hours: float = 24.0, requests: int = 1_100_000, seed: int = 1, fault_gap: float = 1200.0
) -> dict[str, Any]:
    """Run the chaos day in (virtual) time; returns the report as a dict."""
    seconds = hours * 3600.0
    rng = random.Random(seed)
    servers = _servers(seed)
    probe = sim_health(servers)
    endpoints = [
        srv.endpoint(health=probe, ports=(srv.port, srv.port + 1, srv.port + 2), limit=None)
        for srv in servers.values()
    ]
    sched = lmgate.Scheduler(
        endpoints,
        queue=lmgate.QueueOptions(size=2048),
        resilience=Resilience(
            seed=seed,
            retry=Retry(attempts=3),
            fallbacks={"small": ("big",), "big": ("small",)},
        ),
    )
    client: Counter[str] = Counter()
    started = 0
    late = 0
    worst_late = 0.0
    faults: Counter[str] = Counter()
    events: Counter[str] = Counter()
    opened: Counter[str] = Counter()
    memory: list[float] = []
    rate = requests / seconds  # mean arrivals per second

    async def call(lease: lmgate.Lease) -> Any:
        return await servers[lease.endpoint.name](lease)

    async def one(r: random.Random) -> None:
        nonlocal late, worst_late
        model = "small" if r.random() < 0.65 else "big"
        timeout = None if r.random() < 0.05 else r.uniform(2.0, 60.0)
        give_up = r.expovariate(1 / 20.0) if r.random() < 0.03 else math.inf
        outcome = "completed"
        begin = anyio.current_time()
        with anyio.CancelScope(deadline=begin + give_up) as scope:
            try:
                await sched.run(
                    call,
                    model=model,
                    priority=r.randrange(4),
                    timeout=timeout,
                    idempotent=r.random() < 0.5,
                )
            except lmgate.DeadlineExceeded:
                outcome = "deadline_exceeded"
            except lmgate.Rejected:
                outcome = "rejected"
            except lmgate.EndpointUnavailable:
                outcome = "unavailable"
            except lmgate.SchedulerClosed:
                outcome = "closed"
            except lmgate.ContextOverflow as exc:
                outcome = "rejected" if exc.before_send else "failed"
            except Exception:
                outcome = "failed"
        if scope.cancelled_caught:
            outcome = "cancelled"
        client[outcome] += 1
        if timeout is not None:
            over = anyio.current_time() - (begin + timeout)
            if over > LATE:
                late += 1
                worst_late = max(worst_late, over)

    async def arrivals(tg: anyio.abc.TaskGroup) -> None:
        nonlocal started
        t0 = anyio.current_time()
        while True:
            now = anyio.current_time() - t0
            if now >= seconds:
                return
            # A day/night curve around the mean rate.
            wave = 1.0 + 0.6 * math.sin(2 * math.pi * now / 86_400.0)
            await anyio.sleep(rng.expovariate(rate * wave))
            started += 1
            tg.start_soon(one, random.Random(rng.random()))

    async def watch() -> None:
        sub = sched.events.subscribe(maxlen=4096)
        with sub:
            while True:
                for _ in range(60):
                    await anyio.sleep(60.0)
                    while (ev := sub.get_nowait()) is not None:
                        events[type(ev).__name__] += 1
                        if isinstance(ev, BreakerOpened):
                            opened[ev.endpoint] += 1
                    s = sched.stats()
                    assert s.submitted == sum(s.outcomes.values()) + s.queued + s.in_flight
                gc.collect()
                memory.append(round(_rss_mb(), 1))

    wall = time.perf_counter()
    memory.append(round(_rss_mb(), 1))
    async with sched:
        stop = anyio.current_time() + seconds
        async with anyio.create_task_group() as clients:
            async with anyio.create_task_group() as background:
                background.start_soon(watch)
                for srv in servers.values():
                    background.start_soon(
                        _faults, srv, random.Random(rng.random()), fault_gap, faults, stop
                    )
                await arrivals(clients)
                background.cancel_scope.cancel()
            _heal(servers)
        # Every caller has returned: nothing may be queued or in flight now.
        mid = sched.stats()
    final = sched.stats()
    adm = sched._admission
    gc.collect()
    memory.append(round(_rss_mb(), 1))
    outcomes = dict(final.outcomes)
    ended = sum(outcomes.values())
    by_class = {k: outcomes.get(k, 0) - client.get(k, 0) for k in set(outcomes) | set(client)}
    return {
        "command": " ".join(["python", "benchmarks/chaos.py", *sys.argv[1:]]),
        "hours": hours,
        "seed": seed,
        "endpoints": len(servers),
        "started": started,
        "submitted": final.submitted,
        "outcomes": outcomes,
        "client_outcomes": dict(client),
        "lost": max(0, final.submitted - ended) + max(0, started - sum(client.values())),
        "duplicated": max(0, ended - final.submitted) + sum(v for v in by_class.values() if v > 0),
        "outcome_mismatch": {k: v for k, v in by_class.items() if v},
        "leaked_leases": adm.in_flight + len(adm.live) + sum(s.in_flight for s in adm.slots),
        "queued_after": mid.queued + final.queued,
        "late_past_deadline_100ms": late,
        "worst_late_seconds": round(worst_late, 3),
        "retries": final.retries,
        "fallbacks": final.fallbacks,
        "faults": dict(faults),
        "events": dict(events),
        "breaker_opens": dict(opened),
        "breaker_opens_in_stats": {e.name: e.opens for e in final.endpoints},
        "moves": {e.name: e.moves for e in final.endpoints},
        "model_changes": sum(e.model_changes for e in final.endpoints),
        "server_active_after": sum(s.statistics().active for s in servers.values()),
        "memory_mb": {
            "per_hour": memory,
            "peak": max(memory),
            "final": memory[-1],
            "first_hour": memory[1] if len(memory) > 2 else memory[0],
        },
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--requests", type=int, default=1_100_000, help="expected arrivals")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fault-gap", type=float, default=1200.0, help="mean s between faults")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/chaos.json"))
    args = parser.parse_args(argv)
    report = trio.run(
        lambda: run_chaos(
            hours=args.hours, requests=args.requests, seed=args.seed, fault_gap=args.fault_gap
        ),
        clock=trio.testing.MockClock(autojump_threshold=0),
    )
    report["python"] = sys.version.split()[0]
    report["machine"] = platform.machine()
    for key in (
        "submitted",
        "lost",
        "duplicated",
        "leaked_leases",
        "late_past_deadline_100ms",
        "retries",
        "fallbacks",
        "wall_seconds",
    ):
        print(f"{key:26} {report[key]}")
    for name, count in report["outcomes"].items():
        print(f"  {name:24} {count}")
    mem = report["memory_mb"]
    print(
        f"{'memory MB':26} first hour {mem['first_hour']}  peak {mem['peak']}  final {mem['final']}"
    )
    print(f"{'faults':26} {report['faults']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, sort_keys=True))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
