"""Cold loads and model identity changes."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmgate._errors import InvalidParameter
from lmgate.policies._lifecycle import Lifecycle, LifecycleState

CFG = Lifecycle(cold_factor=3.0, cold_min=1.0, idle_unload=300.0, alpha=0.5)


def _warm(s: LifecycleState, model: str = "m", at: float = 0.0) -> float:
    """Serve the model once cold and a few times warm; return the time reached."""
    s.finished(model, at, at + 30.0, "success", ttft=29.0)
    t = at + 30.0
    for _ in range(3):
        v = s.finished(model, t, t + 1.0, "success", ttft=0.2)
        assert not v.cold
        t += 1.0
    return t


def test_first_slow_request_is_cold() -> None:
    """A first request with a long TTFT feeds neither baseline nor limit."""
    s = CFG.build()
    v = s.finished("m", 0.0, 30.0, "success", ttft=29.0)
    assert (v.cold, v.feed_limit, v.breaker_outcome) == (True, False, "success")
    assert s.baseline("m") is None
    assert s.statistics().cold_requests == 1


def test_first_fast_request_is_warm() -> None:
    """A first request that was quick means the model was already loaded."""
    s = CFG.build()
    v = s.finished("m", 0.0, 0.5, "success", ttft=0.2)
    assert (v.cold, v.feed_limit) == (False, True)
    assert s.baseline("m") == 0.2
    assert not s.is_fresh("m")


def test_warm_slowdown_is_not_cold() -> None:
    """Once warm, a slow request counts: a real slowdown must reach the limit."""
    s = CFG.build()
    t = _warm(s)
    v = s.finished("m", t, t + 40.0, "success", ttft=39.0)
    assert (v.cold, v.feed_limit) == (False, True)


def test_first_wave_is_cold_together() -> None:
    """Requests that started while the model loaded are all cold."""
    s = CFG.build()
    assert s.finished("m", 0.0, 20.0, "success", ttft=19.0).cold
    assert s.finished("m", 0.5, 20.5, "success", ttft=19.5).cold
    assert s.finished("m", 1.0, 21.0, "success", ttft=19.9).cold
    assert not s.finished("m", 20.2, 21.0, "success", ttft=0.3).cold
    assert not s.finished("m", 21.0, 50.0, "success", ttft=28.0).cold


def test_request_started_after_warm_is_not_cold() -> None:
    """A request that started once the model was known warm is never cold."""
    s = CFG.build()
    assert s.finished("m", 0.0, 20.0, "success", ttft=19.0).cold
    assert not s.finished("m", 20.5, 40.0, "success", ttft=19.0).cold


def test_cold_timeout_is_loading_for_the_breaker() -> None:
    """A first request that times out while the model loads holds, not fails."""
    s = CFG.build()
    v = s.finished("m", 0.0, 30.0, "timeout")
    assert (v.cold, v.breaker_outcome, v.feed_limit) == (True, "loading", False)


@pytest.mark.parametrize("outcome", ["error", "overload", "loading", "client_error", "cancelled"])
def test_other_outcomes_are_never_cold(outcome: Any) -> None:
    """Only slow successes and timeouts can be cold; other outcomes pass unchanged."""
    v = CFG.build().finished("m", 0.0, 30.0, outcome)
    assert (v.cold, v.breaker_outcome) == (False, outcome)


def test_idle_unload_makes_it_cold_again() -> None:
    """After idle_unload seconds without requests, a slow request is a reload."""
    s = CFG.build()
    t = _warm(s)
    assert not s.finished("m", t + 100.0, t + 106.0, "success", ttft=5.0).cold
    t += 106.0
    assert s.finished("m", t + 300.0, t + 330.0, "success", ttft=29.0).cold


def test_restart_loading_and_loaded_hints() -> None:
    """A restart or a loading answer makes models fresh; a resident report makes them warm."""
    s = CFG.build()
    t = _warm(s)
    s.restarted()
    assert s.finished("m", t, t + 30.0, "success", ttft=29.0).cold
    t = _warm(s, at=t + 31.0)
    s.loading("m")
    assert s.is_fresh("m")
    s.loaded("m")
    assert not s.finished("m", t, t + 30.0, "success", ttft=29.0).cold


def test_identity_change_is_reported_once_and_resets_baseline() -> None:
    """A new digest under the same name is one change; the baseline starts again."""
    s = CFG.build()
    assert s.identity("m", "sha256:aaa", 0.0) is None
    t = _warm(s)
    assert s.baseline("m") is not None
    assert s.identity("m", "sha256:aaa", t) is None
    change = s.identity("m", "sha256:bbb", t)
    assert change is not None
    assert (change.model, change.old, change.new, change.at) == ("m", "sha256:aaa", "sha256:bbb", t)
    assert s.identity("m", "sha256:bbb", t + 1) is None
    assert s.identity("m", None, t + 1) is None
    assert s.baseline("m") is None
    assert s.is_fresh("m")
    assert s.statistics().changes == 1


def test_baseline_follows_ttft_or_duration() -> None:
    """Without a reported TTFT, the duration is the baseline."""
    s = CFG.build()
    s.finished("m", 0.0, 0.4, "success")
    assert s.baseline("m") == pytest.approx(0.4)
    s.finished("m", 1.0, 1.2, "success")
    assert s.baseline("m") == pytest.approx(0.3)


def test_models_are_bounded() -> None:
    """Memory stays bounded however many models pass."""
    s = Lifecycle(max_models=3).build()
    for i in range(10):
        s.finished(f"m{i}", float(i), float(i) + 0.1, "success")
    assert s.statistics().models == 3
    assert s.baseline("m0") is None
    assert s.baseline("m9") is not None


def test_bad_inputs() -> None:
    """Bad settings, times and identities are refused; bad TTFTs are ignored."""
    with pytest.raises(InvalidParameter):
        Lifecycle(cold_factor=0.5)
    s = CFG.build()
    with pytest.raises(InvalidParameter):
        s.finished("m", 0.0, math.nan, "success")
    with pytest.raises(InvalidParameter):
        s.identity("m", "a\x00b", 0.0)
    with pytest.raises(InvalidParameter):
        s.finished("", 0.0, 1.0, "success")
    v = s.finished("m", 0.0, 0.5, "success", ttft=math.inf)
    assert not v.cold
    assert s.baseline("m") == 0.5


@given(
    events=st.lists(
        st.tuples(
            st.floats(0.0, 400.0),
            st.floats(0.0, 60.0),
            st.sampled_from(["success", "timeout", "error"]),
            st.one_of(st.none(), st.floats(0.0, 60.0)),
        ),
        max_size=40,
    )
)
def test_verdicts_are_consistent(events: list[tuple[float, float, Any, float | None]]) -> None:
    """Cold verdicts never feed the limit, and baselines stay finite and non-negative."""
    s = CFG.build()
    t = 0.0
    for gap, duration, outcome, ttft in events:
        t += gap
        v = s.finished("m", t, t + duration, outcome, ttft=ttft)
        assert v.feed_limit is not v.cold
        if v.cold:
            assert v.breaker_outcome in ("success", "loading")
        b = s.baseline("m")
        assert b is None or (math.isfinite(b) and b >= 0)
