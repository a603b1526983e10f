"""Queue control, sans-IO: service windows, predictions, standing queues."""

from __future__ import annotations

import math

import pytest

from lmgate import InvalidParameter
from lmgate.policies import QueueControl
from lmgate.policies._queueing import ServiceWindow


def test_service_window_mean_and_quantiles_over_the_last_values() -> None:
    w = ServiceWindow(size=8)
    assert w.mean() is None
    assert w.quantile(0.5) is None
    for v in [1.0, 2.0, 3.0, 4.0, 100.0, math.nan, -1.0]:
        w.observe(v)
    assert len(w) == 5  # NaN and negatives are not durations
    assert w.quantile(0.5) == 3.0
    assert w.mean() == pytest.approx(22.0)
    for _ in range(8):
        w.observe(2.0)
    assert w.mean() == pytest.approx(2.0)
    assert w.quantile(0.9) == 2.0


def test_prediction_uses_the_median_not_the_fastest() -> None:
    state = QueueControl().build()
    assert state.predict(10, 0, None, None) == 0.0  # no observations: refuse nothing
    # 4 ahead, 2 slots, mean 10 s: 4.5 / 2 * 10 of waiting, then a median service of 8 s.
    assert state.predict(4, 2, 10.0, 8.0) == pytest.approx(22.5 + 8.0)


def test_a_queue_stands_only_after_a_whole_interval_above_target() -> None:
    state = QueueControl(target=1.0, interval=5.0).build()
    state.observe_head(2.0, now=0.0, median=None)
    assert not state.standing
    state.observe_head(3.0, now=4.0, median=None)
    assert not state.standing  # a burst draining: not yet
    state.observe_head(2.5, now=5.0, median=None)
    assert state.standing
    assert state.order() == "lifo"
    state.observe_head(0.5, now=6.0, median=None)  # it drained below target
    assert not state.standing
    assert state.order() == "fifo"


def test_defaults_scale_with_the_observed_service_time() -> None:
    state = QueueControl().build()
    assert state.target(None) == math.inf  # nothing seen: never standing
    assert state.target(4.0) == 4.0
    assert state.interval(4.0) == 8.0


def test_no_lifo_when_turned_off() -> None:
    state = QueueControl(target=1.0, interval=1.0, lifo=False).build()
    state.observe_head(2.0, 0.0, None)
    state.observe_head(2.0, 1.0, None)
    assert state.standing
    assert state.order() == "fifo"


def test_hopeless_only_with_others_waiting() -> None:
    state = QueueControl().build()
    assert state.hopeless(now=10.0, deadline=12.0, service=5.0, behind=3)
    assert not state.hopeless(now=10.0, deadline=12.0, service=5.0, behind=0)
    assert not state.hopeless(now=10.0, deadline=20.0, service=5.0, behind=3)


def test_prediction_error_figures() -> None:
    state = QueueControl().build()
    for predicted, actual in [(1.0, 1.5), (2.0, 2.0), (3.0, 1.0), (math.nan, 1.0)]:
        state.record_wait(predicted, actual)
    stats = state.statistics()
    assert stats.predictions == 3
    assert stats.wait_error_p50 == 0.5
    assert stats.wait_error_p90 == 2.0


@pytest.mark.parametrize(
    "kw",
    [{"quantile": 1.5}, {"target": 0}, {"interval": -1}, {"lifo": "yes"}, {"window": 2}],
)
def test_bad_configs(kw: dict[str, object]) -> None:
    with pytest.raises(InvalidParameter):
        QueueControl(**kw)  # type: ignore[arg-type]
