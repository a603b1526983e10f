"""Gradient2: the average-latency gradient baseline.

The rule is Netflix concurrency-limits' ``Gradient2Limit`` behind its
``WindowedLimit``, the way it is deployed.  Samples are gathered into
windows of ``window`` seconds; a window with at least ``window_size``
samples yields its average latency (the *short* RTT), its largest in-flight
count and whether anything dropped.  Each window then:

- feeds the short RTT into a long exponential average (``long_window``
  windows, the first ten averaged plainly);
- shrinks the long average by 5 % when it is more than twice the short one,
  so it recovers after a long overload;
- holds if less than half the limit was in use (the client, not the server,
  is the bottleneck);
- otherwise sets ``gradient = clamp(tolerance * long / short, 0.5, 1)`` and
  moves the limit a ``smoothing`` fraction of the way to
  ``limit * gradient + queue_size``.

Drops are averaged in like any other latency, as the original does.  The
long average follows sustained load upwards, so under a modest overload the
gradient stays at 1 and the additive ``queue_size`` walks the limit to its
maximum -- the drift lmgate's own policy is built to avoid.  And with
requests that take seconds, a one-second window at a small limit seldom
holds ``window_size`` samples, so the limit may not move at all.
"""

from __future__ import annotations

import math
from typing import final

import msgspec

from lmgate._validate import check_float, check_int
from lmgate.policies._limit import LimitStatistics
from lmgate.policies._sample import Sample
from lmgate.policies._windows import DROPS, ExpAverage, clamp

__all__ = ["Gradient2", "Gradient2State"]


@final
class Gradient2(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Gradient2 settings; :meth:`build` makes one endpoint's state.

    Netflix's own floor is 20; here it is 1 so the baseline can be compared
    on small local servers.  ``min_rtt`` (seconds) drops samples too short
    to be real work.
    """

    initial_limit: int = 20
    min_limit: int = 1
    max_limit: int = 200
    smoothing: float = 0.2
    queue_size: int = 4
    tolerance: float = 1.5
    long_window: int = 600
    window: float = 1.0
    window_size: int = 10
    min_rtt: float = 1e-4

    def __post_init__(self) -> None:
        check_int("min_limit", self.min_limit, low=1, high=1_000_000)
        check_int("max_limit", self.max_limit, low=self.min_limit, high=1_000_000)
        check_int("initial_limit", self.initial_limit, low=self.min_limit, high=self.max_limit)
        check_float("smoothing", self.smoothing, low=0.0, low_open=True, high=1.0)
        check_int("queue_size", self.queue_size, low=0, high=1_000_000)
        check_float("tolerance", self.tolerance, low=1.0, high=1000.0)
        check_int("long_window", self.long_window, low=1, high=1_000_000)
        check_float("window", self.window, low=0.0, high=86_400.0)
        check_int("window_size", self.window_size, low=1, high=1_000_000)
        check_float("min_rtt", self.min_rtt, low=0.0, high=86_400.0)

    def build(self) -> Gradient2State:
        return Gradient2State(self)


@final
class Gradient2State:
    """One endpoint's Gradient2 limit."""

    __slots__ = (
        "_config",
        "_drops",
        "_estimate",
        "_gradient",
        "_last",
        "_long",
        "_next_window",
        "_samples",
        "_short",
        "_w_count",
        "_w_in_flight",
        "_w_sum",
        "_windows",
    )

    def __init__(self, config: Gradient2) -> None:
        self._config = config
        self._estimate = float(config.initial_limit)
        self._long = ExpAverage(config.long_window, 10)
        self._short = 0.0
        self._gradient = 1.0
        self._next_window = -math.inf
        self._last = -math.inf
        self._samples = 0
        self._drops = 0
        self._windows = 0
        self._reset_window()

    def _reset_window(self) -> None:
        self._w_sum = 0.0
        self._w_count = 0
        self._w_in_flight = 0

    @property
    def limit(self) -> int:
        return int(self._estimate)

    def update(self, sample: Sample, now: float) -> int:
        outcome = sample.outcome
        rtt = sample.duration
        if not (outcome == "success" or outcome in DROPS):
            return self.limit
        if not (self._config.min_rtt <= rtt < math.inf) or rtt <= 0.0:
            return self.limit
        self._samples += 1
        self._w_sum += rtt
        self._w_count += 1
        self._w_in_flight = max(self._w_in_flight, sample.in_flight)
        self._drops += outcome in DROPS
        now = self._last = max(self._last, now) if math.isfinite(now) else self._last
        if now > self._next_window:
            self._close_window(now)
        return self.limit

    def _close_window(self, now: float) -> None:
        config = self._config
        count, total, in_flight = self._w_count, self._w_sum, self._w_in_flight
        self._reset_window()
        self._next_window = now + config.window
        if count < config.window_size:
            return
        self._windows += 1
        short = self._short = total / count
        long = self._long.add(short)
        if long / short > 2.0:
            self._long.value *= 0.95
        if in_flight < self._estimate / 2.0:
            return
        gradient = self._gradient = clamp(config.tolerance * long / short, 0.5, 1.0)
        target = self._estimate * gradient + config.queue_size
        estimate = self._estimate * (1.0 - config.smoothing) + target * config.smoothing
        self._estimate = clamp(estimate, float(config.min_limit), float(config.max_limit))

    def tick(self, now: float) -> int:
        return self.limit

    def statistics(self) -> LimitStatistics:
        return LimitStatistics(
            policy="Gradient2",
            limit=self.limit,
            samples=self._samples,
            detail={
                "estimate": self._estimate,
                "short_rtt": self._short,
                "long_rtt": self._long.value,
                "gradient": self._gradient,
                "windows": float(self._windows),
                "drops": float(self._drops),
            },
        )

    def __repr__(self) -> str:
        return (
            f"<Gradient2State limit={self.limit} short_rtt={self._short:.6g}"
            f" long_rtt={self._long.value:.6g} samples={self._samples}>"
        )
