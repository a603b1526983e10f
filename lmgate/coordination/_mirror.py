"""Breaker states shared between processes (sans-IO).

Each process reports its own routing state for an endpoint when it is
anything but plainly up (breaker open, held, half-open), with an expiry it
renews every poll.  Every process applies the most restrictive report of
the others when it is more restrictive than its own -- down, then held,
then half-open (up with a trial cap), then up -- and goes back to its own
when the report is withdrawn or expires (its process died or lost Redis).
So one process's breaker opening stops the endpoint for all within about
one poll; the process whose breaker opened runs the trials that close it.

What is applied carries the state name ``shared:<state>``, so it is never
mistaken for the local breaker's own state: when the local state changes
while a shared one is applied, the local change is news and is reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, cast, final, get_args

import msgspec

from lmgate.actors._messages import Routing

__all__ = ["RouteState", "StateMirror", "decode_report", "encode_report", "severity", "worst"]

SHARED = "shared:"
_ROUTINGS = frozenset(get_args(Routing))


@final
class RouteState(msgspec.Struct, frozen=True, array_like=True):
    """How admission routes an endpoint: what a breaker decides."""

    routing: Literal["up", "held", "down"]
    state: str
    trials: int | None = None

    @property
    def shared(self) -> bool:
        return self.state.startswith(SHARED)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(RouteState)


def encode_report(state: RouteState) -> bytes:
    return _encoder.encode(state)


def decode_report(raw: bytes) -> RouteState | None:
    """A peer's report, or None when it is not one (refused, not trusted)."""
    try:
        state = _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if state.routing not in _ROUTINGS or len(state.state) > 200:
        return None
    if state.trials is not None and not 0 < state.trials <= 1_000_000:
        return None
    return state


def severity(state: RouteState) -> int:
    if state.routing == "down":
        return 3
    if state.routing == "held":
        return 2
    return 1 if state.trials is not None else 0


def worst(states: Iterable[RouteState]) -> RouteState | None:
    """The most restrictive non-up state, or None."""
    best: RouteState | None = None
    for s in states:
        if severity(s) > 0 and (best is None or severity(s) > severity(best)):
            best = s
    return best


@final
class StateMirror:
    """One endpoint's own routing state and the shared one applied over it."""

    __slots__ = ("applied", "own", "reported")

    def __init__(self, own: RouteState) -> None:
        self.own = own
        #: What this process applied from a peer, if anything.
        self.applied: RouteState | None = None
        #: What this process last told its peers.
        self.reported: RouteState | None = None

    def observe(self, current: RouteState) -> None:
        """Admission routes the endpoint as ``current`` now."""
        if self.applied is None or current != self.applied:
            self.own = current
            self.applied = None

    def report(self) -> tuple[RouteState | None, bool]:
        """What to tell the peers now, and whether it is news to them."""
        mine = self.own if severity(self.own) > 0 and not self.own.shared else None
        news = mine != self.reported
        self.reported = mine
        return mine, news

    def decide(self, peers: RouteState | None) -> RouteState | None:
        """What to route by from now on, or None when nothing changes."""
        target: RouteState | None = None
        if peers is not None and severity(peers) > severity(self.own):
            name = peers.state.removeprefix(SHARED)
            target = RouteState(peers.routing, SHARED + name, peers.trials)
        if target == self.applied:
            return None
        self.applied = target
        return self.own if target is None else target

    def __repr__(self) -> str:
        return f"<StateMirror own={self.own} applied={self.applied}>"


def route_state(routing: str, state: str, trials: int | None) -> RouteState:
    r = routing if routing in _ROUTINGS else "up"
    return RouteState(cast(Routing, r), state, trials)
