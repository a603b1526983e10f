"""Client-side throttling: stop hammering an endpoint that refuses most work.

This is the adaptive throttling rule from Google's SRE book.  Over a
sliding window the client counts the requests it wanted to send and the
ones the endpoint accepted, and refuses a new request locally with
probability

    max(0, (requests - k * accepts) / (requests + 1))

With ``k = 2`` an endpoint must refuse more than half the traffic before
anything is throttled, so a healthy endpoint (accepts close to requests)
gets probability zero and pays nothing.  Requests refused locally still
count as requests, so as the endpoint recovers and accepts again the
probability falls by itself; and since it never reaches one, a trickle
keeps probing.

The state never draws a random number: :meth:`ThrottleState.admit` takes
the caller's draw, which keeps it deterministic under test.
"""

from __future__ import annotations

import math
from typing import final

import msgspec

from lmgate._errors import InvalidParameter
from lmgate._validate import check_float, check_int
from lmgate.policies._windows import TimeBuckets

__all__ = ["Throttle", "ThrottleState", "ThrottleStatistics"]


@final
class Throttle(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Throttling settings; :meth:`build` makes one endpoint's state.

    ``window`` seconds are split into ``buckets`` so memory is fixed.  Fewer
    than ``min_requests`` requests in the window never throttle, so one
    early failure cannot lock an endpoint out.  ``max_probability`` caps the
    refusal probability (1.0 leaves the rule as published).
    """

    k: float = 2.0
    window: float = 60.0
    buckets: int = 12
    min_requests: int = 10
    max_probability: float = 1.0

    def __post_init__(self) -> None:
        check_float("k", self.k, low=1.0, high=1000.0)
        check_float("window", self.window, low=0.0, low_open=True, high=86_400.0)
        check_int("buckets", self.buckets, low=1, high=1000)
        check_int("min_requests", self.min_requests, low=0, high=1_000_000_000)
        check_float("max_probability", self.max_probability, low=0.0, high=1.0)

    def build(self) -> ThrottleState:
        return ThrottleState(self)


@final
class ThrottleStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Window counts as of the last call, and how many were refused locally."""

    requests: int
    accepts: int
    reject_probability: float
    throttled: int


@final
class ThrottleState:
    """One endpoint's request and accept counts over the window."""

    __slots__ = ("_config", "_counts", "_throttled")

    def __init__(self, config: Throttle) -> None:
        self._config = config
        self._counts = TimeBuckets(config.window, config.buckets)
        self._throttled = 0

    def record(self, accepted: bool, now: float) -> None:
        """Count one request the endpoint answered; ``accepted`` if it took it.

        A request refused by :meth:`admit` is counted there; do not record
        it again.
        """
        self._counts.add(now, 1, 1 if accepted else 0)

    def reject_probability(self, now: float) -> float:
        """The probability a new request should be refused locally now."""
        requests, accepts = self._counts.totals(now)
        return self._probability(requests, accepts)

    def _probability(self, requests: int, accepts: int) -> float:
        config = self._config
        if requests < config.min_requests:
            return 0.0
        p = (requests - config.k * accepts) / (requests + 1)
        return min(config.max_probability, max(0.0, p))

    def admit(self, now: float, draw: float) -> bool:
        """Whether to send a request, given a uniform ``draw`` in [0, 1).

        A refusal is counted as a request that was not accepted.
        """
        if isinstance(draw, bool) or not isinstance(draw, int | float):
            raise InvalidParameter("draw must be a number in [0, 1)", field="draw")
        if not 0.0 <= draw < 1.0 or math.isnan(draw):
            raise InvalidParameter(f"draw must be in [0, 1), got {draw!r}", field="draw")
        if draw < self.reject_probability(now):
            self._counts.add(now, 1, 0)
            self._throttled += 1
            return False
        return True

    def statistics(self) -> ThrottleStatistics:
        requests, accepts = self._counts.totals_unexpired()
        return ThrottleStatistics(
            requests=requests,
            accepts=accepts,
            reject_probability=self._probability(requests, accepts),
            throttled=self._throttled,
        )

    def __repr__(self) -> str:
        requests, accepts = self._counts.totals_unexpired()
        return f"<ThrottleState requests={requests} accepts={accepts} throttled={self._throttled}>"
