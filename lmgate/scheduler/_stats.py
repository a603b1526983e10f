"""Snapshots returned by ``Scheduler.stats()``: frozen, cheap, JSON-ready."""

from __future__ import annotations

from typing import final

import msgspec

from lmgate._events import EventHubStatistics
from lmgate.policies._limit import LimitStatistics

__all__ = ["EndpointStats", "Stats"]


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
    peak_in_flight: int
    service_time: float | None
    latency_ewma: float | None
    ttft_ewma: float | None
    samples: int
    by_class: dict[str, int]
    dropped_samples: int
    policy: LimitStatistics


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
