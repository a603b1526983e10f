"""What discovery keeps per endpoint, and the health check that keeps it fresh.

An ``Endpoint(probe=True)`` gets a :class:`WatchingCheck` as its health
check.  The endpoint actor's health monitor calls it on its own schedule
(slow while healthy, quick while recovering, under its probe timeout), so
re-probing follows the breaker without a task of its own: each call asks
the server's documented health route (or the user's own check), and when
the record is due -- after a failure, at another address, or every
``refresh_interval`` seconds -- probes the server again with
``refresh=True`` in what is left of a small budget.  A failed check drops
the URL from the probe cache (:func:`lmgate.detect.invalidate`).  A
refresh that cannot finish in its budget is skipped, never counted against
the server: its health route already answered.

What a refresh finds is recorded and published (``EndpointDiscovered``
with ``refresh=True`` and the facts that differ from what routing uses);
the build of each model goes back to the actor as a ``ProbeReport``
identity, so a server restarted with another model under the same name is
seen as a model change.  Routing keeps the facts learned at start.
"""

from __future__ import annotations

from typing import final

import anyio
import msgspec

from lmgate._endpoint import Endpoint, HealthCheck, ProbeReport
from lmgate.detect._learn import endpoint_key, health_status
from lmgate.detect._probe import ServerInfo, invalidate, probe
from lmgate.observability._events import Event, EventHub

__all__ = [
    "DiscoveryStatistics",
    "EndpointDiscovered",
    "EndpointDiscoveryFailed",
    "EndpointRecord",
    "WatchingCheck",
]

_MAX_DETAIL = 200


@final
class EndpointDiscovered(Event, frozen=True, kw_only=True, tag="endpoint_discovered"):
    """A probe said what ``endpoint`` serves.

    At start (``refresh`` false) these are the facts routing uses, and
    ``limit`` is the limit the endpoint starts from when the server told
    its slot count.  On a re-probe ``changed`` names the facts that differ
    from the ones routing uses (``kind``, ``models``, ``context_windows``,
    ``slots``).
    """

    endpoint: str
    kind: str
    local: bool | None
    models: tuple[str, ...]
    context_windows: dict[str, int]
    slots: int | None
    limit: int | None = None
    refresh: bool = False
    changed: tuple[str, ...] = ()


@final
class EndpointDiscoveryFailed(Event, frozen=True, kw_only=True, tag="endpoint_discovery_failed"):
    """The probe of ``endpoint`` at start found nothing; it runs as declared.

    ``state`` is ``unreachable`` (nothing answered), ``timed_out`` (the
    start-up deadline passed first) or ``invalid`` (the URL cannot be
    probed).
    """

    endpoint: str
    state: str
    reason: str


@final
class DiscoveryStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """One probed endpoint as discovery sees it (``None`` in stats otherwise).

    ``state`` is ``learned`` once a probe answered (at start or later),
    else what the probe at start found: ``unreachable``, ``timed_out`` or
    ``invalid``.
    ``kind``, ``models``, ``context_windows`` and ``slots`` are the last
    probe's; ``refresh_timeouts`` counts re-probes cut short by their budget.
    """

    state: str
    kind: str | None
    models: tuple[str, ...]
    context_windows: dict[str, int]
    slots: int | None
    probes: int
    failures: int
    refreshes: int
    refresh_timeouts: int
    last_probe_at: float | None
    detail: str


@final
class EndpointRecord:
    """Discovery's record of one endpoint; only discovery changes it."""

    __slots__ = (
        "applied",
        "detail",
        "failures",
        "info",
        "last_probe_at",
        "learned_at",
        "name",
        "probes",
        "refresh_timeouts",
        "refreshes",
        "route",
        "stale",
        "state",
        "url",
    )

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self.state = "pending"
        self.detail = ""
        #: The last answer, and the one routing was built from at start.
        self.info: ServerInfo | None = None
        self.applied: ServerInfo | None = None
        self.route: str | None = None
        self.probes = self.failures = self.refreshes = self.refresh_timeouts = 0
        self.last_probe_at: float | None = None
        self.learned_at = -float("inf")
        self.stale = False

    def commit(self, info: ServerInfo, url: str, now: float) -> None:
        self.info, self.url = info, url
        self.state, self.detail, self.stale = "learned", info.reason[:_MAX_DETAIL], False
        self.route = info.health_route or self.route
        self.learned_at = now

    def changed(self, info: ServerInfo) -> tuple[str, ...]:
        """The facts in ``info`` that differ from the ones routing uses."""
        old = self.applied
        if old is None:
            return ("kind", "models", "context_windows", "slots")
        fields = ("kind", "models", "context_windows", "slots")
        return tuple(f for f in fields if getattr(old, f) != getattr(info, f))

    def same_server(self, info: ServerInfo) -> bool:
        """Whether ``info`` (from another address) describes this endpoint's server."""
        mine = self.info or self.applied
        if mine is None or not mine.models:
            return True  # nothing to tell it by
        return bool(set(mine.models) & set(info.models))

    def statistics(self) -> DiscoveryStatistics:
        info = self.info
        return DiscoveryStatistics(
            state=self.state,
            kind=info.kind if info else None,
            models=info.models if info else (),
            context_windows=dict(info.context_windows) if info else {},
            slots=info.slots if info else None,
            probes=self.probes,
            failures=self.failures,
            refreshes=self.refreshes,
            refresh_timeouts=self.refresh_timeouts,
            last_probe_at=self.last_probe_at,
            detail=self.detail,
        )

    def __repr__(self) -> str:
        return f"<EndpointRecord {self.name} {self.state} probes={self.probes}>"


def identities(info: ServerInfo | None) -> dict[str, str]:
    """Each model's build as far as the probe can tell: server, version, trained window.

    The loaded window is left out on purpose: Ollama's changes as models
    load and unload, which is no new model.
    """
    if info is None:
        return {}
    out: dict[str, str] = {}
    for m in info.models[:64]:
        trained = info.trained_windows.get(m)
        out[m] = f"{info.kind} {info.version or '?'} trained={trained or '?'}"
    return out


@final
class WatchingCheck:
    """An endpoint's health check that also re-probes it (see the module doc).

    ``user`` is the check the endpoint was declared with, if any: its
    answer decides health, and the re-probe rides along.  Without one the
    server's own health route decides, or -- while nothing was ever
    learned -- the probe itself.
    """

    __slots__ = ("_budget", "_events", "_interval", "_record", "_user")

    def __init__(
        self,
        record: EndpointRecord,
        events: EventHub,
        *,
        user: HealthCheck | None,
        budget: float,
        refresh_interval: float,
    ) -> None:
        self._record = record
        self._events = events
        self._user = user
        self._budget = budget
        self._interval = refresh_interval

    async def __call__(self, target: Endpoint) -> bool | ProbeReport:
        rec = self._record
        user_result: bool | ProbeReport | None = None
        seen: ServerInfo | None = None
        try:
            if self._user is not None:
                user_result = await self._user(target)
                if isinstance(user_result, ProbeReport):
                    ok, loading = bool(user_result.ok), bool(user_result.loading)
                else:
                    ok, loading = user_result is True, False
            elif rec.route is not None:
                answer = await health_status(
                    target.url, rec.route, api_key=endpoint_key(target), timeout=self._budget
                )
                ok, loading = answer.ok, answer.loading
                if not (ok or loading):
                    rec.detail = f"health route {rec.route}: {answer.detail}"[:_MAX_DETAIL]
            else:
                seen = await self._probe(target)
                ok = seen is not None and seen.reachable
                loading = seen is not None and seen.loading
        except Exception as exc:
            self._failed(target.url, f"{type(exc).__name__}: {exc}")
            raise
        if not (ok or loading):
            self._failed(target.url, rec.detail or "health check failed")
            return user_result if user_result is not None else False
        now = anyio.current_time()
        if seen is None and self._due(target.url, now):
            seen = await self._probe(target)
        if isinstance(user_result, ProbeReport):
            return user_result
        if seen is None and target.url == rec.url:
            seen = rec.info
        return ProbeReport(ok=True, loading=loading, identities=identities(seen))

    def _due(self, url: str, now: float) -> bool:
        rec = self._record
        return (
            rec.stale
            or rec.info is None
            or url != rec.url
            or now - rec.learned_at >= self._interval
        )

    async def _probe(self, target: Endpoint) -> ServerInfo | None:
        """Probe ``target`` again within the budget; record it if it is ours."""
        rec = self._record
        info: ServerInfo | None = None
        with anyio.move_on_after(self._budget) as scope:
            info = await probe(
                target.url, refresh=True, timeout=self._budget, api_key=endpoint_key(target)
            )
        now = anyio.current_time()
        if scope.cancelled_caught or info is None:
            rec.refresh_timeouts += 1
            rec.detail = "re-probe did not finish within its budget"
            return None
        rec.probes += 1
        rec.last_probe_at = now
        if not info.reachable:
            rec.detail = (info.error or "unreachable")[:_MAX_DETAIL]
            return info
        if target.url != rec.url and not rec.same_server(info):
            return info  # a candidate address with another server on it
        was = rec.state
        changed = rec.changed(info)
        rec.refreshes += 1
        rec.commit(info, target.url, now)
        if changed or was != "learned":
            self._events.publish(
                EndpointDiscovered(
                    at=now,
                    endpoint=rec.name,
                    kind=info.kind,
                    local=info.local,
                    models=info.models,
                    context_windows=dict(info.context_windows),
                    slots=info.slots,
                    refresh=True,
                    changed=changed,
                )
            )
        return info

    def _failed(self, url: str, detail: str) -> None:
        rec = self._record
        invalidate(url)
        rec.failures += 1
        rec.stale = True
        rec.detail = detail[:_MAX_DETAIL]

    def __repr__(self) -> str:
        return f"<WatchingCheck {self._record.name} user={self._user is not None}>"
