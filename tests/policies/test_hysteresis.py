"""Hysteresis: dead band, dwell, asymmetric steps and bounds around any policy."""

from __future__ import annotations

import math
from typing import Any, final

import msgspec
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from lmgate._errors import InvalidParameter
from lmgate.policies._aimd import AIMD
from lmgate.policies._hysteresis import Hysteresis, HysteresisState
from lmgate.policies._limit import Fixed, LimitStatistics
from lmgate.policies._sample import Sample

SUCCESS = Sample(start=0.0, duration=1.0, in_flight=1000, outcome="success")


@final
class PuppetState:
    """An inner state whose proposal the test sets directly."""

    def __init__(self, limit: int) -> None:
        self.proposal = limit

    @property
    def limit(self) -> int:
        return self.proposal

    def update(self, sample: Sample, now: float) -> int:
        return self.proposal

    def tick(self, now: float) -> int:
        return self.proposal

    def statistics(self) -> LimitStatistics:
        return LimitStatistics(policy="Puppet", limit=self.proposal, samples=0, detail={"x": 1.0})


@final
class Puppet(msgspec.Struct, frozen=True):
    """The config of :class:`PuppetState`."""

    limit: int = 20

    def build(self) -> PuppetState:
        return PuppetState(self.limit)


def wrapped(**kwargs: Any) -> tuple[HysteresisState, PuppetState]:
    state = Hysteresis(inner=Puppet(), **kwargs).build()
    inner = state.inner
    assert isinstance(inner, PuppetState)
    return state, inner


def propose(state: HysteresisState, inner: PuppetState, value: int, now: float) -> int:
    inner.proposal = value
    return state.tick(now)


def test_dead_band_ignores_small_moves() -> None:
    """A proposal within dead_band of the limit publishes nothing."""
    state, inner = wrapped(dead_band=0.2, dwell=0.0, down_dwell=0.0, max_step_up=100)
    assert propose(state, inner, 23, 10.0) == 20
    assert propose(state, inner, 17, 11.0) == 20
    assert propose(state, inner, 25, 12.0) == 25


def test_dwell_spaces_rises_and_down_dwell_spaces_falls() -> None:
    """Rises wait ``dwell`` after any change, falls only ``down_dwell``."""
    state, inner = wrapped(dead_band=0.0, dwell=5.0, down_dwell=1.0, max_step_up=100)
    assert propose(state, inner, 30, 0.0) == 30
    assert propose(state, inner, 40, 4.0) == 30
    assert propose(state, inner, 40, 5.0) == 40
    assert propose(state, inner, 20, 5.5) == 40
    assert propose(state, inner, 20, 6.0) == 20


def test_up_is_careful_and_down_is_fast() -> None:
    """Up by at most max_step_up; down by at most max_step_down_ratio, in one change."""
    state, inner = wrapped(dead_band=0.0, dwell=0.0, down_dwell=0.0, max_step_up=2)
    assert propose(state, inner, 100, 1.0) == 22
    assert propose(state, inner, 100, 2.0) == 24
    assert propose(state, inner, 1, 3.0) == 12
    assert propose(state, inner, 1, 4.0) == 6


def test_bounds_clamp_the_published_limit() -> None:
    """The published limit stays in [min_limit, max_limit] whatever the inner says."""
    state, inner = wrapped(
        dead_band=0.0, dwell=0.0, down_dwell=0.0, max_step_up=1000, min_limit=5, max_limit=30
    )
    assert propose(state, inner, 1000, 1.0) == 30
    assert propose(state, inner, 1, 2.0) == 15
    assert propose(state, inner, 1, 3.0) == 8
    assert propose(state, inner, 1, 4.0) == 5


def test_initial_limit_is_bounded() -> None:
    """A wrapped policy starting outside the bounds starts at the nearest bound."""
    assert Hysteresis(inner=Fixed(50), max_limit=10).build().limit == 10
    assert Hysteresis(inner=Fixed(2), min_limit=4).build().limit == 4


def test_wraps_a_real_policy_and_reports_it() -> None:
    """AIMD inside: every sample reaches it, the published limit lags, stats show both."""
    state = Hysteresis(inner=AIMD(initial_limit=10), dwell=10.0).build()
    for t in range(5):
        state.update(SUCCESS, float(t))
    stats = state.statistics()
    assert stats.policy == "Hysteresis(AIMD)"
    assert stats.samples == 5
    assert stats.detail["inner.limit"] == 15.0
    assert stats.limit == 11
    assert stats.detail["changes"] == 1.0
    assert "inner=15" in repr(state)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"inner": 3}, "inner"),
        ({"inner": Fixed(), "dead_band": -0.1}, "dead_band"),
        ({"inner": Fixed(), "dead_band": 1.5}, "dead_band"),
        ({"inner": Fixed(), "dwell": math.inf}, "dwell"),
        ({"inner": Fixed(), "down_dwell": -1.0}, "down_dwell"),
        ({"inner": Fixed(), "max_step_up": 0}, "max_step_up"),
        ({"inner": Fixed(), "max_step_down_ratio": 0.0}, "max_step_down_ratio"),
        ({"inner": Fixed(), "max_step_down_ratio": 1.1}, "max_step_down_ratio"),
        ({"inner": Fixed(), "min_limit": 0}, "min_limit"),
        ({"inner": Fixed(), "min_limit": 5, "max_limit": 4}, "max_limit"),
    ],
)
def test_config_refuses_bad_values(kwargs: dict[str, Any], field: str) -> None:
    """Bad settings raise InvalidParameter naming the field."""
    with pytest.raises(InvalidParameter) as info:
        Hysteresis(**kwargs)
    assert info.value.field == field


class HysteresisMachine(RuleBasedStateMachine):
    """Any proposals at any times: every published move obeys the band, dwell and steps."""

    def __init__(self) -> None:
        super().__init__()
        self.config = Hysteresis(
            inner=Puppet(),
            dead_band=0.1,
            dwell=3.0,
            down_dwell=1.0,
            max_step_up=2,
            max_step_down_ratio=0.3,
            min_limit=2,
            max_limit=60,
        )
        self.state = self.config.build()
        inner = self.state.inner
        assert isinstance(inner, PuppetState)
        self.inner = inner
        self.now = 0.0
        self.changed_at = -math.inf

    @rule(
        proposal=st.integers(min_value=-5, max_value=500),
        dt=st.floats(min_value=0.0, max_value=5.0),
        via_sample=st.booleans(),
    )
    def propose(self, proposal: int, dt: float, via_sample: bool) -> None:
        self.now += dt
        before = self.state.limit
        self.inner.proposal = proposal
        after = self.state.update(SUCCESS, self.now) if via_sample else self.state.tick(self.now)
        target = max(2, min(60, proposal))
        if after == before:
            return
        since = self.now - self.changed_at
        assert abs(target - before) >= max(1.0, 0.1 * before)
        if after > before:
            assert since >= 3.0
            assert before < after <= min(target, before + 2)
        else:
            assert since >= 1.0
            assert max(target, math.ceil(before * 0.7)) <= after < before
        self.changed_at = self.now

    @rule(
        back=st.floats(min_value=0.0, max_value=1e9),
        odd=st.sampled_from([None, math.nan, math.inf, -math.inf]),
    )
    def clock_oddities(self, back: float, odd: float | None) -> None:
        """A clock that runs back or is not finite moves nothing by itself."""
        self.inner.proposal = self.state.limit
        now = self.now - back if odd is None else odd
        assert self.state.tick(now) == self.state.limit

    @invariant()
    def bounded(self) -> None:
        assert 2 <= self.state.limit <= 60
        assert self.state.statistics().limit == self.state.limit


TestHysteresisMachine = HysteresisMachine.TestCase
TestHysteresisMachine.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)
