"""Gradient2: Netflix's published windowed gradient rule, and its invariants."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from lmgate._errors import InvalidParameter
from lmgate.policies._gradient2 import Gradient2, Gradient2State
from lmgate.policies._sample import OUTCOME_CLASSES, OutcomeClass, Sample

samples = st.builds(
    Sample,
    start=st.floats(allow_nan=True, allow_infinity=True),
    duration=st.one_of(
        st.just(0.0),
        st.floats(min_value=-1e300, max_value=1e300),
        st.floats(allow_nan=True, allow_infinity=True),
    ),
    in_flight=st.integers(min_value=-10, max_value=100_000),
    outcome=st.sampled_from(OUTCOME_CLASSES),
)

#: One sample per window, so each sample is judged on its own.
PER_SAMPLE = Gradient2(initial_limit=20, window=0.0, window_size=1, max_limit=1000)


def sample(rtt: float, outcome: OutcomeClass = "success", *, in_flight: int = 1000) -> Sample:
    return Sample(start=0.0, duration=rtt, in_flight=in_flight, outcome=outcome)


def feed(state: Gradient2State, rtt: float, count: int, start: float, **kw: Any) -> float:
    """``count`` samples of ``rtt``, 0.01 s apart from ``start``; returns the last time."""
    now = start
    for i in range(count):
        now = start + 0.01 * i
        state.update(sample(rtt, **kw), now)
    return now


def test_window_needs_enough_samples() -> None:
    """A window closes after ``window`` seconds and counts only with ``window_size`` samples."""
    state = Gradient2(initial_limit=20, window=1.0, window_size=10).build()
    feed(state, 1.0, 5, 0.0)
    state.update(sample(1.0), 2.0)  # closes a window of 5 samples: discarded
    assert state.statistics().detail["windows"] == 0
    feed(state, 1.0, 10, 2.5)
    state.update(sample(1.0), 4.0)  # closes a window of 11 samples
    detail = state.statistics().detail
    assert detail["windows"] == 1
    assert detail["short_rtt"] == pytest.approx(1.0)


def test_steady_latency_walks_the_limit_up_by_smoothed_queue_size() -> None:
    """Gradient 1 gives limit + 0.2 * 4 per window: the drift under a steady load."""
    state = PER_SAMPLE.build()
    for i in range(5):
        state.update(sample(1.0), float(i))
    assert state.statistics().detail["estimate"] == pytest.approx(20 + 5 * 0.8)


def test_steady_load_drifts_to_the_maximum() -> None:
    """At a constant latency nothing ever pulls the limit down (the known failure)."""
    state = Gradient2(initial_limit=20, max_limit=60, window=0.0, window_size=1).build()
    for i in range(200):
        state.update(sample(2.0), float(i))
    assert state.limit == 60


def test_latency_spike_lowers_the_limit_by_at_most_half() -> None:
    """A 10x latency gives gradient 0.5: limit moves 0.2 of the way to limit/2 + 4."""
    state = PER_SAMPLE.build()
    for i in range(20):
        state.update(sample(1.0), float(i))
    before = state.statistics().detail["estimate"]
    state.update(sample(10.0), 100.0)
    detail = state.statistics().detail
    assert detail["gradient"] == 0.5
    assert detail["estimate"] == pytest.approx(before * 0.8 + (before * 0.5 + 4) * 0.2)


def test_tolerance_absorbs_moderate_rises() -> None:
    """A latency within 1.5x of the long average still has gradient 1."""
    state = PER_SAMPLE.build()
    for i in range(20):
        state.update(sample(1.0), float(i))
    state.update(sample(1.4), 100.0)
    assert state.statistics().detail["gradient"] == 1.0


def test_app_limited_window_holds() -> None:
    """Less than half the limit in flight: the limit holds."""
    state = PER_SAMPLE.build()
    for i in range(5):
        state.update(sample(1.0, in_flight=5), float(i))
    assert state.statistics().detail["estimate"] == 20.0


def test_long_average_is_pulled_down_after_overload() -> None:
    """A long average over twice the short RTT shrinks by 5 % per window."""
    state = PER_SAMPLE.build()
    for i in range(10):
        state.update(sample(10.0), float(i))
    state.update(sample(1.0), 20.0)
    long = state.statistics().detail["long_rtt"]
    factor = 2 / 601
    assert long == pytest.approx((10.0 * (1 - factor) + 1.0 * factor) * 0.95)


def test_drops_are_averaged_like_any_latency() -> None:
    """As published, a fast drop enters the average and pulls it down."""
    state = PER_SAMPLE.build()
    state.update(sample(0.001, "overload"), 1.0)
    detail = state.statistics().detail
    assert detail["short_rtt"] == 0.001
    assert detail["drops"] == 1


@pytest.mark.parametrize("outcome", ["cancelled", "client_error", "loading"])
def test_outcomes_that_say_nothing_change_nothing(outcome: OutcomeClass) -> None:
    """Ignored outcomes are not counted or averaged."""
    state = PER_SAMPLE.build()
    state.update(sample(1.0, outcome), 1.0)
    assert state.statistics().samples == 0
    assert state.statistics().detail["windows"] == 0


def test_statistics_and_repr() -> None:
    """Statistics name the policy and carry finite RTTs; repr shows the limit."""
    state = PER_SAMPLE.build()
    state.update(sample(0.5), 1.0)
    stats = state.statistics()
    assert (stats.policy, stats.limit, stats.samples) == ("Gradient2", 20, 1)
    assert "limit=20" in repr(state)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial_limit": 0}, "initial_limit"),
        ({"smoothing": 0.0}, "smoothing"),
        ({"queue_size": -1}, "queue_size"),
        ({"tolerance": 0.9}, "tolerance"),
        ({"long_window": 0}, "long_window"),
        ({"window": -1.0}, "window"),
        ({"window": math.nan}, "window"),
        ({"window_size": 0}, "window_size"),
        ({"min_rtt": -1e-3}, "min_rtt"),
        ({"min_limit": 30}, "initial_limit"),
    ],
)
def test_config_refuses_bad_values(kwargs: dict[str, Any], field: str) -> None:
    """Bad settings raise InvalidParameter naming the field."""
    with pytest.raises(InvalidParameter) as info:
        Gradient2(**kwargs)
    assert info.value.field == field


@settings(max_examples=60, deadline=None)
@given(
    st.lists(samples, max_size=40),
    st.floats(min_value=1e-3, max_value=1e6),
    st.floats(min_value=1.0, max_value=1e3),
    st.integers(min_value=1, max_value=2000),
)
def test_slower_window_never_yields_a_higher_limit(
    history: list[Sample], rtt: float, factor: float, in_flight: int
) -> None:
    """From any reached state, a slower closing window never gives a higher limit."""
    state = PER_SAMPLE.build()
    for i, s in enumerate(history):
        state.update(s, float(i))
    fast, slow = state, copy.deepcopy(state)
    now = float(len(history) + 1)
    assert slow.update(sample(rtt * factor, in_flight=in_flight), now) <= fast.update(
        sample(rtt, in_flight=in_flight), now
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(samples, max_size=40), st.floats(min_value=0.0, max_value=1.0))
def test_latency_at_or_under_the_long_average_never_lowers(
    history: list[Sample], share: float
) -> None:
    """A window no slower than the long-term average raises or keeps the limit."""
    state = PER_SAMPLE.build()
    for i, s in enumerate(history):
        state.update(s, float(i))
    long = state.statistics().detail["long_rtt"]
    before = state.limit
    rtt = max(long * share, PER_SAMPLE.min_rtt)
    if long > 0.0 and rtt <= long:
        assert state.update(sample(rtt), float(len(history) + 1)) >= before


class Gradient2Machine(RuleBasedStateMachine):
    """Any samples and clocks: bounds hold, nothing becomes NaN or infinite."""

    def __init__(self) -> None:
        super().__init__()
        self.config = Gradient2(initial_limit=8, min_limit=2, max_limit=64, window_size=2)
        self.state = self.config.build()

    @rule(s=samples, now=st.floats(allow_nan=True, allow_infinity=True))
    def feed(self, s: Sample, now: float) -> None:
        self.state.update(s, now)

    @rule(now=st.floats(allow_nan=True))
    def tick(self, now: float) -> None:
        assert self.state.tick(now) == self.state.limit

    @invariant()
    def bounded(self) -> None:
        stats = self.state.statistics()
        assert self.config.min_limit <= stats.limit <= self.config.max_limit
        assert all(math.isfinite(v) for v in stats.detail.values())


TestGradient2Machine = Gradient2Machine.TestCase
TestGradient2Machine.settings = settings(max_examples=30, stateful_step_count=40, deadline=None)
