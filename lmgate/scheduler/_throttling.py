"""Client-side throttling in admission: fail fast rather than hammer a refusing endpoint.

Each endpoint gets one :class:`~lmgate.policies.ThrottleState` (the SRE
rule: refuse locally with probability ``(requests - k * accepts) /
(requests + 1)``).  Admission consults it through ``EndpointSlot.throttle``
whenever it is about to send a request to the endpoint, and tells it on
every release whether the endpoint took the request:

- accepted: ``success`` and ``client_error`` (the endpoint did the work, or
  would have; the fault was the caller's);
- not accepted: ``overload``, ``error``, ``timeout``, ``loading``;
- ``cancelled`` says nothing and is not counted.

Only what a healthy endpoint answers is counted.  While its breaker holds
or opens it (a model loading, a Retry-After, a crash), admission sends it
nothing or only trials, and those answers are the breaker's business: were
they counted, the outage would linger in the window after the endpoint
recovered and throttle it for a minute more, refusals feeding refusals.

A draw is made whenever admission is about to send a request to an
endpoint that has room.  A new request that every endpoint with room
refuses fails at once with ``Rejected(reason="throttled")`` instead of
queueing -- unless an endpoint that is not throttling is merely full, in
which case it waits for that one.  A freed slot that refuses leaves the
queue to such an endpoint if there is one; otherwise the request it would
have sent fails the same way, so nobody waits for another draw.

A healthy endpoint pays nothing: until it has answered something other
than "accepted" within the throttle's window, its probability is exactly
zero and no number is drawn.  Draws come from one seeded generator, so a
run under a mock clock replays exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Sequence
from typing import Final, final

from lmgate._errors import InvalidParameter, Rejected
from lmgate.policies._sample import OutcomeClass
from lmgate.policies._throttle import Throttle, ThrottleState, ThrottleStatistics
from lmgate.scheduler._slot import EndpointSlot, window_fits

__all__ = ["Throttling", "throttling_for"]

_ACCEPTED: Final[frozenset[OutcomeClass]] = frozenset({"success", "client_error"})


@final
class _SlotThrottle:
    """What ``EndpointSlot.throttle`` holds: one endpoint's state and its last bad news."""

    __slots__ = ("_last_bad", "_owner", "_window", "state")

    def __init__(self, owner: Throttling, state: ThrottleState, window: float) -> None:
        self._owner = owner
        self.state = state
        self._window = window
        self._last_bad = -math.inf

    def record(self, accepted: bool, now: float) -> None:
        self.state.record(accepted, now)
        if not accepted:
            self._last_bad = max(self._last_bad, now)

    def active(self, now: float) -> bool:
        """Whether a request sent now could be refused (probability above zero)."""
        return now - self._last_bad < self._window and self.state.reject_probability(now) > 0.0

    def __call__(self, now: float) -> bool:
        """True to refuse the request about to be sent to this endpoint now."""
        if now - self._last_bad >= self._window:
            return False  # nothing but accepts in the window: probability zero
        state = self.state
        if state.reject_probability(now) <= 0.0:
            return False
        if state.admit(now, self._owner.draw()):
            return False
        self._last_bad = max(self._last_bad, now)
        self._owner.refusals += 1
        return True


@final
class Throttling:
    """Admission's throttles, one per endpoint, made on the endpoint's first release.

    Making it late changes nothing: before anything is recorded the
    probability is zero.  ``refusals`` counts local refusals, so admission
    can tell a pick that found no room from one that throttling refused.
    """

    __slots__ = ("_by_slot", "_config", "_rng", "refusals")

    def __init__(self, config: Throttle, rng: random.Random) -> None:
        self._config = config
        self._rng = rng
        self._by_slot: dict[int, tuple[str, _SlotThrottle]] = {}
        self.refusals = 0

    @property
    def config(self) -> Throttle:
        return self._config

    def draw(self) -> float:
        return self._rng.random()

    def record(self, slot: EndpointSlot, outcome: OutcomeClass, now: float) -> None:
        """Count a released request: did the healthy endpoint take it?"""
        if outcome == "cancelled" or slot.routing != "up" or slot.state != "healthy":
            return
        entry = self._by_slot.get(slot.index)
        if entry is None:
            throttle = _SlotThrottle(self, self._config.build(), self._config.window)
            self._by_slot[slot.index] = (slot.endpoint.name, throttle)
            slot.throttle = throttle
        else:
            throttle = entry[1]
        throttle.record(outcome in _ACCEPTED, now)

    def refused(
        self,
        slots: tuple[EndpointSlot, ...],
        now: float,
        before: int,
        exclude: Collection[int] | None,
        model: str,
        need: int | None,
    ) -> bool:
        """After a pick found nothing: was the request throttled rather than just early?

        It was if a throttle refused it (``refusals`` moved past ``before``)
        and no endpoint it could go to is free of throttling: a healthy one
        that is only full takes it from the queue later.
        """
        if self.refusals == before:
            return False
        for s in slots:
            if s.routing != "up" or (exclude is not None and s.index in exclude):
                continue
            if not window_fits(s, model, need):
                continue
            throttle = s.throttle
            if not isinstance(throttle, _SlotThrottle) or not throttle.active(now):
                return False
        return True

    def must_refuse(self, slots: Sequence[EndpointSlot], slot: EndpointSlot, now: float) -> bool:
        """``slot`` refused to take a queued request: must that request fail now?

        No -- stop filling ``slot`` and let the queue wait -- when an
        endpoint free of throttling serves the same models; yes when every
        other way is throttled too (admission then fails its best waiter).
        """
        models = set(slot.models)
        for s in slots:
            if s is slot or s.routing != "up" or models.isdisjoint(s.models):
                continue
            throttle = s.throttle
            if not isinstance(throttle, _SlotThrottle) or not throttle.active(now):
                return False
        return True

    def rejected(self, model: str) -> Rejected:
        """The error for a request every endpoint with room refused."""
        return Rejected(
            f"throttled: the endpoints for {model!r} with room are refusing most requests",
            reason="throttled",
        )

    def statistics(self) -> dict[str, ThrottleStatistics]:
        """Each endpoint's window counts and local refusals, by endpoint name."""
        return {name: throttle.state.statistics() for name, throttle in self._by_slot.values()}

    def __repr__(self) -> str:
        return f"<Throttling endpoints={len(self._by_slot)} refusals={self.refusals}>"


def throttling_for(config: Throttle | None, seed: int | None) -> Throttling | None:
    """The scheduler's throttling for its ``throttle=`` argument (None: off).

    The generator is its own, seeded apart from the actors' (``seed`` None
    draws from the system), so turning throttling on or off leaves every
    other seeded sequence as it was.
    """
    if config is None:
        return None
    if not isinstance(config, Throttle):
        raise InvalidParameter("throttle must be a Throttle or None", field="throttle")
    return Throttling(config, random.Random(None if seed is None else f"lmgate.throttle:{seed}"))
