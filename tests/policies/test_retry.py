"""Retry decisions inside the deadline, and fallback planning."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgate._errors import InvalidParameter
from lmgate.policies._classify import Classification
from lmgate.policies._retry import (
    Retry,
    check_fallbacks,
    choose_larger_window,
    next_target,
    plan_fallbacks,
)
from lmgate.policies._sample import OUTCOME_CLASSES

REFUSED = Classification(outcome="error", before_send=True, reason="connect_refused")
READ_TIMEOUT = Classification(outcome="timeout", reason="read_timeout")


def _c(outcome: Any, retry_after: float | None = None, before_send: bool = False) -> Classification:
    return Classification(outcome=outcome, retry_after=retry_after, before_send=before_send)


classifications = st.builds(
    _c,
    st.sampled_from(OUTCOME_CLASSES),
    st.one_of(st.none(), st.floats(0.0, 200.0), st.just(math.inf), st.just(math.nan)),
    st.booleans(),
)


@given(
    attempt=st.integers(1, 10),
    c=classifications,
    now=st.floats(-1e6, 1e6),
    remaining=st.one_of(st.floats(-5.0, 100.0), st.just(math.inf)),
    idempotent=st.booleans(),
    draw=st.floats(0.0, 1.0),
    same=st.booleans(),
)
@settings(max_examples=400)
def test_decisions_respect_deadline_idempotency_and_attempts(
    attempt: int,
    c: Classification,
    now: float,
    remaining: float,
    idempotent: bool,
    draw: float,
    same: bool,
) -> None:
    """A retry never waits past the deadline, repeats only safe calls, and stops at attempts."""
    policy = Retry(attempts=4)
    deadline = now + remaining
    d = policy.next_attempt(attempt, c, now, deadline, idempotent, draw, same_endpoint=same)
    if not d.retry:
        assert d.at is None
        return
    assert math.isfinite(d.delay)
    assert d.delay >= 0
    assert d.at == now + d.delay
    assert d.at + policy.min_remaining <= deadline
    assert idempotent or c.before_send
    assert c.outcome in policy.retry_on
    assert attempt < policy.attempts
    if not same:
        assert d.delay == 0.0
    elif c.retry_after is not None and math.isfinite(c.retry_after):
        assert d.delay == c.retry_after
    else:
        assert d.delay <= policy.max_backoff


def test_non_idempotent_retried_only_before_send() -> None:
    """A refused connect is retried for any call; a read timeout only for idempotent ones."""
    policy = Retry()
    assert policy.next_attempt(1, REFUSED, 0.0, 10.0, False, 0.5).retry
    d = policy.next_attempt(1, READ_TIMEOUT, 0.0, 10.0, False, 0.5)
    assert (d.retry, d.reason) == (False, "not_idempotent")
    assert policy.next_attempt(1, READ_TIMEOUT, 0.0, 10.0, True, 0.5).retry


def test_deadline_floor() -> None:
    """A retry that would leave less than min_remaining is refused."""
    policy = Retry(base=1.0, jitter=0.0, min_remaining=0.5)
    assert policy.next_attempt(1, REFUSED, 0.0, 1.5, True, 0.0).retry
    d = policy.next_attempt(1, REFUSED, 0.0, 1.49, True, 0.0)
    assert (d.retry, d.reason) == (False, "deadline")
    assert policy.next_attempt(1, REFUSED, 0.0, math.inf, True, 0.0).retry


def test_retry_after_exact_and_bounded() -> None:
    """Retry-After replaces the backoff exactly; one too long is not waited for."""
    policy = Retry(max_retry_after=60.0)
    d = policy.next_attempt(1, _c("overload", 7.25), 100.0, 200.0, True, 0.9)
    assert (d.retry, d.delay, d.at, d.reason) == (True, 7.25, 107.25, "retry_after")
    d = policy.next_attempt(1, _c("overload", 61.0), 0.0, math.inf, True, 0.9)
    assert (d.retry, d.reason) == (False, "retry_after_too_long")
    d = policy.next_attempt(1, _c("overload", 61.0), 0.0, 5.0, True, 0.9, same_endpoint=False)
    assert (d.retry, d.delay, d.reason) == (True, 0.0, "elsewhere")


def test_attempts_and_outcomes() -> None:
    """Attempts count the first call; client errors and cancellations are not retried."""
    policy = Retry(attempts=2)
    assert policy.next_attempt(1, REFUSED, 0.0, 10.0, True, 0.0).retry
    assert policy.next_attempt(2, REFUSED, 0.0, 10.0, True, 0.0).reason == "attempts_exhausted"
    for o in ("client_error", "cancelled", "loading", "success"):
        assert not policy.next_attempt(1, _c(o, before_send=True), 0.0, 10.0, True, 0.0).retry
    loading = Retry(retry_on=frozenset({"loading", "error"}))
    assert loading.next_attempt(1, _c("loading", 1.0), 0.0, 10.0, True, 0.0).retry


@given(attempt=st.integers(1, 5000), draw=st.floats(0.0, 1.0))
def test_backoff_bounded_and_monotone(attempt: int, draw: float) -> None:
    """Backoff grows with attempts, never beyond max_backoff, even for huge counts."""
    policy = Retry(base=0.1, max_backoff=5.0, multiplier=3.0, jitter=0.5)
    a, b = policy.backoff(attempt, draw), policy.backoff(attempt + 1, draw)
    assert 0.0 <= a <= b <= 5.0
    assert a >= policy.backoff(attempt, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"attempts": 0}, "attempts"),
        ({"base": -1.0}, "base"),
        ({"max_backoff": 0.1, "base": 1.0}, "max_backoff"),
        ({"jitter": 1.5}, "jitter"),
        ({"retry_on": "error"}, "retry_on"),
        ({"retry_on": frozenset({"success"})}, "retry_on"),
        ({"retry_on": frozenset({"cancelled"})}, "retry_on"),
        ({"retry_on": frozenset({"bogus"})}, "retry_on"),
        ({"min_remaining": math.nan}, "min_remaining"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], field: str) -> None:
    """Bad settings are refused with the field named."""
    with pytest.raises(InvalidParameter) as info:
        Retry(**kwargs)
    assert info.value.field == field


def test_retry_on_accepts_any_collection() -> None:
    """retry_on given as a list or set is stored as a frozenset."""
    assert Retry(retry_on=["error"]).retry_on == frozenset({"error"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((0, REFUSED, 0.0, 1.0, True, 0.5), "attempt"),
        ((1, REFUSED, math.nan, 1.0, True, 0.5), "now"),
        ((1, REFUSED, 0.0, math.nan, True, 0.5), "deadline"),
        ((1, REFUSED, 0.0, 1.0, True, 1.5), "draw"),
        ((1, REFUSED, 0.0, 1.0, True, math.nan), "draw"),
    ],
)
def test_bad_decision_inputs(args: tuple[Any, ...], field: str) -> None:
    """Non-finite times and out-of-range draws are refused."""
    with pytest.raises(InvalidParameter) as info:
        Retry().next_attempt(*args)
    assert info.value.field == field


MODELS = st.sampled_from(["a", "b", "c", "d", "e", "f"])


@given(
    model=MODELS,
    fallbacks=st.dictionaries(MODELS, st.lists(MODELS, max_size=4), max_size=6),
    limit=st.integers(1, 16),
)
def test_fallback_chain_acyclic_and_reachable(
    model: str, fallbacks: dict[str, list[str]], limit: int
) -> None:
    """The chain starts with the model, repeats nothing, and holds only reachable models."""
    chain = plan_fallbacks(model, fallbacks, limit=limit)
    assert chain[0] == model
    assert len(set(chain)) == len(chain) <= limit
    reachable = {model}
    frontier = [model]
    while frontier:
        for m in fallbacks.get(frontier.pop(), []):
            if m not in reachable:
                reachable.add(m)
                frontier.append(m)
    assert set(chain) <= reachable
    if limit == 16:
        assert set(chain) == reachable


def test_fallback_order_is_breadth_first() -> None:
    """Direct fallbacks come in the order given, before their own fallbacks."""
    fb = {"big": ["medium", "small"], "medium": ["tiny", "big"], "small": ["medium"]}
    assert plan_fallbacks("big", fb) == ("big", "medium", "small", "tiny")
    assert plan_fallbacks("big", fb, limit=2) == ("big", "medium")
    assert plan_fallbacks("other", fb) == ("other",)


def test_fallbacks_refuse_a_bare_string() -> None:
    """A string where a list belongs is refused rather than split into letters."""
    with pytest.raises(InvalidParameter):
        plan_fallbacks("big", {"big": "small"})
    with pytest.raises(InvalidParameter):
        check_fallbacks({"big": "small"})
    with pytest.raises(InvalidParameter):
        check_fallbacks({"big": ["ok", ""]})
    assert check_fallbacks({"big": ["small"]}) == {"big": ("small",)}


def test_choose_larger_window() -> None:
    """The first chain model whose known, larger window fits is chosen."""
    windows = {"small": 4096, "mid": 8192, "large": 32768}
    chain = ["small", "unknown", "mid", "large"]
    assert choose_larger_window("small", 6000, windows, chain) == "mid"
    assert choose_larger_window("small", 20000, windows, chain) == "large"
    assert choose_larger_window("small", 50000, windows, chain) is None
    assert choose_larger_window("large", 3000, windows, chain) is None  # nothing larger
    assert choose_larger_window("new", 3000, windows, chain) == "small"  # own window unknown


def test_next_target_same_model_first() -> None:
    """Every endpoint of the model is tried before the next model of the chain."""
    serving = {"big": ["gpu1", "gpu2"], "small": ["cpu"]}
    tried: set[tuple[str, str]] = {("gpu1", "big")}
    assert next_target(("big", "small"), serving, tried) == ("gpu2", "big")
    tried.add(("gpu2", "big"))
    assert next_target(("big", "small"), serving, tried) == ("cpu", "small")
    tried.add(("cpu", "small"))
    assert next_target(("big", "small"), serving, tried) is None
