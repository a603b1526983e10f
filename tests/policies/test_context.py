"""Context strategies: the prompt always fits, keeps its order, pairs and system prompt."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmgate._endpoint import EndpointRef
from lmgate._errors import ContextOverflow, InvalidParameter
from lmgate.context._estimate import estimate_tokens
from lmgate.context._fit import (
    Chain,
    Compress,
    ContextCounters,
    ResetWithSummary,
    SchedulerSummarizer,
    SlidingWindow,
    afit_messages,
    context_events,
    default_strategy,
    fit_messages,
)
from lmgate.context._messages import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    UserMessage,
)

MARK = "characters elided to fit the context window"


@st.composite
def conversations(draw: st.DrawFn) -> list[Message]:
    """A system prompt and turns of user messages, tool rounds and replies."""
    msgs: list[Message] = [SystemMessage("You are terse. " * draw(st.integers(1, 8)))]
    n = 0
    for turn in range(draw(st.integers(1, 12))):
        msgs.append(UserMessage(f"q{turn}: " + "question " * draw(st.integers(1, 200))))
        for _ in range(draw(st.integers(0, 3))):
            calls = tuple(
                ToolCall(id=f"c{n}-{k}", name="read", arguments='{"f": 1}')
                for k in range(draw(st.integers(1, 3)))
            )
            n += 1
            msgs.append(AssistantMessage(None, calls))
            msgs.extend(ToolMessage(c.id, "x" * draw(st.integers(0, 20_000))) for c in calls)
        if draw(st.booleans()):
            msgs.append(AssistantMessage(f"a{turn}: " + "answer " * draw(st.integers(1, 100))))
    return msgs


def _is_version_of(out: Message, orig: Message) -> bool:
    if out == orig:
        return True
    if type(out) is not type(orig) or not isinstance(out.content, str):
        return False
    if not isinstance(orig.content, str):
        return False
    head = out.content.split("\n[... ")[0]
    return MARK in out.content and orig.content.startswith(head)


def _check_invariants(out: Sequence[Message], inp: Sequence[Message]) -> None:
    # order kept: the output is a subsequence of (possibly shortened) inputs
    j = 0
    positions = []
    for m in out:
        while j < len(inp) and not _is_version_of(m, inp[j]):
            j += 1
        assert j < len(inp), f"{m!r} is not in the input, or out of order"
        positions.append(j)
        j += 1
    # the system prompt is kept, first, whole
    assert out[0] == inp[0]
    # the last user message and the newest message are kept
    last_user = max(i for i, m in enumerate(inp) if isinstance(m, UserMessage))
    assert last_user in positions
    assert len(inp) - 1 in positions
    # tool calls and results stay paired
    open_calls: set[str] = set()
    for m in out:
        if isinstance(m, ToolMessage):
            assert m.tool_call_id in open_calls
            open_calls.discard(m.tool_call_id)
        else:
            assert not open_calls, "a tool call lost its result"
            if isinstance(m, AssistantMessage):
                open_calls = {c.id for c in m.tool_calls}
    assert not open_calls
    # a kept history opens with the user, as chat templates require
    first = next((m for m in out if not isinstance(m, SystemMessage)), None)
    assert first is None or isinstance(first, UserMessage) or positions[1] > last_user


STRATEGIES = {
    "sliding": SlidingWindow(),
    "compress": Compress(),
    "local": default_strategy(True),
    "cloud": default_strategy(False),
}


@pytest.mark.parametrize("name", list(STRATEGIES))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=conversations(), window=st.integers(1024, 16_384), reserve=st.integers(0, 256))
def test_output_fits_and_keeps_what_must_be_kept(
    name: str, msgs: list[Message], window: int, reserve: int
) -> None:
    """Every strategy's output fits (or it overflows loudly) and keeps the invariants."""
    strategy = STRATEGIES[name]
    overflow: ContextOverflow | None = None
    try:
        fitted = fit_messages(msgs, window=window, reserve=reserve, strategy=strategy)
    except ContextOverflow as exc:
        overflow = exc
    if overflow is not None:
        assert name in ("sliding", "compress"), "the default chains always fit here"
        assert overflow.window == window
        assert overflow.tokens is not None
        assert overflow.tokens > window
        return
    assert fitted.tokens + reserve <= window
    assert fitted.tokens == sum(estimate_tokens(m) for m in fitted.messages)
    _check_invariants(fitted.messages, msgs)
    if not fitted.applied:
        assert fitted.messages == tuple(msgs)


def test_under_threshold_nothing_changes() -> None:
    """A prompt under 80 % of the window is passed through untouched."""
    msgs = [SystemMessage("s"), UserMessage("x" * 400)]
    fitted = fit_messages(msgs, window=200, reserve=10)
    assert fitted.messages == tuple(msgs)
    assert fitted.applied == ()


def test_sliding_drops_oldest_turns_whole() -> None:
    """Sliding removes the oldest turn with its reply and reports the count."""
    msgs = [SystemMessage("s")]
    for i in range(4):
        msgs += [UserMessage(f"q{i} " * 100), AssistantMessage(f"a{i} " * 100)]
    fitted = fit_messages(msgs, window=500, strategy=SlidingWindow())
    kept = len(fitted.messages) - 1
    assert fitted.messages[0] == msgs[0]
    assert kept % 2 == 0
    assert 0 < kept < len(msgs) - 1
    assert fitted.messages[1:] == tuple(msgs[len(msgs) - kept :])
    (applied,) = fitted.applied
    assert applied.strategy == "SlidingWindow"
    assert applied.dropped == len(msgs) - len(fitted.messages)
    assert applied.tokens_after == fitted.tokens < applied.tokens_before


def test_compress_marks_the_cut_and_keeps_head_and_tail() -> None:
    """A huge tool result keeps its start and end around a visible marker."""
    call = AssistantMessage(None, (ToolCall(id="c", name="cat"),))
    body = "HEAD" + "m" * 40_000 + "TAIL"
    msgs = [SystemMessage("s"), UserMessage("read it"), call, ToolMessage("c", body)]
    fitted = fit_messages(msgs, window=2048, strategy=Compress())
    result = fitted.messages[-1]
    assert isinstance(result.content, str)
    assert result.content.startswith("HEAD")
    assert result.content.endswith("TAIL")
    assert MARK in result.content
    (applied,) = fitted.applied
    assert applied.compressed == 1
    assert applied.elided_chars == len(body) - (len(result.content) - len(_marker(result)))


def _marker(m: Message) -> str:
    assert isinstance(m.content, str)
    start = m.content.index("\n[... ")
    return m.content[start : m.content.index("]\n", start) + 2]


def test_overflow_before_anything_is_sent() -> None:
    """A system prompt larger than the window raises ContextOverflow with the numbers."""
    msgs = [SystemMessage("s" * 40_000), UserMessage("hi")]
    with pytest.raises(ContextOverflow) as info:
        fit_messages(msgs, window=4096, reserve=100)
    assert info.value.window == 4096
    assert info.value.tokens == sum(estimate_tokens(m) for m in msgs) + 100


def test_reserve_that_fills_the_window_overflows() -> None:
    """Reserving the whole window for output leaves no room for any prompt."""
    with pytest.raises(ContextOverflow):
        fit_messages([UserMessage("hi")], window=100, reserve=100)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"window": 0}, "window"),
        ({"window": True}, "window"),
        ({"window": 100, "reserve": -1}, "reserve"),
        ({"window": 100, "threshold": 0.0}, "threshold"),
        ({"window": 100, "threshold": math.nan}, "threshold"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], field: str) -> None:
    """Window, reserve and threshold are validated before any work."""
    with pytest.raises(InvalidParameter) as info:
        fit_messages([UserMessage("x")], **kwargs)
    assert info.value.field == field


def test_dicts_in_dicts_out() -> None:
    """OpenAI-shaped dicts are accepted and the result converts back to dicts."""
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi", "name": "u"}]
    fitted = fit_messages(msgs, window=1000)
    assert fitted.to_dicts() == msgs


def test_custom_token_counter_is_used() -> None:
    """``count_tokens`` replaces the built-in estimate everywhere."""
    msgs = [SystemMessage("s"), UserMessage("a"), AssistantMessage("b"), UserMessage("c")]
    fitted = fit_messages(msgs, window=35, count_tokens=lambda m: 10, strategy=SlidingWindow())
    assert fitted.tokens == 20
    assert fitted.messages == (msgs[0], msgs[3])


def _long_chat() -> list[Message]:
    msgs: list[Message] = [SystemMessage("sys")]
    for i in range(10):
        msgs += [UserMessage(f"q{i} " * 200), AssistantMessage(f"a{i} " * 200)]
    return msgs


@pytest.mark.anyio
async def test_reset_with_summary_replaces_older_turns() -> None:
    """Older turns go to the summarizer; its summary joins the system prompt."""
    seen: list[Sequence[Message]] = []

    async def summarize(older: Sequence[Message], *, deadline: float) -> str:
        seen.append(older)
        assert deadline == 123.0
        return "they talked"

    msgs = _long_chat()
    fitted = await afit_messages(
        msgs, window=2000, strategy=ResetWithSummary(summarize), deadline=123.0
    )
    (applied,) = fitted.applied
    assert applied.strategy == "ResetWithSummary"
    assert applied.summarized == len(seen[0])
    first = fitted.messages[0]
    assert isinstance(first.content, str)
    assert first.content.startswith("sys")
    assert first.content.endswith("they talked")
    assert tuple(seen[0]) + fitted.messages[1:] == tuple(msgs[1:])
    assert fitted.tokens <= 2000


@pytest.mark.anyio
async def test_failed_summary_falls_through_the_chain() -> None:
    """A summarizer that raises is recorded, and the next strategy still fits the prompt."""

    async def broken(older: Sequence[Message], *, deadline: float) -> str:
        raise RuntimeError("model down")

    strategy = Chain(ResetWithSummary(broken), SlidingWindow())
    fitted = await afit_messages(_long_chat(), window=2000, strategy=strategy)
    assert [a.strategy for a in fitted.applied] == ["ResetWithSummary", "SlidingWindow"]
    assert fitted.applied[0].error == "RuntimeError: model down"


def test_sync_fit_refuses_a_strategy_that_awaits() -> None:
    """fit_messages cannot await a summary and says so."""

    async def summarize(older: Sequence[Message], *, deadline: float) -> str:
        return ""

    with pytest.raises(TypeError, match="afit_messages"):
        fit_messages(_long_chat(), window=2000, strategy=ResetWithSummary(summarize))


class _Lease:
    def __init__(self, model: str) -> None:
        self.endpoint = EndpointRef(name="gpu", url="http://gpu:8080", model=model)

    def remaining(self) -> float:
        return 5.0


class _Sched:
    """The slice of the Scheduler API the summarizer uses."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def run(
        self,
        call: Any,
        *,
        model: str,
        priority: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> str:
        self.calls.append({"model": model, "priority": priority, "timeout": timeout})
        result: str = await call(_Lease(model))
        return result


@pytest.mark.anyio
async def test_scheduler_summarizer_asks_the_model_at_low_priority() -> None:
    """The built-in summarizer goes through sched.run, less urgent, inside the deadline."""
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"choices": [{"message": {"content": "short"}}]})

    sched = _Sched()
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        summarizer = SchedulerSummarizer(sched, model="small", client=client)
        deadline = anyio.current_time() + 10.0
        text = await summarizer([UserMessage("hello")], deadline=deadline)
    assert text == "short"
    (call,) = sched.calls
    assert call["model"] == "small"
    assert call["priority"] > 0
    assert 0 < call["timeout"] <= 5.0  # half of the time left
    (req,) = requests
    assert str(req.url) == "http://gpu:8080/v1/chat/completions"
    assert b"user: hello" in req.content


@pytest.mark.anyio
async def test_scheduler_summarizer_refuses_when_no_time_is_left() -> None:
    """With the deadline already passed no summary request is even queued."""
    sched = _Sched()
    summarizer = SchedulerSummarizer(sched, model="small")
    with pytest.raises(TimeoutError):
        await summarizer([UserMessage("x")], deadline=anyio.current_time() - 1)
    assert sched.calls == []


def test_events_and_counters_report_what_was_cut() -> None:
    """Each applied strategy yields an event, and counters sum them."""
    fitted = fit_messages(_long_chat(), window=1500, local=False)
    events = context_events(fitted, at=1.0, endpoint="gpu", model="m")
    assert [e.strategy for e in events] == [a.strategy for a in fitted.applied]
    counters = ContextCounters()
    counters.record(fitted)
    counters.record(fit_messages([UserMessage("x")], window=1500))
    counters.record_overflow()
    stats = counters.statistics()
    assert stats.fitted == 2
    assert stats.shortened == 1
    assert stats.overflows == 1
    assert stats.dropped == sum(a.dropped for a in fitted.applied)
    assert stats.compressed == sum(a.compressed for a in fitted.applied)
    assert stats.applied == {a.strategy: 1 for a in fitted.applied}
