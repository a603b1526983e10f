"""A circuit breaker's settings, and the records it hands out.

Kept apart from the state machine (:mod:`lmgate.policies._breaker`) so
events, stats and configuration can name them without it, and so that
module stays one idea.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Literal, final

import msgspec

from lmgate.policies._limit import check_float, check_int

if TYPE_CHECKING:
    from lmgate.policies._breaker import BreakerState

__all__ = ["Breaker", "BreakerStateName", "BreakerStatistics", "Permit", "Transition"]

BreakerStateName = Literal["closed", "open", "half_open", "held"]


@final
class Breaker(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Circuit-breaker settings; :meth:`build` makes one endpoint's state.

    ``window`` seconds are split into ``buckets`` so memory stays fixed
    however many calls pass.  ``reset_after`` seconds spent closed forget
    earlier openings, so the backoff starts again from ``open_base``.
    ``probe_failures`` consecutive failed health probes open a closed
    breaker (a dead server with no traffic is noticed before a call fails).
    """

    window: float = 30.0
    buckets: int = 10
    failure_rate: float = 0.5
    minimum_volume: int = 5
    consecutive_failures: int = 5
    overload_rate: float = 0.9
    half_open_trials: int = 1
    open_base: float = 1.0
    open_max: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.2
    reset_after: float = 300.0
    probe_failures: int = 2
    loading_hold: float = 10.0
    retry_after_max: float = 600.0

    def __post_init__(self) -> None:
        check_float("window", self.window, low=0.0, low_open=True, high=86_400.0)
        check_int("buckets", self.buckets, low=1, high=1000)
        check_float("failure_rate", self.failure_rate, low=0.0, low_open=True, high=1.0)
        check_int("minimum_volume", self.minimum_volume, low=1, high=1_000_000)
        check_int("consecutive_failures", self.consecutive_failures, low=1, high=1_000_000)
        check_float("overload_rate", self.overload_rate, low=0.0, low_open=True, high=1.0)
        check_int("half_open_trials", self.half_open_trials, low=1, high=10_000)
        check_float("open_base", self.open_base, low=0.0, low_open=True, high=86_400.0)
        check_float("open_max", self.open_max, low=self.open_base, high=86_400.0)
        check_float("multiplier", self.multiplier, low=1.0, high=100.0)
        check_float("jitter", self.jitter, low=0.0, high=0.99)
        check_float("reset_after", self.reset_after, low=0.0, high=1e9)
        check_int("probe_failures", self.probe_failures, low=1, high=1000)
        check_float("loading_hold", self.loading_hold, low=0.0, low_open=True, high=86_400.0)
        check_float("retry_after_max", self.retry_after_max, low=0.0, high=86_400.0)

    def build(self, rng: random.Random | None = None) -> BreakerState:
        """A fresh, closed breaker; ``rng`` jitters open times (None: no jitter)."""
        from lmgate.policies._breaker import BreakerState

        return BreakerState(self, rng)


@final
class Permit(msgspec.Struct, frozen=True, gc=False):
    """What :meth:`BreakerState.acquire` hands out; give it back to ``record``."""

    trial: bool
    epoch: int


@final
class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """The breaker's state changed (or it re-opened) at ``at``.

    ``until`` is when traffic may flow again, if known; the failure numbers
    are those of the window that tripped an opening, else of the window now.
    """

    at: float
    before: BreakerStateName
    after: BreakerStateName
    reason: str
    until: float | None
    failure_rate: float
    failures: int
    total: int
    consecutive_opens: int


@final
class BreakerStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot for ``stats()``: state, why it is held, and the window."""

    state: BreakerStateName
    held_by: str | None
    retry_at: float | None
    failure_rate: float
    failures: int
    overloads: int
    total: int
    opens: int
    consecutive_opens: int
    trials_in_flight: int
    half_open_successes: int
    probe_failures: int
