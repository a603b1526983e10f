"""Fault scenarios on simulated servers, in virtual time, through the whole scheduler.

Three (or two) simulated servers behind one ``Scheduler`` with breakers,
health probes (a small check of each simulator's state and port) and, where
a scenario needs them, retries and fallbacks.  Clients keep a steady load;
a fault strikes one server.  Every scenario asserts that traffic leaves the
sick endpoint within a bounded time, that its breaker re-opens no more
often than its backoff allows, that it gets traffic back once it recovers,
that every request ends exactly once (checked after every task step by a
trio instrument, and by each caller's own record), and that no lease leaks.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
import trio.testing

import lmgate
from lmgate import Endpoint, Scheduler
from lmgate.actors._resilience import ProbeReport, Resilience
from lmgate.policies import Fixed
from lmgate.policies._breaker import Breaker
from lmgate.policies._health import url_port
from lmgate.policies._resilience_events import BreakerOpened, EndpointMoved
from lmgate.policies._retry import Retry
from lmgate.scheduler._admission import Admission
from lmgate.sim import Dist, SimServer

SEED = 7
BREAKER = Breaker()  # the defaults, jitter included
LIMIT = 8
TIMEOUT = 10.0


class Identity(trio.abc.Instrument):
    """Checks that outcomes add up after every single task step."""

    def __init__(self, adm: Admission) -> None:
        self.adm = adm
        self.broken = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        a = self.adm
        if a.submitted != sum(a.outcomes.values()) + a.queued + a.in_flight:
            self.broken += 1


class World:
    """Simulated servers, a scheduler over them, and a record of every grant."""

    def __init__(
        self,
        specs: list[tuple[str, int, str]],
        *,
        retry: Retry | None = None,
        fallbacks: dict[str, list[str]] | None = None,
        windows: dict[str, int] | None = None,
        prompt: Dist | None = None,
    ) -> None:
        windows = windows or {}
        self.servers = {
            name: SimServer(
                name=name,
                model=model,
                port=port,
                seed=i,
                context_window=windows.get(model, 8192),
                prompt_tokens=prompt or Dist.fixed(100),
            )
            for i, (name, port, model) in enumerate(specs)
        }
        eps = [s.endpoint(health=self.probe) for s in self.servers.values()]
        self.sched = Scheduler(
            eps,
            limit=Fixed(LIMIT),
            resilience=Resilience(seed=SEED, retry=retry, fallbacks=fallbacks or {}),
        )
        self.grants: list[tuple[float, str, str]] = []
        self.client: Counter[str] = Counter()
        self.identity = Identity(self.sched._admission)

    async def probe(self, endpoint: Endpoint) -> ProbeReport:
        st = self.servers[endpoint.name].statistics()
        if st.state == "crashed" or url_port(endpoint.url) != st.port:
            raise ConnectionRefusedError(111, "connection refused")
        if st.state == "hung":
            await anyio.sleep_forever()
        await anyio.sleep(0.005)
        return ProbeReport(ok=True, loading=st.state == "loading", identities={st.model: st.digest})

    async def call(self, lease: lmgate.Lease) -> Any:
        self.grants.append((anyio.current_time(), lease.endpoint.name, lease.endpoint.url))
        return await self.servers[lease.endpoint.name](lease)

    async def client_loop(self, model: str, idempotent: bool) -> None:
        while True:
            try:
                await self.sched.run(self.call, model=model, timeout=TIMEOUT, idempotent=idempotent)
                self.client["completed"] += 1
            except lmgate.DeadlineExceeded:
                self.client["deadline_exceeded"] += 1
            except lmgate.Rejected:
                self.client["rejected"] += 1
            except lmgate.EndpointUnavailable:
                self.client["unavailable"] += 1
                await anyio.sleep(0.5)
            except lmgate.SchedulerClosed:
                self.client["closed"] += 1
                return
            except lmgate.ContextOverflow as exc:
                self.client["rejected" if exc.before_send else "failed"] += 1
            except Exception:
                self.client["failed"] += 1
                await anyio.sleep(0.05)

    def to(self, name: str, start: float, end: float = math.inf) -> list[tuple[float, str, str]]:
        return [g for g in self.grants if g[1] == name and start <= g[0] < end]

    def grants_in(self, start: float, end: float) -> list[tuple[float, str, str]]:
        return [g for g in self.grants if start <= g[0] < end]

    def run(
        self,
        timeline: Callable[[World], Awaitable[None]],
        *,
        end: float,
        clients: int = 24,
        model: str = "m",
        idempotent: bool = False,
    ) -> tuple[lmgate.Stats, list[lmgate.events.Event]]:
        """Run clients and the fault ``timeline`` until ``end``; close; check the books."""
        events: list[lmgate.events.Event] = []

        async def main() -> lmgate.Stats:
            trio.lowlevel.add_instrument(self.identity)
            async with self.sched as sched:
                sub = sched.events.subscribe(maxlen=100_000)
                async with anyio.create_task_group() as tg:
                    for i in range(clients):
                        tg.start_soon(self.client_loop, model, idempotent or i % 2 == 0)
                    tg.start_soon(timeline, self)
                    await anyio.sleep(end)
                    tg.cancel_scope.cancel()
                while (ev := sub.get_nowait()) is not None:
                    events.append(ev)
                sub.close()
            trio.lowlevel.remove_instrument(self.identity)
            return sched.stats()

        stats = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        # Every request ended exactly once, and nothing is left holding a slot.
        assert self.identity.broken == 0
        ended = sum(stats.outcomes.values())
        assert stats.submitted == ended
        assert stats.queued == stats.in_flight == 0
        assert not self.sched._admission.live
        assert all(e.in_flight == 0 for e in stats.endpoints)
        cancelled = stats.outcomes["cancelled"]
        assert cancelled <= clients  # only the callers stopped at the end
        mine = {k: v for k, v in self.client.items() if v}
        theirs = {k: v for k, v in stats.outcomes.items() if v and k != "cancelled"}
        assert mine == theirs
        return stats, events


def max_opens(span: float, cfg: Breaker = BREAKER) -> int:
    """The most openings the backoff allows in ``span`` seconds (each at least its shrunk time)."""
    n, t = 0, 0.0
    while t <= span:
        t += min(cfg.open_base * cfg.multiplier**n, cfg.open_max) * (1.0 - cfg.jitter)
        n += 1
    return n


def endpoint_stats(stats: lmgate.Stats, name: str) -> lmgate.EndpointStats:
    return next(e for e in stats.endpoints if e.name == name)


THREE = [("a", 8080, "m"), ("b", 8000, "m"), ("c", 11434, "m")]
#: How long traffic may still reach an endpoint after its fault starts: the
#: calls already running, then two failed probes (interval, timeout, the
#: quick re-probe, timeout) at worst.
SETTLE = 16.0
#: How long a recovered endpoint may wait for traffic: the longest open time
#: (with jitter), then a probe at its end.
RETURN = BREAKER.open_max * (1 + BREAKER.jitter) + 11.0


def test_crash_and_restart() -> None:
    """A crashed server stops getting calls at once; only trials reach it until it restarts."""

    async def timeline(w: World) -> None:
        await anyio.sleep(30)
        w.servers["b"].crash()
        await anyio.sleep(60)
        w.servers["b"].restart()

    w = World(THREE)
    stats, events = w.run(timeline, end=240)
    b = endpoint_stats(stats, "b")
    opened = [e for e in events if isinstance(e, BreakerOpened) and e.endpoint == "b"]
    assert opened
    assert opened[0].at == pytest.approx(30.0)
    outage = w.to("b", 30.0 + 0.001, 90.0)
    assert len(outage) <= len(opened) * BREAKER.half_open_trials
    assert len(opened) <= max_opens(60.0 + RETURN)
    back = w.to("b", 90.0)
    assert back
    assert back[0][0] <= 90.0 + RETURN
    assert b.breaker == "closed"
    assert b.routing == "up"
    assert len(w.to("a", 30, 90)) > len(w.to("a", 0, 30))  # the others took b's share


def test_restart_on_another_port() -> None:
    """A server back on another port is found there, re-probed, and called at its new URL."""

    async def timeline(w: World) -> None:
        await anyio.sleep(30)
        w.servers["b"].crash()
        await anyio.sleep(10)
        w.servers["b"].restart(port=1234)

    w = World(THREE)
    stats, events = w.run(timeline, end=240)
    moved = [e for e in events if isinstance(e, EndpointMoved)]
    assert [(e.endpoint, e.old_url, e.new_url) for e in moved] == [  # type: ignore[attr-defined]
        ("b", "http://127.0.0.1:8000", "http://127.0.0.1:1234")
    ]
    after = w.to("b", moved[0].at)
    assert after
    assert after[0][0] <= 40.0 + RETURN
    assert {url for _, _, url in after} == {"http://127.0.0.1:1234"}
    b = endpoint_stats(stats, "b")
    assert (b.port, b.moves, b.url) == (1234, 1, "http://127.0.0.1:1234")
    served = w.servers["b"].statistics().served
    assert served >= len(after) - LIMIT


def test_hang_then_recover() -> None:
    """A black hole absorbs at most its slots until its breaker opens, then gets traffic back."""

    async def timeline(w: World) -> None:
        await anyio.sleep(30)
        w.servers["c"].hang()
        await anyio.sleep(60)
        w.servers["c"].unhang()

    w = World(THREE)
    stats, events = w.run(timeline, end=260)
    opened = [e for e in events if isinstance(e, BreakerOpened) and e.endpoint == "c"]
    assert opened
    assert opened[0].at <= 30.0 + SETTLE
    during = w.to("c", 30.0, 90.0)
    # The slots full when it hung, those freed by deadlines before it opened, one trial per opening.
    assert len(during) <= 2 * LIMIT + len(opened)
    assert len(opened) <= max_opens(60.0 + RETURN)
    assert w.to("c", 90.0)
    assert endpoint_stats(stats, "c").routing == "up"


def test_one_of_three_black_holed() -> None:
    """With one server hung for good, the other two carry the load and the breaker backs off."""

    async def timeline(w: World) -> None:
        await anyio.sleep(20)
        w.servers["c"].hang()

    w = World(THREE)
    stats, events = w.run(timeline, end=400)
    opened = [e for e in events if isinstance(e, BreakerOpened) and e.endpoint == "c"]
    assert opened[0].at <= 20.0 + SETTLE
    assert len(opened) <= max_opens(400.0 - opened[0].at)
    late = w.to("c", 20.0 + SETTLE + TIMEOUT)
    assert len(late) <= len(opened) * BREAKER.half_open_trials
    c = endpoint_stats(stats, "c")
    assert c.routing == "down"
    # The healthy two kept serving at full pace.
    assert len(w.to("a", 200, 400)) >= len(w.to("a", 0, 20)) * 9
    assert stats.outcomes["deadline_exceeded"] <= 2 * LIMIT + len(opened)


def test_loading_for_a_minute_holds_without_opening() -> None:
    """503-loading for 60 s holds the server, never opens it; it is called again once loaded."""

    async def timeline(w: World) -> None:
        await anyio.sleep(30)
        w.servers["a"].start_loading(60)

    w = World(THREE[:2])
    stats, _ = w.run(timeline, end=200)
    a = endpoint_stats(stats, "a")
    assert a.opens == 0
    refused = w.servers["a"].statistics().failed["loading"]
    assert refused <= LIMIT + 2
    during = w.to("a", 31.0, 90.0)
    assert len(during) <= refused
    back = w.to("a", 90.0)
    assert back
    assert back[0][0] <= 90.0 + 2.0  # the next quick probe while held
    assert a.routing == "up"


def test_a_429_storm_with_retry_after() -> None:
    """A minute of 429s with Retry-After holds the server for exactly those pauses, no opening."""

    async def timeline(w: World) -> None:
        await anyio.sleep(30)
        w.servers["a"].rate_limit(60, retry_after=5.0)

    w = World(THREE[:2])
    stats, _ = w.run(timeline, end=200)
    a = endpoint_stats(stats, "a")
    assert a.opens == 0
    limited = w.servers["a"].statistics().failed["rate_limited"]
    assert limited <= (60 / 5 + 1) * LIMIT
    grants = [t for t, *_ in w.to("a", 30.0, 90.0)]
    # Calls go out in bursts at least Retry-After apart.
    bursts = sorted({round(t, 6) for t in grants})
    gaps = [b - a for a, b in itertools.pairwise(bursts) if b - a > 0.5]
    assert all(g >= 5.0 - 1e-6 for g in gaps)
    assert w.to("a", 90.0 + 5.0)


def test_slow_tokens_shift_traffic() -> None:
    """A server ten times slower finishes fewer requests; the others take more; all end once."""

    async def timeline(w: World) -> None:
        await anyio.sleep(60)
        w.servers["a"].slow_tokens(10.0)
        await anyio.sleep(120)
        w.servers["a"].slow_tokens(1.0)

    w = World(THREE)
    stats, _ = w.run(timeline, end=360)
    before = len(w.to("a", 0, 60)) / max(1, len(w.grants_in(0, 60)))
    during = len(w.to("a", 70, 180)) / max(1, len(w.grants_in(70, 180)))
    after = len(w.to("a", 240, 360)) / max(1, len(w.grants_in(240, 360)))
    assert during < before / 2
    assert after > during * 2
    assert stats.outcomes["completed"] > 0.9 * stats.submitted - 24


def test_retries_and_fallbacks_inside_the_deadline() -> None:
    """With both big servers down, idempotent calls retry and fall back to small; books balance."""

    async def timeline(w: World) -> None:
        await anyio.sleep(30)
        w.servers["a"].crash()
        w.servers["b"].crash()
        await anyio.sleep(30)
        w.servers["a"].restart()
        w.servers["b"].restart()

    w = World(
        [("a", 8080, "big"), ("b", 8000, "big"), ("c", 11434, "small")],
        retry=Retry(),
        fallbacks={"big": ["small"]},
    )
    stats, _ = w.run(timeline, end=150, model="big")
    assert stats.retries > 0
    assert stats.fallbacks > 0
    small = w.to("c", 30, 60)
    assert small
    assert not w.to("c", 0, 30)
    # Only calls reset mid-flight without idempotency could fail.
    assert stats.outcomes["failed"] <= 2 * LIMIT
    assert stats.outcomes["unavailable"] == 0


def test_context_overflow_moves_to_a_larger_window() -> None:
    """A prompt too long for the small model's window is served by the big one."""
    w = World(
        [("s", 8080, "small"), ("b", 8000, "big")],
        fallbacks={"small": ["big"]},
        windows={"small": 1000, "big": 8192},
        prompt=Dist.uniform(200, 2000),
    )

    async def nothing(w: World) -> None:
        return None

    stats, _ = w.run(nothing, end=60, model="small", clients=8)
    overflowed = w.servers["s"].statistics().failed["context_overflow"]
    assert overflowed > 0
    assert stats.fallbacks >= overflowed
    assert stats.outcomes["failed"] <= overflowed - stats.fallbacks + 8
    assert w.servers["b"].statistics().served > 0


def test_a_retry_never_waits_past_the_deadline() -> None:
    """A Retry-After longer than the time left ends the request at once with its failure."""

    async def main() -> tuple[float, Any]:
        ep = Endpoint("a", url="http://127.0.0.1:8080", models=["m"])
        async with Scheduler(
            [ep], limit=Fixed(2), resilience=Resilience(seed=1, retry=Retry())
        ) as sched:

            async def overloaded(lease: lmgate.Lease) -> None:
                raise lmgate.Overloaded("busy", retry_after=30.0, status=429)

            with pytest.raises(lmgate.Overloaded):
                await sched.run(overloaded, model="m", timeout=5.0, idempotent=True)
            return anyio.current_time(), sched.stats()

    at, stats = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert at == 0.0
    assert stats.retries == 0
    assert stats.outcomes["failed"] == 1


def test_short_chaos_run() -> None:
    """A quarter of an hour of the chaos day: nothing lost, duplicated, leaked or late."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "chaos.py"
    spec = importlib.util.spec_from_file_location("lmgate_chaos_bench", path)
    assert spec is not None
    assert spec.loader is not None
    chaos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chaos)
    report = trio.run(
        lambda: chaos.run_chaos(hours=0.25, requests=6000, seed=3, fault_gap=60.0),
        clock=trio.testing.MockClock(autojump_threshold=0),
    )
    assert report["submitted"] >= 5000
    assert sum(report["faults"].values()) >= 20
    assert report["lost"] == 0
    assert report["duplicated"] == 0
    assert report["leaked_leases"] == 0
    assert report["late_past_deadline_100ms"] == 0
    assert report["queued_after"] == 0
    assert report["server_active_after"] == 0
    assert report["outcomes"]["completed"] > 0.6 * report["submitted"]
