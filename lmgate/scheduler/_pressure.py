"""The machine around a scheduler: resource pressure, exposed servers, leftovers.

Three things a scheduler does beside admitting requests, all started in its
task group and none on the request path:

- a resource sampler feeds the guard (``lmgate.policies.resources``) and its
  recommendation is applied to admission: from ``reduce_context`` up the
  context threshold of new requests shrinks (``Admission.context_factor``),
  from ``shed_low_priority`` up requests with a priority number above the
  cutoff are refused and evicted from the queue, and at
  ``pause_admission`` nothing new is granted -- requests queue within the
  bound and go as soon as the pressure lifts;
- the processes listening behind loopback endpoints are inspected once, in a
  worker thread, and a server open to the network or running as root is
  reported (event and log), never failed on;
- leftover temporary files of interrupted atomic writes are removed from
  the state directories (config, journals).

The recommendation is applied synchronously from the sampler's task.  That
is safe for the same reason callers may grant and release synchronously:
on one event loop nothing else runs between the check and the update.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import final

import anyio
import anyio.abc
import msgspec

from lmgate._endpoint import Endpoint
from lmgate._errors import Rejected
from lmgate.actors._resources import ResourceRecommendationChanged, run_resource_sampler
from lmgate.observability._events import Event, EventHub
from lmgate.observability._logging import RateLimitedLogger
from lmgate.policies.resources import (
    RECOMMENDATIONS,
    Recommendation,
    ResourceGuardState,
    ResourceStatistics,
)
from lmgate.scheduler._admission import Admission
from lmgate.scheduler._options import ResourceOptions
from lmgate.scheduler._watch import Watch
from lmgate.security._exposure import LISTENERS, ListenerReport, exposure_events, is_loopback_url
from lmgate.security._tempfiles import TempCleanup, clean_stale_temp_files

__all__ = ["QueueShed", "Resources", "ResourcesStatistics", "TempFilesCleaned"]

_log = RateLimitedLogger("lmgate.resources")
_MAX_DIRS = 64


@final
class QueueShed(Event, frozen=True, kw_only=True):
    """Queued requests above the priority cutoff were refused (``Rejected("shed")``)."""

    priority_above: int
    evicted: int


@final
class TempFilesCleaned(Event, frozen=True, kw_only=True):
    """Leftover temporary files of interrupted writes were removed at start."""

    removed: int
    errors: int


@final
class ResourcesStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """``stats().resources``: what the machine's state does to admission now."""

    #: What admission applies (``proceed`` without a resource guard).
    recommendation: Recommendation
    #: The signal behind it (``memory``, ``swap``, ``disk``, ``fds``, ...).
    reason: str | None
    since: float | None
    #: Factor for the context threshold of new requests (1.0: untouched).
    context_factor: float
    #: Requests with a priority number above this are shed (None: none are).
    shed_priority_above: int | None
    paused: bool
    #: Submissions refused with ``Rejected(reason="shed")``.
    shed: int
    #: Queued requests refused with it when shedding began.
    evicted: int
    guard: ResourceStatistics | None
    #: What listens behind each loopback endpoint, once the check has run.
    listeners: dict[str, ListenerReport]
    #: What the start-up cleanup of ``state_dirs`` did, once it has run.
    temp_files: TempCleanup | None


@final
class Resources:
    """A scheduler's resource guard, start-up checks and their statistics."""

    __slots__ = (
        "_adm",
        "_check_exposure",
        "_config",
        "_dirs",
        "_endpoints",
        "_events",
        "_interval",
        "_read",
        "_state",
        "_state_dirs",
        "_watch",
        "evicted",
        "listeners",
        "temp_files",
    )

    def __init__(
        self,
        admission: Admission,
        watch: Watch,
        events: EventHub,
        endpoints: Sequence[Endpoint],
        options: ResourceOptions,
    ) -> None:
        self._interval = options.interval
        self._state_dirs = options.state_dirs
        self._dirs = tuple(dict.fromkeys((*options.dirs, *self._state_dirs)))
        self._check_exposure = options.check_exposure
        self._adm = admission
        self._watch = watch
        self._events = events
        self._endpoints = tuple(endpoints)
        guard = options.guard
        self._config = guard
        self._read = options.reader
        self._state: ResourceGuardState | None = guard.build() if guard is not None else None
        self.evicted = 0
        self.listeners: dict[str, ListenerReport] = {}
        self.temp_files: TempCleanup | None = None

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Start the sampler (its first reading is in before this returns) and the checks."""
        if self._state is not None:
            await tg.start(
                partial(
                    run_resource_sampler,
                    self._state,
                    interval=self._interval,
                    dirs=self._dirs,
                    endpoints={ep.name: ep.url for ep in self._endpoints},
                    on_recommendation=self.apply,
                    read=self._read,
                )
            )
        if self._check_exposure and any(is_loopback_url(ep.url) for ep in self._endpoints):
            tg.start_soon(self._inspect_listeners)
        if self._state_dirs:
            tg.start_soon(self._clean_temp_files)

    # -- resource pressure -----------------------------------------------------

    def apply(self, change: ResourceRecommendationChanged) -> None:
        """Make admission follow a new recommendation, and tell the world."""
        assert self._config is not None
        adm = self._adm
        severity = RECOMMENDATIONS.index(change.recommendation)
        adm.context_factor = self._config.context_factor if severity >= 1 else 1.0
        cutoff = self._config.shed_priority_above if severity >= 2 else None
        adm.shed_above = cutoff
        was_paused = adm.paused
        adm.paused = severity >= 3
        self._watch.refresh()
        self._events.publish(change)
        if severity > RECOMMENDATIONS.index(change.previous):
            _log.warning(
                f"pressure:{change.recommendation}",
                "resource pressure (%s): %s",
                change.reason or "unknown",
                change.recommendation,
                recommendation=change.recommendation,
                reason=change.reason,
            )
        else:
            _log.info(
                f"pressure:{change.recommendation}",
                "resource pressure eased: %s",
                change.recommendation,
                recommendation=change.recommendation,
            )
        if cutoff is not None and adm.queued:
            evicted = self._evict(cutoff)
            if evicted:
                self._events.publish(
                    QueueShed(at=change.at, priority_above=cutoff, evicted=evicted)
                )
        if was_paused and not adm.paused:
            adm.dispatch(adm.clock())

    def _evict(self, cutoff: int) -> int:
        adm = self._adm
        queue = adm.queue
        victims = [
            w for m in list(queue.models_waiting()) for w in queue.waiters(m) if w.priority > cutoff
        ]
        for waiter in victims:
            waiter.queued = False  # before discard: its heap entry becomes garbage
            queue.discard(waiter)
            adm._refuse(
                waiter,
                Rejected(
                    f"shed under resource pressure (priority {waiter.priority} > {cutoff})",
                    reason="shed",
                ),
                "rejected",
            )
        self.evicted += len(victims)
        return len(victims)

    # -- start-up checks -------------------------------------------------------

    async def _inspect_listeners(self) -> None:
        targets = [(ep.name, ep.url) for ep in self._endpoints if is_loopback_url(ep.url)]
        try:
            reports = await anyio.to_thread.run_sync(
                LISTENERS.inspect, [u for _, u in targets], abandon_on_cancel=True
            )
        except Exception as exc:  # advisory: never take the scheduler down
            _log.info("listeners_failed", "listener check failed: %s", type(exc).__name__)
            return
        now = anyio.current_time()
        for (name, _), report in zip(targets, reports, strict=True):
            if report is None:
                continue
            self.listeners[name] = report
            for event in exposure_events(report, endpoint=name, now=now):
                self._events.publish(event)

    async def _clean_temp_files(self) -> None:
        try:
            result = await anyio.to_thread.run_sync(
                clean_stale_temp_files, self._state_dirs, abandon_on_cancel=True
            )
        except Exception as exc:
            _log.info("temp_clean_failed", "temp file cleanup failed: %s", type(exc).__name__)
            return
        self.temp_files = result
        if result.removed or result.errors:
            _log.info(
                "temp_cleaned",
                "removed %d leftover temporary files (%d could not be removed)",
                result.removed,
                result.errors,
            )
            self._events.publish(
                TempFilesCleaned(
                    at=anyio.current_time(), removed=result.removed, errors=result.errors
                )
            )

    # -- introspection -----------------------------------------------------------

    def statistics(self) -> ResourcesStatistics:
        adm = self._adm
        state = self._state
        guard = state.statistics() if state is not None else None
        return ResourcesStatistics(
            recommendation=guard.recommendation if guard is not None else "proceed",
            reason=guard.reason if guard is not None else None,
            since=guard.since if guard is not None else None,
            context_factor=adm.context_factor,
            shed_priority_above=adm.shed_above,
            paused=adm.paused,
            shed=self._watch.shed,
            evicted=self.evicted,
            guard=guard,
            listeners=dict(self.listeners),
            temp_files=self.temp_files,
        )

    def __repr__(self) -> str:
        rec = self._state.recommendation if self._state is not None else "off"
        return f"<Resources {rec} dirs={len(self._dirs)}>"
