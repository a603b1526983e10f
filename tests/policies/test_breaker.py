"""The circuit breaker: unit behaviour and a rule-based state machine."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from lmgate._errors import InvalidParameter
from lmgate.policies._breaker import Breaker, BreakerState, Permit, Transition
from lmgate.policies._sample import OUTCOME_CLASSES

FAST = Breaker(window=10.0, buckets=5, minimum_volume=4, open_base=1.0, open_max=8.0, jitter=0.0)


def _trip(b: BreakerState, at: float, n: int = 4) -> Transition | None:
    last = None
    for _ in range(n):
        last = b.record("error", at) or last
    return last


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("window", 0),
        ("buckets", 0),
        ("failure_rate", 0.0),
        ("failure_rate", 1.5),
        ("minimum_volume", True),
        ("half_open_trials", 0),
        ("open_base", -1.0),
        ("open_max", 0.5),
        ("multiplier", 0.5),
        ("jitter", 1.0),
        ("loading_hold", math.nan),
        ("retry_after_max", math.inf),
    ],
)
def test_config_validation(field: str, value: Any) -> None:
    """Each bad setting is refused with its field named."""
    with pytest.raises(InvalidParameter) as info:
        Breaker(**{field: value})
    assert info.value.field == field


def test_opens_on_failure_rate_at_minimum_volume() -> None:
    """Below the minimum volume nothing opens; at it, a high failure rate opens."""
    b = FAST.build()
    for _ in range(3):
        assert b.record("error", 0.0) is None
    tr = b.record("error", 0.0)
    assert tr is not None
    assert (tr.before, tr.after, tr.reason, tr.failures, tr.total) == (
        "closed",
        "open",
        "failure_rate",
        4,
        4,
    )
    assert tr.failure_rate == 1.0
    assert not b.allow(0.5)
    assert b.acquire(0.5) is None


def test_successes_dilute_failures() -> None:
    """A failure share below the threshold keeps the breaker closed."""
    b = FAST.build()
    for i in range(20):
        b.record("success", 0.0)
        b.record("success", 0.0)
        b.record("error" if i % 2 else "timeout", 0.0)
    assert b.state(0.0) == "closed"
    assert b.statistics().failures == 20


def test_consecutive_failures_open_despite_a_good_history() -> None:
    """A server that dies after a busy healthy spell is cut off after a run of failures."""
    b = Breaker(consecutive_failures=3, jitter=0.0).build()
    for _ in range(50):
        b.record("success", 0.0)
    b.record("error", 1.0)
    b.record("error", 1.0)
    b.record("success", 1.0)  # a success breaks the run
    b.record("error", 1.0)
    assert b.record("error", 1.0) is None
    tr = b.record("error", 1.0)
    assert tr is not None
    assert (tr.after, tr.reason) == ("open", "consecutive_failures")


def test_window_forgets_old_failures() -> None:
    """Failures older than the window no longer count toward opening."""
    b = FAST.build()
    for _ in range(3):
        b.record("error", 0.0)
    assert b.record("error", 11.0) is None
    assert b.state(11.0) == "closed"
    assert b.statistics(11.0).failures == 1


@given(st.lists(st.sampled_from(["success", "cancelled", "client_error"]), max_size=60))
def test_cancellations_and_client_errors_never_open(outcomes: list[Any]) -> None:
    """No amount of cancellations or client errors opens the breaker."""
    b = Breaker(minimum_volume=1, failure_rate=0.01).build()
    for i, o in enumerate(outcomes):
        b.record(o, i * 0.1)
    assert b.state(len(outcomes) * 0.1) == "closed"
    assert b.statistics().opens == 0


def test_half_open_admits_bounded_trials_and_closes() -> None:
    """After the open time, at most half_open_trials calls test it; their success closes it."""
    cfg = Breaker(minimum_volume=2, half_open_trials=2, open_base=1.0, jitter=0.0)
    b = cfg.build()
    b.record("error", 0.0)
    b.record("error", 0.0)
    assert b.state(0.999) == "open"
    assert b.state(1.0) == "half_open"
    p1, p2 = b.acquire(1.0), b.acquire(1.0)
    assert p1 is not None
    assert p2 is not None
    assert p1.trial
    assert p2.trial
    assert b.acquire(1.0) is None
    assert b.capacity(1.0) == 0
    assert b.record("success", 1.5, permit=p1) is not None  # open -> half_open reported
    assert b.state(1.5) == "half_open"
    tr = b.record("success", 1.6, permit=p2)
    assert tr is not None
    assert (tr.after, tr.reason) == ("closed", "recovered")
    assert b.capacity(1.6) is None


def test_trial_failure_reopens_with_longer_time() -> None:
    """A failed trial re-opens, and each consecutive opening waits longer."""
    b = FAST.build()
    _trip(b, 0.0)
    p = b.acquire(1.0)
    assert p is not None
    tr = b.record("timeout", 1.0, permit=p)
    assert tr is not None
    assert (tr.before, tr.after, tr.reason, tr.consecutive_opens) == (
        "open",
        "open",
        "trial_failed",
        2,
    )
    assert tr.until == 3.0
    assert b.state(2.999) == "open"


def test_open_backoff_is_capped_and_resets_after_a_closed_period() -> None:
    """Open times double up to open_max, and a long closed period forgets them."""
    cfg = Breaker(minimum_volume=1, open_base=1.0, open_max=5.0, jitter=0.0, reset_after=100.0)
    b = cfg.build()
    now = 0.0
    durations = []
    tr = b.record("error", now)
    for _ in range(6):
        assert tr is not None
        assert tr.until is not None
        durations.append(tr.until - now)
        now = tr.until
        p = b.acquire(now)
        tr = b.record("error", now, permit=p)
    assert durations == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert tr is not None
    assert tr.until is not None
    now = tr.until
    b.record("success", now, permit=b.acquire(now))
    assert b.state(now) == "closed"
    tr = b.record("error", now + 100.0)
    assert tr is not None
    assert tr.until == now + 101.0


@given(seed=st.integers(0, 2**32), k=st.integers(0, 3000))
@settings(max_examples=50)
def test_jittered_open_time_within_bounds(seed: int, k: int) -> None:
    """Even after thousands of openings the open time is positive and at most open_max."""
    cfg = Breaker(minimum_volume=1, open_base=0.5, open_max=30.0, multiplier=3.0, jitter=0.5)
    b = cfg.build(random.Random(seed))
    now = 0.0
    tr = b.record("error", now)
    for _ in range(min(k, 40)):
        assert tr is not None
        assert tr.until is not None
        assert 0.0 < tr.until - now <= 30.0 + 1e-9
        now = tr.until
        tr = b.record("error", now, permit=b.acquire(now))
    assert tr is not None
    assert tr.until is not None
    assert 0.0 < tr.until - now <= 30.0 + 1e-9


@given(
    t0=st.floats(0, 1e6),
    ra=st.floats(0.001, 500.0),
)
def test_retry_after_honoured_exactly(t0: float, ra: float) -> None:
    """A 429's Retry-After holds traffic until exactly then, counting no failure."""
    b = Breaker().build()
    tr = b.record("overload", t0, ra)
    until = t0 + ra
    assert tr is not None
    assert (tr.after, tr.reason, tr.until) == ("held", "retry_after", until)
    before = math.nextafter(until, -math.inf)
    if before >= t0:
        assert not b.allow(before)
        assert b.state(before) == "held"
    assert b.allow(until)
    assert b.retry_at(t0) == until
    assert b.statistics(t0).failures == 0
    assert b.statistics(t0).opens == 0


def test_retry_after_latest_wins_and_is_not_cleared() -> None:
    """A newer Retry-After replaces the older; successes and probes do not cut it short."""
    b = Breaker().build()
    b.record("overload", 0.0, 30.0)
    b.record("overload", 1.0, 2.0)
    assert b.retry_at(1.0) == 3.0
    b.record("success", 1.5)
    b.probe_result(True, 1.5)
    assert not b.allow(2.9)
    assert b.allow(3.0)


def test_retry_after_capped() -> None:
    """An absurd Retry-After is cut to retry_after_max; garbage ones are ignored."""
    b = Breaker(retry_after_max=60.0).build()
    b.record("overload", 0.0, 1e12)
    assert b.retry_at(0.0) == 60.0
    c = Breaker().build()
    for bad in (math.nan, math.inf, -5.0):
        assert c.record("overload", 0.0, bad) is None
    assert c.allow(0.0)


def test_sustained_overload_holds_without_failures() -> None:
    """Overloads without Retry-After hold traffic only as a sustained rate."""
    b = Breaker(minimum_volume=4, overload_rate=0.8, jitter=0.0).build()
    b.record("success", 0.0)
    for _ in range(3):
        assert b.record("overload", 0.0) is None
    tr = b.record("overload", 0.0)
    assert tr is not None
    assert (tr.after, tr.reason) == ("held", "overload_rate")
    stats = b.statistics(0.0)
    assert (stats.held_by, stats.opens, stats.failures) == ("overload", 0, 0)
    assert b.allow(1.0)
    assert b.tick(1.0) is not None


def test_loading_holds_until_ready() -> None:
    """A loading answer holds traffic, counts nothing, and a ready probe releases it."""
    b = FAST.build()
    tr = b.record("loading", 0.0)
    assert tr is not None
    assert (tr.after, tr.reason) == ("held", "loading")
    assert b.statistics(0.0).held_by == "loading"
    assert not b.allow(5.0)
    tr = b.probe_result(True, 5.0)
    assert tr is not None
    assert (tr.before, tr.after, tr.reason) == ("held", "closed", "probe_ready")
    assert b.statistics(5.0).failures == 0


def test_loading_hold_expires_and_success_releases() -> None:
    """A loading hold ends by itself after loading_hold, or when a call succeeds."""
    b = Breaker(loading_hold=10.0).build()
    b.record("loading", 0.0, 3.0)
    assert b.state(2.9) == "held"
    assert b.state(3.0) == "closed"
    b.record("loading", 4.0)
    assert b.state(13.9) == "held"
    b.record("success", 5.0)
    assert b.state(5.0) == "closed"


def test_loading_probe_keeps_holding() -> None:
    """A probe that sees a model loading holds traffic and resets probe failures."""
    b = FAST.build()
    b.probe_result(False, 0.0)
    tr = b.probe_result(False, 0.0, loading=True)
    assert tr is not None
    assert tr.after == "held"
    assert b.statistics(0.0).probe_failures == 0


def test_probe_failures_open_a_closed_breaker() -> None:
    """Consecutive failed probes open an idle breaker; a success in between resets."""
    b = Breaker(probe_failures=2, jitter=0.0).build()
    assert b.probe_result(False, 0.0) is None
    assert b.probe_result(True, 1.0) is None
    assert b.probe_result(False, 2.0) is None
    tr = b.probe_result(False, 3.0)
    assert tr is not None
    assert (tr.after, tr.reason) == ("open", "probes_failed")


def test_probes_in_half_open() -> None:
    """In half-open a failed probe re-opens and a good one counts as a success."""
    b = FAST.build()
    _trip(b, 0.0)
    assert b.probe_result(True, 0.5) is None  # never shortens the open time
    assert b.state(0.5) == "open"
    tr = b.probe_result(False, 1.0)
    assert tr is not None
    assert (tr.after, tr.reason) == ("open", "probe_failed")
    assert tr.until == 3.0
    tr = b.probe_result(True, 3.0)
    assert tr is not None
    assert (tr.before, tr.after) == ("open", "closed")


def test_stale_results_are_ignored() -> None:
    """Calls admitted before an opening cannot close or re-open the breaker later."""
    b = FAST.build()
    old = [b.acquire(0.0) for _ in range(3)]
    _trip(b, 0.0)
    assert b.record("success", 5.0, permit=old[0]) is not None  # only the time-based change
    assert b.state(5.0) == "half_open"
    assert b.record("error", 5.0, permit=old[1]) is None
    assert b.state(5.0) == "half_open"
    b.record("overload", 5.0, 2.0, permit=old[2])
    assert b.state(5.0) == "held"  # a Retry-After is news even when stale


def test_untracked_result_during_open_time_does_not_close() -> None:
    """A result without a permit during the open time cannot close it."""
    b = FAST.build()
    _trip(b, 0.0)
    b.record("success", 0.5)
    assert b.state(0.5) == "open"


def test_tick_reports_time_transitions() -> None:
    """tick() reports open -> half_open and the end of a hold once each."""
    b = FAST.build()
    _trip(b, 0.0)
    assert b.tick(0.5) is None
    tr = b.tick(1.0)
    assert tr is not None
    assert (tr.before, tr.after, tr.reason) == (
        "open",
        "half_open",
        "open_elapsed",
    )
    assert b.tick(1.5) is None
    b.record("success", 1.5, permit=b.acquire(1.5))
    b.record("overload", 2.0, 1.0)
    tr = b.tick(3.0)
    assert tr is not None
    assert (tr.before, tr.after, tr.reason) == ("held", "closed", "hold_expired")


def test_bad_inputs() -> None:
    """Unknown outcomes and non-finite times are refused."""
    b = Breaker().build()
    with pytest.raises(InvalidParameter):
        b.record("fine", 0.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        b.record("success", math.nan)
    with pytest.raises(InvalidParameter):
        b.acquire(math.inf)


def test_statistics_and_repr() -> None:
    """Statistics are finite numbers and the repr names the state."""
    b = FAST.build()
    s = b.statistics()
    assert (s.state, s.failure_rate, s.total, s.retry_at) == ("closed", 0.0, 0, None)
    _trip(b, 0.0)
    assert "open" in repr(b)
    assert b.statistics().state == "open"


class BreakerMachine(RuleBasedStateMachine):
    """Random calls, probes and clock steps against a breaker."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg = Breaker(
            window=10.0,
            buckets=5,
            minimum_volume=3,
            half_open_trials=2,
            open_base=1.0,
            open_max=8.0,
            jitter=0.3,
            reset_after=20.0,
            probe_failures=2,
            loading_hold=3.0,
            retry_after_max=30.0,
        )
        self.b = self.cfg.build(random.Random(7))
        self.now = 0.0
        self.permits: list[Permit] = []
        self.ra_until = -math.inf
        self.min_open_until = -math.inf

    def _seen(self, tr: Transition | None) -> None:
        if tr is None:
            return
        assert tr.at == self.now
        assert tr.before != tr.after or tr.after == "open"
        for v in (tr.failure_rate, tr.at):
            assert math.isfinite(v)
        if tr.after == "open":
            # Capped: the open time is over by open_max, and at least the jittered base.
            assert self.b.state(self.now + self.cfg.open_max) != "open"
            self.min_open_until = self.now + self.cfg.open_base * (1 - self.cfg.jitter)

    @rule(dt=st.one_of(st.just(0.0), st.floats(0.0, 6.0)))
    def advance(self, dt: float) -> None:
        self.now += dt
        self._seen(self.b.tick(self.now))

    @rule()
    def acquire(self) -> None:
        allowed = self.b.allow(self.now)
        p = self.b.acquire(self.now)
        assert (p is not None) == allowed
        if p is not None:
            self.permits.append(p)

    @precondition(lambda self: self.permits)
    @rule(
        i=st.integers(0, 1000),
        outcome=st.sampled_from(OUTCOME_CLASSES),
        ra=st.one_of(st.none(), st.floats(0.0, 40.0), st.just(math.nan)),
    )
    def finish(self, i: int, outcome: Any, ra: float | None) -> None:
        p = self.permits.pop(i % len(self.permits))
        opens = self.b.statistics().opens
        self._seen(self.b.record(outcome, self.now, ra, permit=p))
        if outcome not in ("error", "timeout"):
            assert self.b.statistics().opens == opens
        if outcome == "overload" and ra is not None and math.isfinite(ra):
            self.ra_until = self.now + min(ra, self.cfg.retry_after_max)

    @rule(ok=st.booleans(), loading=st.booleans())
    def probe(self, ok: bool, loading: bool) -> None:
        opens = self.b.statistics().opens
        self._seen(self.b.probe_result(ok, self.now, loading=loading))
        if ok or loading:
            assert self.b.statistics().opens == opens

    @invariant()
    def bounded_trials(self) -> None:
        s = self.b.statistics(self.now)
        assert 0 <= s.trials_in_flight <= self.cfg.half_open_trials
        per_epoch: dict[int, int] = {}
        for p in self.permits:
            if p.trial:
                per_epoch[p.epoch] = per_epoch.get(p.epoch, 0) + 1
        assert all(n <= self.cfg.half_open_trials for n in per_epoch.values())

    @invariant()
    def open_time_respected(self) -> None:
        if self.now < self.min_open_until:
            assert self.b.state(self.now) == "open"

    @invariant()
    def retry_after_respected(self) -> None:
        if self.now < self.ra_until:
            assert not self.b.allow(self.now)
            assert self.b.acquire(self.now) is None

    @invariant()
    def consistent_and_finite(self) -> None:
        s = self.b.statistics(self.now)
        assert 0.0 <= s.failure_rate <= 1.0
        assert s.failures + s.overloads <= s.total
        assert s.retry_at is None or (math.isfinite(s.retry_at) and s.retry_at > self.now)
        cap = self.b.capacity(self.now)
        assert self.b.allow(self.now) == (cap is None or cap > 0)
        assert (s.state == "held") == (s.held_by is not None)


BreakerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestBreakerMachine = BreakerMachine.TestCase
