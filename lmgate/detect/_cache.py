"""A bounded, time-limited cache of probe results.

Probing costs a handful of requests, so its answer is kept per (URL,
model) for a while; the cache is sans-IO -- callers pass ``now`` -- and
bounded in size, evicting the least recently used entry.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar, final

import msgspec

from lmgate._errors import InvalidParameter

#: What is cached: the prober's ``ServerInfo``; generic so this module
#: needs nothing from the prober that uses it.
Info = TypeVar("Info")

__all__ = ["ProbeCache", "ProbeCacheStatistics"]


@final
class ProbeCacheStatistics(msgspec.Struct, frozen=True, kw_only=True):
    entries: int
    hits: int
    misses: int
    evictions: int


@final
class ProbeCache(Generic[Info]):
    """A bounded, time-limited map from (URL, model) to :class:`ServerInfo`.

    Sans-IO: callers pass ``now``.  An entry stored at a time later than
    ``now`` (a clock from another event loop) counts as expired.
    """

    __slots__ = ("_entries", "_evictions", "_hits", "_maxsize", "_misses", "_ttl")

    def __init__(self, *, ttl: float = 300.0, maxsize: int = 256) -> None:
        if not (isinstance(ttl, int | float) and 0 < ttl < float("inf")):
            raise InvalidParameter("ttl must be a positive finite number", field="ttl")
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise InvalidParameter("maxsize must be a positive int", field="maxsize")
        self._ttl = float(ttl)
        self._maxsize = maxsize
        self._entries: OrderedDict[tuple[str, str | None], tuple[float, Info]] = OrderedDict()
        self._hits = self._misses = self._evictions = 0

    def get(self, url: str, model: str | None, now: float) -> Info | None:
        key = (_cache_url(url), model)
        entry = self._entries.get(key)
        if entry is None or not (0.0 <= now - entry[0] < self._ttl):
            if entry is not None:
                del self._entries[key]
            self._misses += 1
            return None
        self._entries.move_to_end(key)
        self._hits += 1
        return entry[1]

    def put(self, url: str, model: str | None, info: Info, now: float) -> None:
        key = (_cache_url(url), model)
        self._entries[key] = (now, info)
        self._entries.move_to_end(key)
        while len(self._entries) > self._maxsize:
            self._entries.popitem(last=False)
            self._evictions += 1

    def invalidate(self, url: str) -> int:
        """Drop every entry for ``url``; returns how many were dropped."""
        target = _cache_url(url)
        keys = [k for k in self._entries if k[0] == target]
        for k in keys:
            del self._entries[k]
        return len(keys)

    def clear(self) -> None:
        self._entries.clear()

    def statistics(self) -> ProbeCacheStatistics:
        return ProbeCacheStatistics(
            entries=len(self._entries),
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
        )

    def __repr__(self) -> str:
        return f"<ProbeCache entries={len(self._entries)} ttl={self._ttl}>"


def _cache_url(url: str) -> str:
    return url.strip().rstrip("/").lower()
