"""The per-endpoint book of shared slots, without Redis (sans-IO)."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from lmgate._errors import SchedulerClosed
from lmgate.coordination._book import Book, Want


def test_local_grants_follow_priority_then_arrival() -> None:
    """Offline, the most urgent want goes first; equals go in arrival order."""
    book = Book("o", aging=10.0)
    late_low = book.want(1, 0.0, None)
    first = book.want(0, 1.0, None)
    second = book.want(0, 2.0, None)
    assert book.grant_local(2) == [first, second]
    assert late_low.state == "waiting"


def test_aging_lets_an_old_want_go_first_locally() -> None:
    """A want older by more than aging per level overtakes a fresh urgent one."""
    book = Book("o", aging=10.0)
    old = book.want(1, 0.0, None)
    book.want(0, 11.0, None)
    assert book.grant_local(1) == [old]


def test_local_grants_never_exceed_the_cap_counting_what_runs() -> None:
    """Leases still running from before the loss count against the share."""
    book = Book("o", aging=10.0)
    book.offline = False
    wants = [book.want(0, 0.0, None) for _ in range(5)]
    book.batch(cap=None, renew=False)
    book.settle([wants[0].member, wants[1].member], 2)
    book.go_offline()
    assert book.grant_local(3) == [wants[2]]
    assert book.running == 3


def test_a_cap_limits_what_is_queued_in_redis() -> None:
    """While rejoining, running plus queued never exceed the share."""
    book = Book("o", aging=10.0)
    book.offline = False
    wants = [book.want(0, 0.0, None) for _ in range(6)]
    book.settle([], 0)
    first = book.batch(cap=4, renew=False)
    assert len(first.registrations) == 4
    book.settle([wants[0].member], 1)
    assert book.batch(cap=4, renew=False).registrations == []
    book.release(wants[0].member)
    assert len(book.batch(cap=4, renew=False).registrations) == 1


def test_a_grant_for_a_want_that_left_is_given_back() -> None:
    """The caller left while its registration was on its way: the slot goes back."""
    book = Book("o", aging=10.0)
    book.offline = False
    w = book.want(0, 0.0, None)
    book.batch(cap=None, renew=False)
    book.abandon(w)
    assert book.settle([w.member], 1) == []
    assert w.member in book.removals
    assert book.running == 0


def test_releases_while_offline_are_not_kept() -> None:
    """Offline, nothing piles up to send: rejoining counts exactly what runs."""
    book = Book("o", aging=10.0)
    for _ in range(3):
        book.want(0, 0.0, None)
    granted = book.grant_local(3)
    for w in granted:
        book.release(w.member)
    assert book.removals == set()
    held, regs = book.rejoin(None)
    assert held == []
    assert regs == []


def test_local_grants_made_during_a_rejoin_are_counted_next() -> None:
    """A slot granted locally while the rejoin was in flight is counted with the next batch."""
    book = Book("o", aging=10.0)
    book.rejoin(None)
    w = book.want(0, 0.0, None)
    book.grant_local(1)
    assert book.batch(cap=None, renew=False).renewals == [w.member]
    assert book.batch(cap=None, renew=False).renewals == []


def test_fail_all_ends_every_wait_once() -> None:
    """Closing fails the waiting wants, leaves held slots alone, and does it once."""
    book = Book("o", aging=10.0)
    held = book.want(0, 0.0, None)
    book.grant_local(1)
    waiting = book.want(0, 1.0, None)
    err = SchedulerClosed("closed")
    assert book.fail_all(err) == [waiting]
    assert waiting.state == "failed"
    assert waiting.error is err
    assert held.state == "granted"
    assert book.running == 1
    assert book.fail_all(err) == []


class BookMachine(RuleBasedStateMachine):
    """Wants, grants (Redis or local), departures and link changes: each want ends once."""

    def __init__(self) -> None:
        super().__init__()
        self.book = Book("o", aging=1.0)
        self.now = 0.0
        self.ended: dict[str, str] = {}
        self.cap = 3

    wants = Bundle("wants")

    @rule(target=wants, priority=st.integers(-1, 1))
    def want(self, priority: int) -> Want:
        self.now += 0.1
        return self.book.want(priority, self.now, None)

    @rule(w=consumes(wants))
    def leave(self, w: Want) -> None:
        before = w.state
        self.book.abandon(w)
        if before == "waiting":
            assert w.state == "abandoned"

    @rule(data=st.data())
    def redis_grants(self, data: st.DataObject) -> None:
        if self.book.offline:
            return
        batch = self.book.batch(cap=self.cap, renew=False)
        sent = [m for m, _ in batch.registrations]
        granted = data.draw(st.lists(st.sampled_from(sent), unique=True)) if sent else []
        for w in self.book.settle(granted, 0):
            assert w.state == "granted"

    @rule()
    def local_grants(self) -> None:
        if self.book.offline:
            for w in self.book.grant_local(self.cap):
                assert w.state == "granted"

    @rule()
    def go_offline(self) -> None:
        self.book.go_offline()

    @rule()
    def rejoin(self) -> None:
        if self.book.offline:
            held, regs = self.book.rejoin(self.cap)
            assert set(held) == set(self.book.held)
            assert len(held) + len(regs) <= max(self.cap, len(held))

    @invariant()
    def places_match_states(self) -> None:
        b = self.book
        assert not set(b.waiting) & set(b.held)
        assert all(w.state == "waiting" for w in b.waiting.values())
        assert all(w.state == "granted" for w in b.held.values())

    @invariant()
    def offline_keeps_nothing_to_send(self) -> None:
        if self.book.offline:
            assert self.book.removals == set()

    @invariant()
    def local_grants_respect_the_cap(self) -> None:
        local = sum(1 for w in self.book.held.values() if w.local)
        assert local <= self.cap


TestBookMachine = BookMachine.TestCase
TestBookMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
