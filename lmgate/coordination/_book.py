"""One endpoint's shared slots as seen from one process (sans-IO).

The book knows which of this process's leases wait for a shared slot and
which hold one, and turns that into the next batch for Redis (what to
release, what to queue, what to renew) and back into grants.  It also
grants slots locally, in priority order and up to a cap, while Redis is
out of reach.  The coordinator does the I/O and sets the events.

A want ends exactly once: ``granted`` (then held until released),
``abandoned`` (its caller gave up) or ``failed`` (the scheduler closed).
Whatever Redis might hold for a want that ended without using it -- its
queue entry, or a slot granted while its caller was leaving -- is sent for
removal with the next batch, so nothing stays behind but what lease
expiry would clear anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, final

__all__ = ["Batch", "Book", "Want"]

WantState = Literal["waiting", "granted", "abandoned", "failed"]


@final
class Want:
    """A lease waiting for (then holding) one shared slot."""

    __slots__ = (
        "error",
        "event",
        "in_flight",
        "key",
        "local",
        "member",
        "priority",
        "sent",
        "state",
    )

    def __init__(self, member: str, priority: int, key: tuple[float, int], event: Any) -> None:
        self.member = member
        self.priority = priority
        #: Local order while Redis is away: the same rule as Redis's queue.
        self.key = key
        self.event = event
        self.state: WantState = "waiting"
        #: Queued in Redis (as far as this process knows).
        self.sent = False
        #: Granted here without Redis (fallback): not counted in Redis yet.
        self.local = False
        #: Shared holders when the slot was granted, for the limit policy.
        self.in_flight = 0
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<Want {self.member} priority={self.priority} {self.state}>"


@final
class Batch:
    """What one round trip tells Redis."""

    __slots__ = ("registrations", "removals", "renewals")

    def __init__(
        self, removals: list[str], registrations: list[tuple[str, int]], renewals: list[str]
    ) -> None:
        self.removals = removals
        self.registrations = registrations
        self.renewals = renewals

    def __bool__(self) -> bool:
        return bool(self.removals or self.registrations or self.renewals)

    def __repr__(self) -> str:
        return (
            f"<Batch removals={len(self.removals)} registrations={len(self.registrations)}"
            f" renewals={len(self.renewals)}>"
        )


@final
class Book:
    """Shared-slot bookkeeping of one endpoint in one process."""

    __slots__ = (
        "_seq",
        "abandoned",
        "aging",
        "failed",
        "granted",
        "held",
        "local_grants",
        "offline",
        "owner",
        "removals",
        "waiting",
    )

    def __init__(self, owner: str, *, aging: float) -> None:
        self.owner = owner
        self.aging = aging
        self.waiting: dict[str, Want] = {}
        self.held: dict[str, Want] = {}
        self.removals: set[str] = set()
        #: True while Redis is unreachable: nothing is kept to send.
        self.offline = True
        self.granted = 0
        self.local_grants = 0
        self.abandoned = 0
        self.failed = 0
        self._seq = 0

    @property
    def running(self) -> int:
        return len(self.held)

    @property
    def queued(self) -> int:
        """Wants Redis knows about (their registration was sent)."""
        return sum(1 for w in self.waiting.values() if w.sent)

    def unsent(self) -> int:
        return sum(1 for w in self.waiting.values() if not w.sent)

    # -- the caller's side ---------------------------------------------------------

    def want(self, priority: int, now: float, event: Any) -> Want:
        self._seq += 1
        member = f"{self.owner}:{self._seq}"
        w = Want(member, priority, (now + priority * self.aging, self._seq), event)
        self.waiting[member] = w
        return w

    def abandon(self, w: Want) -> None:
        """The caller stopped waiting; a slot it got meanwhile goes back."""
        if w.state == "waiting":
            del self.waiting[w.member]
            w.state = "abandoned"
            self.abandoned += 1
            if w.sent and not self.offline:
                self.removals.add(w.member)
        elif w.state == "granted":
            self.release(w.member)

    def release(self, member: str) -> bool:
        """Give a held slot back; False if it was not held."""
        w = self.held.pop(member, None)
        if w is None:
            return False
        if not w.local and not self.offline:
            self.removals.add(member)
        return True

    # -- the Redis side -----------------------------------------------------------------

    def batch(self, *, cap: int | None, renew: bool) -> Batch:
        """The next round trip: releases first, then new wants, then renewals.

        Call it only while Redis is trusted: it counts every held slot as
        known to Redis from then on.

        With a ``cap`` (rejoining) no more wants are queued than would let
        running plus queued exceed it, so Redis can never grant more.
        """
        removals = sorted(self.removals)
        self.removals.clear()
        room = len(self.waiting) if cap is None else cap - self.running - self.queued
        regs: list[tuple[str, int]] = []
        if room > 0:
            for w in sorted((w for w in self.waiting.values() if not w.sent), key=_key):
                if len(regs) >= room:
                    break
                w.sent = True
                regs.append((w.member, w.priority))
        # Slots granted locally while a rejoin was on its way are counted
        # in now, whether or not renewals are due.
        renewals = [m for m, w in self.held.items() if renew or w.local]
        for m in renewals:
            self.held[m].local = False
        return Batch(removals, regs, renewals)

    def settle(self, granted: Iterable[str], in_flight: int) -> list[Want]:
        """Apply Redis's grants; return the wants whose callers to wake."""
        woken: list[Want] = []
        for member in granted:
            w = self.waiting.pop(member, None)
            if w is None:  # its caller left while the batch was on its way
                self.removals.add(member)
                continue
            w.state = "granted"
            w.in_flight = in_flight
            self.held[member] = w
            self.granted += 1
            woken.append(w)
        return woken

    def disown(self, granted: Iterable[str]) -> bool:
        """Redis granted these in an answer that came too late to trust (it
        predates a rejoin, which counted only what ran then): give the slots
        back and queue their wants again.  True if anything is to be sent."""
        if self.offline:
            return False  # the next rejoin drops what this process does not run
        news = False
        for member in granted:
            if member in self.held:
                continue
            self.removals.add(member)
            w = self.waiting.get(member)
            if w is not None:
                w.sent = False
            news = True
        return news

    def forgotten(self) -> None:
        """Redis dropped this process's queue entries (it was presumed dead)."""
        for w in self.waiting.values():
            w.sent = False

    def go_offline(self) -> None:
        """Redis is out of reach: forget what was to be sent."""
        self.offline = True
        self.removals.clear()
        self.forgotten()

    def rejoin(self, cap: int | None) -> tuple[list[str], list[tuple[str, int]]]:
        """What to count into Redis on rejoining: every running lease, and
        the most urgent wants that fit under ``cap``."""
        self.offline = False
        self.removals.clear()
        for w in self.held.values():
            w.local = False
        held = list(self.held)
        return held, self.batch(cap=cap, renew=False).registrations

    def grant_local(self, cap: int) -> list[Want]:
        """Grant waiting wants, most urgent first, while fewer than ``cap`` run."""
        woken: list[Want] = []
        while self.waiting and self.running < cap:
            w = min(self.waiting.values(), key=_key)
            del self.waiting[w.member]
            w.state = "granted"
            w.local = True
            w.sent = False
            w.in_flight = self.running + 1
            self.held[w.member] = w
            self.local_grants += 1
            woken.append(w)
        return woken

    def fail_all(self, error: BaseException) -> list[Want]:
        """End every waiting want with ``error`` (the scheduler is closing)."""
        woken = list(self.waiting.values())
        for w in woken:
            w.state = "failed"
            w.error = error
            if w.sent and not self.offline:
                self.removals.add(w.member)
        self.failed += len(woken)
        self.waiting.clear()
        return woken

    def __repr__(self) -> str:
        return (
            f"<Book {self.owner} running={self.running} waiting={len(self.waiting)}"
            f" offline={self.offline}>"
        )


def _key(w: Want) -> tuple[float, int]:
    return w.key
