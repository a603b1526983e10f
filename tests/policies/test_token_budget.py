"""TokenBudget: charges, fit, learning the output length, backing off."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from lmgate.policies import TokenBudget, TokenSettings


def test_before_warmup_a_request_is_charged_its_whole_max_tokens() -> None:
    kv = TokenBudget(10_000, "user")
    assert kv.charge(300, 1024) == 1324
    assert kv.charge(300, None) == 300
    assert kv.expected_output() is None


def test_after_warmup_the_charge_is_a_quantile_of_real_outputs_capped_by_max_tokens() -> None:
    kv = TokenBudget(10_000, "user", TokenSettings(warmup=10, quantile=0.9))
    for n in range(1, 101):  # outputs 1..100
        kv.observe(50, n)
    assert kv.expected_output() == 91
    assert kv.charge(300, 1024) == 300 + 91
    assert kv.charge(300, 20) == 320  # never more than the request's own cap
    assert kv.charge(None, None) == 50 + 91  # an unsized request costs a typical one


def test_an_empty_budget_takes_anything_and_a_busy_one_only_what_fits() -> None:
    kv = TokenBudget(1000, "props")
    assert kv.fits(5000)  # one alone always runs
    kv.take(600)
    assert kv.fits(400)
    assert not kv.fits(401)
    kv.give(600)
    assert kv.in_flight == 0
    assert kv.peak_in_flight == 600


def test_a_full_cache_makes_admission_commit_less_until_answers_complete() -> None:
    kv = TokenBudget(1000, "user", TokenSettings(backoff=0.5, min_fill=0.3, recovery=0.1))
    kv.take(100)
    kv.full()
    assert kv.fill == 0.5
    assert not kv.fits(401)
    kv.full()
    kv.full()
    assert kv.fill == 0.3  # bounded below
    for _ in range(10):
        kv.observe(10, 10)
    assert kv.fill == 1.0  # and back, capped at the whole budget
    assert kv.backoffs == 3


@given(st.lists(st.integers(0, 50_000), min_size=1, max_size=600))
def test_the_typical_prompt_is_the_mean_of_the_remembered_ones(prompts: list[int]) -> None:
    kv = TokenBudget(1000, "user", TokenSettings(history=64))
    for p in prompts:
        kv.observe(p, None)
    kept = prompts[-64:]
    assert kv.charge(None, 0) == sum(kept) // len(kept)


def test_statistics_and_repr() -> None:
    kv = TokenBudget(2048, "props")
    rng = random.Random(1)
    for _ in range(20):
        kv.observe(rng.randint(10, 100), rng.randint(1, 50))
    kv.take(300)
    s = kv.statistics()
    assert (s.budget, s.source, s.in_flight, s.observed) == (2048, "props", 300, 20)
    assert s.expected_output is not None
    assert "300/2048 tokens (props)" in repr(kv)


def test_a_preemption_the_server_reports_backs_fill_off() -> None:
    from lmgate.policies import EngineReading

    kv = TokenBudget(10_000, "metrics", TokenSettings(preempt_backoff=0.5, min_fill=0.2))
    kv.engine(EngineReading(at=0.0, preemptions=4))  # the first reading only sets the count
    assert kv.fill == 1.0
    kv.engine(EngineReading(at=1.0, preemptions=6))
    assert kv.fill == 0.5
    assert kv.backoffs == 1
    kv.engine(EngineReading(at=2.0, preemptions=6))
    assert kv.fill == 0.5


def test_a_cache_emptier_than_charged_lets_admission_overcommit_up_to_max_fill() -> None:
    from lmgate.policies import EngineReading

    kv = TokenBudget(10_000, "metrics", TokenSettings(overcommit=0.1, max_fill=1.3))
    low = EngineReading(at=0.0, kv_usage=0.4, waiting=0)
    kv.engine(low)
    assert kv.fill == 1.0  # the budget is not committed yet: nothing to learn
    kv.take(9_500)
    for _ in range(10):
        kv.engine(low)
        kv.take(int(kv.budget * kv.fill) - kv.in_flight)
    assert kv.fill == 1.3
    kv.observe(100, 50)  # a completed answer does not undo what the server said
    assert kv.fill == 1.3
    kv.engine(EngineReading(at=1.0, kv_usage=0.97, waiting=2))  # held back for cache
    assert abs(kv.fill - 1.2) < 1e-9


def test_settings_are_checked() -> None:
    import pytest

    from lmgate import InvalidParameter

    for bad in ({"quantile": 1.5}, {"max_fill": 0.5}, {"preempt_backoff": 0.0}, {"warmup": -1}):
        with pytest.raises(InvalidParameter):
            TokenSettings(**bad)  # type: ignore[arg-type]
