"""A random program of submits, cancels, finishes, faults and clock steps, in virtual time.

Hypothesis draws one action at a time (``st.data()``) while a single trio run
with a mock clock keeps the scheduler alive across steps, so later actions
can target requests that exist.  After every step the invariants of the
scheduler are checked; a trio instrument also checks the counters after
every single task step, i.e. at every instant anyone could look.
"""

from __future__ import annotations

import functools
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, register_random, settings
from hypothesis import strategies as st

from lmgate import (
    ContextOverflow,
    DeadlineExceeded,
    EndpointUnavailable,
    Lease,
    Overloaded,
    QueueOptions,
    Rejected,
    Scheduler,
    SchedulerClosed,
)
from lmgate.policies import Fixed
from lmgate.scheduler._admission import Admission
from lmgate.scheduler._slot import fits
from lmgate.scheduler._throttling import _SlotThrottle

from ._support import check_identity, endpoint, lmgate_tasks

# Trio shuffles the order of tasks woken together; let hypothesis seed that
# shuffle so a failing program replays the same way.
_TRIO_RANDOM = getattr(trio._core._run, "_r", None)
if isinstance(_TRIO_RANDOM, random.Random):
    register_random(_TRIO_RANDOM)

MODELS = ["m1", "m2", "m3", "ghost"]
QUEUE_SIZE = 3
GRACE = 1.0
SLACK = 0.1


class Boom(Exception):
    """A call's own failure."""


@dataclass(eq=False)
class Req:
    api: str
    model: str
    priority: int
    timeout: float | None
    behaviour: str
    duration: float
    prompt_tokens: int | None = None
    max_tokens: int | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    finish_now: trio.Event = field(default_factory=trio.Event)
    deadline: float = math.inf
    running: bool = False
    done: bool = False
    outcome: str | None = None
    close_refused: bool | None = None


class CounterWatch(trio.abc.Instrument):
    """Checks the outcome identity after every task step."""

    def __init__(self, adm: Admission) -> None:
        self.adm = adm
        self.violations: list[str] = []
        self.steps = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        a = self.adm
        self.steps += 1
        if a.submitted != sum(a.outcomes.values()) + a.queued + a.in_flight:
            self.violations.append(f"identity broken after a step of {task.name}")
        if a.queued > a.queue_size:
            self.violations.append("queue over its bound")
        for s in a.slots:
            if s.in_flight > s.limit:
                self.violations.append(f"{s.endpoint.name} over its limit")
            if s.held != len(s.lingering) or (s.held > 0) != (s in a.lingering):
                self.violations.append(f"{s.endpoint.name} lingering out of step")
            if s.kv is not None:
                charged = sum(lease._charge for lease in a.live if lease._slot is s)
                charged += sum(entry.charge for entry in s.lingering)
                if s.kv.in_flight != charged:
                    name = s.endpoint.name
                    self.violations.append(f"{name} tokens {s.kv.in_flight} != {charged}")


async def _fake_call(r: Req, lease: Lease, sched: Scheduler | None = None) -> None:
    r.running = True
    if r.behaviour == "close_inside" and sched is not None:
        # Closing the scheduler from inside one of its calls is refused,
        # with a typed error, and changes nothing.
        try:
            await sched.__aexit__(None, None, None)
        except SchedulerClosed:
            r.close_refused = True
        else:
            r.close_refused = False
    limit = math.inf if r.behaviour == "hang" else r.duration
    with trio.move_on_after(limit):
        await r.finish_now.wait()
    if r.behaviour == "raise":
        raise Boom
    if r.behaviour == "overload":
        raise Overloaded(retry_after=0.5, status=429)


async def _request(sched: Scheduler, r: Req) -> None:
    r.deadline = math.inf if r.timeout is None else trio.current_time() + r.timeout
    kw: dict[str, Any] = {
        "model": r.model,
        "priority": r.priority,
        "timeout": r.timeout,
        "prompt_tokens": r.prompt_tokens,
        "max_tokens": r.max_tokens,
    }
    with r.scope:
        try:
            if r.api == "run":
                await sched.run(functools.partial(_fake_call, r, sched=sched), **kw)
            elif r.api == "lease":
                async with sched.lease(**kw) as lease:
                    await _fake_call(r, lease, sched)
            else:
                # A transport's way: acquire, enforce the deadline itself, release.
                lease = await sched.acquire(**kw)
                try:
                    with trio.move_on_at(lease.deadline) as cs:
                        await _fake_call(r, lease, sched)
                except BaseException as exc:
                    # Released already: revoked by close, or reclaimed at its deadline.
                    taken = lease.outcome if lease.released else None
                    lease.release(exc)
                    if taken is not None:
                        r.outcome = taken
                    raise
                taken = lease.outcome if lease.released else None
                if cs.cancelled_caught:
                    lease.release(DeadlineExceeded("deadline passed in the call"))
                    r.outcome = taken or "deadline_exceeded"
                    return
                lease.release()
                lease.release(Boom())  # a second release is a no-op
                if taken is not None:
                    r.outcome = taken
                    return
            r.outcome = "completed"
        except (Boom, Overloaded):
            r.outcome = r.outcome or "failed"
        except (Rejected, ContextOverflow):
            r.outcome = "rejected"
        except DeadlineExceeded:
            r.outcome = "deadline_exceeded"
        except EndpointUnavailable as exc:
            # A model no endpoint serves is bad input: refused, never counted.
            r.outcome = "unknown_model" if exc.reason == "unknown_model" else "unavailable"
        except SchedulerClosed:
            r.outcome = "closed"
        finally:
            r.done = True
    if r.scope.cancelled_caught and r.outcome is None:
        r.outcome = "cancelled"


_submit = st.fixed_dictionaries(
    {
        "api": st.sampled_from(["run", "lease", "acquire"]),
        "model": st.sampled_from(MODELS),
        "priority": st.integers(-2, 2),
        "timeout": st.one_of(
            st.none(),
            st.just(0.0),
            st.floats(0.05, 6.0, allow_nan=False).map(lambda x: round(x, 2)),
        ),
        "behaviour": st.sampled_from(
            ["complete", "complete", "raise", "overload", "hang", "close_inside"]
        ),
        "duration": st.floats(0.0, 3.0, allow_nan=False).map(lambda x: round(x, 2)),
        "prompt_tokens": st.one_of(st.none(), st.integers(0, 4000)),
        "max_tokens": st.one_of(st.none(), st.integers(0, 2000)),
    }
)
_actions = st.sampled_from(
    ["submit"] * 4
    + ["cancel"] * 2
    + ["finish"] * 2
    + ["advance"] * 2
    + ["health", "reenter", "close"]
)


def _check_step(sched: Scheduler, reqs: list[Req]) -> None:
    stats = sched.stats()
    check_identity(stats)
    # Work-conserving: nobody waits for a model while an endpoint serving it has room.
    adm = sched._admission
    now = trio.current_time()
    for slot in adm.slots:
        # Once everyone is blocked the actors have answered every sample: an
        # endpoint that is up takes at least one request (no stranded trial cap).
        assert not (slot.routing == "up" and slot.effective_limit == 0 and slot.in_flight == 0)
    for ep in stats.endpoints:
        # Never more out at once than some limit allowed.
        assert ep.peak_in_flight <= ep.peak_limit, ep
    for model in adm.queue.models_waiting():
        for slot in adm.by_model[model]:
            # (An endpoint that is throttling -- refusing part of its traffic
            # locally because it refuses most of it -- may sit below its limit
            # while a request waits for a healthy endpoint of the same model.)
            throttling = isinstance(slot.throttle, _SlotThrottle) and slot.throttle.active(now)
            full = slot.in_flight + slot.held >= slot.effective_limit or not any(
                fits(slot, w) for w in adm.queue.waiters(model)
            )
            assert slot.routing != "up" or full or throttling, (model, slot)
        # ...and nobody waits for a model that no endpoint can serve.
        assert any(slot.routing != "down" for slot in adm.by_model[model]), model
    now = trio.current_time()
    for r in reqs:
        if not r.done:
            assert now <= r.deadline + SLACK, (r, now)
    finished = Counter(r.outcome for r in reqs if r.done and r.outcome != "unknown_model")
    for outcome, n in finished.items():
        assert outcome is not None
        assert n <= stats.outcomes[outcome], (outcome, finished, stats.outcomes)


async def _program(data: st.DataObject) -> None:
    healthy = {"ok": True}

    async def health(ep: Any) -> bool:
        return healthy["ok"]

    sched = Scheduler(
        [
            endpoint("e0", "m1"),
            endpoint("e1", "m1", "m2", limit=Fixed(2), kv_tokens=3000, kind="llamacpp"),
            endpoint("e2", "m3", health=health),
        ],
        limit=Fixed(1),
        queue=QueueOptions(size=QUEUE_SIZE, aging=1.0),
        grace=GRACE,
    )
    watch = CounterWatch(sched._admission)
    trio.lowlevel.add_instrument(watch)
    reqs: list[Req] = []
    async with trio.open_nursery() as clients:
        async with sched:
            for _ in range(data.draw(st.integers(5, 60), label="steps")):
                action = data.draw(_actions)
                alive = [r for r in reqs if not r.done]
                if action == "submit":
                    for _ in range(data.draw(st.integers(1, 6), label="burst")):
                        r = Req(**data.draw(_submit))
                        reqs.append(r)
                        clients.start_soon(_request, sched, r)
                        await trio.testing.wait_all_tasks_blocked()
                elif action in ("cancel", "finish"):
                    # Drawn whatever exists, so every run draws the same way.
                    pick = data.draw(st.integers(0, 99), label="pick")
                    if action == "cancel" and alive:
                        alive[pick % len(alive)].scope.cancel()
                    running = [r for r in alive if r.running]
                    if action == "finish" and running:
                        running[pick % len(running)].finish_now.set()
                elif action == "advance":
                    await trio.sleep(data.draw(st.sampled_from([0.01, 0.1, 0.5, 1.0, 2.5, 6.0])))
                elif action == "health":
                    healthy["ok"] = not healthy["ok"]
                elif action == "reenter":
                    # Entering a running scheduler again is refused and changes nothing.
                    before = sched.stats()
                    with pytest.raises(SchedulerClosed):
                        async with sched:
                            pass
                    assert sched.stats() == before
                elif action == "close":
                    break
                await trio.testing.wait_all_tasks_blocked()
                _check_step(sched, reqs)
        # Closed: nothing of lmgate runs, nothing is queued or in flight.
        assert lmgate_tasks() == []
        stats = sched.stats()
        check_identity(stats)
        assert stats.queued == 0
        assert stats.in_flight == 0
        # Only acquire()d work the scheduler revoked may still be running; stop it.
        await trio.testing.wait_all_tasks_blocked()
        for r in reqs:
            if not r.done:
                assert r.api == "acquire", r
        clients.cancel_scope.cancel()
    trio.lowlevel.remove_instrument(watch)
    assert watch.violations == []
    assert watch.steps > 0
    stats = sched.stats()
    unknown = [r for r in reqs if r.outcome == "unknown_model"]
    assert all(r.model == "ghost" for r in unknown)
    assert stats.submitted == len(reqs) - len(unknown)
    assert all(r.close_refused is not False for r in reqs)
    assert all(r.close_refused for r in reqs if r.behaviour == "close_inside" and r.running)
    got = Counter(r.outcome for r in reqs if r.outcome != "unknown_model")
    assert None not in got, [r for r in reqs if r.outcome is None]
    assert {k: v for k, v in stats.outcomes.items() if v} == dict(got)


@pytest.mark.timeout(300)
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_scheduler_state_machine(data: st.DataObject) -> None:
    """Outcomes add up at every instant, bounds hold, deadlines are kept, close leaks nothing."""
    trio.run(_program, data, clock=trio.testing.MockClock(autojump_threshold=0))
