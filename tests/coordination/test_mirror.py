"""Breaker states shared between processes (sans-IO)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lmgate.coordination._mirror import (
    RouteState,
    StateMirror,
    decode_report,
    encode_report,
    severity,
    worst,
)

UP = RouteState("up", "healthy")
DOWN = RouteState("down", "open")
HELD = RouteState("held", "held")
HALF = RouteState("up", "half_open", 1)

states = st.builds(
    RouteState,
    st.sampled_from(["up", "held", "down"]),
    st.sampled_from(["healthy", "open", "held", "half_open"]),
    st.none() | st.integers(1, 5),
)


def test_reports_round_trip_and_junk_is_refused() -> None:
    """A report decodes to what was sent; anything else decodes to None."""
    assert decode_report(encode_report(HALF)) == HALF
    for junk in (b"", b"{", b'["sideways","x",null]', b'["up","x",-1]', b"\xff" * 10):
        assert decode_report(junk) is None


def test_worst_prefers_down_then_held_then_half_open() -> None:
    """The most restrictive report wins; plain up is no report."""
    assert worst([UP, HALF, HELD]) == HELD
    assert worst([HALF, DOWN, HELD]) == DOWN
    assert worst([UP]) is None


def test_a_peer_breaker_applies_and_lifts() -> None:
    """A peer's open breaker routes us down; when it closes we route by our own state."""
    m = StateMirror(UP)
    applied = m.decide(DOWN)
    assert applied is not None
    assert applied.routing == "down"
    assert applied.shared
    m.observe(applied)  # admission now routes by it
    assert m.decide(DOWN) is None
    assert m.decide(None) == UP
    assert m.applied is None


def test_our_own_change_while_a_shared_state_applies_is_news() -> None:
    """If our breaker moves while a peer's state applies, ours is reported."""
    m = StateMirror(UP)
    applied = m.decide(HELD)
    assert applied is not None
    m.observe(DOWN)  # our own breaker opened meanwhile
    assert m.applied is None
    assert m.own == DOWN
    assert m.report() == (DOWN, True)
    assert m.decide(HELD) is None  # ours is worse already


def test_what_is_applied_from_peers_is_never_reported_back() -> None:
    """Shared states do not echo between processes."""
    m = StateMirror(UP)
    applied = m.decide(DOWN)
    assert applied is not None
    m.observe(applied)
    assert m.report() == (None, False)


@settings(deadline=None)
@given(own=states, peers=st.lists(states, max_size=4))
def test_what_applies_is_never_milder_than_our_own(
    own: RouteState, peers: list[RouteState]
) -> None:
    """The decision routes at least as restrictively as our own breaker."""
    m = StateMirror(own)
    decision = m.decide(worst(peers))
    now = decision if decision is not None else own
    assert severity(now) >= severity(own)
    if decision is not None and decision.shared:
        assert severity(decision) == max(severity(p) for p in peers)
