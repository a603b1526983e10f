"""Retries and fallbacks inside one deadline, counted once per request.

Calls are scripted per attempt (succeed, refuse the connection, reset it,
answer 429, refuse the request), so each test knows where every attempt
went and when.  A trio instrument checks after every task step that
``submitted == sum(outcomes) + queued + in_flight``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lmgate
from lmgate import InvalidParameter, Lease, QueueOptions, Resilience, Scheduler
from lmgate.policies import Fixed
from lmgate.policies._retry import Retry
from lmgate.scheduler._admission import Admission

from ._support import check_identity, endpoint


class Identity(trio.abc.Instrument):
    def __init__(self, adm: Admission) -> None:
        self.adm = adm
        self.broken = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        a = self.adm
        if a.submitted != sum(a.outcomes.values()) + a.queued + a.in_flight:
            self.broken += 1


def _raise(kind: str) -> None:
    if kind == "refused":
        raise ConnectionRefusedError(111, "connection refused")
    if kind == "reset":
        raise ConnectionResetError(104, "connection reset")
    if kind == "busy":
        raise lmgate.Overloaded("busy", retry_after=2.0, status=429)
    if kind == "bad":
        raise InvalidParameter("bad request", field="x")


class Script:
    """A call whose attempts behave as listed; it records where each went and when."""

    def __init__(self, *kinds: str) -> None:
        self.kinds = list(kinds)
        self.attempts: list[tuple[float, str, str]] = []

    async def __call__(self, lease: Lease) -> str:
        self.attempts.append((anyio.current_time(), lease.endpoint.name, lease.endpoint.model))
        kind = self.kinds.pop(0) if self.kinds else "ok"
        await anyio.sleep(0.1)
        _raise(kind)
        return lease.endpoint.name


def virtual(
    body: Callable[[Scheduler], Awaitable[Any]],
    endpoints: list[lmgate.Endpoint] | None = None,
    **kwargs: Any,
) -> tuple[Any, lmgate.Stats]:
    """Run ``body`` against a scheduler in virtual time; check the books after."""
    resilience = kwargs.setdefault("resilience", Resilience(seed=0))
    if resilience.retry is None:
        kwargs["resilience"] = msgspec.structs.replace(
            resilience, retry=Retry(base=1.0, jitter=0.0)
        )
    kwargs.setdefault("limit", Fixed(4))
    sched = Scheduler(endpoints or [endpoint("a", "m"), endpoint("b", "m")], **kwargs)
    watch = Identity(sched._admission)

    async def main() -> Any:
        trio.lowlevel.add_instrument(watch)
        try:
            async with sched:
                return await body(sched)
        finally:
            trio.lowlevel.remove_instrument(watch)

    result = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    stats = sched.stats()
    check_identity(stats)
    assert watch.broken == 0
    assert stats.queued == stats.in_flight == 0
    assert not sched._admission.live
    return result, stats


def test_refused_is_retried_elsewhere_even_when_not_idempotent() -> None:
    """Nothing reached the server, so another endpoint gets the call at once."""
    call = Script("refused")
    result, stats = virtual(lambda s: s.run(call, model="m", timeout=30))
    assert result == "b"
    assert [(t, e) for t, e, _ in call.attempts] == [(0.0, "a"), (0.1, "b")]
    assert (stats.submitted, stats.outcomes["completed"], stats.retries) == (1, 1, 1)


@pytest.mark.parametrize("idempotent", [False, True])
def test_a_reset_is_retried_only_when_idempotent(idempotent: bool) -> None:
    """A reset call may have done its work: only an idempotent one is sent again."""
    call = Script("reset")

    async def body(sched: Scheduler) -> Any:
        try:
            return await sched.run(call, model="m", timeout=30, idempotent=idempotent)
        except ConnectionResetError:
            return "reset"

    result, stats = virtual(body)
    assert result == ("b" if idempotent else "reset")
    assert stats.retries == int(idempotent)
    assert stats.outcomes["failed"] == int(not idempotent)


def test_client_errors_are_not_retried() -> None:
    """A bad request fails the same everywhere: it ends at once."""
    call = Script("bad")

    async def body(sched: Scheduler) -> None:
        with pytest.raises(InvalidParameter):
            await sched.run(call, model="m", timeout=30, idempotent=True)

    _, stats = virtual(body)
    assert len(call.attempts) == 1
    assert stats.retries == 0


def test_backoff_on_the_same_endpoint_counts_the_wait_as_queued() -> None:
    """With one endpoint, attempts follow the backoff; the request waits counted as queued."""
    call = Script("refused", "refused")
    seen: list[int] = []

    async def body(sched: Scheduler) -> Any:
        async with anyio.create_task_group() as tg:

            async def look() -> None:
                await anyio.sleep(0.5)
                seen.append(sched.stats().queued)

            tg.start_soon(look)
            return await sched.run(call, model="m", timeout=30)

    result, stats = virtual(body, [endpoint("a", "m")])
    assert result == "a"
    assert [t for t, _, _ in call.attempts] == [0.0, 1.1, 3.2]  # backoffs of 1 s and 2 s
    assert seen == [1]
    assert (stats.submitted, stats.retries, stats.outcomes["completed"]) == (1, 2, 1)


def test_retry_after_replaces_the_backoff() -> None:
    """A 429 with Retry-After is tried again on that endpoint exactly when the server said."""
    call = Script("busy")
    result, _ = virtual(
        lambda s: s.run(call, model="m", timeout=30, idempotent=True), [endpoint("a", "m")]
    )
    assert result == "a"
    assert [t for t, _, _ in call.attempts] == [0.0, 2.1]


def test_the_wait_never_passes_the_deadline() -> None:
    """A backoff that would leave too little of the deadline is not waited for."""
    call = Script("refused", "refused")

    async def body(sched: Scheduler) -> float:
        with pytest.raises(ConnectionRefusedError):
            await sched.run(call, model="m", timeout=2.5)
        return anyio.current_time()

    ended, stats = virtual(body, [endpoint("a", "m")])
    assert [t for t, _, _ in call.attempts] == [0.0, 1.1]
    assert ended == pytest.approx(1.2)
    assert stats.outcomes["failed"] == 1


def test_attempts_are_bounded() -> None:
    """A call failing everywhere is tried ``attempts`` times and ends failed, once."""
    call = Script("refused", "refused", "refused", "refused")

    async def body(sched: Scheduler) -> None:
        with pytest.raises(ConnectionRefusedError):
            await sched.run(call, model="m", timeout=60)

    _, stats = virtual(body, resilience=Resilience(retry=Retry(attempts=3, base=0.5, jitter=0.0)))
    assert len(call.attempts) == 3
    assert (stats.submitted, stats.outcomes["failed"], stats.retries) == (1, 1, 2)


def test_fallback_down_the_chain() -> None:
    """With the big model's only endpoint failing, the call moves to the fallback model."""
    call = Script("refused")
    eps = [endpoint("big", "big"), endpoint("small", "small")]
    result, stats = virtual(
        lambda s: s.run(call, model="big", timeout=30),
        eps,
        resilience=Resilience(fallbacks={"big": ["small"]}),
    )
    assert result == "small"
    assert [(e, m) for _, e, m in call.attempts] == [("big", "big"), ("small", "small")]
    assert (stats.retries, stats.fallbacks) == (1, 1)


def test_a_model_with_nothing_up_starts_on_its_fallback() -> None:
    """When every endpoint of a model is down, the request starts on the next model."""
    eps = [endpoint("big", "big"), endpoint("small", "small")]

    async def body(sched: Scheduler) -> str:
        sched._admission.slots[0].routing = "down"
        return await sched.run(Script(), model="big", timeout=30)

    result, stats = virtual(body, eps, resilience=Resilience(fallbacks={"big": ["small"]}))
    assert result == "small"
    assert (stats.fallbacks, stats.outcomes["unavailable"]) == (1, 0)


def test_closing_ends_a_request_waiting_to_retry() -> None:
    """A request in its backoff when the scheduler closes ends 'closed' right then."""
    call = Script("refused")
    got: list[BaseException] = []

    async def body(sched: Scheduler) -> None:
        async def one() -> None:
            try:
                await sched.run(call, model="m", timeout=60)
            except lmgate.SchedulerClosed as exc:
                got.append(exc)

        sched_tg = anyio.create_task_group()
        async with sched_tg:
            sched_tg.start_soon(one)
            await anyio.sleep(0.5)
            assert sched.stats().queued == 1
            await sched._shutdown()
            assert sched.stats().queued == 0
            assert sched.stats().outcomes["closed"] == 1

    virtual(body, [endpoint("a", "m")], resilience=Resilience(retry=Retry(base=5.0, jitter=0.0)))
    assert len(got) == 1
    assert len(call.attempts) == 1


def test_cancelling_a_waiting_retry() -> None:
    """A caller giving up during the backoff ends its request 'cancelled'."""
    call = Script("refused")

    async def body(sched: Scheduler) -> None:
        with anyio.move_on_after(1.0):
            await sched.run(call, model="m", timeout=60)

    _, stats = virtual(
        body, [endpoint("a", "m")], resilience=Resilience(retry=Retry(base=5.0, jitter=0.0))
    )
    assert stats.outcomes["cancelled"] == 1
    assert len(call.attempts) == 1


def test_no_room_to_wait_means_no_retry() -> None:
    """A retry waits in the queue; with no room there, the request ends with its failure."""
    call = Script("refused")

    async def body(sched: Scheduler) -> None:
        with pytest.raises(ConnectionRefusedError):
            await sched.run(call, model="m", timeout=60)

    _, stats = virtual(body, [endpoint("a", "m")], queue=QueueOptions(size=0))
    assert stats.retries == 0


def test_configuration_is_checked() -> None:
    """Unknown fallback models, a wrong retry type and a non-bool idempotent are refused."""
    eps = [endpoint("a", "m")]
    with pytest.raises(InvalidParameter) as info:
        Scheduler(eps, resilience=Resilience(fallbacks={"m": ["nope"]}))
    assert info.value.field == "fallbacks"
    with pytest.raises(InvalidParameter):
        Resilience(fallbacks={"m": "x"})  # type: ignore[dict-item]
    with pytest.raises(InvalidParameter):
        Resilience(retry=3)  # type: ignore[arg-type]

    async def body(sched: Scheduler) -> None:
        with pytest.raises(InvalidParameter):
            await sched.run(Script(), model="m", idempotent=1)  # type: ignore[arg-type]

    virtual(body, eps)


_KIND = st.sampled_from(["ok", "ok", "refused", "reset", "busy", "bad"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.lists(
        st.tuples(
            st.lists(_KIND, max_size=4),
            st.sampled_from(["m", "n"]),
            st.booleans(),
            st.sampled_from([None, 0.5, 3.0, 30.0]),
            st.floats(0.0, 5.0).map(lambda x: round(x, 1)),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_every_request_ends_once_whatever_its_attempts_do(
    requests: list[tuple[list[str], str, bool, float | None, float]],
) -> None:
    """Random attempt scripts: one outcome per request, attempts bounded, deadlines kept."""
    retry = Retry(attempts=3, base=0.5)
    ended: list[tuple[str, float, float]] = []
    scripts = [Script(*kinds) for kinds, *_ in requests]

    async def one(script: Script, model: str, idem: bool, seconds: float | None, at: float) -> None:
        await anyio.sleep(at)
        begin = anyio.current_time()
        outcome = "completed"
        try:
            await sched_ref[0].run(script, model=model, timeout=seconds, idempotent=idem)
        except Exception as exc:
            outcome = type(exc).__name__
        deadline = math.inf if seconds is None else begin + seconds
        ended.append((outcome, anyio.current_time(), deadline))

    sched_ref: list[Scheduler] = []

    async def body(sched: Scheduler) -> None:
        sched_ref.append(sched)
        async with anyio.create_task_group() as tg:
            for script, (_, model, idem, timeout, at) in zip(scripts, requests, strict=True):
                tg.start_soon(one, script, model, idem, timeout, at)

    eps = [endpoint("a", "m"), endpoint("b", "m", "n"), endpoint("c", "n")]
    _, stats = virtual(
        body,
        eps,
        resilience=Resilience(retry=retry, fallbacks={"m": ["n"]}),
        limit=Fixed(2),
    )
    assert stats.submitted == len(requests) == len(ended)
    assert sum(stats.outcomes.values()) == len(requests)
    for script in scripts:
        assert len(script.attempts) <= retry.attempts
    for _, at, deadline in ended:
        assert at <= deadline + 0.1 + 1e-9
