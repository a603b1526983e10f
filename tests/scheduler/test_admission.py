"""Admission's synchronous core, driven by hand with a fake clock and events."""

from __future__ import annotations

import functools
import math
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lmgate import (
    Endpoint,
    EndpointUnavailable,
    InvalidParameter,
    Overloaded,
    QueueOptions,
    Rejected,
    Resilience,
    ResourceOptions,
    SchedulerClosed,
)
from lmgate.policies import Fixed, QueueControl, Sample
from lmgate.scheduler import Lease, Scheduler
from lmgate.scheduler._admission import Admission
from lmgate.scheduler._lease import Waiter
from lmgate.scheduler._slot import EndpointSlot


class FakeEvent:
    """An event nobody awaits: tests look at ``is_set`` directly."""

    def __init__(self) -> None:
        self.is_set = False

    def set(self) -> None:
        self.is_set = True

    async def wait(self) -> None:  # pragma: no cover - never awaited here
        raise AssertionError("not awaited in these tests")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _ep(name: str, *models: str) -> Endpoint:
    return Endpoint(name, url=f"http://127.0.0.1:9/{name}", models=list(models))


def _admission(
    *specs: tuple[str, tuple[str, ...], int],
    queue_size: int = 100,
    aging: float = 10.0,
    control: QueueControl | None = None,
) -> tuple[Admission, FakeClock]:
    clock = FakeClock()
    slots = [
        EndpointSlot(i, _ep(name, *models), limit, None)
        for i, (name, models, limit) in enumerate(specs)
    ]
    adm = Admission(
        slots, queue_size=queue_size, aging=aging, clock=clock, new_event=FakeEvent, control=control
    )
    return adm, clock


def check(adm: Admission) -> None:
    """The identities that must hold after every operation."""
    assert adm.submitted == sum(adm.outcomes.values()) + adm.queued + adm.in_flight
    assert adm.queued == len(adm.queue) <= adm.queue_size
    assert adm.in_flight == sum(s.in_flight for s in adm.slots) == len(adm.live)
    for s in adm.slots:
        assert s.in_flight >= 0


def grant(adm: Admission, clock: FakeClock, model: str = "m", **kw: Any) -> Lease:
    got = adm.submit(model, kw.get("priority", 0), kw.get("deadline", math.inf), clock.now)
    check(adm)
    assert isinstance(got, Lease), got
    return got


def queue(adm: Admission, clock: FakeClock, model: str = "m", **kw: Any) -> Waiter:
    got = adm.submit(model, kw.get("priority", 0), kw.get("deadline", math.inf), clock.now)
    check(adm)
    assert isinstance(got, Waiter), got
    return got


def test_routes_to_least_loaded_relative_to_limit() -> None:
    """Each grant goes where in_flight/limit is lowest, ties to the first endpoint."""
    adm, clock = _admission(("big", ("m",), 4), ("small", ("m",), 2))
    names = [grant(adm, clock).endpoint.name for _ in range(6)]
    # loads before each grant: (0,0)->big, (.25,0)->small, (.25,.5)->big,
    # (.5,.5)->big, (.75,.5)->small, (.75,1)->big
    assert names == ["big", "small", "big", "big", "small", "big"]
    assert [s.in_flight for s in adm.slots] == [4, 2]
    assert isinstance(queue(adm, clock), Waiter)


def test_routes_only_to_endpoints_serving_the_model() -> None:
    """A lease carries the endpoint that serves its model, with that model's ref."""
    adm, clock = _admission(("a", ("x",), 1), ("b", ("x", "y"), 1))
    lease = grant(adm, clock, "y")
    assert (lease.endpoint.name, lease.endpoint.model) == ("b", "y")
    assert lease.endpoint.url == "http://127.0.0.1:9/b"
    assert grant(adm, clock, "x").endpoint.name == "a"
    queue(adm, clock, "x")


def test_unknown_model_is_refused_and_counts_nothing() -> None:
    """A model no endpoint serves is bad input: refused at once, naming the served models."""
    adm, clock = _admission(("a", ("m",), 1), ("b", ("n",), 1))
    with pytest.raises(EndpointUnavailable, match="served: 'm', 'n'") as info:
        adm.submit("nope", 0, math.inf, clock.now)
    assert info.value.reason == "unknown_model"
    assert info.value.models == ("m", "n")
    check(adm)
    assert adm.submitted == 0
    assert sum(adm.outcomes.values()) == 0


def test_full_queue_rejects() -> None:
    """Past queue_size waiters a request is Rejected(reason='queue_full')."""
    adm, clock = _admission(("a", ("m",), 1), queue_size=2)
    grant(adm, clock)
    queue(adm, clock)
    queue(adm, clock)
    with pytest.raises(Rejected) as info:
        adm.submit("m", 0, math.inf, clock.now)
    assert info.value.reason == "queue_full"
    check(adm)
    assert adm.outcomes["rejected"] == 1
    assert adm.queued == 2


def test_zero_queue_size_rejects_whenever_busy() -> None:
    """queue_size=0 grants what fits and refuses the rest."""
    adm, clock = _admission(("a", ("m",), 1), queue_size=0)
    grant(adm, clock)
    with pytest.raises(Rejected):
        adm.submit("m", 0, math.inf, clock.now)
    check(adm)


def test_predicted_wait_refuses_hopeless_deadlines() -> None:
    """With a 2 s service time observed, a deadline the queue plus the call overrun is refused."""
    adm, clock = _admission(("a", ("m",), 1), control=QueueControl())
    first = grant(adm, clock)
    clock.now = 2.0
    adm.finish(first, None)
    assert adm.slots[0].durations.quantile(0.5) == 2.0
    grant(adm, clock)
    # No wait can be known to be hopeless without a deadline...
    queue(adm, clock)
    # ...one that fits (1.5 ahead / limit 1 * 2 s queued, then 2 s served = 5 s) is queued...
    queue(adm, clock, deadline=clock.now + 5.5)
    # ...one that does not (2.5 * 2 s + 2 s = 7 s) is refused now, not left to expire.
    with pytest.raises(Rejected) as info:
        adm.submit("m", 0, clock.now + 6.5, clock.now)
    assert info.value.reason == "deadline"
    check(adm)
    assert adm.outcomes["rejected"] == 1
    # A more urgent request only waits behind its own priority and better (1 s + 2 s).
    queue(adm, clock, priority=-1, deadline=clock.now + 3.5)
    with pytest.raises(Rejected):
        adm.submit("m", -1, clock.now + 4.5, clock.now)
    assert adm.predicted_wait("m", 0) == pytest.approx(3.5 * 2 + 2)  # three ahead


def test_without_queue_control_nothing_is_refused_on_a_forecast() -> None:
    adm, clock = _admission(("a", ("m",), 1))
    first = grant(adm, clock)
    clock.now = 2.0
    adm.finish(first, None)
    grant(adm, clock)
    queue(adm, clock, deadline=clock.now + 0.1)
    assert adm.predicted_wait("m", 0) == 0.0


def test_a_freed_slot_skips_a_request_that_can_no_longer_make_it() -> None:
    adm, clock = _admission(("a", ("m",), 1), control=QueueControl())
    first = grant(adm, clock)
    clock.now = 2.0
    adm.finish(first, None)  # 2 s observed
    running = grant(adm, clock)
    doomed = queue(adm, clock, deadline=clock.now + 5.0)
    fine = queue(adm, clock, deadline=clock.now + 100.0)
    clock.now += 4.0  # 1 s left for doomed: less than a service
    adm.finish(running, None)
    assert isinstance(doomed.error, Rejected)
    assert doomed.error.reason == "deadline"
    assert fine.lease is not None
    check(adm)


def test_no_observation_no_refusal() -> None:
    """Before any service time is observed nothing is refused on a guess."""
    adm, clock = _admission(("a", ("m",), 1))
    grant(adm, clock)
    queue(adm, clock, deadline=clock.now + 1e-9)


def test_release_hands_slot_to_next_waiter() -> None:
    """finish() gives the slot straight to the most urgent waiter, synchronously."""
    adm, clock = _admission(("a", ("m",), 1))
    lease = grant(adm, clock)
    later = queue(adm, clock, priority=1)
    sooner = queue(adm, clock, priority=0)
    clock.now = 1.0
    adm.finish(lease, None)
    check(adm)
    assert sooner.event.is_set
    assert sooner.lease is not None
    assert not later.event.is_set
    assert later.lease is None
    assert sooner.lease.queued_for == 1.0
    assert sooner.lease.granted_at == 1.0
    assert adm.in_flight == 1
    assert adm.queued == 1
    assert adm.outcomes["completed"] == 1
    adm.finish(sooner.lease, RuntimeError("boom"))
    check(adm)
    assert later.lease is not None
    assert adm.outcomes["failed"] == 1
    adm.finish(later.lease, None)
    adm.finish(later.lease, None)  # twice is harmless
    check(adm)
    assert adm.in_flight == 0
    assert adm.outcomes["completed"] == 2


def test_hand_over_skips_waiters_that_left() -> None:
    """A waiter that left the queue never gets a slot; the next one does."""
    adm, clock = _admission(("a", ("m",), 1))
    lease = grant(adm, clock)
    gone = queue(adm, clock)
    kept = queue(adm, clock)
    adm.leave(gone, "cancelled")
    check(adm)
    assert adm.outcomes["cancelled"] == 1
    adm.finish(lease, None)
    check(adm)
    assert gone.lease is None
    assert kept.lease is not None


def test_leave_after_grant_gives_the_slot_back() -> None:
    """A caller that gives up in the instant it was granted releases the slot on."""
    adm, clock = _admission(("a", ("m",), 1))
    lease = grant(adm, clock)
    w1 = queue(adm, clock)
    w2 = queue(adm, clock)
    adm.finish(lease, None)
    assert w1.lease is not None
    adm.leave(w1, "deadline_exceeded")
    check(adm)
    assert adm.outcomes["deadline_exceeded"] == 1
    assert w2.lease is not None
    assert adm.in_flight == 1
    adm.leave(w1, "cancelled")  # leaving twice counts nothing more
    check(adm)


def test_dispatch_after_limit_raise() -> None:
    """Raising a limit and dispatching grants queued requests, most urgent first."""
    adm, clock = _admission(("a", ("m",), 1))
    grant(adm, clock)
    ws = [queue(adm, clock, priority=p) for p in (3, 1, 2)]
    adm.set_limit(0, 3, clock.now)
    adm.dispatch(clock.now)
    check(adm)
    assert [w.lease is not None for w in ws] == [False, True, True]
    assert adm.slots[0].in_flight == 3
    assert adm.queued == 1


def test_set_limit_never_below_one() -> None:
    """A limit of zero would strand the queue forever; it is clamped to one."""
    adm, clock = _admission(("a", ("m",), 2))
    adm.set_limit(0, 0, clock.now)
    assert adm.slots[0].limit == 1
    grant(adm, clock)


def test_dispatch_across_models_by_rank() -> None:
    """Dispatch serves the most urgent waiter whichever model it waits for."""
    adm, clock = _admission(("a", ("x", "y"), 1))
    grant(adm, clock, "x")
    wx = queue(adm, clock, "x", priority=1)
    wy = queue(adm, clock, "y", priority=0)
    adm.set_limit(0, 2, clock.now)
    adm.dispatch(clock.now)
    check(adm)
    assert wy.lease is not None
    assert wx.lease is None


def test_held_endpoint_queues_and_resumes() -> None:
    """A held endpoint keeps requests queued; back up, dispatch grants them."""
    adm, clock = _admission(("a", ("m",), 2))
    adm.set_state(0, "held", "loading", None, clock.now)
    w = queue(adm, clock)
    adm.dispatch(clock.now)
    assert w.lease is None
    adm.set_state(0, "up", "healthy", None, clock.now)
    adm.dispatch(clock.now)
    check(adm)
    assert w.lease is not None


def test_half_open_trials_cap_the_limit() -> None:
    """While half-open only ``trials`` requests run, whatever the limit."""
    adm, clock = _admission(("a", ("m",), 5))
    adm.set_state(0, "up", "half_open", 1, clock.now)
    grant(adm, clock)
    queue(adm, clock)
    adm.set_state(0, "up", "healthy", None, clock.now)
    adm.dispatch(clock.now)
    check(adm)
    assert adm.in_flight == 2


def test_all_down_fails_queued_and_new_requests() -> None:
    """When every endpoint of a model is down, its queue fails with EndpointUnavailable."""
    adm, clock = _admission(("a", ("m", "n"), 1), ("b", ("m",), 1))
    grant(adm, clock)
    grant(adm, clock)
    wm = queue(adm, clock, "m")
    wn = queue(adm, clock, "n")
    adm.set_state(0, "down", "down", None, clock.now)
    adm.dispatch(clock.now)
    check(adm)
    # "n" is only on a; "m" still has b.
    assert isinstance(wn.error, EndpointUnavailable)
    assert wn.event.is_set
    assert wm.error is None
    assert wm.queued
    assert adm.outcomes["unavailable"] == 1
    with pytest.raises(EndpointUnavailable):
        adm.submit("n", 0, math.inf, clock.now)
    check(adm)
    adm.set_state(1, "down", "down", None, clock.now)
    adm.dispatch(clock.now)
    check(adm)
    assert isinstance(wm.error, EndpointUnavailable)
    assert adm.outcomes["unavailable"] == 3
    assert adm.queued == 0


def test_release_on_down_endpoint_does_not_hand_over() -> None:
    """A slot freed on an endpoint that is not up is not given to a waiter."""
    adm, clock = _admission(("a", ("m",), 1), ("b", ("m",), 1))
    la = grant(adm, clock)
    grant(adm, clock)
    w = queue(adm, clock)
    adm.set_state(0, "held", "loading", None, clock.now)
    adm.finish(la, None)
    check(adm)
    assert w.lease is None
    assert w.queued


def test_close_ends_queued_with_scheduler_closed() -> None:
    """close() refuses every queued request and everything submitted after it."""
    adm, clock = _admission(("a", ("m",), 1))
    lease = grant(adm, clock)
    ws = [queue(adm, clock, priority=p) for p in (0, 1, 0)]
    adm.close()
    check(adm)
    assert all(isinstance(w.error, SchedulerClosed) and w.event.is_set for w in ws)  # type: ignore[attr-defined]
    assert adm.outcomes["closed"] == 3
    assert adm.queued == 0
    with pytest.raises(SchedulerClosed):
        adm.submit("m", 0, math.inf, clock.now)
    check(adm)
    assert adm.outcomes["closed"] == 4
    drained = adm.drained_event()
    assert not drained.is_set()
    adm.finish(lease, None)
    check(adm)
    assert drained.is_set()


def test_feedback_samples_and_full_mailbox() -> None:
    """Each release sends one Sample; a full mailbox drops it, counted, without blocking."""
    adm, clock = _admission(("a", ("m",), 2))
    send, recv = anyio.create_memory_object_stream[Any](1)
    adm.slots[0].feedback = send
    first = grant(adm, clock)
    second = grant(adm, clock)
    first.report(ttft=0.25, prompt_tokens=10, output_tokens=3)
    clock.now = 1.5
    adm.finish(first, None)
    adm.finish(second, RuntimeError("x"))
    sample = recv.receive_nowait()
    assert isinstance(sample, Sample)
    assert msgspec.structs.asdict(sample) == {
        "start": 0.0,
        "duration": 1.5,
        "in_flight": 1,
        "outcome": "success",
        "ttft": 0.25,
        "prompt_tokens": 10,
        "output_tokens": 3,
        "retry_after": None,
        "model": "m",
    }
    assert adm.slots[0].dropped_samples == 1
    send.close()
    recv.close()
    check(adm)


def test_user_classifier_returning_junk_is_ignored() -> None:
    """An endpoint classifier that returns nonsense cannot poison the sample."""
    clock = FakeClock()
    ep = Endpoint("a", url="http://127.0.0.1:9", models=["m"], classify=lambda e: "bogus")  # type: ignore[arg-type,return-value]
    adm = Admission(
        [EndpointSlot(0, ep, 1, None)], queue_size=1, aging=1.0, clock=clock, new_event=FakeEvent
    )
    send, recv = anyio.create_memory_object_stream[Any](4)
    adm.slots[0].feedback = send
    adm.finish(grant(adm, clock), RuntimeError("x"))
    sample = recv.receive_nowait()
    assert sample.outcome in (
        "error",
        "success",
        "overload",
        "loading",
        "timeout",
        "client_error",
        "cancelled",
    )
    send.close()
    recv.close()


# -- bad input to the Scheduler -------------------------------------------------------------


class _Bomb:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    __repr__ = __str__


async def _noop(lease: Lease) -> None:
    pass


_BAD: list[tuple[str, dict[str, Any]]] = [
    ("priority", {"priority": True}),
    ("priority", {"priority": 1.0}),
    ("priority", {"priority": "1"}),
    ("priority", {"priority": 10**9}),
    ("priority", {"priority": None}),
    ("timeout", {"timeout": math.nan}),
    ("timeout", {"timeout": -1.0}),
    ("timeout", {"timeout": -math.inf}),
    ("timeout", {"timeout": True}),
    ("timeout", {"timeout": "5"}),
    ("timeout", {"timeout": _Bomb()}),
    ("model", {"model": ""}),
    ("model", {"model": "llama\x00"}),
    ("model", {"model": "x" * 1_000_000}),
    ("model", {"model": None}),
    ("model", {"model": 5}),
    ("model", {"model": _Bomb()}),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("field", "kwargs"), _BAD)
async def test_bad_input_changes_nothing(field: str, kwargs: dict[str, Any]) -> None:
    """Every refused argument raises InvalidParameter naming it, and counts nothing."""
    args = {"model": "m", **kwargs}
    async with Scheduler([_ep("a", "m")], limit=Fixed(1)) as sched:
        before = msgspec.to_builtins(sched.stats())
        for attempt in (
            functools.partial(sched.run, _noop, **args),
            functools.partial(sched.acquire, **args),
        ):
            with pytest.raises(InvalidParameter) as info:
                await attempt()
            assert info.value.field == field
        with pytest.raises(InvalidParameter) as info:
            async with sched.lease(**args):
                pytest.fail("entered a lease with bad input")
        assert info.value.field == field
        assert msgspec.to_builtins(sched.stats()) == before


@pytest.mark.anyio
@pytest.mark.parametrize("call", [None, 5, "call", object()])
async def test_non_callable_call_changes_nothing(call: object) -> None:
    """run() refuses a call that is not callable before counting anything."""
    async with Scheduler([_ep("a", "m")], limit=Fixed(1)) as sched:
        before = msgspec.to_builtins(sched.stats())
        with pytest.raises(InvalidParameter) as info:
            await sched.run(call, model="m")  # type: ignore[arg-type]
        assert info.value.field == "call"
        assert msgspec.to_builtins(sched.stats()) == before


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("endpoints", {"endpoints": []}),
        ("endpoints", {"endpoints": _ep("a", "m")}),
        ("endpoints", {"endpoints": [_ep("a", "m"), _ep("a", "n")]}),
        ("endpoints", {"endpoints": ["http://127.0.0.1:1"]}),
        ("limit", {"limit": 8}),
        ("queue", {"queue": 8}),
        ("resilience", {"resilience": {"seed": 1}}),
        ("resources", {"resources": "psutil"}),
        ("grace", {"grace": -1}),
        ("grace", {"grace": math.inf}),
        ("bogus", {"bogus": 1}),
    ],
)
def test_bad_scheduler_config(field: str, kwargs: dict[str, Any]) -> None:
    """A bad constructor argument is refused with the field named."""
    args: dict[str, Any] = {"endpoints": [_ep("a", "m")], **kwargs}
    endpoints = args.pop("endpoints")
    with pytest.raises(InvalidParameter) as info:
        Scheduler(endpoints, **args)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("field", "build"),
    [
        ("queue.size", lambda: QueueOptions(size=-1)),
        ("queue.size", lambda: QueueOptions(size=True)),
        ("queue.aging", lambda: QueueOptions(aging=math.nan)),
        ("tick_interval", lambda: Resilience(tick_interval=0)),
        ("mailbox_size", lambda: Resilience(mailbox_size=0)),
        ("resources.interval", lambda: ResourceOptions(interval=0)),
        ("resources.dirs", lambda: ResourceOptions(dirs="/tmp")),
    ],
)
def test_bad_option_groups(field: str, build: Any) -> None:
    """Each option group refuses a bad value at construction, naming the field."""
    with pytest.raises(InvalidParameter) as info:
        build()
    assert info.value.field == field


def test_flat_keywords_still_work_with_a_warning() -> None:
    """The first release's flat keywords map onto the groups, with a DeprecationWarning."""
    with pytest.warns(DeprecationWarning, match="is deprecated") as record:
        sched = Scheduler([_ep("a", "m")], queue_size=7, aging=2.0, tick_interval=0.5)
    assert len(record) == 3
    assert sched._queue_size == 7
    assert sched._aging == 2.0
    assert sched._tick == 0.5
    with pytest.warns(DeprecationWarning, match="queue_size"), pytest.raises(InvalidParameter):
        Scheduler([_ep("a", "m")], queue_size=-1)


# -- a rule-based state machine over the synchronous core -----------------------------------


class AdmissionMachine(RuleBasedStateMachine):
    """Random submits, releases, departures, limit and health changes, and close.

    After every rule: the counters add up, no endpoint took a new lease while
    at or over its limit, the queue is work-conserving (nobody waits for a
    model while an endpoint serving it is up with room, or while all of them
    are down), and every grant went to the most urgent waiter it could serve.
    """

    AGING = 2.0

    def __init__(self) -> None:
        super().__init__()
        self.adm, self.clock = _admission(
            ("a", ("x", "y"), 1), ("b", ("y",), 1), ("c", ("z",), 1), queue_size=6, aging=self.AGING
        )
        self.leases: list[Lease] = []
        self.waiters: list[Waiter] = []
        self.order: dict[int, int] = {}  # id(waiter) -> submission order
        self.seq = 0
        self.before: list[int] = []

    def _key(self, w: Waiter) -> tuple[float, int]:
        return (w.enqueued_at + w.priority * self.AGING, self.order[id(w)])

    def _start(self) -> None:
        self.before = [s.in_flight for s in self.adm.slots]
        self.queued_before = [w for w in self.waiters if w.queued]

    def _collect(self) -> None:
        """Move granted waiters to the leases; check each grant's urgency."""
        granted = [w for w in self.waiters if w.lease is not None]
        still = [w for w in self.waiters if w.queued]
        for w in granted:
            assert w.event.is_set  # type: ignore[attr-defined]
            lease = w.lease
            assert lease is not None
            slot = lease._slot
            assert w.model in slot.models
            for v in still:
                if v.model in slot.models and v in self.queued_before:
                    assert self._key(w) < self._key(v), (w, v)
            self.leases.append(lease)
        for w in self.waiters:
            if not w.queued and w.lease is None:
                assert w.error is None or w.event.is_set  # type: ignore[attr-defined]
        self.waiters = still

    @rule(
        requests=st.lists(
            st.tuples(
                st.sampled_from(["x", "x", "y", "z", "nobody"]),
                st.integers(-2, 2),
                st.one_of(st.none(), st.floats(0, 10)),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def submit(self, requests: list[tuple[str, int, float | None]]) -> None:
        for model, priority, timeout in requests:
            self._start()
            now = self.clock.now
            deadline = math.inf if timeout is None else now + timeout
            try:
                got = self.adm.submit(model, priority, deadline, now)
            except (EndpointUnavailable, Rejected, SchedulerClosed):
                continue
            if isinstance(got, Lease):
                assert model in got._slot.models
                self.leases.append(got)
            else:
                self.seq += 1
                self.order[id(got)] = self.seq
                self.waiters.append(got)
            self.clock.now += 0.25

    @rule(pick=st.integers(0, 99), how=st.sampled_from(["ok", "error", "overload", "cancel"]))
    def finish(self, pick: int, how: str) -> None:
        live = [lease for lease in self.leases if not lease.released]
        if not live:
            return
        self._start()
        lease = live[pick % len(live)]
        if how == "ok":
            self.adm.finish(lease, None)
        elif how == "error":
            self.adm.finish(lease, RuntimeError("x"))
        elif how == "overload":
            self.adm.finish(lease, Overloaded(retry_after=1.0))
        else:
            self.adm.finish(lease, None, outcome="cancelled", result="cancelled")
        self._collect()

    @rule(pick=st.integers(0, 99), outcome=st.sampled_from(["cancelled", "deadline_exceeded"]))
    def leave(self, pick: int, outcome: str) -> None:
        if not self.waiters:
            return
        self._start()
        self.adm.leave(self.waiters[pick % len(self.waiters)], outcome)
        self._collect()

    @rule(index=st.integers(0, 2), limit=st.integers(0, 4))
    def set_limit(self, index: int, limit: int) -> None:
        self._start()
        self.adm.set_limit(index, limit, self.clock.now)
        self.adm.dispatch(self.clock.now)
        self._collect()

    @rule(
        index=st.integers(0, 2),
        routing=st.sampled_from(["up", "up", "held", "down"]),
        trials=st.sampled_from([None, None, 1]),
    )
    def set_state(self, index: int, routing: Any, trials: int | None) -> None:
        self._start()
        self.adm.set_state(index, routing, routing, trials, self.clock.now)
        self.adm.dispatch(self.clock.now)
        self._collect()

    @rule(dt=st.floats(0, 5))
    def tick(self, dt: float) -> None:
        self.clock.now += dt

    @precondition(lambda self: self.seq >= 12)
    @rule()
    def close(self) -> None:
        self._start()
        self.adm.close()
        self._collect()
        assert self.adm.queued == 0

    @invariant()
    def counters_add_up(self) -> None:
        check(self.adm)

    @invariant()
    def no_grant_past_a_limit(self) -> None:
        for slot, before in zip(self.adm.slots, self.before or [0, 0, 0], strict=True):
            if slot.in_flight > slot.effective_limit:
                assert slot.in_flight <= before, slot.endpoint.name

    @invariant()
    def work_conserving(self) -> None:
        adm = self.adm
        for model in adm.queue.models_waiting():
            slots = adm.by_model[model]
            assert not any(s.has_room() for s in slots), model
            assert any(s.routing != "down" for s in slots), model


TestAdmissionMachine = AdmissionMachine.TestCase
TestAdmissionMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
