"""The interface every concurrency-limit policy implements, and ``Fixed``.

A policy comes in two parts.  The *config* is a frozen, hashable msgspec
Struct that users pass around (``Scheduler(limit=Gradient2())``); it can be
shared by any number of endpoints because it holds no state.  Its
``build()`` returns the *state machine* one endpoint owns: fed samples and
clock ticks with an explicit ``now``, it answers with the limit to use.
Nothing in here sleeps, reads a clock or does I/O, so every policy can be
driven by a property test or a simulation at any speed.
"""

from __future__ import annotations

from typing import Protocol, final, runtime_checkable

import msgspec

from lmgate._validate import check_int
from lmgate.policies._sample import Sample

__all__ = ["Fixed", "FixedState", "LimitPolicy", "LimitState", "LimitStatistics"]


@final
class LimitStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of a limit policy's state, for ``stats()`` and plots."""

    policy: str
    limit: int
    samples: int
    detail: dict[str, float] = {}


@runtime_checkable
class LimitState(Protocol):
    """The per-endpoint state machine a :class:`LimitPolicy` builds."""

    @property
    def limit(self) -> int:
        """The concurrency limit in force now (always >= 1)."""
        ...

    def update(self, sample: Sample, now: float) -> int:
        """Take one finished lease's sample; return the limit to use next."""
        ...

    def tick(self, now: float) -> int:
        """Let time-driven logic run (re-probing, dwell); return the limit."""
        ...

    def statistics(self) -> LimitStatistics:
        """A frozen snapshot of the state."""
        ...


@runtime_checkable
class LimitPolicy(Protocol):
    """A frozen policy config; ``build()`` makes one endpoint's state."""

    def build(self) -> LimitState:
        """A fresh state machine for one endpoint."""
        ...


@final
class Fixed(msgspec.Struct, frozen=True):
    """A constant limit: the baseline every adaptive policy is measured against."""

    limit: int = 8

    def __post_init__(self) -> None:
        check_int("limit", self.limit, low=1, high=1_000_000)

    def build(self) -> FixedState:
        return FixedState(self.limit)


@final
class FixedState:
    """The state of :class:`Fixed`: it only counts samples."""

    __slots__ = ("_limit", "_samples")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._samples = 0

    @property
    def limit(self) -> int:
        return self._limit

    def update(self, sample: Sample, now: float) -> int:
        self._samples += 1
        return self._limit

    def tick(self, now: float) -> int:
        return self._limit

    def statistics(self) -> LimitStatistics:
        return LimitStatistics(policy="Fixed", limit=self._limit, samples=self._samples)

    def __repr__(self) -> str:
        return f"<FixedState limit={self._limit} samples={self._samples}>"
