"""TCP Vegas applied to request concurrency: the queue-estimate baseline.

The rule is Netflix concurrency-limits' ``VegasLimit``.  The no-load
latency is the smallest one seen; the requests queued at the server are
estimated as ``limit * (1 - rtt_noload / rtt)``, and the limit grows while
that estimate is small and shrinks when it passes ``beta``:

- queue <= threshold: grow by beta (nothing is queued, grow fast);
- queue < alpha: grow by log10(limit);
- queue > beta, or a drop: shrink by log10(limit);
- otherwise: hold.

``alpha``, ``beta`` and ``threshold`` default to 3, 6 and 1 times
``max(1, int(log10(limit)))``, so the band widens slowly as the limit grows.
Every ``probe_multiplier * limit`` samples (times a jitter in [0.5, 1)) the
no-load latency is simply reset to the latest sample, which lets it rise
again after the server got slower.  Between probes a smaller latency
lowers it at once -- which is how a fast-failing drop can pose as an idle
server, one of the failures lmgate's own policy avoids.
"""

from __future__ import annotations

import math
import random
from typing import final

import msgspec

from lmgate._validate import check_float, check_int
from lmgate.policies._limit import LimitStatistics
from lmgate.policies._sample import Sample
from lmgate.policies._windows import DROPS, is_positive_finite

__all__ = ["Vegas", "VegasState"]


def _log10_root(value: int) -> int:
    """``max(1, int(log10(value)))`` below 1000 and ``int(sqrt(value))`` above."""
    if value < 1000:
        return 1 if value < 10 else int(math.log10(value))
    return math.isqrt(value)


@final
class Vegas(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Vegas limit settings; :meth:`build` makes one endpoint's state.

    ``alpha`` and ``beta`` fix the queue band instead of the log10 rule.
    ``smoothing`` 1.0 applies each new estimate whole.  ``seed`` makes the
    probe jitter reproducible.
    """

    initial_limit: int = 20
    min_limit: int = 1
    max_limit: int = 1000
    smoothing: float = 1.0
    probe_multiplier: int = 30
    alpha: int | None = None
    beta: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("min_limit", self.min_limit, low=1, high=1_000_000)
        check_int("max_limit", self.max_limit, low=self.min_limit, high=1_000_000)
        check_int("initial_limit", self.initial_limit, low=self.min_limit, high=self.max_limit)
        check_float("smoothing", self.smoothing, low=0.0, low_open=True, high=1.0)
        check_int("probe_multiplier", self.probe_multiplier, low=1, high=1_000_000)
        if self.alpha is not None:
            check_int("alpha", self.alpha, low=0, high=1_000_000)
        if self.beta is not None:
            low = self.alpha if self.alpha is not None else 0
            check_int("beta", self.beta, low=low, high=1_000_000)
        check_int("seed", self.seed, low=0)

    def build(self) -> VegasState:
        return VegasState(self)


@final
class VegasState:
    """One endpoint's Vegas limit."""

    __slots__ = (
        "_config",
        "_estimate",
        "_jitter",
        "_probe_count",
        "_probes",
        "_queue",
        "_rng",
        "_rtt_noload",
        "_samples",
    )

    def __init__(self, config: Vegas) -> None:
        self._config = config
        self._estimate = float(config.initial_limit)
        self._rtt_noload = 0.0
        self._rng = random.Random(config.seed)
        self._jitter = self._rng.uniform(0.5, 1.0)
        self._probe_count = 0
        self._probes = 0
        self._samples = 0
        self._queue = 0

    @property
    def limit(self) -> int:
        return int(self._estimate)

    def update(self, sample: Sample, now: float) -> int:
        outcome = sample.outcome
        dropped = outcome in DROPS
        rtt = sample.duration
        if not (dropped or outcome == "success") or not is_positive_finite(rtt):
            return self.limit
        self._samples += 1
        self._probe_count += 1
        if self._jitter * self._config.probe_multiplier * self._estimate <= self._probe_count:
            self._jitter = self._rng.uniform(0.5, 1.0)
            self._probe_count = 0
            self._probes += 1
            self._rtt_noload = rtt
            return self.limit
        if self._rtt_noload == 0.0 or rtt < self._rtt_noload:
            self._rtt_noload = rtt
            return self.limit
        return self._adjust(rtt, sample.in_flight, dropped)

    def _adjust(self, rtt: float, in_flight: int, dropped: bool) -> int:
        config = self._config
        estimate = self._estimate
        self._queue = queue = math.ceil(estimate * (1.0 - self._rtt_noload / rtt))
        size = _log10_root(int(estimate))
        if dropped:
            target = estimate - size
        elif in_flight * 2 < estimate:
            return self.limit
        else:
            alpha = 3 * size if config.alpha is None else config.alpha
            beta = 6 * size if config.beta is None else config.beta
            if queue <= size:
                target = estimate + beta
            elif queue < alpha:
                target = estimate + size
            elif queue > beta:
                target = estimate - size
            else:
                return self.limit
        target = max(float(config.min_limit), min(float(config.max_limit), target))
        self._estimate = (1.0 - config.smoothing) * estimate + config.smoothing * target
        return self.limit

    def tick(self, now: float) -> int:
        return self.limit

    def statistics(self) -> LimitStatistics:
        return LimitStatistics(
            policy="Vegas",
            limit=self.limit,
            samples=self._samples,
            detail={
                "estimate": self._estimate,
                "rtt_noload": self._rtt_noload,
                "queue": float(self._queue),
                "probes": float(self._probes),
            },
        )

    def __repr__(self) -> str:
        return (
            f"<VegasState limit={self.limit} rtt_noload={self._rtt_noload:.6g}"
            f" samples={self._samples}>"
        )
