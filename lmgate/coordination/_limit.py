"""The limit state each endpoint actor gets when processes share a limit.

It sits where the endpoint's own policy state would be: every sample the
actor feeds it is queued for Redis (where the leader's policy learns from
the samples of all processes), and the limit it answers is the one the
coordinator tells it to follow -- the shared limit while Redis is there,
the fallback share while it is not.  Samples are re-based on the shared
slot count at grant, since a policy relating latency to load must see the
endpoint's load, not one process's part of it.
"""

from __future__ import annotations

import math
from collections import deque
from typing import final

import msgspec

from lmgate.policies._limit import LimitStatistics
from lmgate.policies._sample import OUTCOME_CLASSES, OutcomeClass, Sample

__all__ = ["SharedLimit", "decode_sample", "encode_sample"]

_OUTBOX = 1024
_STARTS = 4096
_OUTCOMES = frozenset(OUTCOME_CLASSES)

# (duration, in_flight, outcome, ttft, prompt_tokens, output_tokens, retry_after)
_Wire = tuple[float, int, str, float | None, int | None, int | None, float | None]
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Wire)


def encode_sample(sample: Sample, in_flight: int) -> bytes:
    return _encoder.encode(
        (
            sample.duration,
            in_flight,
            sample.outcome,
            sample.ttft,
            sample.prompt_tokens,
            sample.output_tokens,
            sample.retry_after,
        )
    )


def decode_sample(raw: bytes, now: float) -> Sample | None:
    """A peer's sample re-timed to end at ``now``, or None if malformed."""
    try:
        d, n, outcome, ttft, pt, ot, ra = _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if outcome not in _OUTCOMES or not (0.0 <= d < math.inf) or not 0 <= n < 10_000_000:
        return None
    if ttft is not None and not 0.0 <= ttft < math.inf:
        ttft = None
    if ra is not None and not 0.0 <= ra < math.inf:
        ra = None
    out: OutcomeClass = outcome
    return Sample(
        start=now - d,
        duration=d,
        in_flight=n,
        outcome=out,
        ttft=ttft,
        prompt_tokens=pt if pt is None or pt >= 0 else None,
        output_tokens=ot if ot is None or ot >= 0 else None,
        retry_after=ra,
    )


@final
class SharedLimit:
    """A :class:`~lmgate.policies.LimitState` that follows a shared limit."""

    __slots__ = ("_dropped", "_in_flight", "_outbox", "_policy", "_samples", "_view", "ship")

    def __init__(self, initial: int, *, policy: str, ship: bool) -> None:
        self._view = max(1, initial)
        self._policy = policy
        #: Whether samples go to Redis at all (a fixed limit learns nothing).
        self.ship = ship
        self._outbox: deque[bytes] = deque(maxlen=_OUTBOX)
        self._in_flight: dict[float, int] = {}
        self._samples = 0
        self._dropped = 0

    @property
    def limit(self) -> int:
        return self._view

    def follow(self, limit: int) -> None:
        """The coordinator's word: the limit to answer from now on."""
        self._view = max(1, int(limit))

    def note(self, start: float, in_flight: int) -> None:
        """The shared slot count when the lease that started at ``start`` got its slot."""
        if not self.ship:
            return
        if len(self._in_flight) >= _STARTS:
            del self._in_flight[next(iter(self._in_flight))]
        self._in_flight[start] = in_flight

    def update(self, sample: Sample, now: float) -> int:
        self._samples += 1
        if self.ship and sample.outcome != "cancelled":
            n = self._in_flight.pop(sample.start, sample.in_flight)
            if len(self._outbox) == _OUTBOX:
                self._dropped += 1
            self._outbox.append(encode_sample(sample, n))
        return self._view

    def tick(self, now: float) -> int:
        return self._view

    def take(self) -> list[bytes]:
        """Samples waiting to be sent (and forget them)."""
        out = list(self._outbox)
        self._outbox.clear()
        return out

    @property
    def pending(self) -> int:
        return len(self._outbox)

    def statistics(self) -> LimitStatistics:
        return LimitStatistics(
            policy=f"Shared({self._policy})",
            limit=self._view,
            samples=self._samples,
            detail={"dropped_samples": float(self._dropped), "pending": float(len(self._outbox))},
        )

    def __repr__(self) -> str:
        return f"<SharedLimit {self._policy} limit={self._view} samples={self._samples}>"
