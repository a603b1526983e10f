"""Structured, rate-limited logging through the standard ``logging`` module.

A failing endpoint fails every request, and a naive library logs every one
of them: the log floods just when someone needs to read it.  Each message
*kind* gets a token bucket; what the bucket refuses is counted, and the next
message of that kind that gets through says how many were held back.  The
number of kinds tracked is bounded (least recently used is forgotten), so a
kind built from unbounded data cannot grow memory either.

:class:`LogRateLimiter` is the sans-IO core (explicit ``now``);
:class:`RateLimitedLogger` is what lmgate's own modules log through, and
:class:`RateLimitFilter` lets a user put the same limit on any handler.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any, final

import msgspec

from lmgate._validate import check_float, check_int

__all__ = [
    "LogDecision",
    "LogRateLimiter",
    "LogRateLimiterStatistics",
    "RateLimitFilter",
    "RateLimitedLogger",
    "fields_of",
    "get_logger",
]

logging.getLogger("lmgate").addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    """The stdlib logger ``lmgate.<name>`` (names outside ``lmgate`` are prefixed)."""
    return logging.getLogger(name if name.startswith("lmgate") else f"lmgate.{name}")


@final
class LogDecision(msgspec.Struct, frozen=True, gc=False):
    """Whether to emit, and how many of this kind were held back before it."""

    allowed: bool
    suppressed: int


_DENY = LogDecision(False, 0)
_ALLOW = LogDecision(True, 0)


@final
class LogRateLimiterStatistics(msgspec.Struct, frozen=True, kw_only=True):
    keys: int
    max_keys: int
    allowed: int
    suppressed: int
    #: Keys forgotten to keep the table bounded.
    evicted: int
    #: Suppressed messages whose summary was lost with an evicted key.
    lost_summaries: int


@final
class _Bucket:
    __slots__ = ("suppressed", "tokens", "updated")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated = now
        self.suppressed = 0


@final
class LogRateLimiter:
    """A token bucket per message kind: ``burst`` at once, then ``rate`` per second."""

    __slots__ = (
        "_allowed",
        "_buckets",
        "_burst",
        "_evicted",
        "_lost",
        "_max_keys",
        "_rate",
        "_suppressed",
    )

    def __init__(self, *, rate: float = 0.2, burst: int = 5, max_keys: int = 256) -> None:
        self._rate = check_float("rate", rate, low_open=True)
        self._burst = check_int("burst", burst, low=1, high=1_000_000)
        self._max_keys = check_int("max_keys", max_keys, low=1, high=1_000_000)
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()
        self._allowed = 0
        self._suppressed = 0
        self._evicted = 0
        self._lost = 0

    def allow(self, key: Hashable, now: float) -> LogDecision:
        """Spend a token of ``key`` at ``now`` if one is left."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                _, old = self._buckets.popitem(last=False)
                self._evicted += 1
                self._lost += old.suppressed
            bucket = self._buckets[key] = _Bucket(float(self._burst), now)
        else:
            self._buckets.move_to_end(key)
            if now > bucket.updated:
                bucket.tokens = min(
                    float(self._burst), bucket.tokens + (now - bucket.updated) * self._rate
                )
                bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            self._allowed += 1
            held, bucket.suppressed = bucket.suppressed, 0
            return LogDecision(True, held) if held else _ALLOW
        bucket.suppressed += 1
        self._suppressed += 1
        return _DENY

    def statistics(self) -> LogRateLimiterStatistics:
        return LogRateLimiterStatistics(
            keys=len(self._buckets),
            max_keys=self._max_keys,
            allowed=self._allowed,
            suppressed=self._suppressed,
            evicted=self._evicted,
            lost_summaries=self._lost,
        )

    def __repr__(self) -> str:
        return (
            f"<LogRateLimiter rate={self._rate} burst={self._burst} keys={len(self._buckets)}"
            f" suppressed={self._suppressed}>"
        )


@final
class RateLimitedLogger:
    """Logs through a stdlib logger, at most ``burst`` + ``rate``/s per kind.

    ``kind`` names what happened (``"endpoint_failed"``) and is the rate key;
    the message is a %-format template with ``args`` as usual.  Keyword
    ``fields`` travel as ``record.fields`` (and ``record.kind``,
    ``record.suppressed``) for structured handlers.  The clock defaults to
    ``time.monotonic``: log volume is about wall time even when the scheduler
    runs on a virtual clock.
    """

    __slots__ = ("_clock", "_limiter", "logger")

    def __init__(
        self,
        logger: logging.Logger | str,
        *,
        limiter: LogRateLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = get_logger(logger) if isinstance(logger, str) else logger
        self._limiter = limiter if limiter is not None else LogRateLimiter()
        self._clock = clock

    def log(self, level: int, kind: str, msg: str, *args: object, **fields: Any) -> bool:
        """Log unless ``kind`` is over its rate; True when it was emitted."""
        return self._emit(level, kind, msg, args, fields)

    def debug(self, kind: str, msg: str, *args: object, **fields: Any) -> bool:
        return self._emit(logging.DEBUG, kind, msg, args, fields)

    def info(self, kind: str, msg: str, *args: object, **fields: Any) -> bool:
        return self._emit(logging.INFO, kind, msg, args, fields)

    def warning(self, kind: str, msg: str, *args: object, **fields: Any) -> bool:
        return self._emit(logging.WARNING, kind, msg, args, fields)

    def error(self, kind: str, msg: str, *args: object, **fields: Any) -> bool:
        return self._emit(logging.ERROR, kind, msg, args, fields)

    def _emit(
        self, level: int, kind: str, msg: str, args: tuple[object, ...], fields: dict[str, Any]
    ) -> bool:
        if not self.logger.isEnabledFor(level):
            return False
        decision = self._limiter.allow(kind, self._clock())
        if not decision.allowed:
            return False
        if decision.suppressed:
            msg = f"{msg} (%d similar suppressed)"
            args = (*args, decision.suppressed)
        extra = {"kind": kind, "suppressed": decision.suppressed, "fields": fields}
        # stacklevel 3: the record points at the caller of debug()/info()/...
        self.logger.log(level, msg, *args, extra=extra, stacklevel=3)
        return True

    def statistics(self) -> LogRateLimiterStatistics:
        return self._limiter.statistics()

    def __repr__(self) -> str:
        return f"<RateLimitedLogger {self.logger.name} {self._limiter!r}>"


@final
class RateLimitFilter(logging.Filter):
    """The same limit for any handler: the kind is ``record.kind`` if set,
    else the logger name and the unformatted message template.

    Attach it to a *handler* (a logger's filters do not apply to records of
    its child loggers).  A let-through record that follows suppressed ones
    gets ``record.suppressed`` and a note appended to its message.
    """

    def __init__(
        self,
        *,
        rate: float = 0.2,
        burst: int = 5,
        max_keys: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._limiter = LogRateLimiter(rate=rate, burst=burst, max_keys=max_keys)
        self._clock = clock

    def filter(self, record: logging.LogRecord) -> bool:
        kind = getattr(record, "kind", None)
        key: Hashable = kind if isinstance(kind, str) else (record.name, str(record.msg))
        decision = self._limiter.allow(key, self._clock())
        if not decision.allowed:
            return False
        if decision.suppressed and not getattr(record, "suppressed", 0):
            record.msg = f"{record.getMessage()} ({decision.suppressed} similar suppressed)"
            record.args = None
            record.suppressed = decision.suppressed
        return True

    def statistics(self) -> LogRateLimiterStatistics:
        return self._limiter.statistics()


def fields_of(record: logging.LogRecord) -> Mapping[str, Any]:
    """The structured fields a :class:`RateLimitedLogger` attached, or ``{}``."""
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, Mapping) else {}
