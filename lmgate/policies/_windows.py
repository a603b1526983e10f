"""Small bounded statistics and sample readings the limit policies share.

Each statistic holds a fixed amount of memory however many observations it
is fed, and none of them reads a clock: time, where it matters, is passed in.
"""

from __future__ import annotations

import math
from typing import Final, final

from lmgate.policies._sample import OutcomeClass

__all__ = [
    "DROPS",
    "IGNORED",
    "ExpAverage",
    "TimeBuckets",
    "clamp",
    "is_positive_finite",
    "median",
]

#: Outcomes a limit reads as "the endpoint could not take it": a cut.
DROPS: Final[frozenset[OutcomeClass]] = frozenset({"overload", "timeout", "error"})

#: Outcomes that say nothing about the endpoint's capacity.
IGNORED: Final[frozenset[OutcomeClass]] = frozenset({"loading", "client_error", "cancelled"})


def clamp(value: float, low: float, high: float) -> float:
    """``value`` pulled into ``[low, high]`` (NaN becomes ``low``)."""
    if not value >= low:
        return low
    return min(value, high)


def is_positive_finite(value: float | None) -> bool:
    """True for a real number that can serve as a latency: finite and > 0."""
    return value is not None and 0.0 < value < math.inf


def median(values: list[float]) -> float:
    """The median of a non-empty list (sorted in place, which callers allow)."""
    values.sort()
    n = len(values)
    mid = n // 2
    if n % 2:
        return values[mid]
    return (values[mid - 1] + values[mid]) / 2.0


@final
class ExpAverage:
    """An exponential average that starts as a plain mean.

    The first ``warmup`` values are averaged arithmetically so one early
    outlier does not dominate for hundreds of samples; after that each value
    weighs ``2 / (window + 1)``, the usual span-to-factor rule.
    """

    __slots__ = ("_count", "_factor", "_sum", "_warmup", "value")

    def __init__(self, window: int, warmup: int) -> None:
        self._factor = 2.0 / (window + 1)
        self._warmup = warmup
        self._count = 0
        self._sum = 0.0
        self.value = 0.0

    def add(self, sample: float) -> float:
        if self._count < self._warmup:
            self._count += 1
            self._sum += sample
            self.value = self._sum / self._count
        else:
            self.value += (sample - self.value) * self._factor
        return self.value

    def __repr__(self) -> str:
        return f"<ExpAverage value={self.value:.6g} count={self._count}>"


_NO_BUCKET: Final = -(2**62)


@final
class TimeBuckets:
    """Two counters over a sliding time window, kept in a fixed ring.

    The window is cut into ``buckets`` equal slices; a slice older than the
    window is zeroed when its slot comes round again, so the totals cover
    between ``window - width`` and ``window`` seconds.  Times that run
    backwards are counted in the newest slice rather than rewriting history.
    """

    __slots__ = ("_first", "_index", "_last", "_n", "_second", "_width")

    def __init__(self, window: float, buckets: int) -> None:
        self._n = buckets
        self._width = window / buckets
        self._index = [_NO_BUCKET] * buckets
        self._first = [0] * buckets
        self._second = [0] * buckets
        self._last = _NO_BUCKET

    def _slot(self, now: float) -> int:
        index = math.floor(now / self._width) if math.isfinite(now) else self._last
        index = max(index, self._last)
        self._last = index
        slot = index % self._n
        if self._index[slot] != index:
            self._index[slot] = index
            self._first[slot] = 0
            self._second[slot] = 0
        return slot

    def add(self, now: float, first: int, second: int) -> None:
        slot = self._slot(now)
        self._first[slot] += first
        self._second[slot] += second

    def totals(self, now: float) -> tuple[int, int]:
        """Both counts over the window ending at ``now``."""
        self._slot(now)
        return self.totals_unexpired()

    def totals_unexpired(self) -> tuple[int, int]:
        """Both counts as of the newest time seen, without advancing it."""
        oldest = self._last - self._n + 1
        first = second = 0
        for slot in range(self._n):
            if self._index[slot] >= oldest:
                first += self._first[slot]
                second += self._second[slot]
        return first, second

    def __repr__(self) -> str:
        first, second = self.totals_unexpired()
        return f"<TimeBuckets first={first} second={second}>"
