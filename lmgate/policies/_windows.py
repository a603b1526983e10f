"""Small bounded statistics and sample readings the limit policies share.

Each statistic holds a fixed amount of memory however many observations it
is fed, and none of them reads a clock: time, where it matters, is passed in.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple, final

from lmgate.policies._sample import OutcomeClass, Sample

__all__ = [
    "DROPS",
    "ExpAverage",
    "Profile",
    "Reading",
    "Spread",
    "TimeBuckets",
    "blend",
    "clamp",
    "is_positive_finite",
    "latency_ratio",
    "log_ratio",
    "median",
    "profile_of",
    "read_sample",
]

#: Outcomes a limit reads as "the endpoint could not take it": a cut.
DROPS: Final[frozenset[OutcomeClass]] = frozenset({"overload", "timeout", "error"})


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
class Spread:
    """The standard error of a mean, kept as values arrive (Welford's update)."""

    __slots__ = ("_count", "_m2", "_mean")

    def __init__(self) -> None:
        self._count = 0
        self._mean = 0.0
        self._m2 = 0.0

    def add(self, value: float) -> None:
        self._count += 1
        delta = value - self._mean
        self._mean += delta / self._count
        self._m2 += delta * (value - self._mean)

    def standard_error(self) -> float:
        """Infinite with fewer than two values."""
        n = self._count
        if n < 2:
            return math.inf
        return math.sqrt(max(0.0, self._m2) / (n - 1) / n)


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


# -- a window of language-model latencies ---------------------------------------
#
# A request's duration grows with its output (and its prompt) whether or not
# the server is loaded, so a window is summarised per channel -- time to first
# token per prompt size, time per later token, time per token, raw duration --
# and a request is judged against what those medians predict for its sizes.

_NAN: Final = math.nan
_MIN_CHANNEL: Final = 3  # values a window needs for a channel median to count


class Reading(NamedTuple):
    """One usable latency sample, reduced to what the measurement needs."""

    in_flight: int
    duration: float
    ttft: float  # normalised by prompt size; NaN when unknown
    tpot: float  # per output token after the first; NaN when unknown
    per_token: float  # duration / output tokens; NaN when unknown
    prompt_factor: float
    tokens: int


class Profile(NamedTuple):
    """A window's medians per channel (NaN: too few values) and its load.

    ``in_flight`` is the mean count at grant; ``peak`` the largest, which is
    the concurrency the window reached (requests granted in a burst see
    smaller counts than the concurrency they then run at).
    """

    ttft: float
    tpot: float
    per_token: float
    duration: float
    in_flight: float
    peak: float


def read_sample(sample: Sample, prompt_scale: float) -> Reading | None:
    """The channels a successful sample carries; None if its duration is unusable.

    TTFT is divided by ``1 + prompt_tokens / prompt_scale``: prefill costs a
    fixed part plus a part per prompt token, ``prompt_scale`` tokens' worth
    being as much as the fixed part.
    """
    duration = sample.duration
    if not is_positive_finite(duration):
        return None
    tokens = sample.output_tokens if sample.output_tokens is not None else 0
    prompt = sample.prompt_tokens if sample.prompt_tokens is not None else 0
    factor = 1.0 + max(0, prompt) / prompt_scale if prompt_scale > 0.0 else 1.0
    ttft = tpot = per_token = _NAN
    first = sample.ttft
    if first is not None and 0.0 <= first <= duration:
        ttft = first / factor
        if tokens >= 2 and duration > first:
            tpot = (duration - first) / (tokens - 1)
    if tokens >= 1:
        per_token = duration / tokens
    return Reading(max(1, sample.in_flight), duration, ttft, tpot, per_token, factor, tokens)


def _channel(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return median(finite) if len(finite) >= _MIN_CHANNEL else _NAN


def profile_of(obs: list[Reading]) -> Profile:
    """Medians, not means: one request stuck behind a long prefill is not load."""
    return Profile(
        _channel([o.ttft for o in obs]),
        _channel([o.tpot for o in obs]),
        _channel([o.per_token for o in obs]),
        median([o.duration for o in obs]),
        sum(o.in_flight for o in obs) / len(obs),
        max(o.in_flight for o in obs),
    )


def blend(old: Profile, new: Profile, weight: float) -> Profile:
    """``old`` moved ``weight`` of the way to ``new``, channel by channel."""

    def mix(a: float, b: float) -> float:
        if a != a:
            return b
        return a if b != b else a + (b - a) * weight

    return Profile(
        mix(old.ttft, new.ttft),
        mix(old.tpot, new.tpot),
        mix(old.per_token, new.per_token),
        mix(old.duration, new.duration),
        mix(old.in_flight, new.in_flight),
        new.peak,
    )


def _predict(o: Reading, ref: Profile) -> float:
    """The duration the reference expects for this request's sizes."""
    if o.tpot == o.tpot and ref.ttft == ref.ttft and ref.tpot == ref.tpot:
        return ref.ttft * o.prompt_factor + (o.tokens - 1) * ref.tpot
    if o.per_token == o.per_token and ref.per_token == ref.per_token:
        return o.tokens * ref.per_token
    return ref.duration


def log_ratio(o: Reading, ref: Profile) -> float:
    """ln of actual over predicted duration; NaN if the two are not comparable."""
    predicted = _predict(o, ref)
    if predicted > 0.0:
        r = o.duration / predicted
        if 0.0 < r < math.inf:
            return math.log(r)
    return _NAN


def latency_ratio(obs: list[Reading], ref: Profile) -> float:
    """Typical actual over predicted duration; NaN if none is comparable."""
    logs = sorted(x for o in obs if (x := log_ratio(o, ref)) == x)
    if not logs:
        return _NAN
    # The mean of the logs, not the median: past a hard knee only the few
    # requests that queue at the server get slower, which moves the mean
    # and leaves the median where it was.  One outlier at each end is
    # dropped so a single stray request cannot decide a step.
    if len(logs) >= 8:
        logs = logs[1:-1]
    return math.exp(math.fsum(logs) / len(logs))
