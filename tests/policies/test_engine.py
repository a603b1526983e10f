"""EngineWindow: what one window of server readings says."""

from __future__ import annotations

from lmgate.policies import EngineReading
from lmgate.policies._engine import EngineWindow


def _r(at: float, **kw: float) -> EngineReading:
    return EngineReading(at=at, **kw)  # type: ignore[arg-type]


def test_a_queue_in_every_reading_stands_and_its_least_is_what_stood() -> None:
    w = EngineWindow()
    for i, waiting in enumerate([3, 5, 2, 4]):
        w.add(_r(i, running=8, waiting=waiting))
    facts = w.facts()
    assert facts.standing_queue == 2
    assert not facts.room
    assert not facts.cache_full


def test_a_request_caught_between_two_steps_is_no_queue() -> None:
    w = EngineWindow()
    for i, waiting in enumerate([0, 1, 0, 0]):
        w.add(_r(i, running=8, waiting=waiting, kv_usage=0.95))
    facts = w.facts()
    assert facts.standing_queue == 0
    assert facts.room
    assert facts.cache_full


def test_one_reading_is_no_window() -> None:
    w = EngineWindow()
    w.add(_r(0, running=8, waiting=4))
    assert w.facts().standing_queue == 0
    assert not w.facts().room


def test_preemptions_count_from_the_counter_and_survive_a_new_window() -> None:
    w = EngineWindow()
    w.add(_r(0, preemptions=10), in_window=False)  # before the window: moves the counter only
    assert w.readings == 0
    w.add(_r(1, preemptions=13))
    assert w.preempted == 3
    assert w.facts().preempted
    w.clear()
    w.add(_r(2, preemptions=13))
    assert w.preempted == 0
    w.add(_r(3, preemptions=2))  # the server restarted: no news
    assert w.preempted == 0
    w.add(_r(4, preemptions=4))
    assert w.preempted == 2


def test_a_reading_without_figures_is_ignored_and_a_missing_queue_is_no_queue() -> None:
    w = EngineWindow()
    w.add(EngineReading(at=0.0))
    assert w.readings == 0
    w.add(_r(1, running=3, waiting=2))
    w.add(_r(2, running=3))  # this server does not say how many wait
    assert w.facts().standing_queue == 0
    assert "readings=2" in repr(w)
