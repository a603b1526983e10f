"""What an endpoint actor reports: its figures, and their share of ``stats()``."""

from __future__ import annotations

from typing import Any, final

import msgspec

from lmgate.actors._engine_watch import EngineWatchStatistics
from lmgate.policies._breaker import BreakerStatistics
from lmgate.policies._lifecycle import LifecycleStatistics
from lmgate.policies._limit import LimitStatistics

__all__ = ["EndpointActorStatistics", "resilience_fields"]


@final
class EndpointActorStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """One endpoint as its actor sees it: feedback, breaker, probes, models."""

    name: str
    state: str
    url: str
    port: int | None
    samples: int
    by_class: dict[str, int]
    latency_ewma: float | None
    ttft_ewma: float | None
    limit: LimitStatistics
    breaker: BreakerStatistics
    #: Breaker openings since start (a moved server's new breaker included).
    opens: int
    lifecycle: LifecycleStatistics
    probes: int
    probe_failures: int
    last_probe_at: float | None
    last_probe_ok: bool | None
    probe_latency: float | None
    addresses: tuple[str, ...] | None
    identities: dict[str, str]
    moves: int
    port_searches: int
    model_changes: int
    ignored_timeouts: int
    warmups: int
    warmup_failures: int
    #: Reads of the server's own metrics (None: not read).
    engine: EngineWatchStatistics | None = None


def resilience_fields(a: EndpointActorStatistics) -> dict[str, Any]:
    """The breaker, probe and model figures of ``stats()``'s ``EndpointStats``."""
    b = a.breaker
    return {
        "breaker": b.state,
        "held_by": b.held_by,
        "retry_at": b.retry_at,
        "opens": a.opens,
        "failure_rate": b.failure_rate,
        "probes": a.probes,
        "probe_failures": a.probe_failures,
        "last_probe_at": a.last_probe_at,
        "last_probe_ok": a.last_probe_ok,
        "port": a.port,
        "moves": a.moves,
        "identities": a.identities,
        "model_changes": a.model_changes,
        "cold_requests": a.lifecycle.cold_requests,
    }
