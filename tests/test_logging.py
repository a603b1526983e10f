"""Rate-limited structured logging: the token-bucket core, the logger helper, the filter."""

from __future__ import annotations

import logging
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgate._errors import InvalidParameter
from lmgate.observability._logging import (
    LogRateLimiter,
    RateLimitedLogger,
    RateLimitFilter,
    fields_of,
    get_logger,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_suppress_then_summary() -> None:
    """After the burst a kind is held back, and the next one through carries the count."""
    limiter = LogRateLimiter(rate=0.5, burst=2)
    got = [limiter.allow("down", 0.0) for _ in range(5)]
    assert [(d.allowed, d.suppressed) for d in got] == [
        (True, 0),
        (True, 0),
        (False, 0),
        (False, 0),
        (False, 0),
    ]
    assert limiter.allow("other", 0.0).allowed  # kinds do not share a bucket
    assert not limiter.allow("down", 1.9).allowed
    decision = limiter.allow("down", 2.0)
    assert (decision.allowed, decision.suppressed) == (True, 4)
    assert limiter.allow("down", 4.0).suppressed == 0
    stats = limiter.statistics()
    assert (stats.allowed, stats.suppressed, stats.keys) == (5, 4, 2)


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.sampled_from("abcdef"), st.floats(0.0, 3.0)), min_size=1, max_size=200
    ),
    rate=st.sampled_from([0.1, 1.0, 5.0]),
    burst=st.integers(1, 4),
    max_keys=st.integers(1, 8),
)
def test_no_kind_exceeds_its_budget_and_every_message_is_accounted(
    events: list[tuple[str, float]], rate: float, burst: int, max_keys: int
) -> None:
    """Per kind, allowed <= burst + rate * elapsed; allowed + summarised + lost = calls."""
    limiter = LogRateLimiter(rate=rate, burst=burst, max_keys=max_keys)
    now = 0.0
    first: dict[str, float] = {}
    allowed_times: dict[str, list[float]] = defaultdict(list)
    summarised = 0
    for key, dt in events:
        now += dt
        d = limiter.allow(key, now)
        if d.allowed:
            allowed_times[key].append(now)
            summarised += d.suppressed
        first.setdefault(key, now)
    stats = limiter.statistics()
    assert stats.keys <= max_keys
    if max_keys >= 6:  # no eviction: the budget holds over the whole run
        for key, times in allowed_times.items():
            assert len(times) <= burst + rate * (times[-1] - first[key]) + 1e-9
    pending = stats.suppressed - summarised - stats.lost_summaries
    assert pending >= 0
    assert stats.allowed + stats.suppressed == len(events)
    assert stats.allowed == sum(len(t) for t in allowed_times.values())


def test_the_number_of_kinds_is_bounded() -> None:
    """Ten thousand distinct kinds keep at most max_keys buckets."""
    limiter = LogRateLimiter(max_keys=16)
    for i in range(10_000):
        limiter.allow(f"kind-{i}", 0.0)
    stats = limiter.statistics()
    assert stats.keys == 16
    assert stats.evicted == 10_000 - 16


@pytest.mark.parametrize(
    "kwargs", [{"rate": 0.0}, {"rate": float("nan")}, {"burst": 0}, {"max_keys": True}]
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    """Rates must be positive and finite, burst and max_keys positive ints."""
    with pytest.raises(InvalidParameter):
        LogRateLimiter(**kwargs)  # type: ignore[arg-type]


def test_logger_helper_limits_and_summarises(caplog: pytest.LogCaptureFixture) -> None:
    """A failing endpoint logs its burst, then one line saying how many were held back."""
    clock = Clock()
    log = RateLimitedLogger("endpoint", limiter=LogRateLimiter(rate=0.2, burst=3), clock=clock)
    with caplog.at_level(logging.WARNING, logger="lmgate.endpoint"):
        emitted = [
            log.warning("failed", "endpoint %s failed", "gpu", endpoint="gpu") for _ in range(50)
        ]
        clock.now = 5.0
        assert log.warning("failed", "endpoint %s failed", "gpu", endpoint="gpu")
    assert emitted == [True] * 3 + [False] * 47
    records = [r for r in caplog.records if r.name == "lmgate.endpoint"]
    assert [r.getMessage() for r in records] == ["endpoint gpu failed"] * 3 + [
        "endpoint gpu failed (47 similar suppressed)"
    ]
    last = records[-1]
    assert (last.kind, last.suppressed) == ("failed", 47)  # type: ignore[attr-defined]
    assert fields_of(last) == {"endpoint": "gpu"}
    assert last.funcName == "test_logger_helper_limits_and_summarises"
    assert log.statistics().suppressed == 47


def test_a_disabled_level_costs_no_token(caplog: pytest.LogCaptureFixture) -> None:
    """Messages below the logger's level are not counted as suppressed."""
    log = RateLimitedLogger("quiet", limiter=LogRateLimiter(burst=1), clock=Clock())
    with caplog.at_level(logging.WARNING, logger="lmgate.quiet"):
        assert not log.debug("k", "noise")
        assert not log.info("k", "noise")
        assert log.error("k", "real")
    assert log.statistics().suppressed == 0
    assert [r.getMessage() for r in caplog.records if r.name == "lmgate.quiet"] == ["real"]


def test_filter_on_a_handler_limits_child_loggers() -> None:
    """RateLimitFilter keys on logger name and template, and appends the summary."""
    clock = Clock()
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep()
    handler.addFilter(RateLimitFilter(rate=1.0, burst=1, clock=clock))
    logger = logging.getLogger("lmgate.test_filter.child")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for i in range(4):
            logger.warning("retrying %d", i)
        logger.warning("another template")
        clock.now = 1.0
        logger.warning("retrying %d", 9)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert [r.getMessage() for r in seen] == [
        "retrying 0",
        "another template",
        "retrying 9 (3 similar suppressed)",
    ]


def test_logger_names_live_under_lmgate() -> None:
    """get_logger prefixes names so users can configure 'lmgate' once."""
    assert get_logger("resources").name == "lmgate.resources"
    assert get_logger("lmgate.events").name == "lmgate.events"
    assert "lmgate.x" in repr(RateLimitedLogger("x"))
