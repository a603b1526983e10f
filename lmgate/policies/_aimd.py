"""Additive increase, multiplicative decrease: the loss-based baseline.

The rule is Netflix concurrency-limits' ``AIMDLimit``: a drop multiplies
the limit by ``backoff_ratio`` (truncating, so it always falls by at least
one above the floor); a success while at least half the limit is in use
adds one; a success with the endpoint mostly idle changes nothing, so a
quiet client cannot inflate the limit.  It reads latency only through the
optional ``timeout`` threshold, which is why it serves as the baseline for
"errors are the only signal" -- and why it never reacts to a model server
that queues instead of refusing.
"""

from __future__ import annotations

from typing import final

import msgspec

from lmgate._errors import InvalidParameter
from lmgate._validate import check_float, check_int
from lmgate.policies._limit import LimitStatistics
from lmgate.policies._sample import Sample
from lmgate.policies._windows import DROPS

__all__ = ["AIMD", "AIMDState"]


@final
class AIMD(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """AIMD limit settings; :meth:`build` makes one endpoint's state.

    ``timeout`` (seconds), when set, turns a success that took longer into a
    drop, as Netflix's default of 5 s does.  It is off by default because a
    language-model request that writes a long answer is slow without the
    server being overloaded, and a threshold would cut the limit for it.
    """

    initial_limit: int = 10
    min_limit: int = 1
    max_limit: int = 200
    backoff_ratio: float = 0.9
    timeout: float | None = None

    def __post_init__(self) -> None:
        check_int("min_limit", self.min_limit, low=1, high=1_000_000)
        check_int("max_limit", self.max_limit, low=self.min_limit, high=1_000_000)
        check_int("initial_limit", self.initial_limit, low=self.min_limit, high=self.max_limit)
        check_float("backoff_ratio", self.backoff_ratio, low=0.5)
        if self.backoff_ratio >= 1.0:
            raise InvalidParameter("backoff_ratio must be < 1", field="backoff_ratio")
        if self.timeout is not None:
            check_float("timeout", self.timeout, low=0.0, low_open=True)

    def build(self) -> AIMDState:
        return AIMDState(self)


@final
class AIMDState:
    """One endpoint's AIMD limit."""

    __slots__ = ("_config", "_drops", "_limit", "_samples")

    def __init__(self, config: AIMD) -> None:
        self._config = config
        self._limit = config.initial_limit
        self._samples = 0
        self._drops = 0

    @property
    def limit(self) -> int:
        return self._limit

    def update(self, sample: Sample, now: float) -> int:
        config = self._config
        outcome = sample.outcome
        timed_out = config.timeout is not None and sample.duration > config.timeout
        if outcome in DROPS or (outcome == "success" and timed_out):
            self._samples += 1
            self._drops += 1
            cut = int(self._limit * config.backoff_ratio)
            self._limit = max(config.min_limit, min(cut, self._limit - 1))
        elif outcome == "success":
            self._samples += 1
            if sample.in_flight * 2 >= self._limit:
                self._limit = min(config.max_limit, self._limit + 1)
        return self._limit

    def tick(self, now: float) -> int:
        return self._limit

    def statistics(self) -> LimitStatistics:
        return LimitStatistics(
            policy="AIMD",
            limit=self._limit,
            samples=self._samples,
            detail={"drops": float(self._drops)},
        )

    def __repr__(self) -> str:
        return f"<AIMDState limit={self._limit} samples={self._samples} drops={self._drops}>"
