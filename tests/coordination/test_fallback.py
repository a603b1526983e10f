"""The link state machine and the fallback share (sans-IO)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from lmgate.coordination import fallback_limit
from lmgate.coordination._fallback import Link


@pytest.mark.parametrize(
    ("limit", "processes", "share", "expected"),
    [
        (8, 4, None, 2),
        (8, 3, None, 2),
        (8, 1, None, 8),
        (8, None, None, 1),
        (3, 8, None, 1),
        (10, 4, 0.5, 5),
        (10, 4, 0.01, 1),
        (10, None, 1.0, 10),
    ],
)
def test_fallback_limit_examples(
    limit: int, processes: int | None, share: float | None, expected: int
) -> None:
    """An equal split by default, a fraction when configured, one slot when nothing is known."""
    assert fallback_limit(limit, processes=processes, share=share) == expected


@settings(deadline=None)
@given(limit=st.integers(1, 10_000), processes=st.integers(1, 10_000))
def test_equal_shares_never_add_up_beyond_the_limit(limit: int, processes: int) -> None:
    """With at least one slot per process, N equal shares fit in the limit whenever N <= limit."""
    share = fallback_limit(limit, processes=processes, share=None)
    assert share >= 1
    if processes <= limit:
        assert share * processes <= limit


@settings(deadline=None)
@given(
    limit=st.integers(1, 10_000),
    processes=st.integers(1, 100),
)
def test_a_fraction_of_one_over_n_fits_too(limit: int, processes: int) -> None:
    """Configured as 1/N, the shares of N processes fit whenever N <= limit."""
    share = fallback_limit(limit, processes=None, share=1 / processes)
    if processes <= limit:
        assert share * processes <= limit


def test_link_starts_distrusting_redis() -> None:
    """Before the first contact the link is in fallback."""
    link = Link(rejoin_delay=1.0)
    assert link.mode == "fallback"
    assert not link.trusted
    assert link.capped


def test_link_rejoins_then_connects_after_the_delay() -> None:
    """Joined: rejoining, capped, until exactly rejoin_delay later."""
    link = Link(rejoin_delay=2.0)
    change = link.joined(10.0)
    assert change is not None
    assert change.until == 12.0
    assert link.mode == "rejoining"
    assert link.trusted
    assert link.capped
    assert link.tick(11.999) is None
    assert link.tick(12.0) is not None
    assert link.mode == "connected"
    assert not link.capped


def test_a_loss_while_rejoining_restarts_the_delay() -> None:
    """Losing Redis again during the delay sends the link back to fallback."""
    link = Link(rejoin_delay=2.0)
    link.joined(0.0)
    gen = link.generation
    assert link.lost(1.0, "boom") is not None
    assert link.mode == "fallback"
    assert link.generation > gen
    assert link.lost(1.5, "again") is None  # already in fallback: no news
    link.joined(3.0)
    assert link.tick(4.0) is None
    assert link.mode == "rejoining"


class LinkMachine(RuleBasedStateMachine):
    """Random losses, joins and ticks: connected only after a full quiet delay."""

    def __init__(self) -> None:
        super().__init__()
        self.link = Link(rejoin_delay=1.5)
        self.now = 0.0
        self.joined_at: float | None = None
        self.generation = 0

    @rule(dt=st.floats(0, 3))
    def advance(self, dt: float) -> None:
        self.now += dt
        self.link.tick(self.now)

    @rule()
    def lose(self) -> None:
        if self.link.lost(self.now, "x") is not None:
            self.joined_at = None

    @rule()
    def join(self) -> None:
        if self.link.joined(self.now) is not None:
            self.joined_at = self.now

    @invariant()
    def connected_only_after_the_delay(self) -> None:
        if self.link.mode == "connected":
            assert self.joined_at is not None
            assert self.now >= self.joined_at + 1.5
        assert self.link.capped == (self.link.mode != "connected")

    @invariant()
    def generation_never_goes_back(self) -> None:
        assert self.link.generation >= self.generation
        self.generation = self.link.generation


TestLinkMachine = LinkMachine.TestCase
TestLinkMachine.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)
