"""Endpoint(probe=True) learns from its server at start; a plain one sends nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lmgate
from lmgate import Endpoint, Scheduler
from lmgate._errors import InvalidParameter
from lmgate.actors._resilience import ProbeReport, Resilience
from lmgate.detect._probe import _CACHE
from lmgate.observability._events import EventHub
from lmgate.policies import Fixed
from lmgate.policies._adaptive import Adaptive
from lmgate.policies._aimd import AIMD
from lmgate.policies._gradient2 import Gradient2
from lmgate.policies._health import HealthSchedule
from lmgate.policies._vegas import Vegas
from lmgate.scheduler import _discovery
from lmgate.scheduler._discovery import Discovery, limit_for_slots
from lmgate.scheduler._discovery_watch import (
    EndpointDiscovered,
    EndpointDiscoveryFailed,
    WatchingCheck,
)
from lmgate.sim.http._app import SimHTTPConfig, SimHTTPServer
from lmgate.transports import SchedulingTransport

LLAMA = SimHTTPConfig(kind="llamacpp", models=("tiny",), slots=3, n_ctx=300, trained_ctx=2048)


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    _CACHE.clear()


def quick(probe_timeout: float = 2.0) -> Resilience:
    """Probes bounded tightly, and no name resolution (everything is loopback)."""
    return Resilience(probes=HealthSchedule(probe_timeout=probe_timeout), resolve=None)


def events_of(sub: Any) -> list[Any]:
    out = []
    while (e := sub.get_nowait()) is not None:
        out.append(e)
    return out


async def echo(lease: lmgate.Lease) -> lmgate.EndpointRef:
    return lease.endpoint


# -- learning at start --------------------------------------------------------------------


@pytest.mark.anyio
async def test_probe_learns_models_window_slots_and_kind() -> None:
    """A llama.cpp endpoint learns its model, per-slot window, slots and kind at start."""
    async with SimHTTPServer(LLAMA) as server:
        sched = Scheduler(
            [Endpoint("x", url=server.url + "/v1", probe=True)],
            limit=Fixed(8),
            resilience=quick(),
        )
        sub = sched.events.subscribe()
        assert sched.endpoints[0].models == ()
        async with sched:
            (ep,) = sched.endpoints
            ref = await sched.run(echo, model="tiny", timeout=5)
            (st_,) = sched.stats().endpoints
    assert (ep.models, ep.kind, ep.local, ep.window_for("tiny")) == (
        ("tiny",),
        "llamacpp",
        True,
        300,
    )
    assert (ref.kind, ref.local, ref.model) == ("llamacpp", True, "tiny")
    assert st_.limit == 3  # Fixed(8) capped at the server's 3 slots
    assert st_.kind == "llamacpp"
    assert st_.models == ("tiny",)
    assert st_.discovery is not None
    assert (st_.discovery.state, st_.discovery.slots) == ("learned", 3)
    assert st_.discovery.context_windows == {"tiny": 300}
    found = [e for e in events_of(sub) if isinstance(e, EndpointDiscovered)]
    assert [(e.endpoint, e.slots, e.limit, e.refresh) for e in found] == [("x", 3, 3, False)]
    assert isinstance(ep.health, WatchingCheck)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kind", "window"), [("vllm", 1000), ("ollama", 1000), ("tgi", 1000), ("lmstudio", 1000)]
)
async def test_other_servers_teach_kind_models_and_windows(kind: str, window: int) -> None:
    """Every local dialect teaches its kind, models and window (no slot count)."""
    cfg = SimHTTPConfig(kind=kind, models=("m",), n_ctx=window)
    async with SimHTTPServer(cfg) as server:
        ep = Endpoint("e", url=server.url, probe=True)
        async with Scheduler([ep], limit=Fixed(5), resilience=quick()) as sched:
            (learned,) = sched.endpoints
            ref = await sched.run(echo, model="m", timeout=5)
            (st_,) = sched.stats().endpoints
    assert (learned.kind, learned.models, learned.local) == (kind, ("m",), True)
    assert learned.window_for("m") == window
    assert ref.kind == kind
    assert st_.limit == 5  # no slot count: the scheduler's policy as it is


@pytest.mark.anyio
async def test_what_the_user_declared_wins() -> None:
    """Declared models, window override, locality and limit survive the probe."""
    async with SimHTTPServer(LLAMA) as server:
        ep = Endpoint(
            "x",
            url=server.url,
            models=("tiny",),
            context_windows={"tiny": 200},
            local=False,
            limit=Fixed(7),
            probe=True,
        )
        async with Scheduler([ep], resilience=quick()) as sched:
            (learned,) = sched.endpoints
            (st_,) = sched.stats().endpoints
    assert learned.window_for("tiny") == 200
    assert learned.local is False
    assert learned.kind == "llamacpp"
    assert st_.limit == 7


@pytest.mark.anyio
async def test_adaptive_limit_starts_at_and_stays_within_slots() -> None:
    """The default adaptive policy starts at the slot count, which is its ceiling."""
    async with SimHTTPServer(LLAMA) as server:
        ep = Endpoint("x", url=server.url, probe=True)
        async with Scheduler([ep], resilience=quick()) as sched:
            (learned,) = sched.endpoints
            (st_,) = sched.stats().endpoints
    assert isinstance(learned.limit, Adaptive)
    assert (learned.limit.initial_limit, learned.limit.max_limit) == (3, 3)
    assert st_.limit == 3


@pytest.mark.anyio
async def test_endpoints_are_probed_concurrently_and_mixed_with_plain_ones() -> None:
    """Two probed servers and a plain endpoint: each gets what it should."""
    small = SimHTTPConfig(kind="llamacpp", models=("a",), slots=2, n_ctx=128)
    async with SimHTTPServer(LLAMA) as one, SimHTTPServer(small) as two:
        eps = [
            Endpoint("one", url=one.url, probe=True),
            Endpoint("plain", url="http://127.0.0.1:9/", models=("p",)),
            Endpoint("two", url=two.url, probe=True),
        ]
        async with Scheduler(eps, limit=Fixed(8), resilience=quick()) as sched:
            refs = [await sched.run(echo, model=m, timeout=5) for m in ("tiny", "a", "p")]
            stats = sched.stats().endpoints
    assert [r.name for r in refs] == ["one", "two", "plain"]
    assert [s.limit for s in stats] == [3, 8, 2]
    assert [s.discovery.state if s.discovery else None for s in stats] == [
        "learned",
        None,
        "learned",
    ]


@pytest.mark.anyio
async def test_an_endpoint_joining_later_is_learned_alone() -> None:
    """learn_endpoint() probes one endpoint for a running scheduler; a plain one is untouched."""
    hub = EventHub()
    sub = hub.subscribe()
    disc = Discovery(hub)
    plain = Endpoint("p", url="http://127.0.0.1:9", models=("m",))
    async with SimHTTPServer(LLAMA) as server:
        ep = await disc.learn_endpoint(
            Endpoint("x", url=server.url, probe=True), Fixed(8), probe_timeout=2.0
        )
        assert await disc.learn_endpoint(plain, Fixed(8)) is plain
    assert (ep.kind, ep.models, ep.limit) == ("llamacpp", ("tiny",), Fixed(3))
    assert isinstance(ep.health, WatchingCheck)
    x = disc.statistics_for("x")
    assert x is not None
    assert x.state == "learned"
    assert disc.statistics_for("p") is None
    (event,) = events_of(sub)
    assert isinstance(event, EndpointDiscovered)
    assert event.limit == 3


# -- probes that find nothing ---------------------------------------------------------------


@asynccontextmanager
async def listener(
    on_connect: Callable[[anyio.abc.SocketStream], Any],
) -> AsyncIterator[int]:
    """A loopback TCP listener that hands each connection to ``on_connect``."""
    lst = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = int(lst.extra(anyio.abc.SocketAttribute.local_port))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lst.serve, on_connect)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()
    await lst.aclose()


async def closed_port() -> int:
    async with SimHTTPServer() as server:
        return server.port


@pytest.mark.anyio
async def test_unreachable_server_leaves_endpoint_declared() -> None:
    """Nothing listening: the scheduler starts, the endpoint runs as declared."""
    port = await closed_port()
    ep = Endpoint("x", url=f"http://127.0.0.1:{port}", models=("m",), probe=True)
    sched = Scheduler([ep], limit=Fixed(4), resilience=quick())
    sub = sched.events.subscribe()
    async with sched:
        (kept,) = sched.endpoints
        ref = await sched.run(echo, model="m", timeout=5)
        (st_,) = sched.stats().endpoints
    assert (kept.models, kept.kind, kept.local, kept.limit) == (("m",), "unknown", None, None)
    assert ref.name == "x"
    assert st_.limit == 4
    assert st_.discovery is not None
    assert st_.discovery.state == "unreachable"
    failed = [e for e in events_of(sub) if isinstance(e, EndpointDiscoveryFailed)]
    assert [(e.endpoint, e.state) for e in failed] == [("x", "unreachable")]


@pytest.mark.anyio
async def test_black_hole_is_bounded_by_the_probe_timeout() -> None:
    """A server that accepts and never answers cannot hold the start up."""

    async def hang(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await anyio.sleep_forever()

    async with listener(hang) as port:
        ep = Endpoint("x", url=f"http://127.0.0.1:{port}", models=("m",), probe=True)
        with anyio.fail_after(30):  # a bound for a hang, not a timing assertion
            async with Scheduler([ep], resilience=quick(0.1)) as sched:
                (st_,) = sched.stats().endpoints
    assert st_.discovery is not None
    assert st_.discovery.state in ("unreachable", "timed_out")
    assert sched.endpoints[0].models == ("m",)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("behaviour", "state"),
    [("hang", "timed_out"), ("invalid", "invalid"), ("crash", "unreachable")],
)
async def test_probe_outcomes_become_states(
    monkeypatch: pytest.MonkeyPatch, behaviour: str, state: str
) -> None:
    """A probe past the start deadline, refusing the URL, or failing: each has its state."""

    async def fake_probe(url: str, **_: Any) -> Any:
        if behaviour == "hang":
            await anyio.sleep_forever()
        if behaviour == "invalid":
            raise InvalidParameter("cannot probe", field="url")
        raise RuntimeError("boom")

    monkeypatch.setattr(_discovery, "probe", fake_probe)
    ep = Endpoint("x", url="http://127.0.0.1:9", models=("m",), probe=True)
    sched = Scheduler([ep], resilience=quick(0.05))
    sub = sched.events.subscribe()
    async with sched:
        (st_,) = sched.stats().endpoints
    assert st_.discovery is not None
    assert st_.discovery.state == state
    (failed,) = [e for e in events_of(sub) if isinstance(e, EndpointDiscoveryFailed)]
    assert failed.state == state


# -- a plain endpoint sends nothing -----------------------------------------------------------


def test_plain_endpoint_sends_nothing(virtual_backend: tuple[str, dict[str, Any]]) -> None:
    """An hour of a running scheduler opens no connection to a plain endpoint's URL."""
    backend, options = virtual_backend
    connections: list[str] = []

    async def record(stream: anyio.abc.SocketStream) -> None:
        connections.append("accepted")
        await stream.aclose()

    async def main(probe: bool) -> int:
        connections.clear()
        async with listener(record) as port:
            ep = Endpoint("plain", url=f"http://127.0.0.1:{port}/v1", models=("m",), probe=probe)
            async with Scheduler([ep], limit=Fixed(2), resilience=quick()) as sched:
                for _ in range(3):
                    await sched.run(echo, model="m", timeout=5)
                sched.clients  # noqa: B018 -- making the clients connects nothing
                await anyio.sleep(3600)
            await anyio.sleep(1)
        return len(connections)

    assert anyio.run(main, False, backend=backend, backend_options=options) == 0
    # The same listener does see a probed endpoint: the test can tell.
    assert anyio.run(main, True, backend=backend, backend_options=options) > 0


# -- the clients the scheduler owns -----------------------------------------------------------


@pytest.mark.anyio
async def test_clients_are_closed_with_the_scheduler() -> None:
    """sched.clients is made lazily, serves the endpoint, and closes on exit."""
    async with SimHTTPServer(LLAMA) as server:
        ep = Endpoint("x", url=server.url + "/v1", probe=True)
        async with Scheduler([ep], resilience=quick()) as sched:
            assert sched._clients is None
            client = sched.clients.client("x")
            assert sched.clients is sched.clients
            assert (await client.get("models")).status_code == 200
            transport = SchedulingTransport(sched)
            async with httpx.AsyncClient(transport=transport) as via:
                r = await via.post(
                    "http://lmgate.invalid/v1/chat/completions",
                    json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
                )
            assert r.status_code == 200
            assert sched.clients.statistics().open_clients == 1  # one pool for both
            # Closing the transport left the scheduler's pool open.
            assert (await client.get("models")).status_code == 200
        assert client.is_closed
        assert sched.clients.statistics().closed


# -- the watching health check ------------------------------------------------------------------


@pytest.mark.anyio
async def test_watching_check_reports_identity_and_invalidates_on_failure() -> None:
    """Healthy: the server's route and each model's build; down: raises and drops the cache."""
    async with SimHTTPServer(LLAMA) as server:
        ep = Endpoint("x", url=server.url, probe=True)
        async with Scheduler([ep], resilience=quick()) as sched:
            (learned,) = sched.endpoints
            assert learned.health is not None
            report = await learned.health(learned)
            assert isinstance(report, ProbeReport)
            assert report.ok
            assert not report.loading
            assert report.identities == {"tiny": "llamacpp b0-sim trained=2048"}
            assert _CACHE.statistics().entries == 1
            await server.stop()
            with pytest.raises(httpx.ConnectError):
                await learned.health(learned)
            assert _CACHE.statistics().entries == 0
            disc = sched.stats().endpoints[0].discovery
            assert disc is not None
            assert (disc.failures, disc.refreshes) == (1, 0)
            await server.start()
            report = await learned.health(learned)  # back: re-probed at once
            disc = sched.stats().endpoints[0].discovery
    assert isinstance(report, ProbeReport)
    assert report.ok
    assert disc is not None
    assert (disc.state, disc.refreshes, disc.probes) == ("learned", 1, 2)


@pytest.mark.anyio
async def test_restarted_server_with_other_facts_is_reported() -> None:
    """A server back with another window is re-probed and the change published."""
    async with SimHTTPServer(LLAMA) as server:
        port = server.port
        sched = Scheduler([Endpoint("x", url=server.url, probe=True)], resilience=quick())
        sub = sched.events.subscribe()
        async with sched:
            (learned,) = sched.endpoints
            assert learned.health is not None
            await server.stop()
            with pytest.raises(httpx.ConnectError):
                await learned.health(learned)
            bigger = SimHTTPConfig(kind="llamacpp", models=("tiny",), slots=3, n_ctx=512)
            async with SimHTTPServer(bigger, port=port):
                report = await learned.health(learned)
            disc = sched.stats().endpoints[0].discovery
            routed = sched.endpoints[0].window_for("tiny")
    assert isinstance(report, ProbeReport)
    assert report.ok
    refreshed = [e for e in events_of(sub) if isinstance(e, EndpointDiscovered) and e.refresh]
    assert [(e.changed, e.context_windows) for e in refreshed] == [
        (("context_windows",), {"tiny": 512})
    ]
    assert disc is not None
    assert disc.context_windows == {"tiny": 512}
    assert routed == 300  # routing keeps what it started with


@pytest.mark.anyio
async def test_loading_server_is_held_not_failed() -> None:
    """While the model loads the check says so: traffic waits, no failure counts."""
    async with SimHTTPServer(LLAMA) as server:
        async with Scheduler([Endpoint("x", url=server.url, probe=True)], resilience=quick()):
            pass
        # The same server, now loading its model for an hour.
        slow = SimHTTPConfig(kind="llamacpp", models=("tiny",), load_time=3600)
        port = server.port
        await server.stop()
        async with SimHTTPServer(slow, port=port):
            ep = Endpoint("x", url=f"http://127.0.0.1:{port}", models=("tiny",), probe=True)
            async with Scheduler([ep], resilience=quick()) as sched:
                (learned,) = sched.endpoints
                assert learned.health is not None
                report = await learned.health(learned)
                disc = sched.stats().endpoints[0].discovery
    assert isinstance(report, ProbeReport)
    assert report.ok
    assert report.loading
    assert disc is not None
    assert disc.failures == 0


@pytest.mark.anyio
async def test_users_check_decides_and_the_probe_rides_along() -> None:
    """A declared health check is kept as the judge; a failure still drops the cache."""
    verdict = {"ok": True}
    calls: list[str] = []

    async def mine(ep: Endpoint) -> bool:
        calls.append(ep.url)
        return verdict["ok"]

    async with SimHTTPServer(LLAMA) as server:
        ep = Endpoint("x", url=server.url, probe=True, health=mine)
        async with Scheduler([ep], resilience=quick()) as sched:
            (learned,) = sched.endpoints
            assert isinstance(learned.health, WatchingCheck)
            first = await learned.health(learned)
            before = sched.stats().endpoints[0].discovery
            verdict["ok"] = False
            second = await learned.health(learned)
            after = sched.stats().endpoints[0].discovery
    assert set(calls) == {learned.url}
    assert isinstance(first, ProbeReport)
    assert first.ok
    assert second is False
    assert before is not None
    assert after is not None
    assert after.failures == before.failures + 1


@pytest.mark.anyio
async def test_endpoint_down_at_start_is_learned_when_it_answers() -> None:
    """Failed at start: its check probes until the server answers, then it is learned."""
    port = await closed_port()
    ep = Endpoint("x", url=f"http://127.0.0.1:{port}", models=("tiny",), probe=True)
    sched = Scheduler([ep], resilience=quick())
    sub = sched.events.subscribe()
    async with sched:
        (declared,) = sched.endpoints
        assert declared.health is not None
        assert await declared.health(declared) is False
        async with SimHTTPServer(LLAMA, port=port):
            report = await declared.health(declared)
        disc = sched.stats().endpoints[0].discovery
    assert isinstance(report, ProbeReport)
    assert report.ok
    assert disc is not None
    assert disc.state == "learned"
    assert disc.slots == 3
    late = [e for e in events_of(sub) if isinstance(e, EndpointDiscovered)]
    assert [(e.refresh, e.slots) for e in late] == [(True, 3)]


@pytest.mark.anyio
async def test_actor_probes_through_the_watching_check() -> None:
    """The endpoint actor's own health schedule drives the check: a dead server is seen."""
    res = Resilience(
        probes=HealthSchedule(interval=0.05, recovering_interval=0.05, probe_timeout=2.0),
        resolve=None,
    )
    async with (
        SimHTTPServer(LLAMA) as server,
        Scheduler([Endpoint("x", url=server.url, probe=True)], resilience=res) as sched,
    ):
        await server.stop()
        with anyio.fail_after(20):  # a bound for a hang, not a timing assertion
            while True:
                (st_,) = sched.stats().endpoints
                assert st_.discovery is not None
                if st_.discovery.failures and st_.probe_failures:
                    break
                await anyio.sleep(0.02)
        (st_,) = sched.stats().endpoints
    assert st_.probe_failures >= 1


# -- the slot count as a limit (pure) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "slots", "expect"),
    [
        (Fixed(8), 4, Fixed(4)),
        (Fixed(2), 4, Fixed(2)),
        (AIMD(initial_limit=10, min_limit=1, max_limit=200), 4, (4, 1, 4)),
        (Vegas(), 6, (6, 1, 6)),
        (Gradient2(min_limit=8), 4, (4, 4, 4)),
        (Adaptive(), 16, (16, 1, 16)),
    ],
)
def test_limit_for_slots(policy: Any, slots: int, expect: Any) -> None:
    """Fixed is capped; adaptive policies start at the slots and keep them as ceiling."""
    got = limit_for_slots(policy, slots)
    if isinstance(expect, Fixed):
        assert got == expect
    else:
        assert (got.initial_limit, got.min_limit, got.max_limit) == expect  # type: ignore[attr-defined]


def test_limit_for_slots_leaves_unknown_policies_alone() -> None:
    """A policy without the usual fields is returned as it is."""

    class Mine:
        def build(self) -> Any:
            return Fixed(3).build()

    policy: Any = Mine()
    assert limit_for_slots(policy, 2) is policy


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["fixed", "aimd", "gradient2", "adaptive"]),
    limit=st.integers(1, 500),
    slots=st.integers(1, 512),
)
def test_slot_limit_never_exceeds_slots(kind: str, limit: int, slots: int) -> None:
    """Whatever the policy, the limit it starts from is at most the slot count."""
    policy: Any
    if kind == "fixed":
        policy = Fixed(limit)
    elif kind == "aimd":
        policy = AIMD(initial_limit=limit, max_limit=max(limit, 200))
    elif kind == "gradient2":
        policy = Gradient2(initial_limit=limit, max_limit=max(limit, 200))
    else:
        policy = Adaptive(initial_limit=limit, max_limit=max(limit, 256))
    state = limit_for_slots(policy, slots).build()
    assert 1 <= state.limit <= slots
    assert state.limit == (min(limit, slots) if kind == "fixed" else slots)
