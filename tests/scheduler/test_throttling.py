"""Client-side throttling in admission, in virtual time through a real Scheduler.

A rate-limited endpoint takes ``capacity`` requests a second and answers
429 to the rest.  Offered four times that, an unthrottled client sends it
everything; with the SRE rule the calls that reach it fall to about
``k`` times what it accepts, the rest failing at once with
``Rejected(reason="throttled")``.  A healthy endpoint is never throttled.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any, NamedTuple

import anyio
import pytest
import trio
import trio.testing

import lmgate
from lmgate import Endpoint, Scheduler
from lmgate._errors import InvalidParameter, Overloaded
from lmgate.actors._resilience import Resilience
from lmgate.policies import Fixed
from lmgate.policies._sample import OUTCOME_CLASSES
from lmgate.policies._throttle import Throttle
from lmgate.scheduler._slot import EndpointSlot
from lmgate.scheduler._throttling import Throttling
from lmgate.sim import Dist, SimServer

from ._support import check_identity


def endpoint(name: str = "a") -> Endpoint:
    return Endpoint(name, url=f"http://127.0.0.1:9/{name}", models=("m",))


class RateLimited:
    """Serves ``capacity`` requests per (virtual) second, 429 for the rest, until ``heal_at``."""

    def __init__(self, capacity: int, *, work: float = 0.05, heal_at: float = math.inf) -> None:
        self.capacity = capacity
        self.work = work
        self.heal_at = heal_at
        self.calls: list[tuple[float, bool]] = []
        self._second = -1
        self._taken = 0
        self.t0 = 0.0

    async def __call__(self, lease: lmgate.Lease) -> None:
        now = anyio.current_time() - self.t0
        second = math.floor(now)
        if second != self._second:
            self._second, self._taken = second, 0
        ok = now >= self.heal_at or self._taken < self.capacity
        self.calls.append((now, ok))
        if not ok:
            raise Overloaded("too many requests", status=429)
        self._taken += 1
        await anyio.sleep(self.work)

    def between(self, start: float, end: float) -> tuple[int, int]:
        """Calls that reached the server in [start, end), and how many it accepted."""
        inside = [ok for t, ok in self.calls if start <= t < end]
        return len(inside), sum(inside)


def drive(
    servers: dict[str, Any],
    *,
    rate: float,
    seconds: float,
    limit: int = 64,
    throttle: Throttle | None = Throttle(),  # noqa: B008 - frozen
    timeout: float = 10.0,
) -> tuple[Counter[str], lmgate.Stats, Throttling | None, list[tuple[float, str]]]:
    """Poisson arrivals at ``rate``/s for ``seconds``; how each request ended."""
    ended: Counter[str] = Counter()
    log: list[tuple[float, str]] = []
    eps = [endpoint(name) for name in servers]
    sched = Scheduler(eps, limit=Fixed(limit), resilience=Resilience(seed=3, throttle=throttle))

    async def call(lease: lmgate.Lease) -> None:
        await servers[lease.endpoint.name](lease)

    async def one(t0: float) -> None:
        try:
            await sched.run(call, model="m", timeout=timeout)
            kind = "completed"
        except lmgate.Rejected as exc:
            kind = f"rejected:{exc.reason}"
        except Overloaded:
            kind = "overloaded"
        except Exception as exc:
            kind = type(exc).__name__
        ended[kind] += 1
        log.append((anyio.current_time() - t0, kind))

    async def main() -> lmgate.Stats:
        rng = random.Random(1)
        async with sched, anyio.create_task_group() as tg:
            t0 = anyio.current_time()
            for server in servers.values():
                server.t0 = t0
            while (now := anyio.current_time()) - t0 < seconds:
                tg.start_soon(one, t0)
                await anyio.sleep_until(now + rng.expovariate(rate))
        stats = sched.stats()
        check_identity(stats)
        return stats

    stats = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return ended, stats, sched._admission.throttling, log


def test_a_refusing_endpoint_gets_about_k_times_what_it_accepts() -> None:
    """Offered 4x its capacity, the endpoint sees about 2x what it accepts, not 4x."""
    server = RateLimited(capacity=8)
    ended, stats, throttling, _ = drive({"a": server}, rate=32.0, seconds=180.0)
    calls, accepts = server.between(60.0, 180.0)
    offered = 32.0 * 120.0
    assert accepts > 0.8 * 8 * 120
    assert 1.6 * accepts <= calls <= 2.5 * accepts
    assert calls < 0.7 * offered
    assert ended["rejected:throttled"] > 0.3 * offered
    assert throttling is not None
    assert throttling.statistics()["a"].throttled == ended["rejected:throttled"]
    assert stats.outcomes["rejected"] == ended["rejected:throttled"]
    assert stats.endpoints[0].breaker == "closed"  # throttling, not the breaker, did it


def test_without_throttling_every_request_reaches_the_endpoint() -> None:
    """The same load with ``throttle=None``: the endpoint gets all of it."""
    server = RateLimited(capacity=8)
    ended, _, throttling, _ = drive({"a": server}, rate=32.0, seconds=120.0, throttle=None)
    calls, accepts = server.between(60.0, 120.0)
    assert throttling is None
    assert calls > 3.0 * accepts
    assert not any(kind.startswith("rejected") for kind in ended)


def test_throttling_ends_once_the_endpoint_recovers() -> None:
    """429s until t=60; a window after it heals nothing is refused and every call succeeds."""
    server = RateLimited(capacity=4, heal_at=60.0)
    _, _, _, log = drive({"a": server}, rate=16.0, seconds=240.0)
    assert any(kind == "rejected:throttled" for t, kind in log if t < 60.0)
    late = [kind for t, kind in log if t >= 130.0]
    assert late
    assert set(late) == {"completed"}
    calls, accepts = server.between(130.0, 240.0)
    assert calls == accepts > 0.9 * 16 * 110


class Reporter(NamedTuple):
    """A lease as the simulator needs it (without a URL, so any port answers)."""

    report: Any


class Reloading:
    """A simulated server that restarts at ``at`` and answers 503 "loading" for ``seconds``."""

    def __init__(self, at: float, seconds: float) -> None:
        self.sim = SimServer(output_tokens=Dist.fixed(50), seed=1)
        self.at, self.seconds = at, seconds
        self.t0 = 0.0

    async def __call__(self, lease: lmgate.Lease) -> None:
        if self.at <= anyio.current_time() - self.t0:
            self.at = math.inf
            self.sim.restart()
            self.sim.start_loading(self.seconds)
        await self.sim(Reporter(lease.report))


def test_an_outage_the_breaker_handles_does_not_linger_in_the_throttle() -> None:
    """A restart and a minute of 503 "loading": the breaker holds; nothing is throttled after."""
    server = Reloading(30.0, 60.0)
    _, _, throttling, log = drive({"a": server}, rate=2.0, seconds=200.0, limit=16, timeout=60.0)
    assert server.sim.statistics().failed["loading"] > 0
    assert throttling is not None
    assert not [t for t, kind in log if kind == "rejected:throttled"]
    late = [kind for t, kind in log if t >= 120.0]
    assert late
    assert set(late) == {"completed"}


@pytest.mark.parametrize(("limit", "rate"), [(4, 7.0), (64, 20.0)])
def test_a_healthy_endpoint_is_never_throttled(limit: int, rate: float) -> None:
    """Every call succeeds (queueing or not): nothing is refused locally, no number drawn."""
    server = RateLimited(capacity=10**9, work=0.5)
    ended, stats, throttling, _ = drive({"a": server}, rate=rate, seconds=120.0, limit=limit)
    assert throttling is not None
    assert throttling.refusals == 0
    assert throttling._rng.getstate() == random.Random("lmgate.throttle:3").getstate()
    st = throttling.statistics()["a"]
    assert st.reject_probability == 0.0
    assert st.throttled == 0
    assert st.requests == st.accepts > 0
    assert not any(kind.startswith("rejected:throttled") for kind in ended)
    assert stats.outcomes["completed"] == ended["completed"] > 0


def test_a_full_healthy_endpoint_takes_what_a_throttled_one_refuses() -> None:
    """A always answers 429, B is healthy but often full: requests queue for B, none throttled."""
    a = RateLimited(capacity=0)
    b = RateLimited(capacity=10**9, work=1.0)
    ended, _, throttling, _ = drive({"a": a, "b": b}, rate=3.5, seconds=120.0, limit=4)
    assert throttling is not None
    assert throttling.refusals > 0
    assert ended["rejected:throttled"] == 0
    calls_a, _ = a.between(60.0, 120.0)
    calls_b, _ = b.between(60.0, 120.0)
    assert calls_a <= 10
    assert calls_b > 150


def test_both_endpoints_throttling_refuse_new_requests() -> None:
    """Two endpoints that answer 429 to nearly everything: new requests fail fast as throttled."""
    servers = {"a": RateLimited(capacity=1), "b": RateLimited(capacity=1)}
    ended, _, _, _ = drive(servers, rate=20.0, seconds=120.0)
    calls = sum(s.between(60.0, 120.0)[0] for s in servers.values())
    accepts = sum(s.between(60.0, 120.0)[1] for s in servers.values())
    assert ended["rejected:throttled"] > 0.5 * 20 * 120
    assert calls <= 3.0 * accepts + 10


@pytest.mark.parametrize("outcome", OUTCOME_CLASSES)
def test_outcomes_are_counted_as_the_sre_rule_wants(outcome: Any) -> None:
    """Accepts: success, client error; refusals: overload, error, timeout, loading; cancel: none."""
    throttling = Throttling(Throttle(min_requests=1), random.Random(0))
    slot = EndpointSlot(0, endpoint(), 8, None)
    for i in range(10):
        throttling.record(slot, outcome, float(i))
    if outcome == "cancelled":
        assert slot.throttle is None
        assert throttling.statistics() == {}
        return
    st = throttling.statistics()["a"]
    assert st.requests == 10
    assert st.accepts == (10 if outcome in ("success", "client_error") else 0)
    assert callable(slot.throttle)
    refused = [slot.throttle(10.0) for _ in range(200)]
    if outcome in ("success", "client_error"):
        assert not any(refused)
    else:
        assert 0 < sum(refused) < 200


def test_same_seed_same_refusals() -> None:
    """Draws come from the scheduler's seeded generator: a run replays exactly."""
    first = drive({"a": RateLimited(capacity=4)}, rate=16.0, seconds=60.0)[3]
    second = drive({"a": RateLimited(capacity=4)}, rate=16.0, seconds=60.0)[3]
    assert first == second


def test_throttle_argument_is_validated() -> None:
    """Anything but a Throttle or None is refused, naming the field."""
    with pytest.raises(InvalidParameter) as info:
        Resilience(throttle="on")  # type: ignore[arg-type]
    assert info.value.field == "throttle"
