"""The resource guard: hysteresis, severity order, each signal, validation."""

from __future__ import annotations

import itertools
import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from lmgate._errors import InvalidParameter
from lmgate.policies.resources import (
    RECOMMENDATIONS,
    DiskReading,
    EndpointConnections,
    GpuReading,
    ResourceGuard,
    ResourceReadings,
    Thresholds,
)

TOTAL = 1_000_000


def mem(fraction: float) -> ResourceReadings:
    return ResourceReadings(memory_available=round(fraction * TOTAL), memory_total=TOTAL)


def severity(rec: str) -> int:
    return RECOMMENDATIONS.index(rec)


MEMORY = ResourceGuard().memory
BANDS = [pair for _, pair in MEMORY.levels()]
MIN_BAND = min(exit_ - enter for enter, exit_ in BANDS)


def test_recommendations_are_ordered_by_severity() -> None:
    """The four recommendations run from mildest to most severe."""
    assert RECOMMENDATIONS == ("proceed", "reduce_context", "shed_low_priority", "pause_admission")


@settings(max_examples=200, deadline=None)
@given(
    center=st.floats(0.0, 0.3),
    wobble=st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=60),
    hold=st.sampled_from([0.0, 5.0]),
)
def test_a_wobbling_reading_never_flaps(center: float, wobble: list[float], hold: float) -> None:
    """A reading that wobbles within less than a band's width never lowers the decision."""
    state = ResourceGuard(min_hold=hold).build()
    amplitude = MIN_BAND / 2 * 0.999
    seen = []
    for i, w in enumerate(wobble):
        seen.append(severity(state.update(mem(center + w * amplitude), float(i))))
    assert all(a <= b for a, b in itertools.pairwise(seen)), seen
    assert state.statistics().changes <= 3


@settings(max_examples=100, deadline=None)
@given(enter=st.floats(0.01, 0.5), width=st.floats(0.001, 0.4), n=st.integers(2, 40))
def test_alternating_around_enter_changes_once(enter: float, width: float, n: int) -> None:
    """Alternating just above and below ``enter`` enters the level once and stays."""
    guard = ResourceGuard(
        memory=Thresholds(shed_low_priority=(enter, enter + width)), min_hold=0.0
    ).build()
    eps = width / 3
    recs = [guard.update(mem(enter + (eps if i % 2 else -eps)), float(i)) for i in range(n)]
    assert recs == ["shed_low_priority"] * n
    assert guard.statistics().changes == 1


readings_st = st.fixed_dictionaries(
    {
        "memory": st.floats(0.0, 1.0),
        "disk": st.floats(0.0, 1.0),
        "fds": st.floats(0.0, 1.0),
        "gpu": st.floats(0.0, 1.0),
        "swap": st.floats(0.0, 64.0),
    }
)


def _build(r: dict[str, float]) -> ResourceReadings:
    return ResourceReadings(
        memory_available=round(r["memory"] * TOTAL),
        memory_total=TOTAL,
        swap_in=round(r["swap"] * (1 << 20)),
        swap_out=0,
        disks=(DiskReading(path="/d", free=round(r["disk"] * TOTAL), total=TOTAL),),
        open_fds=round(r["fds"] * 1000),
        max_fds=1000,
        gpus=(GpuReading(index=0, used=round((1 - r["gpu"]) * TOTAL), total=TOTAL),),
    )


def _fresh_decision(r: dict[str, float]) -> int:
    state = ResourceGuard().build()
    state.update(ResourceReadings(swap_in=0, swap_out=0), 0.0)
    return severity(state.update(_build(r), 1.0))


@settings(max_examples=200, deadline=None)
@given(a=readings_st, b=readings_st)
def test_worse_readings_never_get_a_milder_decision(
    a: dict[str, float], b: dict[str, float]
) -> None:
    """From the same state, readings worse on every signal never decide more mildly."""
    worse = {
        "memory": min(a["memory"], b["memory"]),
        "disk": min(a["disk"], b["disk"]),
        "gpu": min(a["gpu"], b["gpu"]),
        "fds": max(a["fds"], b["fds"]),
        "swap": max(a["swap"], b["swap"]),
    }
    assert _fresh_decision(worse) >= _fresh_decision(a)


class GuardMachine(RuleBasedStateMachine):
    """Memory readings, gaps and time, checked against per-level latches."""

    @initialize(hold=st.sampled_from([0.0, 1.0, 5.0]), stale=st.sampled_from([3.0, 60.0]))
    def setup(self, hold: float, stale: float) -> None:
        self.hold, self.stale = hold, stale
        self.state = ResourceGuard(min_hold=hold, stale_after=stale).build()
        self.now = 0.0
        self.latched = [False] * len(BANDS)
        self.rec = 0
        self.since = -math.inf
        self.last_seen = -math.inf
        self.changes = 0

    def _feed(self, readings: ResourceReadings, value: float | None) -> None:
        got = severity(self.state.update(readings, self.now))
        if value is not None:
            self.last_seen = self.now
            self.latched = [
                value <= enter or (on and value < exit_)
                for on, (enter, exit_) in zip(self.latched, BANDS, strict=True)
            ]
        elif self.now - self.last_seen >= self.stale:
            self.latched = [False] * len(BANDS)
        raw = max((i + 1 for i, on in enumerate(self.latched) if on), default=0)
        if raw > self.rec or (raw < self.rec and self.now - self.since >= self.hold):
            if raw > self.rec:  # a rise is justified by the reading in hand
                assert value is not None
                assert value <= BANDS[raw - 1][0]
            self.rec, self.since = raw, self.now
            self.changes += 1
        assert got == self.rec

    @rule(value=st.floats(0.0, 0.3), dt=st.floats(0.0, 4.0))
    def reading(self, value: float, dt: float) -> None:
        self.now += dt
        self._feed(mem(value), round(value * TOTAL) / TOTAL)

    @rule(dt=st.floats(0.0, 4.0))
    def unknown(self, dt: float) -> None:
        self.now += dt
        self._feed(ResourceReadings(), None)

    @invariant()
    def statistics_agree(self) -> None:
        stats = self.state.statistics()
        assert stats.recommendation == RECOMMENDATIONS[self.rec] == self.state.recommendation
        assert stats.changes == self.changes
        assert (stats.reason is None) == (self.rec == 0)


TestGuardMachine = GuardMachine.TestCase
TestGuardMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_min_hold_delays_only_the_way_down() -> None:
    """Raising is immediate; lowering waits ``min_hold`` after the last change."""
    state = ResourceGuard(min_hold=5.0).build()
    assert state.update(mem(0.04), 0.0) == "pause_admission"
    assert state.update(mem(0.5), 1.0) == "pause_admission"
    assert state.update(mem(0.5), 4.9) == "pause_admission"
    assert state.update(mem(0.5), 5.0) == "proceed"
    assert state.update(mem(0.12), 5.1) == "reduce_context"


def test_levels_are_held_between_enter_and_exit() -> None:
    """Inside the band the level sticks; past exit it falls to the next held level."""
    state = ResourceGuard(min_hold=0.0).build()
    assert state.update(mem(0.04), 0.0) == "pause_admission"
    assert state.update(mem(0.07), 1.0) == "pause_admission"
    assert state.update(mem(0.09), 2.0) == "shed_low_priority"
    assert state.update(mem(0.16), 3.0) == "reduce_context"
    assert state.update(mem(0.20), 4.0) == "proceed"


def test_swap_rate_comes_from_consecutive_counters() -> None:
    """Swap counters become a rate between two readings; the first gives none."""
    state = ResourceGuard(min_hold=0.0).build()
    assert state.update(ResourceReadings(swap_in=0, swap_out=0), 0.0) == "proceed"
    assert state.statistics().signals[1].value is None
    rec = state.update(ResourceReadings(swap_in=10 << 20, swap_out=10 << 20), 2.0)
    assert rec == "shed_low_priority"
    assert state.statistics().signals[1].value == 10 << 20
    assert state.reason == "swap"
    # counters that go backwards (a reset) give no rate, the level is held
    assert state.update(ResourceReadings(swap_in=0, swap_out=0), 3.0) == "shed_low_priority"
    assert state.update(ResourceReadings(swap_in=0, swap_out=0), 4.0) == "proceed"


def test_the_worst_directory_counts() -> None:
    """Disk pressure is the fullest configured directory's."""
    disks = (
        DiskReading(path="/big", free=900, total=1000),
        DiskReading(path="/journal", free=5, total=1000),
    )
    state = ResourceGuard().build()
    assert state.update(ResourceReadings(disks=disks), 0.0) == "pause_admission"
    assert state.reason == "disk"


def test_fds_gpu_sockets_and_connections() -> None:
    """Each signal maps to its configured level, and the worst signal wins."""
    guard = ResourceGuard(
        sockets=Thresholds(shed_low_priority=(100, 80)),
        connections=Thresholds(pause_admission=(50, 40)),
    )
    assert guard.build().update(ResourceReadings(open_fds=850, max_fds=1000), 0) == (
        "shed_low_priority"
    )
    gpu = (GpuReading(index=0, used=10, total=1000), GpuReading(index=1, used=990, total=1000))
    assert guard.build().update(ResourceReadings(gpus=gpu), 0) == "reduce_context"
    assert guard.build().update(ResourceReadings(sockets=120), 0) == "shed_low_priority"
    conns = (
        EndpointConnections(endpoint="a", count=3),
        EndpointConnections(endpoint="b", count=60),
    )
    both = ResourceReadings(sockets=120, connections=conns)
    state = guard.build()
    assert state.update(both, 0) == "pause_admission"
    assert state.reason == "connections"


def test_a_lost_signal_is_forgotten_only_when_stale() -> None:
    """An unknown reading keeps the level until ``stale_after`` has passed."""
    state = ResourceGuard(min_hold=0.0, stale_after=30.0).build()
    assert state.update(mem(0.04), 0.0) == "pause_admission"
    assert state.update(ResourceReadings(), 29.0) == "pause_admission"
    assert state.update(ResourceReadings(), 30.0) == "proceed"


def test_statistics_are_a_frozen_json_ready_snapshot() -> None:
    """statistics() carries the decision, its reason, every signal and the readings."""
    state = ResourceGuard().build()
    state.update(mem(0.12), 7.0)
    stats = state.statistics()
    assert (stats.recommendation, stats.reason, stats.since) == ("reduce_context", "memory", 7.0)
    assert [s.name for s in stats.signals] == [
        "memory", "swap", "disk", "fds", "sockets", "connections", "gpu"
    ]  # fmt: skip
    assert stats.readings == mem(0.12)
    decoded = msgspec.json.decode(msgspec.json.encode(stats))
    assert decoded["signals"][0] == {"name": "memory", "value": 0.12, "level": "reduce_context"}
    with pytest.raises(AttributeError):
        stats.changes = 0  # type: ignore[misc]
    assert "reduce_context" in repr(state)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"memory": Thresholds(reduce_context=(0.2, 0.1))}, "memory.reduce_context"),
        ({"fds": Thresholds(shed_low_priority=(0.7, 0.8))}, "fds.shed_low_priority"),
        (
            {"memory": Thresholds(reduce_context=(0.1, 0.2), pause_admission=(0.15, 0.3))},
            "memory.pause_admission",
        ),
        ({"disk": Thresholds(pause_admission=(1.5, 2.0))}, "disk.pause_admission"),
        ({"swap": Thresholds(pause_admission=(-1.0, -2.0))}, "swap.pause_admission"),
        ({"min_hold": -1.0}, "min_hold"),
        ({"stale_after": 0.0}, "stale_after"),
        ({"context_factor": 0.0}, "context_factor"),
        ({"context_factor": 1.5}, "context_factor"),
        ({"shed_priority_above": 0.5}, "shed_priority_above"),
        ({"shed_priority_above": True}, "shed_priority_above"),
        ({"memory": {"reduce_context": (0.1, 0.2)}}, "memory"),
    ],
)
def test_bad_configs_are_refused_with_the_field(kwargs: dict[str, object], field: str) -> None:
    """Thresholds on the wrong side or out of order fail at construction, naming the field."""
    with pytest.raises(InvalidParameter) as info:
        ResourceGuard(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


@pytest.mark.parametrize("pair", [(math.nan, 0.2), (0.1,), "ab", (0.1, math.inf), (True, 0.2)])
def test_bad_threshold_pairs_are_refused(pair: object) -> None:
    """A pair must be two finite numbers."""
    with pytest.raises(InvalidParameter):
        Thresholds(reduce_context=pair)  # type: ignore[arg-type]


def test_config_decodes_strictly() -> None:
    """Configs decode from JSON and refuse unknown fields."""
    guard = msgspec.json.decode(
        b'{"memory": {"pause_admission": [0.05, 0.1]}, "min_hold": 1}', type=ResourceGuard
    )
    assert guard.memory.levels() == ((3, (0.05, 0.1)),)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"memroy": {}}', type=ResourceGuard)


def test_update_refuses_bad_input() -> None:
    """update() needs a ResourceReadings and a finite time."""
    state = ResourceGuard().build()
    with pytest.raises(InvalidParameter):
        state.update({"memory_available": 1}, 0.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        state.update(ResourceReadings(), math.nan)
    assert state.statistics().updates == 0
