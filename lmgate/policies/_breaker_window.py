"""The breaker's sliding window: time buckets, so memory never grows.

``window`` seconds are split into ``buckets`` slices; each bucket holds the
calls, failures and overloads that ended in its slice.  A bucket is reused
when time comes round to it again, which is how old calls are forgotten
without a list of them.
"""

from __future__ import annotations

from typing import Final, final

__all__ = ["BucketWindow"]

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
