"""What context strategies did, told to the user: events and running totals.

A prompt that was shortened is a prompt the model did not see whole; the
user must be able to tell.  Each strategy that ran becomes one
:class:`ContextApplied` event for the scheduler's event hub, and
:class:`ContextCounters` keeps the totals ``stats()`` reports, in fixed
memory whatever the traffic.
"""

from __future__ import annotations

from typing import final

import msgspec

from lmgate.context._strategies import Fitted
from lmgate.observability._events import Event

__all__ = ["ContextApplied", "ContextCounters", "ContextStatistics", "context_events"]


class ContextApplied(Event, frozen=True, kw_only=True):
    """A strategy shortened a request's prompt before it was sent."""

    endpoint: str | None
    model: str | None
    window: int | None
    strategy: str
    tokens_before: int
    tokens_after: int
    dropped: int
    compressed: int
    summarized: int
    elided_chars: int
    error: str | None = None


def context_events(
    fitted: Fitted, *, at: float, endpoint: str | None = None, model: str | None = None
) -> list[ContextApplied]:
    """One event per strategy that ran, for the scheduler's event hub."""
    return [
        ContextApplied(
            at=at,
            endpoint=endpoint,
            model=model,
            window=fitted.window,
            strategy=a.strategy,
            tokens_before=a.tokens_before,
            tokens_after=a.tokens_after,
            dropped=a.dropped,
            compressed=a.compressed,
            summarized=a.summarized,
            elided_chars=a.elided_chars,
            error=a.error,
        )
        for a in fitted.applied
    ]


@final
class ContextStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Totals over every prompt fitted: how often each strategy ran, what it cut.

    ``overflows`` counts prompts refused with ContextOverflow (before
    admission or after it); ``peak_tokens`` is the largest prompt plus
    reserved output that was let through.
    """

    fitted: int
    shortened: int
    overflows: int
    applied: dict[str, int]
    dropped: int
    compressed: int
    summarized: int
    elided_chars: int
    peak_tokens: int


@final
class ContextCounters:
    """Running totals for ``stats()``; fixed size whatever the traffic."""

    __slots__ = ("_applied", "_n", "_overflows", "_peak", "_shortened", "_sums")

    def __init__(self) -> None:
        self._n = self._shortened = self._overflows = self._peak = 0
        self._applied: dict[str, int] = {}
        self._sums = [0, 0, 0, 0]

    def record(self, fitted: Fitted) -> None:
        self._n += 1
        self._peak = max(self._peak, fitted.tokens + fitted.reserve)
        if any(a.error is None for a in fitted.applied):
            self._shortened += 1
        for a in fitted.applied:
            key = a.strategy if a.error is None else f"{a.strategy}!failed"
            self._applied[key] = self._applied.get(key, 0) + 1
            for k, v in enumerate((a.dropped, a.compressed, a.summarized, a.elided_chars)):
                self._sums[k] += v

    def record_overflow(self) -> None:
        self._overflows += 1

    def statistics(self) -> ContextStatistics:
        d, c, s, e = self._sums
        return ContextStatistics(
            fitted=self._n,
            shortened=self._shortened,
            overflows=self._overflows,
            applied=dict(self._applied),
            dropped=d,
            compressed=c,
            summarized=s,
            elided_chars=e,
            peak_tokens=self._peak,
        )

    def __repr__(self) -> str:
        return f"<ContextCounters fitted={self._n} shortened={self._shortened}>"
