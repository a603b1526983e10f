"""The Lua scripts against a real Redis, with the time handed in (no waiting).

Every script takes ``now`` from its caller here, so lease expiry, dead
processes and aging are tested at exact instants.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from lmgate.coordination._book import Book, Want
from lmgate.coordination._calls import control_call, rejoin_call, sync_call
from lmgate.coordination._scripts import (
    CONTROL,
    FAREWELL,
    PUBLISH_LIMIT,
    REJOIN,
    SYNC,
    Keys,
    notify_channel,
)

from ._server import RedisServer

pytestmark = pytest.mark.redis

PREFIX = "t"
NAME = "ep"
TTL = 60_000
AGING = 10_000
KEYS = Keys(PREFIX, NAME)


class Proc:
    """One simulated process: a book and direct script calls."""

    def __init__(self, r: redis.Redis, owner: str, limit: int) -> None:
        self.r = r
        self.owner = owner
        self.book = Book(owner, aging=AGING / 1000)
        self.limit = limit
        self.epoch = ""
        self.sync_script = r.register_script(SYNC)
        self.rejoin_script = r.register_script(REJOIN)

    def join(self, now: int) -> list[Any]:
        held, regs = self.book.rejoin(None)
        keys, args = rejoin_call(
            KEYS,
            owner=self.owner,
            ttl_ms=TTL,
            default_limit=self.limit,
            aging_ms=AGING,
            new_epoch="e1",
            held=held,
            registrations=regs,
            now_ms=now,
        )
        res: list[Any] = self.rejoin_script(keys=keys, args=args)
        self.epoch = res[0].decode()
        return res

    def want(self, priority: int, now: int) -> Want:
        return self.book.want(priority, now / 1000, None)

    def sync(self, now: int, *, renew: bool = False, cap: int | None = None) -> list[Any]:
        res = self.send(now, renew=renew, cap=cap)
        self.settle(res)
        return res

    def send(self, now: int, *, renew: bool = False, cap: int | None = None) -> list[Any]:
        """The round trip's request and Redis's work, without applying the answer."""
        batch = self.book.batch(cap=cap, renew=renew)
        keys, args = sync_call(
            KEYS,
            owner=self.owner,
            ttl_ms=TTL,
            default_limit=self.limit,
            aging_ms=AGING,
            epoch=self.epoch,
            notify_prefix=notify_channel(PREFIX, ""),
            name=NAME,
            removals=batch.removals,
            registrations=batch.registrations,
            renewals=batch.renewals,
            samples=[],
            now_ms=now,
        )
        res: list[Any] = self.sync_script(keys=keys, args=args)
        return res

    def settle(self, res: list[Any]) -> None:
        if res[0] == 1:
            self.book.settle([m.decode() for m in res[1]], int(res[2]))


def holders(r: redis.Redis) -> list[str]:
    return [m.decode() for m in r.zrange(KEYS.holders, 0, -1)]


def waiting(r: redis.Redis) -> list[str]:
    return [m.decode() for m in r.zrange(KEYS.waiting, 0, -1)]


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as client:
        yield client


def test_grants_up_to_the_limit_and_queues_the_rest(r: redis.Redis) -> None:
    """Five wants on a limit of three: three granted at once, the rest as slots free."""
    a = Proc(r, "a", 3)
    a.join(0)
    wants = [a.want(0, 0) for _ in range(5)]
    res = a.sync(1)
    assert [w.state for w in wants] == ["granted"] * 3 + ["waiting"] * 2
    assert res[2] == 3
    assert len(waiting(r)) == 2
    a.book.release(wants[0].member)
    a.sync(2)
    assert wants[3].state == "granted"
    assert wants[4].state == "waiting"
    assert sorted(holders(r)) == sorted(w.member for w in wants[1:4])


def test_a_freed_slot_is_reserved_for_the_oldest_waiter_of_any_process(r: redis.Redis) -> None:
    """FIFO across processes: the later process cannot take a slot the earlier one waits for."""
    a, b = Proc(r, "a", 1), Proc(r, "b", 1)
    a.join(0)
    b.join(0)
    first = b.want(0, 0)
    b.sync(1)
    assert first.state == "granted"
    early = a.want(0, 10)
    a.sync(10)
    late = b.want(0, 20)
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(notify_channel(PREFIX, "a"))
    b.book.release(first.member)
    b.sync(30)
    assert late.state == "waiting"
    msg = None
    for _ in range(20):  # the first reads consume the subscription's confirmation
        msg = pubsub.get_message(timeout=0.1)
        if msg is not None:
            break
    assert msg is not None
    assert msg["data"] == NAME.encode()
    pubsub.close()
    a.sync(31)
    assert early.state == "granted"


def test_priority_orders_waiters_across_processes(r: redis.Redis) -> None:
    """A lower priority number queued later still goes first (within the aging)."""
    a, b = Proc(r, "a", 1), Proc(r, "b", 1)
    a.join(0)
    b.join(0)
    blocker = a.want(0, 0)
    a.sync(0)
    low = a.want(5, 100)
    a.sync(100)
    high = b.want(0, 1000)
    b.sync(1000)
    assert waiting(r) == [high.member, low.member]
    a.book.release(blocker.member)
    a.sync(2000)
    b.sync(2001)
    assert high.state == "granted"
    assert low.state == "waiting"


def test_aging_lets_an_old_low_priority_waiter_overtake(r: redis.Redis) -> None:
    """A waiter older by more than ``aging`` per level is ahead of a fresh urgent one."""
    a, b = Proc(r, "a", 1), Proc(r, "b", 1)
    a.join(0)
    b.join(0)
    a.want(0, 0)
    a.sync(0)
    old = a.want(1, 0)
    a.sync(0)
    fresh = b.want(0, AGING + 1)
    b.sync(AGING + 1)
    assert waiting(r) == [old.member, fresh.member]


def test_a_holder_that_stops_renewing_expires_at_its_ttl(r: redis.Redis) -> None:
    """A dead process's slot is given to a waiter once, and only once, its expiry passes."""
    a, b = Proc(r, "a", 1), Proc(r, "b", 1)
    a.join(0)
    b.join(0)
    a.want(0, 0)
    a.sync(0)
    w = b.want(0, 0)
    b.sync(0)
    b.sync(TTL - 1)
    assert w.state == "waiting"
    b.sync(TTL)
    assert w.state == "granted"
    assert holders(r) == [w.member]


def test_renewing_keeps_a_slot_beyond_the_ttl(r: redis.Redis) -> None:
    """A holder that renews keeps its slot past the first expiry."""
    a, b = Proc(r, "a", 1), Proc(r, "b", 1)
    a.join(0)
    b.join(0)
    mine = a.want(0, 0)
    a.sync(0)
    a.sync(TTL - 100, renew=True)
    w = b.want(0, TTL)
    b.sync(TTL + 500)
    assert w.state == "waiting"
    assert holders(r) == [mine.member]


def test_a_dead_process_waiters_leave_the_queue(r: redis.Redis) -> None:
    """Waiters of a process whose heartbeat expired no longer block the head."""
    a, b = Proc(r, "a", 1), Proc(r, "b", 1)
    a.join(0)
    b.join(0)
    blocker = b.want(0, 0)
    b.sync(0)
    a.want(0, 1)
    a.sync(1)
    w = b.want(0, 2)
    b.sync(2, renew=True)
    b.book.release(blocker.member)
    b.sync(TTL // 2, renew=True)
    assert w.state == "waiting"  # a's waiter is the head and a is alive
    b.sync(TTL + 2)
    assert w.state == "granted"
    assert waiting(r) == []


def test_a_sync_from_another_redis_lifetime_is_refused(r: redis.Redis) -> None:
    """When Redis lost its keys the epoch differs, and SYNC says so instead of granting."""
    a = Proc(r, "a", 2)
    a.join(0)
    r.flushall()
    a.want(0, 1)
    res = a.sync(1)
    assert res[0] == 0
    assert holders(r) == []


def test_rejoin_counts_running_leases_and_drops_stale_entries(r: redis.Redis) -> None:
    """Rejoining counts exactly the running leases and requeues the waiting ones."""
    a = Proc(r, "a", 2)
    a.join(0)
    w1, w2, w3 = a.want(0, 0), a.want(0, 0), a.want(0, 0)
    a.sync(0)
    assert w3.state == "waiting"
    a.book.go_offline()
    a.book.release(w1.member)  # released while Redis was away
    a.join(100)
    assert holders(r) == [w2.member]
    assert waiting(r) == [w3.member]


def test_a_late_renewal_counts_the_lease_back_in(r: redis.Redis) -> None:
    """A lease still running after its entry expired is counted again (and reported)."""
    a = Proc(r, "a", 1)
    a.join(0)
    w = a.want(0, 0)
    a.sync(0)
    res = a.sync(TTL + 10, renew=True)
    assert res[6] == 1
    assert holders(r) == [w.member]


def test_a_late_answer_from_before_a_rejoin_is_given_back(r: redis.Redis) -> None:
    """A grant whose answer predates a rejoin is given back, and the want queued again."""
    a = Proc(r, "a", 1)
    a.join(0)
    w = a.want(0, 0)
    a.book.go_offline()  # Redis lost...
    a.join(1)  # ...and rejoined: the want is queued again
    # A command sent before the loss reaches Redis only now and grants the
    # want; its answer belongs to the old generation, so it is not applied.
    late = a.send(2)
    assert late[1] == [w.member.encode()]
    assert w.state == "waiting"
    assert a.book.disown(m.decode() for m in late[1])
    a.sync(3)  # gives the slot back, queues the want again, grants it
    assert w.state == "granted"
    assert holders(r) == [w.member]
    assert waiting(r) == []


def test_control_elects_one_leader_and_shares_reports(r: redis.Redis) -> None:
    """The first process to ask leads; others see its report; expired reports vanish."""
    control = r.register_script(CONTROL)

    def call(owner: str, report: bytes, now: int, lead: bool = True) -> list[Any]:
        keys, args = control_call(
            KEYS, owner=owner, ttl_ms=TTL, report=report, publish=False, want_lead=lead, now_ms=now
        )
        return list(control(keys=keys, args=args))

    assert call("a", b'["down","open",null]', 0)[0] == 2
    res = call("b", b"", 10)
    assert res[0] == 0
    assert res[2] == [b"a", b'["down","open",null]']
    assert call("a", b'["down","open",null]', 20)[0] == 1
    assert call("b", b"", TTL + 30)[2] == []  # a's report expired
    r.delete(KEYS.leader)  # as if a's lock had expired
    assert call("b", b"", TTL + 40)[0] == 2


def test_only_the_leader_writes_the_limit(r: redis.Redis) -> None:
    """A deposed leader's write is refused."""
    publish = r.register_script(PUBLISH_LIMIT)
    r.set(KEYS.leader, "a")
    assert publish(keys=[KEYS.leader, KEYS.limit], args=["b", 3, KEYS.channel]) == 0
    assert r.get(KEYS.limit) is None
    assert publish(keys=[KEYS.leader, KEYS.limit], args=["a", 3, KEYS.channel]) == 1
    assert r.get(KEYS.limit) == b"3"


def test_farewell_gives_everything_back(r: redis.Redis) -> None:
    """Leaving frees the process's slots, queue entries, heartbeat and lock at once."""
    a = Proc(r, "a", 1)
    a.join(0)
    a.want(0, 0)
    a.want(0, 0)
    a.sync(0)
    r.set(KEYS.leader, "a")
    farewell = r.register_script(FAREWELL)
    keys = [
        KEYS.holders,
        KEYS.waiting,
        KEYS.owners,
        KEYS.waiters_of("a"),
        KEYS.leader,
        KEYS.breaker,
    ]
    assert farewell(keys=keys, args=["a", notify_channel(PREFIX, ""), NAME]) == 1
    assert holders(r) == []
    assert waiting(r) == []
    assert r.get(KEYS.leader) is None
    assert r.zcard(KEYS.owners) == 0


class SharedSlots(RuleBasedStateMachine):
    """Three processes' books against the real scripts: the limit holds, nothing leaks."""

    server: RedisServer

    def __init__(self) -> None:
        super().__init__()
        self.r = redis.Redis(host="127.0.0.1", port=self.server.port)
        self.r.flushall()
        self.limit = 3
        self.procs = [Proc(self.r, o, self.limit) for o in ("a", "b", "c")]
        self.now = 0
        self.all: list[Want] = []
        #: Answers on their way back (the caller may leave meanwhile).
        self.pending: dict[int, list[Any]] = {}

    wants = Bundle("wants")

    @initialize()
    def join(self) -> None:
        for p in self.procs:
            p.join(self.now)

    @rule(target=wants, p=st.integers(0, 2), priority=st.integers(-2, 2))
    def want(self, p: int, priority: int) -> tuple[int, Want]:
        w = self.procs[p].want(priority, self.now)
        self.all.append(w)
        return (p, w)

    @rule(pw=consumes(wants))
    def leave_or_release(self, pw: tuple[int, Want]) -> None:
        p, w = pw
        book = self.procs[p].book
        if w.state == "granted":
            book.release(w.member)
        else:
            book.abandon(w)

    @rule(p=st.integers(0, 2), renew=st.booleans())
    def send(self, p: int, renew: bool) -> None:
        if p in self.pending:
            self.procs[p].settle(self.pending.pop(p))
        self.now += 1
        res = self.procs[p].send(self.now, renew=renew)
        assert res[0] == 1
        if res[1]:
            assert int(res[2]) <= int(res[3])
        self.pending[p] = res

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data())
    def answer(self, data: st.DataObject) -> None:
        p = data.draw(st.sampled_from(sorted(self.pending)))
        self.procs[p].settle(self.pending.pop(p))

    def _in_flight(self, p: int) -> set[str]:
        res = self.pending.get(p)
        return {m.decode() for m in res[1]} if res else set()

    @rule(limit=st.integers(1, 4))
    def change_limit(self, limit: int) -> None:
        self.r.set(KEYS.limit, limit)

    @invariant()
    def held_slots_are_counted_in_redis(self) -> None:
        in_redis = set(holders(self.r))
        for i, p in enumerate(self.procs):
            assert set(p.book.held) <= in_redis
            extra = {m for m in in_redis if m.startswith(p.owner + ":")} - set(p.book.held)
            assert extra <= p.book.removals | self._in_flight(i)

    @invariant()
    def queued_in_redis_only_what_waits(self) -> None:
        queued = set(waiting(self.r))
        for i, p in enumerate(self.procs):
            mine = {m for m in queued if m.startswith(p.owner + ":")}
            sent = {m for m, w in p.book.waiting.items() if w.sent} - self._in_flight(i)
            assert sent <= mine
            assert mine - sent <= p.book.removals

    @invariant()
    def every_want_is_in_exactly_one_place(self) -> None:
        for w in self.all:
            p = self.procs["abc".index(w.member[0])].book
            places = (w.member in p.waiting) + (w.member in p.held)
            assert places == (1 if w.state in ("waiting", "granted") else 0) or (
                w.state == "granted" and places == 0  # released
            )

    def teardown(self) -> None:
        # Liveness: once everything held is released, every waiter gets a slot.
        try:
            for i, res in self.pending.items():
                self.procs[i].settle(res)
            for _ in range(60):
                for p in self.procs:
                    for m in list(p.book.held):
                        p.book.release(m)
                    self.now += 1
                    p.sync(self.now)
                if not any(p.book.waiting for p in self.procs):
                    break
            assert not any(p.book.waiting for p in self.procs)
        finally:
            self.r.close()


def test_shared_slots_state_machine(redis_server: RedisServer, redis_url: str) -> None:
    """Random wants, releases, departures, syncs and limit changes keep books and Redis in step."""
    SharedSlots.server = redis_server
    run_state_machine_as_test(
        SharedSlots,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
