"""Endpoints that learn what they are from their server when the scheduler starts.

Each ``Endpoint(probe=True)`` is probed when the scheduler is entered, all
at once, before admission routes anything.  Every probe round is bounded
by the health schedule's ``probe_timeout`` and the whole start by
``START_ROUNDS`` times that (5 s by default), so a server that does not
answer delays the start by at most that much and never fails it.  What a
probe finds replaces the declared endpoint through
:func:`lmgate.detect.learn` -- the models, context windows, server kind
and locality, with whatever the user set winning -- and:

- **Slots become the limit.**  When the server says how many requests it
  runs at once (llama.cpp's slots), that is where the endpoint's limit
  starts and the most it may reach: more would only queue inside the
  server, out of the scheduler's sight.  A ``Fixed`` limit is capped at
  the slot count; an adaptive policy starts at it and keeps it as its
  ceiling.  An endpoint's own ``limit=`` is kept as given, and so is a
  limit shared through a coordinator (it was handed out already).
- **Health is checked where the server says.**  The endpoint's health check
  becomes a :class:`~lmgate.scheduler._discovery_watch.WatchingCheck` on
  the server's own health route (or around the user's check, which still
  decides), and it re-probes on the health schedule.

A probe that finds nothing leaves the endpoint as declared, with an
``EndpointDiscoveryFailed`` event and its state in ``stats()``; it still
gets a watching check, which probes until the server answers.  A plain
``Endpoint`` is never touched: nothing is sent to its URL by lmgate.

The learned endpoints are written into the admission built in
``Scheduler.__init__`` rather than into a new one, because the retry
layer, the hooks and the resource watch hold that admission already; this
happens before any actor starts, so it is as if they had been declared so.
"""

from __future__ import annotations

from typing import final

import anyio
import msgspec

from lmgate._endpoint import Endpoint
from lmgate._errors import InvalidParameter
from lmgate.detect._learn import endpoint_key, learn
from lmgate.detect._probe import ServerInfo, probe
from lmgate.observability._events import EventHub
from lmgate.policies._limit import Fixed, LimitPolicy
from lmgate.scheduler._coordinator import SharesLimits
from lmgate.scheduler._core import SchedulerInternals
from lmgate.scheduler._discovery_watch import (
    DiscoveryStatistics,
    EndpointDiscovered,
    EndpointDiscoveryFailed,
    EndpointRecord,
    WatchingCheck,
)
from lmgate.scheduler._slot import EndpointSlot

__all__ = ["START_ROUNDS", "Discovery", "limit_for_slots"]

#: The start-up deadline for all probes, in health-schedule probe timeouts.
START_ROUNDS = 2.5
#: Seconds between re-probes of a healthy endpoint (its health route is
#: asked on every health check; the full probe this often, and after failures).
REFRESH_INTERVAL = 300.0


def limit_for_slots(policy: LimitPolicy, slots: int) -> LimitPolicy:
    """``policy`` started at, and kept within, the server's ``slots``.

    A ``Fixed`` limit is capped at ``slots``; a policy with
    ``initial_limit``/``max_limit`` (AIMD, Vegas, Gradient2, Adaptive)
    starts at ``slots`` and never goes above it.  Anything else, or a
    change the policy refuses, is returned unchanged.
    """
    if isinstance(policy, Fixed):
        return policy if policy.limit <= slots else Fixed(slots)
    fields = getattr(policy, "__struct_fields__", ())
    if not isinstance(policy, msgspec.Struct) or not {"initial_limit", "max_limit"} <= set(fields):
        return policy
    low = min(int(getattr(policy, "min_limit", 1)), slots)
    changes = {"initial_limit": slots, "max_limit": slots}
    if "min_limit" in fields:
        changes["min_limit"] = low
    try:
        return msgspec.structs.replace(policy, **changes)
    except (InvalidParameter, TypeError, ValueError):
        return policy


@final
class Discovery:
    """Probing at start, the per-endpoint records, and their statistics."""

    __slots__ = ("_events", "_interval", "_records", "_timeout")

    def __init__(self, events: EventHub, *, refresh_interval: float = REFRESH_INTERVAL) -> None:
        self._events = events
        self._timeout = 2.0  # the health schedule's probe timeout, read at start
        self._interval = refresh_interval
        self._records: dict[str, EndpointRecord] = {}

    def statistics_for(self, name: str) -> DiscoveryStatistics | None:
        """The endpoint's discovery state, or None if it is not probed."""
        rec = self._records.get(name)
        return None if rec is None else rec.statistics()

    async def start(self, sched: SchedulerInternals) -> None:
        """Probe ``sched``'s probe=True endpoints and write what they learned into it."""
        endpoints = sched._endpoints
        wanted = [(i, ep) for i, ep in enumerate(endpoints) if ep.probe]
        if not wanted:
            return
        self._timeout = sched._resilience.probes.probe_timeout
        found = await self._probe_all(wanted)
        now = anyio.current_time()
        replaced: dict[int, Endpoint] = {}
        for i, ep in wanted:
            rec = self._records[ep.name] = EndpointRecord(ep.name, ep.url)
            outcome = found.get(i)
            learned = self._learned(ep, rec, outcome, now, sched._limit_policy)
            if learned is not ep:
                replaced[i] = learned
        if replaced:
            _apply(sched, replaced)
        for i, ep in wanted:
            self._announce(self._records[ep.name], sched._admission.slots[i].limit, now)

    async def learn_endpoint(
        self, ep: Endpoint, default: LimitPolicy, *, probe_timeout: float | None = None
    ) -> Endpoint:
        """``ep`` as it should run, probed now if it asks to be (within the start deadline).

        For an endpoint that joins a running scheduler (a new config): the
        caller builds its limit state and actor from the returned endpoint,
        whose ``limit`` already carries the slot count when there is one.
        """
        if not ep.probe:
            return ep
        if probe_timeout is not None:
            self._timeout = probe_timeout
        found = await self._probe_all([(0, ep)])
        now = anyio.current_time()
        rec = self._records[ep.name] = EndpointRecord(ep.name, ep.url)
        learned = self._learned(ep, rec, found.get(0), now, default)
        self._announce(rec, _starting_limit(learned.limit or default), now)
        return learned

    async def _probe_all(
        self, wanted: list[tuple[int, Endpoint]]
    ) -> dict[int, ServerInfo | BaseException]:
        found: dict[int, ServerInfo | BaseException] = {}

        async def one(i: int, ep: Endpoint) -> None:
            try:
                found[i] = await probe(
                    ep.url, refresh=True, timeout=self._timeout, api_key=endpoint_key(ep)
                )
            except Exception as exc:
                found[i] = exc

        with anyio.move_on_after(START_ROUNDS * self._timeout):
            async with anyio.create_task_group() as tg:
                for i, ep in wanted:
                    tg.start_soon(one, i, ep)
        return found

    def _learned(
        self,
        ep: Endpoint,
        rec: EndpointRecord,
        outcome: ServerInfo | BaseException | None,
        now: float,
        default: LimitPolicy,
    ) -> Endpoint:
        """The endpoint as it will run: learned, or declared with a watching check."""
        if isinstance(outcome, ServerInfo):
            rec.probes, rec.last_probe_at = 1, now
        if isinstance(outcome, ServerInfo) and outcome.reachable:
            rec.commit(outcome, ep.url, now)
            rec.applied = outcome
            learned = learn(ep, outcome)
            changes: dict[str, object] = {}
            if ep.limit is None and outcome.slots:
                changes["limit"] = limit_for_slots(default, outcome.slots)
            learned = msgspec.structs.replace(learned, health=self._check(ep, rec), **changes)
            return learned
        if outcome is None:
            rec.state, rec.detail = "timed_out", "no answer before the start-up deadline"
        elif isinstance(outcome, ServerInfo):
            rec.state, rec.detail = "unreachable", (outcome.error or "no answer")[:200]
        else:
            state = "invalid" if isinstance(outcome, InvalidParameter) else "unreachable"
            rec.state, rec.detail = state, f"{type(outcome).__name__}: {outcome}"[:200]
        rec.stale = True
        return msgspec.structs.replace(ep, health=self._check(ep, rec))

    def _check(self, ep: Endpoint, rec: EndpointRecord) -> WatchingCheck:
        return WatchingCheck(
            rec,
            self._events,
            user=ep.health,
            budget=self._timeout / 2,
            refresh_interval=self._interval,
        )

    def _announce(self, rec: EndpointRecord, limit: int | None, now: float) -> None:
        info = rec.info
        if info is None:
            self._events.publish(
                EndpointDiscoveryFailed(
                    at=now, endpoint=rec.name, state=rec.state, reason=rec.detail
                )
            )
            return
        self._events.publish(
            EndpointDiscovered(
                at=now,
                endpoint=rec.name,
                kind=info.kind,
                local=info.local,
                models=info.models,
                context_windows=dict(info.context_windows),
                slots=info.slots,
                limit=limit if info.slots else None,
            )
        )

    def __repr__(self) -> str:
        learned = sum(r.state == "learned" for r in self._records.values())
        return f"<Discovery endpoints={len(self._records)} learned={learned}>"


def _starting_limit(policy: LimitPolicy) -> int | None:
    if isinstance(policy, Fixed):
        return policy.limit
    start = getattr(policy, "initial_limit", None)
    return start if isinstance(start, int) else None


def _apply(sched: SchedulerInternals, replaced: dict[int, Endpoint]) -> None:
    """Put the learned endpoints into the (not yet running) admission, in place."""
    adm = sched._admission
    shared = isinstance(sched._coordinator, SharesLimits)
    for i, ep in replaced.items():
        old = adm.slots[i]
        if shared:
            # The coordinator handed this endpoint's shared limit out already.
            limit = old.limit
        else:
            state = (ep.limit or sched._limit_policy).build()
            sched._limit_states[i] = state
            limit = state.limit
        adm.slots[i] = EndpointSlot(i, ep, limit, None)
    by_model: dict[str, tuple[EndpointSlot, ...]] = {}
    for slot in adm.slots:
        for m in slot.models:
            by_model[m] = (*by_model.get(m, ()), slot)
    adm.by_model = by_model
    sched._endpoints = tuple(slot.endpoint for slot in adm.slots)
    if sched._retrying is not None:
        sched._retrying.refresh_windows(sched._endpoints)
