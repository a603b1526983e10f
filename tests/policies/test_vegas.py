"""Vegas: Netflix's published queue-estimate rule, and its invariants."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from lmgate._errors import InvalidParameter
from lmgate.policies._sample import OUTCOME_CLASSES, OutcomeClass, Sample
from lmgate.policies._vegas import Vegas, VegasState

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


def sample(rtt: float, outcome: OutcomeClass = "success", *, in_flight: int = 100) -> Sample:
    return Sample(start=0.0, duration=rtt, in_flight=in_flight, outcome=outcome)


def fed(config: Vegas, *rtts: float) -> VegasState:
    state = config.build()
    for rtt in rtts:
        state.update(sample(rtt), 0.0)
    return state


def test_published_rules_step_by_step() -> None:
    """No queue grows by beta; a long queue or a drop shrinks by log10; a mid queue holds."""
    state = Vegas(initial_limit=20).build()
    assert state.update(sample(1.0), 0.0) == 20  # the first sample only sets rtt_noload
    assert state.update(sample(1.0), 0.0) == 26  # queue 0 <= threshold 1: + beta (6)
    assert state.update(sample(2.0), 0.0) == 25  # queue ceil(26 / 2) = 13 > beta: - 1
    assert state.update(sample(1.0, "timeout"), 0.0) == 24  # a drop: - 1
    assert state.update(sample(1.2), 0.0) == 24  # queue 4 in [alpha 3, beta 6]: hold
    assert state.update(sample(1.07), 0.0) == 25  # queue 2 < alpha: + 1
    assert state.update(sample(3.0, in_flight=5), 0.0) == 25  # mostly idle: hold


def test_alpha_and_beta_scale_with_log10_of_the_limit() -> None:
    """At 200 the band is 6..12 and the growth step 12, not 3..6 and 6."""
    state = fed(Vegas(initial_limit=200), 1.0)
    assert state.update(sample(1.0), 0.0) == 212


def test_fixed_alpha_and_beta() -> None:
    """Configured alpha/beta replace the log10 band."""
    state = fed(Vegas(initial_limit=20, alpha=1, beta=2), 1.0)
    assert state.update(sample(1.2), 0.0) == 19  # queue 4 > beta 2


def test_smoothing_moves_part_of_the_way() -> None:
    """With smoothing 0.5 a +6 step moves the estimate by 3."""
    state = fed(Vegas(initial_limit=20, smoothing=0.5), 1.0)
    state.update(sample(1.0), 0.0)
    assert state.statistics().detail["estimate"] == pytest.approx(23.0)


def test_probe_resets_rtt_noload_upwards() -> None:
    """Within probe_multiplier * limit samples the no-load latency is re-measured."""
    state = fed(Vegas(initial_limit=10, probe_multiplier=5), 1.0)
    for _ in range(60):
        state.update(sample(2.0, in_flight=1), 0.0)
    detail = state.statistics().detail
    assert detail["probes"] >= 1
    assert detail["rtt_noload"] == 2.0


def test_fast_drop_poses_as_an_idle_server() -> None:
    """The published rule lets a fast failure lower rtt_noload instead of cutting."""
    state = fed(Vegas(initial_limit=20), 1.0)
    assert state.update(sample(0.001, "overload"), 0.0) == 20
    assert state.statistics().detail["rtt_noload"] == 0.001


@pytest.mark.parametrize("outcome", ["cancelled", "client_error", "loading"])
def test_outcomes_that_say_nothing_change_nothing(outcome: OutcomeClass) -> None:
    """Ignored outcomes neither count nor move the limit or the no-load latency."""
    state = fed(Vegas(initial_limit=20), 1.0)
    state.update(sample(0.01, outcome), 0.0)
    assert state.statistics().detail["rtt_noload"] == 1.0
    assert state.statistics().samples == 1


def test_same_seed_same_history() -> None:
    """Two states from one config replay identically (the jitter is seeded)."""
    rtts = [1.0 + (i % 7) / 10 for i in range(500)]
    a, b = fed(Vegas(seed=3), *rtts), fed(Vegas(seed=3), *rtts)
    assert a.statistics() == b.statistics()
    assert "rtt_noload" in repr(a)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial_limit": 0}, "initial_limit"),
        ({"max_limit": 0}, "max_limit"),
        ({"smoothing": 0.0}, "smoothing"),
        ({"smoothing": 1.5}, "smoothing"),
        ({"probe_multiplier": 0}, "probe_multiplier"),
        ({"alpha": -1}, "alpha"),
        ({"alpha": 5, "beta": 4}, "beta"),
        ({"seed": -1}, "seed"),
        ({"smoothing": math.inf}, "smoothing"),
    ],
)
def test_config_refuses_bad_values(kwargs: dict[str, Any], field: str) -> None:
    """Bad settings raise InvalidParameter naming the field."""
    with pytest.raises(InvalidParameter) as info:
        Vegas(**kwargs)
    assert info.value.field == field


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    st.lists(samples, max_size=40),
    st.floats(min_value=1e-6, max_value=1e6),
    st.floats(min_value=1.0, max_value=1e3),
    st.integers(min_value=1, max_value=2000),
)
def test_slower_sample_never_yields_a_higher_limit(
    history: list[Sample], rtt: float, factor: float, in_flight: int
) -> None:
    """From any reached state, of two samples at or above rtt_noload the slower never wins."""
    state = Vegas(initial_limit=10, max_limit=500).build()
    for s in history:
        state.update(s, 0.0)
    assume(rtt >= state.statistics().detail["rtt_noload"] > 0.0)
    fast, slow = state, copy.deepcopy(state)
    assert slow.update(sample(rtt * factor, in_flight=in_flight), 0.0) <= fast.update(
        sample(rtt, in_flight=in_flight), 0.0
    )


class VegasMachine(RuleBasedStateMachine):
    """Any samples in any order: bounds hold, drops never raise the limit."""

    def __init__(self) -> None:
        super().__init__()
        self.config = Vegas(initial_limit=8, min_limit=2, max_limit=64, smoothing=0.7)
        self.state = self.config.build()

    @rule(s=samples, now=st.floats(allow_nan=True))
    def feed(self, s: Sample, now: float) -> None:
        before = self.state.limit
        after = self.state.update(s, now)
        if s.outcome in ("overload", "timeout", "error"):
            assert after <= before

    @rule(now=st.floats(allow_nan=True))
    def tick(self, now: float) -> None:
        assert self.state.tick(now) == self.state.limit

    @invariant()
    def bounded(self) -> None:
        stats = self.state.statistics()
        assert self.config.min_limit <= stats.limit <= self.config.max_limit
        assert all(math.isfinite(v) for v in stats.detail.values())


TestVegasMachine = VegasMachine.TestCase
TestVegasMachine.settings = settings(max_examples=30, stateful_step_count=40, deadline=None)
