"""Token counts: the server's tokenizer where it has one, else calibrated."""

from __future__ import annotations

import random

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgate._errors import InvalidParameter
from lmgate.detect import TokenEstimator, count_tokens
from lmgate.sim.http._app import SimHTTPConfig, sim_transport


def test_prior_errs_high() -> None:
    """Before any usage, English prose is over-counted, never under-counted."""
    text = "The quick brown fox jumps over the lazy dog. " * 20
    assert TokenEstimator().estimate(text) >= len(text) / 4


def test_calibrates_towards_observed_ratio() -> None:
    """After usage at ~4 chars/token, estimates approach that ratio from above."""
    est = TokenEstimator()
    rng = random.Random(7)
    for _ in range(200):
        chars = rng.randint(200, 5000)
        est.observe(chars, round(chars / 4 * rng.uniform(0.95, 1.05)))
    estimate = est.estimate(4000)
    assert 1000 <= estimate <= 1150


def test_short_texts_teach_nothing() -> None:
    """Tiny prompts (template overhead dominates) do not move the ratio."""
    est = TokenEstimator()
    est.observe(5, 40)
    assert est.statistics().samples == 0


@settings(max_examples=50)
@given(
    st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 100_000)), min_size=0, max_size=30),
    st.integers(0, 10**6),
)
def test_estimate_is_monotone_and_non_negative(pairs: list[tuple[int, int]], n: int) -> None:
    """Longer text never estimates fewer tokens; nothing is negative."""
    est = TokenEstimator()
    for chars, tokens in pairs:
        est.observe(chars, tokens)
    a, b = est.estimate(n), est.estimate(n + 100)
    assert 0 <= a <= b


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda e: e.observe(-1, 3), "text_chars"),
        (lambda e: e.observe(10, True), "tokens"),
        (lambda e: e.estimate(3.5), "text"),
        (lambda e: e.estimate(-2), "text"),
    ],
)
def test_bad_input_is_refused(call: object, field: str) -> None:
    """Bad observations are typed errors and change nothing."""
    est = TokenEstimator()
    with pytest.raises(InvalidParameter) as err:
        call(est)  # type: ignore[operator]
    assert err.value.field == field
    assert est.statistics().samples == 0


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["llamacpp", "vllm", "tgi"])
async def test_server_tokenizer_is_exact(kind: str) -> None:
    """Servers with a tokenizer route count exactly."""
    async with httpx.AsyncClient(transport=sim_transport(SimHTTPConfig(kind=kind))) as c:
        count = await count_tokens(
            "http://s:1/v1", "x" * 40, kind=kind, model="sim-model", client=c
        )
    assert (count.tokens, count.exact) == (10, True)
    assert count.source == f"{kind} /tokenize"


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["ollama", "lmstudio", "localai", "unknown", "openai"])
async def test_no_tokenizer_means_estimate_and_no_request(kind: str) -> None:
    """Elsewhere the estimator answers and nothing is sent (no cloud tokenizer)."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(500)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as c:
        count = await count_tokens("http://s:1", "x" * 40, kind=kind, client=c)
    assert not count.exact
    assert count.tokens == TokenEstimator().estimate("x" * 40)
    assert seen == []


@pytest.mark.anyio
async def test_failed_tokenizer_falls_back() -> None:
    """A failing tokenizer route falls back to the estimate."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": {"message": "Loading model"}})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as c:
        count = await count_tokens("http://s:1", "hello", kind="llamacpp", client=c)
    assert count.source == "estimate"
