"""Events the Redis coordinator publishes on the scheduler's event hub."""

from __future__ import annotations

from typing import final

from lmgate.observability._events import Event

__all__ = [
    "CoordinationLost",
    "CoordinationRejoining",
    "CoordinationRestored",
    "LeadershipChanged",
    "SharedLimitPublished",
    "SharedStateApplied",
]


@final
class CoordinationLost(Event, frozen=True, kw_only=True, tag="coordination_lost"):
    """Redis is down, too slow, or forgot its state: serving from local shares.

    ``shares`` maps each endpoint to the slots this process may now use.
    """

    reason: str
    shares: dict[str, int]


@final
class CoordinationRejoining(Event, frozen=True, kw_only=True, tag="coordination_rejoining"):
    """Redis answers again and counts this process's leases; still within
    the shares until ``until``."""

    until: float


@final
class CoordinationRestored(Event, frozen=True, kw_only=True, tag="coordination_restored"):
    """Back to the shared limit."""


@final
class LeadershipChanged(Event, frozen=True, kw_only=True, tag="coordination_leader"):
    """This process became (or stopped being) the one computing the
    endpoint's shared limit."""

    endpoint: str
    leader: bool


@final
class SharedLimitPublished(Event, frozen=True, kw_only=True, tag="coordination_limit"):
    """As leader, this process wrote a new shared limit for the endpoint."""

    endpoint: str
    old: int | None
    new: int


@final
class SharedStateApplied(Event, frozen=True, kw_only=True, tag="coordination_state"):
    """Another process's breaker state now routes this process's requests
    (or, with ``shared=False``, stopped doing so)."""

    endpoint: str
    routing: str
    state: str
    shared: bool
