"""The endpoint actor alone, in virtual time: breaker, probes, moves, models, events.

Each test runs one ``EndpointActor`` against a recorder standing in for the
admission controller, feeds it samples the way admission does (without
waiting) and health-check answers through ``Endpoint.health``, and looks at
what it tells admission, when, and which events it publishes.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import lmgate.actors._endpoint as actor_module
from lmgate import Endpoint
from lmgate.actors._endpoint import EndpointActor
from lmgate.actors._health import ActorMessage
from lmgate.actors._messages import ControllerMessage, StateChanged, UrlChanged
from lmgate.actors._resilience import ProbeReport, Resilience
from lmgate.observability._events import Event, EventHub
from lmgate.policies import Fixed, LimitStatistics, Sample
from lmgate.policies._breaker import Breaker
from lmgate.policies._health import HealthSchedule, url_port
from lmgate.policies._resilience_events import (
    BreakerClosed,
    BreakerHalfOpen,
    BreakerOpened,
    EndpointMoved,
    LimitChanged,
    ModelChanged,
)

pytestmark = pytest.mark.anyio

BREAKER = Breaker(jitter=0.0, open_base=1.0, open_max=8.0)
PROBES = HealthSchedule(jitter=0.0, interval=10.0, recovering_interval=1.0, probe_timeout=2.0)


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """Virtual time: trio's MockClock jumps whenever every task is blocked."""
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


class Rig:
    """An actor, what it told admission (with the time), and its events."""

    def __init__(self, actor: EndpointActor, send: Any, events: EventHub) -> None:
        self.actor = actor
        self.send = send
        self.told: list[tuple[float, ControllerMessage]] = []
        self.sub = events.subscribe(maxlen=10_000)
        self.seen: list[Event] = []

    def sample(
        self,
        outcome: str,
        *,
        duration: float = 0.5,
        start: float | None = None,
        retry_after: float | None = None,
        ttft: float | None = None,
    ) -> None:
        now = anyio.current_time()
        self.send.send_nowait(
            Sample(
                start=now - duration if start is None else start,
                duration=duration,
                in_flight=1,
                outcome=outcome,  # type: ignore[arg-type]
                retry_after=retry_after,
                ttft=ttft,
            )
        )

    def states(self) -> list[tuple[float, str, str, int | None]]:
        return [
            (t, m.routing, m.state, m.trials) for t, m in self.told if isinstance(m, StateChanged)
        ]

    def routing(self) -> str:
        states = self.states()
        return states[-1][1] if states else "up"

    def events(self, kind: type[Event] | None = None) -> list[Event]:
        while (ev := self.sub.get_nowait()) is not None:
            self.seen.append(ev)
        return [e for e in self.seen if kind is None or isinstance(e, kind)]


@asynccontextmanager
async def running(
    endpoint: Endpoint,
    *,
    limit: Any = None,
    resilience: Resilience | None = None,
) -> AsyncIterator[Rig]:
    csend, crecv = anyio.create_memory_object_stream[ControllerMessage](10_000)
    esend, erecv = anyio.create_memory_object_stream[ActorMessage](10_000)
    events = EventHub(log_events=False)
    res = resilience or Resilience(breaker=BREAKER, probes=PROBES, seed=0)
    actor = EndpointActor(
        0,
        endpoint,
        limit if limit is not None else Fixed(8).build(),
        csend,
        erecv,
        esend.clone(),
        events,
        resilience=res,
        rng=random.Random(0),
    )
    rig = Rig(actor, esend, events)

    async def record() -> None:
        async for message in crecv:
            rig.told.append((anyio.current_time(), message))

    with esend, crecv:
        async with anyio.create_task_group() as tg:
            tg.start_soon(record)
            await tg.start(actor.run)
            yield rig
            tg.cancel_scope.cancel()


async def settle() -> None:
    await anyio.wait_all_tasks_blocked()


def ep(**kwargs: Any) -> Endpoint:
    kwargs.setdefault("models", ["m"])
    return Endpoint("gpu", url=kwargs.pop("url", "http://127.0.0.1:8080"), **kwargs)


class Counting:
    """A limit state that counts what it is fed and whether it was reset."""

    def __init__(self) -> None:
        self.limit = 8
        self.fed: list[Sample] = []
        self.resets = 0

    def update(self, sample: Sample, now: float) -> int:
        self.fed.append(sample)
        return self.limit

    def tick(self, now: float) -> int:
        return self.limit

    def reset(self) -> None:
        self.resets += 1
        self.limit = 2

    def statistics(self) -> LimitStatistics:
        return LimitStatistics(policy="Counting", limit=self.limit, samples=len(self.fed))


# -- the breaker, fed by samples ----------------------------------------------------------


async def test_failures_open_then_a_trial_closes() -> None:
    """Five errors open the breaker (down); it turns half-open on time; a trial's success closes."""
    async with running(ep()) as rig:
        for _ in range(5):
            rig.sample("error")
        await settle()
        t0 = anyio.current_time()
        assert rig.states() == [(t0, "down", "open", None)]
        assert isinstance(rig.events()[-1], BreakerOpened)
        await anyio.sleep(0.999)
        assert rig.routing() == "down"
        await anyio.sleep(0.001)
        await settle()
        assert rig.states()[-1] == (t0 + 1.0, "up", "half_open", BREAKER.half_open_trials)
        assert rig.events(BreakerHalfOpen)
        await anyio.sleep(0.3)
        rig.sample("success", duration=0.2)  # granted after the half-open turn: a trial
        await settle()
        assert rig.states()[-1][1:] == ("up", "healthy", None)
        assert [e.reason for e in rig.events(BreakerClosed)] == ["recovered"]  # type: ignore[attr-defined]


async def test_results_from_before_the_opening_are_ignored() -> None:
    """A failure from a lease granted before the breaker opened does not re-open it."""
    async with running(ep()) as rig:
        old_start = anyio.current_time()
        await anyio.sleep(0.1)
        for _ in range(5):
            rig.sample("error", duration=0.05)
        await settle()
        await anyio.sleep(1.0)
        await settle()
        assert rig.routing() == "up"  # half-open
        told = len(rig.states())
        rig.sample("error", start=old_start, duration=anyio.current_time() - old_start)
        await settle()
        # Still half-open, and said again: admission paused trials on that failure.
        assert len(rig.states()) == told + 1
        assert rig.states()[-1][1:] == ("up", "half_open", BREAKER.half_open_trials)
        rig.sample("timeout", duration=0.01)  # a trial that failed: open again, for longer
        await settle()
        t, routing, state, _ = rig.states()[-1]
        assert (routing, state) == ("down", "open")
        opened = rig.events(BreakerOpened)
        assert opened[-1].until == pytest.approx(t + 2.0)  # type: ignore[attr-defined]


async def test_retry_after_holds_traffic_to_the_instant() -> None:
    """A 429 with Retry-After holds the endpoint exactly that long, counting no failure."""
    async with running(ep()) as rig:
        t0 = anyio.current_time()
        rig.sample("overload", retry_after=2.5)
        await anyio.sleep(10)
        assert rig.states() == [
            (t0, "held", "retry_after", None),
            (t0 + 2.5, "up", "healthy", None),
        ]
        assert rig.actor.statistics().breaker.opens == 0


async def test_loading_holds_until_served_again() -> None:
    """A 503-loading holds traffic; an older success proves nothing; a newer one ends it."""
    async with running(ep()) as rig:
        begun = anyio.current_time()
        await anyio.sleep(0.5)
        rig.sample("loading", duration=0.01)
        await settle()
        assert rig.states()[-1][1:3] == ("held", "loading")
        await anyio.sleep(0.5)
        rig.sample("success", start=begun, duration=anyio.current_time() - begun)
        await settle()
        assert rig.routing() == "held"
        rig.sample("success", duration=0.1)
        await settle()
        assert rig.states()[-1][1:3] == ("up", "healthy")
        assert rig.actor.statistics().breaker.opens == 0


async def test_short_timeouts_are_no_evidence() -> None:
    """A call cut by its deadline soon after its grant says nothing; one that ran long does."""
    async with running(ep()) as rig:
        for _ in range(4):
            rig.sample("success", duration=0.5)
        for _ in range(12):
            rig.sample("timeout", duration=0.3)  # less than twice the warm latency
        await settle()
        assert rig.routing() == "up"
        assert rig.actor.statistics().ignored_timeouts == 12
        for _ in range(5):
            rig.sample("timeout", duration=5.0)
        await settle()
        assert rig.states()[-1][1:3] == ("down", "open")


async def test_cold_requests_feed_no_limit_and_open_nothing() -> None:
    """The first, slow requests of a fresh model are cold: no limit sample, no failure."""
    limit = Counting()
    async with running(ep(), limit=limit) as rig:
        for _ in range(6):
            rig.sample("timeout", duration=40.0)  # the model loads: cold timeouts hold
        await settle()
        assert "open" not in [s[2] for s in rig.states()]
        assert rig.states()[-1][1:3] == ("held", "loading")
        assert limit.fed == []
        await anyio.sleep(20)
        rig.sample("success", duration=0.4)  # warm now
        await settle()
        assert len(limit.fed) == 1
        assert rig.actor.statistics().lifecycle.cold_requests == 6


# -- probes -----------------------------------------------------------------------------


async def test_failed_probes_open_and_a_good_one_recovers() -> None:
    """Two failed probes open the breaker; after the open time a good probe closes it."""
    healthy = {"ok": True}
    seen: list[float] = []

    async def check(endpoint: Endpoint) -> bool:
        seen.append(anyio.current_time())
        return healthy["ok"]

    async with running(ep(health=check)) as rig:
        await anyio.sleep(15)
        assert seen == [0.0, 10.0]  # the steady pace while healthy
        healthy["ok"] = False
        await anyio.sleep(6.5)  # probe at 20 fails, the next comes quickly and fails too
        assert seen[2:4] == [20.0, 21.0]
        assert rig.states()[-1] == (21.0, "down", "open", None)
        healthy["ok"] = True
        await anyio.sleep(5)
        assert 22.0 in seen  # probed the instant the open time ended
        assert rig.states()[-1][1:3] == ("up", "healthy")
        assert rig.events(BreakerClosed)
        stats = rig.actor.statistics()
        assert stats.probe_failures == 2
        assert stats.last_probe_ok is True


async def test_a_hung_probe_times_out_and_counts() -> None:
    """A probe of a black hole ends at the probe deadline and counts as a failure."""

    async def check(endpoint: Endpoint) -> bool:
        await anyio.sleep_forever()
        raise AssertionError

    async with running(ep(health=check)) as rig:
        await anyio.sleep(5.5)
        opened_at = PROBES.probe_timeout * 2 + PROBES.recovering_interval
        assert rig.states()[0] == (opened_at, "down", "open", None)
        stats = rig.actor.statistics()
        assert stats.probe_failures == 2
        assert stats.probe_latency == PROBES.probe_timeout


async def test_a_moved_server_is_found_and_probed_before_traffic() -> None:
    """Refused on its port, the server is looked for on the candidates, re-probed, and routed to."""
    where = {"port": 8080, "up": True}

    async def check(endpoint: Endpoint) -> ProbeReport:
        if not where["up"] or url_port(endpoint.url) != where["port"]:
            raise ConnectionRefusedError(111, "refused")
        return ProbeReport(ok=True, identities={"m": "sha256:1"})

    async with running(ep(health=check, ports=(8080, 8081, 8082))) as rig:
        await anyio.sleep(1)
        where["up"] = False
        await anyio.sleep(30)
        assert rig.routing() == "down"
        where.update(up=True, port=8082)
        await anyio.sleep(30)
        moved = rig.events(EndpointMoved)
        assert [(m.old_url, m.new_url) for m in moved] == [  # type: ignore[attr-defined]
            ("http://127.0.0.1:8080", "http://127.0.0.1:8082")
        ]
        urls = [m for _, m in rig.told if isinstance(m, UrlChanged)]
        assert urls == [UrlChanged(0, "http://127.0.0.1:8082")]
        states = [s[1:3] for s in rig.states()]
        assert states[-2:] == [("held", "moved"), ("up", "healthy")]
        stats = rig.actor.statistics()
        assert (stats.port, stats.moves, stats.url) == (8082, 1, "http://127.0.0.1:8082")


async def test_default_ports_follow_the_server_kind() -> None:
    """Without declared ports a llama-server endpoint is looked for on 8080."""
    where = {"port": 8080}

    async def check(endpoint: Endpoint) -> bool:
        if url_port(endpoint.url) != where["port"]:
            raise ConnectionRefusedError(111, "refused")
        return True

    async with running(ep(url="http://127.0.0.1:9999", kind="llamacpp", health=check)) as rig:
        await anyio.sleep(60)
        assert rig.actor.url == "http://127.0.0.1:8080"


async def test_a_server_of_other_models_is_not_ours() -> None:
    """A port that answers with other models is not where our server went."""

    async def check(endpoint: Endpoint) -> ProbeReport:
        if url_port(endpoint.url) == 8080:
            raise ConnectionRefusedError(111, "refused")
        return ProbeReport(ok=True, identities={"other-model": "x"})

    async with running(ep(health=check, ports=(8080, 8081))) as rig:
        await anyio.sleep(60)
        assert rig.actor.url == "http://127.0.0.1:8080"
        assert rig.actor.statistics().port_searches >= 1


async def test_the_host_name_is_resolved_for_each_probe() -> None:
    """A named host is re-resolved before every probe; failing resolution fails the probe."""
    lookups: list[str] = []
    answers = [("10.0.0.1",), ("10.0.0.2",), OSError("no such host")]

    async def resolve(host: str) -> tuple[str, ...]:
        lookups.append(host)
        answer = answers[min(len(lookups), len(answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def check(endpoint: Endpoint) -> bool:
        return True

    res = Resilience(breaker=BREAKER, probes=PROBES, resolve=resolve, seed=0)
    async with running(ep(url="http://gpu-box.lan:8080", health=check), resilience=res) as rig:
        await settle()
        assert rig.actor.statistics().addresses == ("10.0.0.1",)
        await anyio.sleep(10.5)
        assert rig.actor.statistics().addresses == ("10.0.0.2",)
        await anyio.sleep(10)
        assert rig.actor.statistics().probe_failures == 1
    assert lookups[:3] == ["gpu-box.lan"] * 3


async def test_a_changed_model_is_reported_and_relearned() -> None:
    """A new digest under the same name publishes ModelChanged and resets the latency baselines."""
    digest = {"m": "sha256:aaa"}
    limit = Counting()

    async def check(endpoint: Endpoint) -> ProbeReport:
        return ProbeReport(ok=True, identities=dict(digest))

    async with running(ep(health=check), limit=limit) as rig:
        await settle()
        for _ in range(3):
            rig.sample("success", duration=0.3)
        await settle()
        assert rig.actor.statistics().latency_ewma is not None
        digest["m"] = "sha256:bbb"
        await anyio.sleep(10.5)
        changes = rig.events(ModelChanged)
        assert [(c.model, c.old, c.new) for c in changes] == [  # type: ignore[attr-defined]
            ("m", "sha256:aaa", "sha256:bbb")
        ]
        stats = rig.actor.statistics()
        assert stats.identities == {"m": "sha256:bbb"}
        assert stats.latency_ewma is None
        assert stats.model_changes == 1
        assert limit.resets == 1
        assert rig.actor.limit == 2  # the reset limit was published


async def test_a_loading_probe_holds_without_failure() -> None:
    """A probe that says the model is loading holds traffic; one that says ready releases it."""
    loading = {"on": True}

    async def check(endpoint: Endpoint) -> ProbeReport:
        return ProbeReport(ok=True, loading=loading["on"])

    async with running(ep(health=check)) as rig:
        await settle()
        assert rig.states()[-1][1:3] == ("held", "loading")
        loading["on"] = False
        await anyio.sleep(2)
        assert rig.states()[-1][1:3] == ("up", "healthy")
        assert rig.actor.statistics().breaker.opens == 0


# -- warm-up, events, lifetime ---------------------------------------------------------------


async def test_warm_up_runs_once_per_model_when_asked() -> None:
    """Endpoint(warmup=True) gets one warm-up call per model at start; others none."""
    calls: list[tuple[str, str]] = []

    async def warm(endpoint: Endpoint, model: str) -> None:
        calls.append((endpoint.name, model))
        await anyio.sleep(3)

    res = Resilience(breaker=BREAKER, probes=PROBES, warmup=warm, seed=0)
    async with running(ep(models=["a", "b"], warmup=True), resilience=res) as rig:
        await anyio.sleep(10)
        assert calls == [("gpu", "a"), ("gpu", "b")]
        assert rig.actor.statistics().warmups == 2
    calls.clear()
    async with running(ep(models=["a"]), resilience=res):
        await anyio.sleep(10)
    assert calls == []


async def test_limit_events_are_the_resilience_events() -> None:
    """Limit changes are published as the one LimitChanged event, naming the policy."""
    assert not hasattr(actor_module, "LimitChangedEvent")
    assert not hasattr(actor_module, "StateChangedEvent")
    limit = Counting()
    async with running(ep(health=_always_ok), limit=limit) as rig:
        await anyio.sleep(0.5)
        limit.limit = 3
        rig.sample("success", duration=0.2)
        await settle()
        changed = rig.events(LimitChanged)
        assert [(e.old, e.new, e.policy) for e in changed] == [(8, 3, "Counting")]  # type: ignore[attr-defined]
        assert msgspec.json.decode(msgspec.json.encode(changed[0]))["type"] == "limit_changed"


async def _always_ok(endpoint: Endpoint) -> bool:
    return True


async def test_nothing_outlives_the_actor() -> None:
    """Cancelling the actor ends its timer, monitor and warm-up with it."""

    async def warm(endpoint: Endpoint, model: str) -> None:
        await anyio.sleep_forever()

    res = Resilience(breaker=BREAKER, probes=PROBES, warmup=warm, seed=0)
    async with running(ep(health=_always_ok, warmup=True), resilience=res):
        await anyio.sleep(30)
    await trio.testing.wait_all_tasks_blocked()
    root = trio.lowlevel.current_root_task()
    names = []
    stack = [root]
    while stack:
        task = stack.pop()
        names.append(task.name)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    assert not [n for n in names if "EndpointActor" in n or "HealthMonitor" in n]


# -- a property: what admission is told always matches the breaker --------------------------

_STEP = st.one_of(
    st.tuples(
        st.just("sample"),
        st.sampled_from(
            ["success", "error", "timeout", "overload", "loading", "cancelled", "client_error"]
        ),
        st.booleans(),
        st.sampled_from([None, 0.5, 3.0]),
    ),
    st.tuples(st.just("sleep"), st.sampled_from([0.1, 0.5, 1.0, 2.5, 7.0])),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_STEP, min_size=1, max_size=40))
# An open time that ends inside a longer hold: the state moves to held by time alone.
@example(
    steps=[("sleep", 0.1)]
    + [("sample", o, False, None) for o in ("success", "success", "error", "error")]
    + [("sample", "loading", False, None), ("sample", "error", False, None), ("sleep", 1.0)]
)
def test_routing_always_follows_the_breaker(steps: list[tuple[Any, ...]]) -> None:
    """After every step the last routing told to admission is the breaker's state's routing."""

    async def program() -> None:
        async with running(ep()) as rig:
            origin = anyio.current_time()
            for step in steps:
                if step[0] == "sleep":
                    await anyio.sleep(step[1])
                else:
                    _, outcome, stale, retry_after = step
                    start = origin if stale else None
                    duration = anyio.current_time() - origin if stale else 0.2
                    rig.sample(
                        outcome, start=start, duration=max(duration, 0.0), retry_after=retry_after
                    )
                await settle()
                now = anyio.current_time()
                breaker = rig.actor._breaker
                state = breaker.state(now)
                expected = {"closed": "up", "half_open": "up", "held": "held", "open": "down"}
                assert rig.routing() == expected[state], (state, rig.states()[-3:])
                last = rig.states()[-1] if rig.states() else (0.0, "up", "healthy", None)
                assert (last[3] is not None) == (state == "half_open")
                states = rig.states()
                # No state is told twice in a row, except half-open trials: a failed
                # trial makes admission stop granting, and the actor says the trials
                # again on purpose (``force``), whatever the breaker made of it.
                assert all(
                    a[1:] != b[1:] or a[2] == "half_open" for a, b in itertools.pairwise(states)
                )

    trio.run(program, clock=trio.testing.MockClock(autojump_threshold=0))
