"""What a circuit breaker counts and hands out: its window and its records.

The sliding window splits ``window`` seconds into ``buckets`` slices; each
bucket holds the calls, failures and overloads that ended in its slice and
is reused when time comes round to it again, so memory never grows.  The
records (permits, transitions, statistics) are what events, stats and the
endpoint actor name without needing the state machine itself.
"""

from __future__ import annotations

from typing import Final, Literal, final

import msgspec

__all__ = ["BreakerStateName", "BreakerStatistics", "BucketWindow", "Permit", "Transition"]

BreakerStateName = Literal["closed", "open", "half_open", "held"]

_NO_BUCKET: Final = -(2**62)


@final
class BucketWindow:
    """Counts of calls, failures and overloads over the last ``window`` seconds."""

    __slots__ = ("_fail", "_index", "_over", "_total", "_width")

    def __init__(self, window: float, buckets: int) -> None:
        self._width = window / buckets
        self._index = [_NO_BUCKET] * buckets
        self._total = [0] * buckets
        self._fail = [0] * buckets
        self._over = [0] * buckets

    def add(self, t: float, *, fail: int, over: int) -> None:
        """Count one call that ended at ``t`` (``fail``/``over`` are 0 or 1)."""
        idx = int(t // self._width)
        i = idx % len(self._index)
        if self._index[i] != idx:
            self._index[i] = idx
            self._total[i] = self._fail[i] = self._over[i] = 0
        self._total[i] += 1
        self._fail[i] += fail
        self._over[i] += over

    def sums(self, t: float) -> tuple[int, int, int]:
        """Calls, failures and overloads in the window ending at ``t``."""
        idx = int(t // self._width)
        oldest = idx - len(self._index)
        total = fail = over = 0
        for i, b in enumerate(self._index):
            if oldest < b <= idx:
                total += self._total[i]
                fail += self._fail[i]
                over += self._over[i]
        return total, fail, over

    def clear(self) -> None:
        """Forget every call (a new state starts with a fresh window)."""
        self._index[:] = [_NO_BUCKET] * len(self._index)

    def __repr__(self) -> str:
        return f"<BucketWindow buckets={len(self._index)} width={self._width:g}s>"


@final
class Permit(msgspec.Struct, frozen=True, gc=False):
    """What :meth:`BreakerState.acquire` hands out; give it back to ``record``."""

    trial: bool
    epoch: int


@final
class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """The breaker's state changed (or it re-opened) at ``at``.

    ``until`` is when traffic may flow again, if known; the failure numbers
    are those of the window that tripped an opening, else of the window now.
    """

    at: float
    before: BreakerStateName
    after: BreakerStateName
    reason: str
    until: float | None
    failure_rate: float
    failures: int
    total: int
    consecutive_opens: int


@final
class BreakerStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot for ``stats()``: state, why it is held, and the window."""

    state: BreakerStateName
    held_by: str | None
    retry_at: float | None
    failure_rate: float
    failures: int
    overloads: int
    total: int
    opens: int
    consecutive_opens: int
    trials_in_flight: int
    half_open_successes: int
    probe_failures: int
