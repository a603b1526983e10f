"""Snapshots of the Redis coordinator for ``statistics()``."""

from __future__ import annotations

from typing import final

import msgspec

from lmgate.coordination._fallback import Mode

__all__ = ["EndpointCoordination", "RedisStatistics"]


@final
class EndpointCoordination(msgspec.Struct, frozen=True, kw_only=True):
    """One endpoint's share of the coordination, from this process."""

    name: str
    limit: int
    share: int
    local_limit: int | None
    running: int
    waiting: int
    peak_running: int
    processes: int | None
    leader: bool
    granted: int
    local_grants: int
    restored: int
    syncs: int
    samples_shipped: int
    applied_state: str | None


@final
class RedisStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of the coordinator: link mode, faults and endpoints."""

    url: str
    owner: str
    mode: Mode
    losses: int
    joins: int
    errors: int
    last_error: str
    endpoints: tuple[EndpointCoordination, ...]
