"""The resilience policies driven by a small actor loop in virtual time.

A stand-in for the EndpointActor: client workers ask the breaker for a
permit, call a fake server under a deadline and classify what happened; a
prober paces itself with the health schedule and looks for the server on
other ports when its port refuses.  The server crashes, comes back on
another port, and spends a while loading its model.
"""

from __future__ import annotations

import math
import random
from typing import Literal

import anyio
import trio.testing

from lmgate._errors import Overloaded
from lmgate.observability._events import Event
from lmgate.policies._breaker import Breaker, Transition
from lmgate.policies._classify import classify
from lmgate.policies._health import HealthSchedule, PortSearch, default_ports
from lmgate.policies._resilience_events import (
    BreakerClosed,
    BreakerOpened,
    EndpointMoved,
    breaker_event,
    moved_event,
)

CRASH_AT, BACK_AT, LOADED_AT, END_AT = 10.0, 40.0, 60.0, 150.0


class FakeServer:
    """A local server that crashes, restarts on port 8000 and loads slowly."""

    def __init__(self) -> None:
        self.port = 8080
        self.up = True
        self.loading_until = -math.inf

    def _check(self, port: int) -> None:
        if not self.up or port != self.port:
            raise ConnectionRefusedError(111, "Connection refused")

    async def call(self, port: int) -> str:
        self._check(port)
        if anyio.current_time() < self.loading_until:
            raise Overloaded("Loading model", status=503)
        await anyio.sleep(0.5)
        return "ok"

    async def probe(self, port: int) -> Literal["ok", "loading"]:
        self._check(port)
        await anyio.sleep(0.01)
        return "loading" if anyio.current_time() < self.loading_until else "ok"


def test_crash_move_and_reload_are_survived() -> None:
    """Traffic stops while the server is gone, finds its new port, holds while loading, resumes."""
    cfg = Breaker(minimum_volume=3, half_open_trials=1, open_base=1.0, open_max=8.0)
    breaker = cfg.build(random.Random(1))
    schedule = HealthSchedule(interval=5.0, recovering_interval=1.0, probe_timeout=1.0)
    rng = random.Random(2)
    server = FakeServer()
    events: list[Event] = []
    counts = {"started": 0, "ended": 0, "ok": 0, "refused": 0, "loading": 0}
    state = {"port": 8080}
    wake = [anyio.Event()]

    def publish(tr: Transition | None) -> None:
        if tr is not None:
            events.append(breaker_event("gpu", tr, half_open_trials=cfg.half_open_trials))

    async def worker() -> None:
        while True:
            now = anyio.current_time()
            permit = breaker.acquire(now)
            if permit is None:
                until = breaker.retry_at(now)
                await anyio.sleep(until - now if until is not None else 0.25)
                publish(breaker.tick(anyio.current_time()))
                continue
            assert breaker.state(now) in ("closed", "half_open")
            counts["started"] += 1
            try:
                with anyio.fail_after(5.0):
                    await server.call(state["port"])
                c = classify(None)
            except Exception as exc:
                c = classify(exc)
            counts["ended"] += 1
            if c.outcome == "success":
                counts["ok"] += 1
            elif c.reason == "connect_refused":
                counts["refused"] += 1
                wake[0].set()  # the known port refuses: look for the server now
            elif c.outcome == "loading":
                counts["loading"] += 1
            publish(breaker.record(c.outcome, anyio.current_time(), c.retry_after, permit=permit))
            await anyio.sleep(0.2)

    async def prober() -> None:
        failures = refused = 0
        reprobe = False
        while True:
            now = anyio.current_time()
            until = breaker.retry_at(now)
            delay = schedule.next_probe_delay(
                breaker.state(now),
                failures,
                rng.random(),
                state_ends_in=None if until is None else until - now,
            )
            if not reprobe:
                with anyio.move_on_after(delay):
                    await wake[0].wait()
            wake[0] = anyio.Event()
            reprobe = False
            try:
                with anyio.fail_after(schedule.probe_timeout):
                    verdict = await server.probe(state["port"])
            except Exception as exc:
                c = classify(exc)
                failures += 1
                refused = refused + 1 if c.reason == "connect_refused" else 0
                publish(breaker.probe_result(False, anyio.current_time()))
            else:
                failures = refused = 0
                publish(
                    breaker.probe_result(True, anyio.current_time(), loading=verdict == "loading")
                )
            if schedule.should_search(refused):
                search = PortSearch(state["port"], default_ports("unknown"))
                while (port := search.next_port()) is not None:
                    try:
                        with anyio.fail_after(schedule.probe_timeout):
                            await server.probe(port)
                        found = True
                    except Exception:
                        found = False
                    search.report(port, found)
                if search.moved and search.found is not None:
                    old = f"http://127.0.0.1:{state['port']}"
                    new = f"http://127.0.0.1:{search.found}"
                    events.append(moved_event("gpu", old, new, at=anyio.current_time()))
                    state["port"] = search.found
                    failures = refused = 0
                    reprobe = True  # a found server is probed before traffic returns

    async def timeline() -> None:
        await anyio.sleep(CRASH_AT)
        server.up = False
        await anyio.sleep(BACK_AT - CRASH_AT)
        server.up, server.port = True, 8000
        server.loading_until = LOADED_AT

    async def main() -> None:
        with anyio.move_on_after(END_AT):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(worker)
                tg.start_soon(prober)
                tg.start_soon(timeline)

    anyio.run(
        main,
        backend="trio",
        backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)},
    )

    opened = [e for e in events if isinstance(e, BreakerOpened)]
    moved = [e for e in events if isinstance(e, EndpointMoved)]
    closed = [e for e in events if isinstance(e, BreakerClosed)]
    assert opened
    assert opened[0].at >= CRASH_AT
    assert len(moved) == 1
    assert (moved[0].old_url, moved[0].new_url) == (
        "http://127.0.0.1:8080",
        "http://127.0.0.1:8000",
    )
    assert moved[0].at >= BACK_AT
    # Loading never counted as a failure: nothing opened once the server was found.
    assert all(e.at <= moved[0].at for e in opened)
    assert closed
    assert closed[-1].at >= LOADED_AT
    assert breaker.state(END_AT) == "closed"
    assert state["port"] == 8000
    # Calls sent to the dead port: the tripping volume, the in-flight ones, one trial per opening.
    assert counts["refused"] <= cfg.consecutive_failures + 2 + len(opened) * cfg.half_open_trials
    # Every call ended exactly once, and traffic came back in force after loading.
    assert counts["started"] - counts["ended"] <= 3
    assert counts["ok"] > 100
