"""A circuit breaker per endpoint: stop sending to what is failing.

The state is derived from a few timestamps, so a query with a later ``now``
sees the open period elapse without anyone having to wake the breaker up;
mutators return a :class:`Transition` whenever the state they leave behind
differs from the one last reported, which is what the owning actor turns
into events.  Call :meth:`BreakerState.tick` at :meth:`BreakerState.retry_at`
to get time-driven transitions reported promptly.

States:

``closed``     traffic flows; errors and timeouts go into a sliding window of
               time buckets, and the breaker opens when their share reaches
               ``failure_rate`` over at least ``minimum_volume`` calls, or
               after ``consecutive_failures`` of them in a row (a server that
               just died after a busy healthy minute would otherwise take
               as many failures as the window holds successes to notice).
``open``       nothing is sent until the open time (exponential backoff with
               jitter, capped at ``open_max``) has elapsed.
``half_open``  at most ``half_open_trials`` trial calls at once; that many
               successes (trial calls or health probes) close it, one failure
               re-opens it with a longer open time.
``held``       the server is alive but asked for a pause: a ``Retry-After``
               (honoured to the instant, the latest one wins, never shortened
               by anything else), a model loading (until a probe or a call
               says it is serving, or ``loading_hold`` passes), or a sustained
               rate of overloads without Retry-After.  A hold counts no
               failure and does not grow the open backoff.

A single overload is not a failure: the adaptive limit reacts to it.  Only
when overloads reach ``overload_rate`` of the window is traffic held, for a
backed-off time, and the window starts afresh.  Cancellations and client
errors change nothing but the trial count.

Results of calls admitted before the last state change (their
:class:`Permit` is from an older epoch) are ignored, except that a
Retry-After or loading answer is still news about the server.
"""

from __future__ import annotations

import math
import random
from typing import Final, final, get_args

import msgspec

from lmgate._errors import InvalidParameter
from lmgate._validate import check_float, check_int
from lmgate.policies._breaker_records import (
    BreakerStateName,
    BreakerStatistics,
    BucketWindow,
    Permit,
    Transition,
)
from lmgate.policies._sample import OutcomeClass

__all__ = [
    "Breaker",
    "BreakerState",
    "BreakerStateName",
    "BreakerStatistics",
    "Permit",
    "Transition",
]

_OUTCOMES: Final = frozenset(get_args(OutcomeClass))
_NEG_INF: Final = -math.inf


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
        return BreakerState(self, rng)


@final
class BreakerState:
    """One endpoint's breaker.  Not thread-safe: its actor alone drives it."""

    __slots__ = (
        "_closed_permit",
        "_closed_since",
        "_config",
        "_consecutive",
        "_epoch",
        "_failure_run",
        "_last",
        "_open_until",
        "_opens",
        "_overload_holds",
        "_phase_open",
        "_probe_failures",
        "_ra_until",
        "_reported",
        "_rng",
        "_soft_kind",
        "_soft_until",
        "_successes",
        "_trial_permit",
        "_trials",
        "_trip",
        "_window",
    )

    def __init__(self, config: Breaker, rng: random.Random | None = None) -> None:
        self._config = config
        self._rng = rng
        self._window = BucketWindow(config.window, config.buckets)
        self._last = _NEG_INF
        self._phase_open = False
        self._open_until = _NEG_INF
        self._ra_until = _NEG_INF
        self._soft_until = _NEG_INF
        self._soft_kind: str | None = None
        self._trials = 0
        self._successes = 0
        self._probe_failures = 0
        self._consecutive = 0
        self._failure_run = 0
        self._overload_holds = 0
        self._opens = 0
        self._closed_since: float | None = None
        self._reported: BreakerStateName = "closed"
        self._trip = (0.0, 0, 0)
        self._epoch = 0
        self._closed_permit = Permit(False, 0)
        self._trial_permit = Permit(True, 0)

    @property
    def config(self) -> Breaker:
        return self._config

    # -- queries (pure) ---------------------------------------------------

    def state(self, now: float) -> BreakerStateName:
        """The state at ``now``; open elapses into half-open by itself."""
        if self._phase_open and now < self._open_until:
            return "open"
        if now < self._ra_until or (self._soft_kind is not None and now < self._soft_until):
            return "held"
        return "half_open" if self._phase_open else "closed"

    def allow(self, now: float) -> bool:
        """Whether a call may be admitted at ``now`` (no side effect)."""
        s = self.state(now)
        return s == "closed" or (s == "half_open" and self._trials < self._config.half_open_trials)

    def capacity(self, now: float) -> int | None:
        """Calls the breaker lets start now: None when it sets no bound."""
        s = self.state(now)
        if s == "closed":
            return None
        if s == "half_open":
            return max(0, self._config.half_open_trials - self._trials)
        return 0

    def retry_at(self, now: float) -> float | None:
        """When the open time or hold in force at ``now`` ends, if one is."""
        ends = [self._ra_until]
        if self._phase_open:
            ends.append(self._open_until)
        if self._soft_kind is not None:
            ends.append(self._soft_until)
        until = max(ends)
        return until if until > now else None

    def next_change(self, now: float) -> float | None:
        """When the state at ``now`` next changes by time alone (an open time can
        end into a hold that outlasts it), if it does."""
        ends = [self._ra_until, self._soft_until if self._soft_kind is not None else 0.0]
        if self._phase_open:
            ends.append(self._open_until)
        later = [e for e in ends if e > now]
        return min(later) if later else None

    # -- mutators -----------------------------------------------------------

    def acquire(self, now: float) -> Permit | None:
        """Admit one call, or refuse it; in half-open this takes a trial slot."""
        t = self._time(now)
        s = self.state(t)
        if s == "closed":
            return self._closed_permit
        if s == "half_open" and self._trials < self._config.half_open_trials:
            self._trials += 1
            return self._trial_permit
        return None

    def record(
        self,
        outcome: OutcomeClass,
        now: float,
        retry_after: float | None = None,
        *,
        permit: Permit | None = None,
    ) -> Transition | None:
        """Take one finished call's outcome; return the transition it caused.

        ``permit`` is what :meth:`acquire` returned for the call; without
        one the result is taken as belonging to the current state.
        """
        if outcome not in _OUTCOMES:
            raise InvalidParameter(f"unknown outcome class {outcome!r}", field="outcome")
        t = self._time(now)
        ra = self._clean_retry_after(retry_after)
        current = permit is None or permit.epoch == self._epoch
        trial = False
        if self._phase_open and current and self._trials > 0 and (permit is None or permit.trial):
            self._trials -= 1
            trial = True
        # A result counts in half-open only once the open time has elapsed.
        counts = current and (
            not self._phase_open or trial or (permit is None and t >= self._open_until)
        )
        forced = False
        reason: str | None = None
        if outcome == "success":
            if self._soft_kind == "loading":
                self._soft_kind = None
                reason = "serving"
            if counts and not self._phase_open:
                self._window.add(t, fail=0, over=0)
                self._overload_holds = 0
                self._failure_run = 0
            elif counts:
                reason = self._half_open_success(t) or reason
        elif outcome == "error" or outcome == "timeout":
            if counts and not self._phase_open:
                self._window.add(t, fail=1, over=0)
                self._failure_run += 1
                if self._tripped_by_failures():
                    self._open(t)
                    forced, reason = True, "failure_rate"
                elif self._failure_run >= self._config.consecutive_failures:
                    self._open(t)
                    forced, reason = True, "consecutive_failures"
            elif counts:
                self._open(t)
                forced, reason = True, "trial_failed"
        elif outcome == "overload":
            if ra is not None:
                self._ra_until = t + ra
                reason = "retry_after"
            if counts and not self._phase_open:
                self._window.add(t, fail=0, over=1)
                if ra is None and self._tripped_by_overloads():
                    self._hold_overloaded(t)
                    reason = "overload_rate"
            elif counts and ra is None:
                self._hold_overloaded(t)
                reason = "overloaded_trial"
        elif outcome == "loading":
            self._soft_hold("loading", t + (ra if ra is not None else self._config.loading_hold))
            reason = "loading"
        return self._finish(t, reason, forced)

    def probe_result(self, ok: bool, now: float, *, loading: bool = False) -> Transition | None:
        """Take a health probe's verdict.

        ``loading`` means the server answered but is loading a model: hold
        traffic without a failure.  A failed probe re-opens a half-open
        breaker and, after ``probe_failures`` in a row, opens a closed one; a
        successful probe clears a loading hold and counts as a half-open
        success.  A probe never shortens an open time or a Retry-After.
        """
        t = self._time(now)
        forced = False
        reason: str | None = None
        if loading:
            self._probe_failures = 0
            self._soft_hold("loading", t + self._config.loading_hold)
            reason = "loading"
        elif ok:
            self._probe_failures = 0
            if self._soft_kind == "loading":
                self._soft_kind = None
                reason = "probe_ready"
            if self.state(t) == "half_open":
                reason = self._half_open_success(t) or reason
        else:
            self._probe_failures += 1
            if self._phase_open:
                if t >= self._open_until:
                    self._open(t)
                    forced, reason = True, "probe_failed"
            elif self._probe_failures >= self._config.probe_failures:
                self._open(t)
                forced, reason = True, "probes_failed"
        return self._finish(t, reason, forced)

    def tick(self, now: float) -> Transition | None:
        """Report a transition that only the passing of time caused."""
        return self._finish(self._time(now), None, False)

    def statistics(self, now: float | None = None) -> BreakerStatistics:
        """A snapshot at ``now`` (default: the latest time the breaker saw)."""
        t = self._last if now is None else max(now, self._last)
        total, fail, over = self._window.sums(t) if t > _NEG_INF else (0, 0, 0)
        state = self.state(t) if t > _NEG_INF else self._reported
        return BreakerStatistics(
            state=state,
            held_by=self._held_by(t) if state == "held" else None,
            retry_at=self.retry_at(t),
            failure_rate=fail / total if total else 0.0,
            failures=fail,
            overloads=over,
            total=total,
            opens=self._opens,
            consecutive_opens=self._consecutive,
            trials_in_flight=self._trials,
            half_open_successes=self._successes,
            probe_failures=self._probe_failures,
        )

    def __repr__(self) -> str:
        t = self._last
        state = self.state(t) if t > _NEG_INF else "closed"
        return (
            f"<BreakerState {state} opens={self._opens} trials={self._trials}"
            f" retry_at={self.retry_at(t)}>"
        )

    # -- internals ------------------------------------------------------------

    def _time(self, now: float) -> float:
        # Never let a clock hiccup move the window or the states backwards.
        if not isinstance(now, int | float) or not math.isfinite(now):
            raise InvalidParameter(f"now must be a finite number, got {now!r}", field="now")
        if now > self._last:
            self._last = float(now)
        return self._last

    def _clean_retry_after(self, value: float | None) -> float | None:
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if not math.isfinite(value) or value < 0:
            return None
        return min(float(value), self._config.retry_after_max)

    def _held_by(self, t: float) -> str | None:
        if t < self._ra_until:
            return "retry_after"
        if self._soft_kind is not None and t < self._soft_until:
            return self._soft_kind
        return None

    def _soft_hold(self, kind: str, until: float) -> None:
        if self._soft_kind is None or until >= self._soft_until or self._soft_until <= self._last:
            self._soft_until = until
        self._soft_kind = kind

    def _hold_overloaded(self, t: float) -> None:
        self._soft_hold("overload", t + self._backoff(self._overload_holds))
        self._overload_holds += 1
        self._window.clear()

    def _half_open_success(self, t: float) -> str | None:
        self._successes += 1
        if self._successes < self._config.half_open_trials:
            return None
        self._phase_open = False
        self._closed_since = t
        self._probe_failures = 0
        self._new_epoch()
        return "recovered"

    def _open(self, t: float) -> None:
        cfg = self._config
        total, fail, _ = self._window.sums(t)
        self._trip = (fail / total if total else 0.0, fail, total)
        if (
            not self._phase_open
            and self._closed_since is not None
            and t - self._closed_since >= cfg.reset_after
        ):
            self._consecutive = 0
        self._open_until = t + self._backoff(self._consecutive)
        self._consecutive += 1
        self._opens += 1
        self._phase_open = True
        self._new_epoch()

    def _new_epoch(self) -> None:
        self._epoch += 1
        self._trials = 0
        self._successes = 0
        self._failure_run = 0
        self._closed_permit = Permit(False, self._epoch)
        self._trial_permit = Permit(True, self._epoch)
        self._window.clear()

    def _backoff(self, k: int) -> float:
        cfg = self._config
        try:
            d = min(cfg.open_base * cfg.multiplier ** min(k, 10_000), cfg.open_max)
        except OverflowError:
            d = cfg.open_max
        if self._rng is not None and cfg.jitter:
            d *= 1.0 + cfg.jitter * (2.0 * self._rng.random() - 1.0)
        return min(d, cfg.open_max)

    def _finish(self, t: float, reason: str | None, forced: bool) -> Transition | None:
        if self._soft_kind is not None and t >= self._soft_until:
            self._soft_kind = None
        after = self.state(t)
        before = self._reported
        if after == before and not forced:
            return None
        self._reported = after
        if reason is None:
            reason = "open_elapsed" if before == "open" else "hold_expired"
        if after == "open":
            rate, fail, total = self._trip
        else:
            total, fail, _ = self._window.sums(t)
            rate = fail / total if total else 0.0
        return Transition(
            at=t,
            before=before,
            after=after,
            reason=reason,
            until=self.retry_at(t),
            failure_rate=rate,
            failures=fail,
            total=total,
            consecutive_opens=self._consecutive,
        )

    def _tripped_by_failures(self) -> bool:
        total, fail, _ = self._window.sums(self._last)
        cfg = self._config
        return total >= cfg.minimum_volume and fail >= cfg.failure_rate * total

    def _tripped_by_overloads(self) -> bool:
        total, _, over = self._window.sums(self._last)
        cfg = self._config
        return total >= cfg.minimum_volume and over >= cfg.overload_rate * total
