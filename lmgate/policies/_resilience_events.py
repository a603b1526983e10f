"""Events about endpoint health, for users who subscribe and for the log.

They are frozen tagged msgspec Structs so a subscriber can write them as
JSON lines unchanged.  URLs are stripped of user info before they go into
an event, since events are logged.
"""

from __future__ import annotations

from typing import final
from urllib.parse import urlsplit, urlunsplit

from lmgate.observability._events import Event
from lmgate.policies._breaker import Transition

__all__ = [
    "BreakerClosed",
    "BreakerHalfOpen",
    "BreakerOpened",
    "EndpointMoved",
    "EndpointStateChanged",
    "LimitChanged",
    "ModelChanged",
    "breaker_event",
    "moved_event",
    "redact_url",
]

#: Transition reasons after which the breaker itself closed (not a hold ending).
_RECOVERED = frozenset({"recovered"})


@final
class BreakerOpened(Event, frozen=True, kw_only=True, tag="breaker_opened"):
    """Traffic to ``endpoint`` stopped until ``until``; the window that tripped it."""

    endpoint: str
    reason: str
    until: float | None
    failure_rate: float
    failures: int
    total: int
    consecutive_opens: int


@final
class BreakerHalfOpen(Event, frozen=True, kw_only=True, tag="breaker_half_open"):
    """The open time of ``endpoint`` elapsed; ``trials`` calls may test it."""

    endpoint: str
    trials: int


@final
class BreakerClosed(Event, frozen=True, kw_only=True, tag="breaker_closed"):
    """``endpoint`` recovered: trial calls or probes succeeded."""

    endpoint: str
    reason: str


@final
class EndpointStateChanged(Event, frozen=True, kw_only=True, tag="endpoint_state_changed"):
    """Any other change of an endpoint's state, e.g. held for a Retry-After."""

    endpoint: str
    old: str
    new: str
    reason: str
    until: float | None = None


@final
class EndpointMoved(Event, frozen=True, kw_only=True, tag="endpoint_moved"):
    """The server of ``endpoint`` answered at a new address."""

    endpoint: str
    old_url: str
    new_url: str


@final
class ModelChanged(Event, frozen=True, kw_only=True, tag="model_changed"):
    """``model`` on ``endpoint`` is now a different build (digest/version)."""

    endpoint: str
    model: str
    old: str
    new: str


@final
class LimitChanged(Event, frozen=True, kw_only=True, tag="limit_changed"):
    """The concurrency limit of ``endpoint`` moved from ``old`` to ``new``."""

    endpoint: str
    old: int
    new: int
    policy: str = ""


def breaker_event(endpoint: str, transition: Transition, *, half_open_trials: int = 1) -> Event:
    """The event that tells subscribers about a breaker transition."""
    t = transition
    if t.after == "open":
        return BreakerOpened(
            at=t.at,
            endpoint=endpoint,
            reason=t.reason,
            until=t.until,
            failure_rate=t.failure_rate,
            failures=t.failures,
            total=t.total,
            consecutive_opens=t.consecutive_opens,
        )
    if t.after == "half_open" and t.before == "open":
        return BreakerHalfOpen(at=t.at, endpoint=endpoint, trials=half_open_trials)
    if t.after == "closed" and t.reason in _RECOVERED:
        return BreakerClosed(at=t.at, endpoint=endpoint, reason=t.reason)
    return EndpointStateChanged(
        at=t.at, endpoint=endpoint, old=t.before, new=t.after, reason=t.reason, until=t.until
    )


def moved_event(endpoint: str, old_url: str, new_url: str, *, at: float) -> EndpointMoved:
    """An :class:`EndpointMoved` with both URLs safe to log."""
    return EndpointMoved(
        at=at, endpoint=endpoint, old_url=redact_url(old_url), new_url=redact_url(new_url)
    )


def redact_url(url: str) -> str:
    """``url`` without user info (``user:password@``), query or fragment."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<unparsable url>"
