"""The health monitor an endpoint actor runs: probes, pacing, moved servers.

It is a child task of the actor and owns nothing the actor decides on: it
probes, and posts what it saw (a ``HealthReport``, or ``Moved`` when the
server turned up on another port) into the actor's own mailbox, where the
breaker and the lifecycle take it in order with the samples.  Pacing
follows the breaker through ``pace`` -- slow while healthy, backed off
while down, quick while recovering, and always at the instant an open time
or hold ends -- and the actor calls :meth:`HealthMonitor.replan` whenever
the breaker's state changes, so a plan made in another state is dropped.

Each probe runs under the schedule's ``probe_timeout``: resolving the host
name (a container may come back under a new address), then the endpoint's
own health check.  After ``search_after`` refused connections in a row the
monitor walks the candidate ports (``Endpoint(ports=...)``, else the usual
ports of the server kind); a port counts as found only when the check says
the same server answers there.  The found address is probed once more
before the actor is told, and traffic still returns only through the
breaker's half-open path.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import final
from urllib.parse import urlsplit

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectSendStream

from lmgate._endpoint import Endpoint, ProbeReport
from lmgate.actors._messages import Tick
from lmgate.actors._resilience import Resolver, needs_resolving
from lmgate.actors._server_view import ServerView
from lmgate.policies._breaker import BreakerStateName
from lmgate.policies._classify import classify
from lmgate.policies._engine import EngineReading
from lmgate.policies._health import (
    HealthSchedule,
    PortSearch,
    default_ports,
    replace_port,
    url_port,
)
from lmgate.policies._sample import Sample

__all__ = ["ActorMessage", "HealthMonitor", "HealthReport", "Moved", "WarmedUp"]

_REFUSED = frozenset({"connect_refused", "connect_error"})
_MAX_DETAIL = 200


@final
class HealthReport(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """One probe's result, as the monitor posts it to its actor."""

    ok: bool
    url: str
    loading: bool = False
    refused: bool = False
    timed_out: bool = False
    identities: dict[str, str] | None = None
    addresses: tuple[str, ...] | None = None
    latency: float = 0.0
    detail: str = ""


@final
class Moved(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The server answers at ``new_url`` now (and was probed there)."""

    old_url: str
    new_url: str


@final
class WarmedUp(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The warm-up call for ``model`` ended; ``ok`` if it returned."""

    model: str
    ok: bool
    detail: str = ""


#: Everything an endpoint actor's mailbox carries.
ActorMessage = Sample | Tick | HealthReport | Moved | WarmedUp | ServerView | EngineReading

#: The breaker's state and when its open time or hold ends, at ``now``.
Pace = Callable[[float], tuple[BreakerStateName, float | None]]


@final
class HealthMonitor:
    """Probes one endpoint on the breaker's schedule (see the module doc)."""

    __slots__ = (
        "_addresses",
        "_candidates",
        "_failures",
        "_pace",
        "_refused",
        "_replan",
        "_resolve",
        "_resolve_timeout",
        "_rng",
        "_schedule",
        "_send",
        "_target",
        "searches",
    )

    def __init__(
        self,
        endpoint: Endpoint,
        schedule: HealthSchedule,
        send: MemoryObjectSendStream[ActorMessage],
        pace: Pace,
        *,
        rng: random.Random,
        resolve: Resolver | None,
        resolve_timeout: float,
    ) -> None:
        self._target = endpoint
        self._schedule = schedule
        self._send = send
        self._pace = pace
        self._rng = rng
        self._resolve = resolve
        self._resolve_timeout = resolve_timeout
        self._candidates = endpoint.ports or default_ports(endpoint.kind)
        self._failures = 0
        self._refused = 0
        self._addresses: tuple[str, ...] | None = None
        self._replan = anyio.Event()
        self.searches = 0

    def replan(self) -> None:
        """The breaker changed state: plan the next probe again."""
        self._replan.set()

    async def run(self) -> None:
        with self._send:
            try:
                await self._loop()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return  # the actor is gone

    async def _loop(self) -> None:
        check = self._target.health
        assert check is not None
        while True:
            report = await self._probe(self._target)
            await self._send.send(report)
            if report.ok:
                self._failures = self._refused = 0
            else:
                self._failures += 1
                self._refused = self._refused + 1 if report.refused else 0
            if self._schedule.should_search(self._refused) and await self._search():
                continue  # probe the found address again at once
            await self._wait(self._rng.random())

    async def _wait(self, draw: float) -> None:
        """Sleep until the next probe is due, re-planning when the breaker moves."""
        start = anyio.current_time()
        while True:
            now = anyio.current_time()
            state, until = self._pace(now)
            delay = self._schedule.next_probe_delay(
                state,
                self._failures,
                draw,
                state_ends_in=None if until is None else max(0.0, until - start),
            )
            due = start + delay
            if due <= now:
                return
            self._replan = anyio.Event()
            with anyio.move_on_at(due):
                await self._replan.wait()
            if anyio.current_time() >= due:
                return

    async def _probe(self, target: Endpoint) -> HealthReport:
        """Resolve and check ``target`` under the probe deadline."""
        check = target.health
        assert check is not None
        start = anyio.current_time()
        result: bool | ProbeReport = False
        detail = ""
        refused = False
        addresses = self._addresses
        with anyio.move_on_after(self._schedule.probe_timeout) as scope:
            try:
                host = urlsplit(target.url).hostname
                if self._resolve is not None and needs_resolving(host):
                    assert host is not None
                    with anyio.fail_after(self._resolve_timeout):
                        found = await self._resolve(host)
                    addresses = self._addresses = tuple(str(a) for a in found)[:16]
                result = await check(target)
            except Exception as exc:
                c = classify(exc)
                refused = c.reason in _REFUSED
                detail = f"{c.reason}: {type(exc).__name__}"
        latency = anyio.current_time() - start
        if scope.cancelled_caught:
            return HealthReport(
                ok=False,
                url=target.url,
                timed_out=True,
                addresses=addresses,
                latency=latency,
                detail="probe timed out",
            )
        if isinstance(result, ProbeReport):
            return HealthReport(
                ok=bool(result.ok),
                url=target.url,
                loading=bool(result.ok and result.loading),
                identities=_identities(result.identities),
                addresses=addresses,
                latency=latency,
                detail=str(result.detail)[:_MAX_DETAIL],
            )
        return HealthReport(
            ok=result is True,
            url=target.url,
            refused=refused,
            addresses=addresses,
            latency=latency,
            detail=detail[:_MAX_DETAIL],
        )

    async def _search(self) -> bool:
        """Look for the server on the candidate ports; True when it moved.

        After a search that found nothing, every further refused probe
        searches again: the probes are already backed off, and a server
        that is gone from its port can only be found elsewhere.
        """
        current = url_port(self._target.url)
        if current is None or not self._candidates or self._target.url.startswith("unix:"):
            return False
        self.searches += 1
        search = PortSearch(current, self._candidates)
        while (port := search.next_port()) is not None:
            candidate = self._retarget(port)
            report = await self._probe(candidate)
            search.report(port, report.ok and self._same_server(report))
        found = search.found
        if found is None or not search.moved:
            return False
        old = self._target.url
        self._target = self._retarget(found)
        self._failures = self._refused = 0
        await self._send.send(Moved(old_url=old, new_url=self._target.url))
        return True

    def _retarget(self, port: int) -> Endpoint:
        return msgspec.structs.replace(self._target, url=replace_port(self._target.url, port))

    def _same_server(self, report: HealthReport) -> bool:
        """A server that names its models must serve one of ours to be ours."""
        if not report.identities:
            return True
        return any(m in report.identities for m in self._target.models)

    @property
    def url(self) -> str:
        return self._target.url

    def __repr__(self) -> str:
        return (
            f"<HealthMonitor {self._target.name} failures={self._failures}"
            f" refused={self._refused} searches={self.searches}>"
        )


def _identities(value: Mapping[str, str] | None) -> dict[str, str] | None:
    if not value or not isinstance(value, Mapping):
        return None
    out: dict[str, str] = {}
    for k, v in list(value.items())[:64]:
        if isinstance(k, str) and isinstance(v, str) and k and v:
            out[k[:256]] = v[:512]
    return out or None
