"""AIMD: Netflix's published rule, and its invariants under any samples."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from lmgate._errors import InvalidParameter
from lmgate.policies._aimd import AIMD, AIMDState
from lmgate.policies._limit import LimitState
from lmgate.policies._sample import OUTCOME_CLASSES, OutcomeClass, Sample

DROPS = ("overload", "timeout", "error")

samples = st.builds(
    Sample,
    start=st.floats(allow_nan=True, allow_infinity=True),
    duration=st.one_of(
        st.just(0.0), st.floats(min_value=-1e300, max_value=1e300), st.floats(allow_nan=True)
    ),
    in_flight=st.integers(min_value=-10, max_value=100_000),
    outcome=st.sampled_from(OUTCOME_CLASSES),
    ttft=st.none() | st.floats(allow_nan=True),
    output_tokens=st.none() | st.integers(min_value=-5, max_value=10**9),
)


def sample(
    outcome: OutcomeClass = "success", *, in_flight: int = 10, duration: float = 1.0
) -> Sample:
    return Sample(start=0.0, duration=duration, in_flight=in_flight, outcome=outcome)


def test_drop_multiplies_by_backoff_ratio() -> None:
    """A drop at 10 gives 9, as the published rule truncates 10 * 0.9."""
    state = AIMD(initial_limit=10).build()
    assert state.update(sample("overload"), 1.0) == 9
    assert state.update(sample("timeout"), 2.0) == 8
    assert state.update(sample("error"), 3.0) == 7


def test_drop_always_lowers_by_at_least_one() -> None:
    """Small limits still fall: 5 * 0.9 truncates to 4, 2 to 1, then the floor holds."""
    state = AIMD(initial_limit=5, backoff_ratio=0.95).build()
    seen = [state.update(sample("overload"), float(t)) for t in range(6)]
    assert seen == [4, 3, 2, 1, 1, 1]


def test_success_adds_one_only_when_half_the_limit_is_used() -> None:
    """An idle client cannot inflate the limit; a busy one grows it by one per success."""
    state = AIMD(initial_limit=10).build()
    assert state.update(sample(in_flight=4), 1.0) == 10
    assert state.update(sample(in_flight=5), 2.0) == 11
    assert state.update(sample(in_flight=11), 3.0) == 12


def test_timeout_threshold_turns_slow_success_into_drop() -> None:
    """With a timeout set, a success slower than it counts as a drop."""
    state = AIMD(initial_limit=10, timeout=5.0).build()
    assert state.update(sample(duration=6.0), 1.0) == 9
    assert state.update(sample(duration=4.0), 2.0) == 10


def test_slow_success_is_not_a_drop_without_timeout() -> None:
    """By default a long generation is just a success, whatever it took."""
    state = AIMD(initial_limit=10).build()
    assert state.update(sample(duration=600.0), 1.0) == 11


@pytest.mark.parametrize("outcome", ["cancelled", "client_error", "loading"])
def test_outcomes_that_say_nothing_change_nothing(outcome: OutcomeClass) -> None:
    """Cancellations, client errors and model loads are not samples."""
    state = AIMD(initial_limit=10).build()
    state.update(sample(outcome), 1.0)
    assert state.limit == 10
    assert state.statistics().samples == 0


def test_bounds_and_statistics() -> None:
    """The limit stays in [min, max]; statistics and repr report it."""
    state = AIMD(initial_limit=3, min_limit=2, max_limit=4).build()
    for t in range(5):
        state.update(sample(in_flight=100), float(t))
    assert state.limit == 4
    for t in range(5):
        state.update(sample("error"), float(t))
    assert state.limit == 2
    stats = state.statistics()
    assert (stats.policy, stats.limit, stats.samples) == ("AIMD", 2, 10)
    assert stats.detail["drops"] == 5.0
    assert "limit=2" in repr(state)
    assert isinstance(state, LimitState)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial_limit": 0}, "initial_limit"),
        ({"min_limit": 0}, "min_limit"),
        ({"min_limit": 5, "max_limit": 4}, "max_limit"),
        ({"initial_limit": 300}, "initial_limit"),
        ({"backoff_ratio": 1.0}, "backoff_ratio"),
        ({"backoff_ratio": 0.4}, "backoff_ratio"),
        ({"backoff_ratio": math.nan}, "backoff_ratio"),
        ({"timeout": 0.0}, "timeout"),
        ({"timeout": math.inf}, "timeout"),
        ({"initial_limit": True}, "initial_limit"),
        ({"initial_limit": 2.5}, "initial_limit"),
    ],
)
def test_config_refuses_bad_values(kwargs: dict[str, Any], field: str) -> None:
    """Bad settings raise InvalidParameter naming the field."""
    with pytest.raises(InvalidParameter) as info:
        AIMD(**kwargs)
    assert info.value.field == field


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(samples, st.floats(allow_nan=True)), max_size=60))
def test_any_samples_keep_bounds_and_direction(events: list[tuple[Sample, float]]) -> None:
    """Whatever arrives: bounds hold, drops never raise, successes never lower."""
    config = AIMD(initial_limit=5, min_limit=2, max_limit=40, timeout=30.0)
    state = config.build()
    for s, now in events:
        before = state.limit
        after = state.update(s, now)
        assert after == state.limit
        assert config.min_limit <= after <= config.max_limit
        if s.outcome in DROPS:
            assert after <= before
        elif s.outcome == "success" and not s.duration > 30.0:
            assert after >= before
        else:
            assert after <= before


class AIMDMachine(RuleBasedStateMachine):
    """Samples and ticks in any order never break the limit's bounds."""

    def __init__(self) -> None:
        super().__init__()
        self.config = AIMD(initial_limit=7, min_limit=1, max_limit=50)
        self.state: AIMDState = self.config.build()
        self.now = 0.0

    @rule(s=samples, dt=st.floats(min_value=0.0, max_value=100.0))
    def feed(self, s: Sample, dt: float) -> None:
        self.now += dt
        self.state.update(s, self.now)

    @rule(dt=st.floats(min_value=0.0, max_value=100.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        assert self.state.tick(self.now) == self.state.limit

    @invariant()
    def bounded(self) -> None:
        stats = self.state.statistics()
        assert self.config.min_limit <= stats.limit <= self.config.max_limit
        assert all(math.isfinite(v) for v in stats.detail.values())


TestAIMDMachine = AIMDMachine.TestCase
TestAIMDMachine.settings = settings(max_examples=30, stateful_step_count=40, deadline=None)
