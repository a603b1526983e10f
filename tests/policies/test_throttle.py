"""Client-side throttling: the SRE rule over a bounded sliding window."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from lmgate._errors import InvalidParameter
from lmgate.policies._throttle import Throttle, ThrottleState


def recorded(config: Throttle, accepts: int, refusals: int, now: float = 0.0) -> ThrottleState:
    state = config.build()
    for _ in range(accepts):
        state.record(True, now)
    for _ in range(refusals):
        state.record(False, now)
    return state


def test_healthy_endpoint_is_never_throttled() -> None:
    """Accepts close to requests give probability exactly zero."""
    state = recorded(Throttle(), accepts=1000, refusals=30)
    assert state.reject_probability(1.0) == 0.0
    assert all(state.admit(1.0, draw) for draw in (0.0, 0.5, 0.999))


def test_probability_follows_the_published_rule() -> None:
    """100 requests, 10 accepted, k=2: (100 - 20) / 101."""
    state = recorded(Throttle(k=2.0), accepts=10, refusals=90)
    assert state.reject_probability(1.0) == pytest.approx(80 / 101)


def test_k_sets_how_much_refusal_is_tolerated() -> None:
    """Half refused is tolerated at k=2 but throttled at k=1.5."""
    assert recorded(Throttle(k=2.0), 50, 50).reject_probability(0.0) == 0.0
    assert recorded(Throttle(k=1.5), 50, 50).reject_probability(0.0) == pytest.approx(25 / 101)


def test_admit_uses_the_callers_draw_and_counts_refusals() -> None:
    """A draw under the probability refuses (and counts as a request); one over admits."""
    state = recorded(Throttle(), accepts=0, refusals=99)
    p = state.reject_probability(1.0)
    assert p == pytest.approx(99 / 100)
    assert state.admit(1.0, 0.995)
    assert not state.admit(1.0, 0.5)
    stats = state.statistics()
    assert (stats.requests, stats.accepts, stats.throttled) == (100, 0, 1)
    assert stats.reject_probability == pytest.approx(100 / 101)


def test_refusals_age_out_of_the_window() -> None:
    """After a window of silence the endpoint starts with a clean slate."""
    state = recorded(Throttle(window=60.0, buckets=12), accepts=0, refusals=200)
    assert state.reject_probability(30.0) > 0.9
    assert state.reject_probability(65.0) == 0.0
    assert state.statistics().requests == 0


def test_recovery_lowers_the_probability_by_itself() -> None:
    """As the endpoint accepts again, the probability falls towards zero."""
    state = recorded(Throttle(window=10.0, buckets=10), accepts=0, refusals=100)
    seen = []
    for second in range(1, 12):
        for _ in range(20):
            state.record(True, float(second))
        seen.append(state.reject_probability(float(second)))
    assert seen == sorted(seen, reverse=True)
    assert seen[-1] == 0.0


def test_min_requests_keeps_a_quiet_endpoint_open() -> None:
    """Below min_requests in the window nothing is throttled."""
    assert recorded(Throttle(min_requests=10), 0, 9).reject_probability(0.0) == 0.0
    assert recorded(Throttle(min_requests=10), 0, 10).reject_probability(0.0) > 0.0


def test_max_probability_caps_refusal() -> None:
    """The cap keeps a trickle flowing to a failing endpoint."""
    state = recorded(Throttle(max_probability=0.5), 0, 1000)
    assert state.reject_probability(0.0) == 0.5


@pytest.mark.parametrize("draw", [-0.1, 1.0, math.nan, math.inf, True, "0.5"])
def test_admit_refuses_bad_draws(draw: Any) -> None:
    """The draw must be a number in [0, 1)."""
    with pytest.raises(InvalidParameter) as info:
        Throttle().build().admit(0.0, draw)
    assert info.value.field == "draw"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"k": 0.5}, "k"),
        ({"k": math.nan}, "k"),
        ({"window": 0.0}, "window"),
        ({"buckets": 0}, "buckets"),
        ({"min_requests": -1}, "min_requests"),
        ({"max_probability": 1.5}, "max_probability"),
    ],
)
def test_config_refuses_bad_values(kwargs: dict[str, Any], field: str) -> None:
    """Bad settings raise InvalidParameter naming the field."""
    with pytest.raises(InvalidParameter) as info:
        Throttle(**kwargs)
    assert info.value.field == field


@settings(max_examples=80, deadline=None)
@given(
    st.integers(min_value=0, max_value=500),
    st.integers(min_value=0, max_value=500),
    st.floats(min_value=1.0, max_value=10.0),
)
def test_probability_is_a_monotone_probability(accepts: int, refusals: int, k: float) -> None:
    """In [0, 1); zero when k * accepts covers the requests; more refusals never lower it."""
    config = Throttle(k=k, min_requests=0)
    p = recorded(config, accepts, refusals).reject_probability(0.0)
    assert 0.0 <= p < 1.0
    if k * accepts >= accepts + refusals:
        assert p == 0.0
    assert recorded(config, accepts, refusals + 1).reject_probability(0.0) >= p
    assert recorded(config, accepts + 1, refusals).reject_probability(0.0) <= p


class ThrottleMachine(RuleBasedStateMachine):
    """Records, admissions and time in any order keep the counts to one window."""

    def __init__(self) -> None:
        super().__init__()
        self.state = Throttle(window=10.0, buckets=5, min_requests=3).build()
        self.now = 0.0
        self.events: list[tuple[float, bool]] = []

    @rule(accepted=st.booleans(), dt=st.floats(min_value=0.0, max_value=4.0))
    def record(self, accepted: bool, dt: float) -> None:
        self.now += dt
        self.state.record(accepted, self.now)
        self.events.append((self.now, accepted))

    @rule(draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
    def admit(self, draw: float) -> None:
        p = self.state.reject_probability(self.now)
        admitted = self.state.admit(self.now, draw)
        assert admitted == (draw >= p)
        if not admitted:
            self.events.append((self.now, False))

    @rule(now=st.sampled_from([math.nan, math.inf, -math.inf, -1.0]))
    def odd_clock(self, now: float) -> None:
        assert 0.0 <= self.state.reject_probability(now) < 1.0

    @invariant()
    def counts_cover_one_window(self) -> None:
        stats = self.state.statistics()
        # Five 2-second buckets cover the last 8 to 10 seconds.
        within = [ok for t, ok in self.events if t > self.now - 7.999]
        anywhere = [ok for t, ok in self.events if t >= self.now - 10.001]
        assert len(within) <= stats.requests <= len(anywhere)
        assert stats.accepts <= stats.requests
        assert 0.0 <= stats.reject_probability < 1.0


TestThrottleMachine = ThrottleMachine.TestCase
TestThrottleMachine.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)
