"""Context before admission: routing by window, fitting after the grant, overflow refusal."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmgate import ContextOverflow, Endpoint, InvalidParameter, Lease, Scheduler
from lmgate.context._estimate import estimate_tokens
from lmgate.context._fit import (
    ContextApplied,
    ResetWithSummary,
    SlidingWindow,
)
from lmgate.context._messages import Message, to_dicts
from lmgate.policies import Fixed
from lmgate.scheduler._admission import Admission
from lmgate.scheduler._lease import Waiter
from lmgate.scheduler._slot import EndpointSlot, window_fits

from ._support import check_identity, endpoint

pytestmark = pytest.mark.anyio

FINAL = {"role": "user", "content": "And now the final question?"}


def conversation(turns: int, *, system_chars: int = 200, tool_chars: int = 4000) -> list[Any]:
    """A system prompt, then rounds of question, tool call and large tool result."""
    msgs: list[Any] = [{"role": "system", "content": "S" * system_chars}]
    for i in range(turns):
        msgs.append({"role": "user", "content": f"q{i} " + "word " * 50})
        call = {"id": f"c{i}", "type": "function", "function": {"name": "read", "arguments": "{}"}}
        msgs.append({"role": "assistant", "content": None, "tool_calls": [call]})
        msgs.append({"role": "tool", "tool_call_id": f"c{i}", "content": "x" * tool_chars})
    msgs.append(FINAL)
    return msgs


def small() -> Endpoint:
    return endpoint("small", "m", context_window=4096, local=True)


def big() -> Endpoint:
    return endpoint("big", "m", context_window=32768, local=False)


async def _name(lease: Lease) -> str:
    return lease.endpoint.name


def _tokens(messages: Sequence[Message]) -> int:
    return sum(estimate_tokens(m) for m in messages)


async def test_long_conversation_routes_to_the_big_window() -> None:
    """A prompt the 4k window can never take goes to the 32k endpoint, fitted there."""
    long = conversation(10, system_chars=24_000)  # the system prompt alone passes 4k
    seen: list[Lease] = []

    async def call(lease: Lease) -> str:
        seen.append(lease)
        return lease.endpoint.name

    async with Scheduler([small(), big()], limit=Fixed(1)) as sched:
        assert await sched.run(call, model="m", messages=long, max_tokens=512) == "big"
        stats = sched.stats()
    (lease,) = seen
    assert lease.fitted is not None
    assert lease.fitted.window == 32768
    assert lease.messages == to_dicts(lease.fitted.messages)
    assert lease.messages[-1] == FINAL
    assert stats.outcomes["completed"] == 1
    check_identity(stats)


async def test_a_short_prompt_is_not_stuck_behind_a_long_one() -> None:
    """While a long prompt waits for the big window, the small endpoint serves short ones."""
    long = conversation(10, system_chars=24_000)
    release = anyio.Event()
    names: list[str] = []

    async def hold(lease: Lease) -> None:
        names.append(lease.endpoint.name)
        await release.wait()

    async with (
        Scheduler([small(), big()], limit=Fixed(1)) as sched,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(functools.partial(sched.run, hold, model="m", messages=long))
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(functools.partial(sched.run, hold, model="m", messages=long))
        await anyio.wait_all_tasks_blocked()
        assert names == ["big"]
        assert sched.stats().queued == 1  # the second long prompt waits for "big"
        short = [{"role": "user", "content": "hi"}]
        assert await sched.run(_name, model="m", messages=short) == "small"
        assert sched.stats().queued == 1
        release.set()
        await anyio.wait_all_tasks_blocked()
        assert names == ["big", "big"]
        check_identity(sched.stats())


async def test_over_threshold_prompt_slides_on_a_local_endpoint() -> None:
    """Past 80 % of a local window the oldest turns go; the rest fits and is reported."""
    msgs = conversation(20)
    seen: list[Lease] = []

    async def call(lease: Lease) -> None:
        seen.append(lease)

    async with Scheduler([small()], limit=Fixed(1)) as sched:
        with sched.events.subscribe() as events:
            await sched.run(call, model="m", messages=msgs, max_tokens=300)
            stats = sched.stats()
            found = [e for e in iter(events.get_nowait, None) if isinstance(e, ContextApplied)]
    (lease,) = seen
    fitted = lease.fitted
    assert fitted is not None
    assert fitted.tokens == _tokens(fitted.messages)
    assert fitted.tokens + 300 <= math.floor(4096 * 0.8)
    assert [a.strategy for a in fitted.applied] == ["SlidingWindow"]
    assert lease.messages is not None
    assert lease.messages[0] == msgs[0]
    assert lease.messages[-1] == FINAL
    assert len(lease.messages) < len(msgs)
    assert [(e.strategy, e.endpoint, e.window) for e in found] == [("SlidingWindow", "small", 4096)]
    assert stats.context is not None
    assert stats.context.applied == {"SlidingWindow": 1}
    assert stats.context.dropped == len(msgs) - len(lease.messages)
    assert stats.context.peak_tokens == fitted.tokens + 300


async def test_cloud_endpoint_compresses_and_context_overrides_it() -> None:
    """A cloud endpoint compresses first; ``context=`` replaces that default everywhere."""
    msgs = conversation(3, tool_chars=60_000)
    cloud = endpoint("cloud", "m", context_window=16_384, local=False)
    async with Scheduler([cloud]) as sched, sched.lease(model="m", messages=msgs) as lease:
        assert lease.fitted is not None
        assert lease.fitted.applied[0].strategy == "Compress"
        assert lease.fitted.reserve == 256  # the default reserve without max_tokens
    sliding = Scheduler([cloud], context=SlidingWindow())
    async with sliding as sched, sched.lease(model="m", messages=msgs) as lease:
        assert lease.fitted is not None
        assert [a.strategy for a in lease.fitted.applied] == ["SlidingWindow"]


async def test_impossible_prompt_is_refused_before_admission() -> None:
    """No window can take it: ContextOverflow with the numbers, and only its outcome moves."""
    huge = conversation(2, system_chars=200_000)
    calls: list[Lease] = []

    async def call(lease: Lease) -> None:
        calls.append(lease)

    async with Scheduler([small(), big()], limit=Fixed(1)) as sched:
        await sched.run(call, model="m")  # some history to compare against
        await anyio.wait_all_tasks_blocked()
        before = sched.stats()
        with pytest.raises(ContextOverflow) as info:
            await sched.run(call, model="m", messages=huge, max_tokens=100)
        await anyio.wait_all_tasks_blocked()
        after = sched.stats()
    assert len(calls) == 1
    assert info.value.window == 32768
    assert info.value.tokens is not None
    assert info.value.tokens > 50_000
    assert after.submitted == before.submitted + 1
    moved = {k: after.outcomes[k] - before.outcomes[k] for k in after.outcomes}
    assert moved == {**dict.fromkeys(before.outcomes, 0), "rejected": 1}
    assert info.value.before_send
    assert (after.queued, after.in_flight, after.peak_queued) == (0, 0, before.peak_queued)
    for b, a in zip(before.endpoints, after.endpoints, strict=True):
        assert (a.samples, a.peak_in_flight, a.by_class) == (
            b.samples,
            b.peak_in_flight,
            b.by_class,
        )
    assert after.context is not None
    assert after.context.overflows == 1
    assert after.context.fitted == 0
    check_identity(after)


async def test_overflow_after_the_grant_releases_the_lease() -> None:
    """A summary that fails leaves the prompt too long: refused before sending, slot freed."""

    async def broken(older: Sequence[Message], *, deadline: float) -> str:
        raise RuntimeError("summarizer down")

    calls: list[Lease] = []

    async def call(lease: Lease) -> None:
        calls.append(lease)

    msgs = conversation(20)
    async with Scheduler([small()], limit=Fixed(1), context=ResetWithSummary(broken)) as sched:
        with pytest.raises(ContextOverflow):
            await sched.run(call, model="m", messages=msgs)
        with pytest.raises(ContextOverflow):
            async with sched.lease(model="m", messages=msgs):
                pytest.fail("the block must not run")  # pragma: no cover
        await anyio.wait_all_tasks_blocked()
        stats = sched.stats()
    assert calls == []
    assert stats.outcomes["rejected"] == 2
    assert stats.in_flight == 0
    (ep,) = stats.endpoints
    assert ep.by_class["client_error"] == 2  # the endpoint is not blamed
    assert stats.context is not None
    assert stats.context.overflows == 2
    check_identity(stats)


async def test_unknown_window_is_not_constrained_nor_fitted() -> None:
    """An endpoint without a known window takes any prompt, unchanged."""
    msgs = conversation(30)
    sched = Scheduler([endpoint("x", "m")])
    async with sched, sched.lease(model="m", messages=msgs, max_tokens=10) as lease:
        assert lease.fitted is not None
        assert lease.fitted.window is None
        assert lease.fitted.applied == ()
        assert lease.messages == msgs


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [], "max_tokens": True}, "max_tokens"),
        ({"messages": [], "max_tokens": -1}, "max_tokens"),
    ],
)
async def test_bad_prompt_is_refused_and_nothing_counted(
    kwargs: dict[str, Any], field: str
) -> None:
    """Malformed messages or max_tokens: InvalidParameter naming the field, nothing counted."""
    async with Scheduler([small()]) as sched:
        with pytest.raises(InvalidParameter) as info:
            await sched.run(_name, model="m", **kwargs)
        assert info.value.field == field
        assert sched.stats().submitted == 0


def test_context_setting_is_validated() -> None:
    """``context=`` takes a strategy or a ContextConfig, nothing else."""
    with pytest.raises(InvalidParameter) as info:
        Scheduler([small()], context="sliding")  # type: ignore[arg-type]
    assert info.value.field == "context"


async def test_counter_calibrates_from_usage_reports() -> None:
    """After enough prompt_tokens reports the endpoint's own ratio prices the prompt."""
    msgs = [{"role": "user", "content": "z" * 4000}]
    fitted_tokens: list[int] = []

    async def call(lease: Lease) -> None:
        assert lease.fitted is not None
        fitted_tokens.append(lease.fitted.tokens)
        lease.report(prompt_tokens=2 * 1000 + 4)  # this tokenizer: two chars a token

    async with Scheduler([small()]) as sched:
        for _ in range(10):
            await sched.run(call, model="m", messages=msgs)
    assert fitted_tokens[0] == 1004  # the built-in estimate: four chars a token
    assert fitted_tokens[-1] >= 2004  # the calibrated counter


# -- admission respects min_window ------------------------------------------------------


class _Event:
    def __init__(self) -> None:
        self.is_set = False

    def set(self) -> None:
        self.is_set = True

    async def wait(self) -> None:  # pragma: no cover - never awaited here
        raise AssertionError


WINDOWS = [None, 2048, 4096, 8192, 32768]
NEEDS = [None, 1000, 3000, 6000, 20000]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    windows=st.lists(st.sampled_from(WINDOWS), min_size=1, max_size=4),
    limits=st.lists(st.integers(1, 3), min_size=4, max_size=4),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("submit"), st.sampled_from(NEEDS), st.integers(0, 2)),
            st.tuples(st.just("finish"), st.integers(0, 50), st.just(0)),
            st.tuples(st.just("down"), st.integers(0, 3), st.just(0)),
        ),
        max_size=40,
    ),
)
def test_admission_never_grants_a_window_too_small(
    windows: list[int | None], limits: list[int], ops: list[tuple[str, Any, int]]
) -> None:
    """Grants, hand-overs and dispatch keep min_window, and no fitting slot idles."""
    now = [0.0]
    slots = [
        EndpointSlot(
            i,
            Endpoint(f"e{i}", url="http://127.0.0.1:9", models=("m",), context_window=w),
            lim,
            None,
        )
        for i, (w, lim) in enumerate(zip(windows, limits, strict=False))
    ]
    adm = Admission(slots, queue_size=20, aging=1.0, clock=lambda: now[0], new_event=_Event)
    needs: dict[Lease, int | None] = {}  # leases hash by identity
    waiters: list[Waiter] = []
    for op, arg, priority in ops:
        now[0] += 1.0
        if op == "submit":
            if not any(window_fits(s, "m", arg) for s in slots):
                continue  # the gate refuses these before admission
            try:
                got = adm.submit("m", priority, math.inf, now[0], min_window=arg)
            except Exception:
                continue
            if isinstance(got, Lease):
                needs[got] = arg
            else:
                waiters.append(got)
        elif op == "finish" and adm.live:
            lease = sorted(adm.live, key=id)[arg % len(adm.live)]
            adm.finish(lease, None)
        elif op == "down" and arg < len(slots):
            adm.set_state(arg, "down" if slots[arg].routing == "up" else "up", "x", None, now[0])
            adm.dispatch(now[0])
        for w in waiters:
            if w.lease is not None:
                needs[w.lease] = w.min_window
        assert adm.submitted == sum(adm.outcomes.values()) + adm.queued + adm.in_flight
        for lease in adm.live:
            need = needs[lease]
            window = lease._slot.endpoint.window_for("m")
            assert need is None or window is None or window >= need
        queued = [w for w in waiters if w.queued]
        for s in slots:
            if s.has_room():
                window = s.endpoint.window_for("m")
                assert not any(
                    w.min_window is None or window is None or window >= w.min_window for w in queued
                ), "a slot with room idles while a request it fits waits"
