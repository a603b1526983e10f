"""Snapshots returned by ``Scheduler.stats()``: frozen, cheap, JSON-ready."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import final

import msgspec

from lmgate.actors._endpoint import resilience_fields
from lmgate.actors._engine_watch import EngineWatchStatistics
from lmgate.actors._statistics import EndpointActorStatistics
from lmgate.context._report import ContextStatistics
from lmgate.observability._events import EventHubStatistics
from lmgate.policies._limit import LimitState, LimitStatistics
from lmgate.policies._throttle import ThrottleStatistics
from lmgate.policies._token_budget import TokenBudgetStatistics
from lmgate.scheduler._admission import Admission
from lmgate.scheduler._discovery_watch import DiscoveryStatistics
from lmgate.scheduler._pressure import ResourcesStatistics
from lmgate.scheduler._slot import EndpointSlot

__all__ = ["EndpointStats", "Stats", "snapshot"]


@final
class EndpointStats(msgspec.Struct, frozen=True, kw_only=True):
    """One endpoint as admission and its actor see it right now."""

    name: str
    url: str
    kind: str
    models: tuple[str, ...]
    #: Health as the endpoint actor sees it (``healthy``, ``down``, ``open``, ...).
    state: str
    #: How admission uses it: ``up``, ``held`` or ``down``.
    routing: str
    limit: int
    in_flight: int
    #: The most leases out at once; never above ``peak_limit``.
    peak_in_flight: int
    service_time: float | None
    latency_ewma: float | None
    ttft_ewma: float | None
    samples: int
    by_class: dict[str, int]
    dropped_samples: int
    policy: LimitStatistics
    #: The circuit breaker: ``closed``, ``open``, ``half_open`` or ``held``.
    breaker: str = "closed"
    #: Why traffic is held (``retry_after``, ``loading``, ``overload``).
    held_by: str | None = None
    #: When the open time or hold in force ends (scheduler clock).
    retry_at: float | None = None
    opens: int = 0
    failure_rate: float = 0.0
    probes: int = 0
    probe_failures: int = 0
    last_probe_at: float | None = None
    last_probe_ok: bool | None = None
    #: The port the server answers on now (it changes when the server moves).
    port: int | None = None
    moves: int = 0
    #: What each model's build is, as the last probe said (digest/version).
    identities: dict[str, str] = {}
    model_changes: int = 0
    cold_requests: int = 0
    #: The highest limit in force so far (a probe step or a startup doubling
    #: raises it for the seconds it is measured).
    peak_limit: int = 0
    #: What probing the server taught (``Endpoint(probe=True)`` only).
    discovery: DiscoveryStatistics | None = None
    #: Client-side throttling of this endpoint: window counts and refusals.
    throttle: ThrottleStatistics | None = None
    #: The KV budget (``Endpoint(kv_tokens=)`` or learned), what is charged
    #: to it and where the figure came from; None without one.
    tokens: TokenBudgetStatistics | None = None
    #: Calls given up by their callers that the server may still be running:
    #: they keep their place in the limit until it has stopped.
    lingering: int = 0
    #: Reads of the server's own metrics and the latest reading
    #: (``Endpoint(engine_metrics=True)``); None when they are not read.
    engine: EngineWatchStatistics | None = None


@final
class Stats(msgspec.Struct, frozen=True, kw_only=True):
    """The whole scheduler at one instant.

    ``submitted == sum(outcomes.values()) + queued + in_flight`` always holds.
    """

    submitted: int
    outcomes: dict[str, int]
    queued: int
    in_flight: int
    peak_queued: int
    queue_size: int
    closed: bool
    endpoints: tuple[EndpointStats, ...]
    events: EventHubStatistics
    #: Attempts after a request's first (each on its own lease); a request
    #: is still counted once in ``submitted`` and ends in one outcome.
    retries: int = 0
    #: Attempts moved to another model (fallback chain or larger window).
    fallbacks: int = 0
    #: Prompts fitted to their endpoint's window (requests with ``messages=``):
    #: strategies applied, what they cut, and the overflows.  A prompt no
    #: window could take ends its request in ``outcomes["rejected"]``.
    context: ContextStatistics | None = None
    #: Resource pressure and what admission does about it (shedding,
    #: pausing, a smaller context threshold); the listeners behind loopback
    #: endpoints; the start-up cleanup of leftover temp files.
    resources: ResourcesStatistics | None = None


def snapshot(
    adm: Admission,
    limit_states: Sequence[LimitState],
    actors: Sequence[EndpointActorStatistics],
    *,
    hidden: Callable[[EndpointSlot], bool],
    discovery: Callable[[str], DiscoveryStatistics | None],
    events: EventHubStatistics,
    retries: tuple[int, int],
    resources: ResourcesStatistics,
    context: ContextStatistics,
) -> Stats:
    """``Scheduler.stats()``: admission's counts joined with each actor's view."""
    eps = []
    throttles = adm.throttling.statistics() if adm.throttling is not None else {}
    for slot, state in zip(adm.slots, limit_states, strict=True):
        if hidden(slot):  # removed from the config, and drained
            continue
        a = actors[slot.index] if slot.index < len(actors) else None
        eps.append(
            EndpointStats(
                name=slot.endpoint.name,
                url=a.url if a else slot.endpoint.url,
                kind=slot.endpoint.kind,
                models=tuple(slot.models),
                state=slot.state,
                routing=slot.routing,
                limit=slot.limit,
                in_flight=slot.in_flight,
                peak_in_flight=slot.peak_in_flight,
                peak_limit=slot.peak_limit,
                service_time=slot.service_time,
                latency_ewma=a.latency_ewma if a else None,
                ttft_ewma=a.ttft_ewma if a else None,
                samples=a.samples if a else 0,
                by_class=a.by_class if a else {},
                dropped_samples=slot.dropped_samples,
                policy=state.statistics(),
                discovery=discovery(slot.endpoint.name),
                throttle=throttles.get(slot.endpoint.name),
                tokens=slot.kv.statistics() if slot.kv is not None else None,
                lingering=slot.held,
                engine=a.engine if a else None,
                **(resilience_fields(a) if a else {}),
            )
        )
    return Stats(
        submitted=adm.submitted,
        outcomes=dict(adm.outcomes),
        queued=adm.queued,
        in_flight=adm.in_flight,
        peak_queued=adm.peak_queued,
        queue_size=adm.queue_size,
        closed=adm.closed,
        endpoints=tuple(eps),
        events=events,
        retries=retries[0],
        fallbacks=retries[1],
        resources=resources,
        context=context,
    )
