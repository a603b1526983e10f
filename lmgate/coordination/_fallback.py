"""Whether Redis can be trusted now, and what a process may use when not.

Sans-IO: the coordinator feeds the link what happened (a command failed,
a join succeeded) with an explicit ``now`` and reads back the mode.

``connected``  every lease holds a slot in Redis; the shared limit rules.
``fallback``   Redis is down or too slow: each process serves from a
               conservative local share of the last limit it knew, with no
               Redis at all.
``rejoining``  Redis answers again.  The process has counted its running
               leases into Redis (so nobody can hand those slots out again)
               and takes new slots through Redis, but still never runs more
               than its share, for ``rejoin_delay`` seconds.  Other
               processes may not have noticed yet that Redis is back, and
               their fallback leases are invisible to Redis until they do;
               as long as every process is within its share, and the shares
               add up to no more than the limit, the limit holds.  Every
               process notices within ``poll + op_timeout``, so a delay of
               twice that covers them all.

The shares add up to at most the limit when each process takes an equal
split among the processes Redis last showed (the default), or a fraction
``1/N`` or smaller; they cannot add up exactly when the limit is smaller
than the number of processes, since every process keeps at least one slot.
"""

from __future__ import annotations

from typing import Literal, final

import msgspec

__all__ = ["Link", "LinkChange", "Mode", "fallback_limit"]

Mode = Literal["connected", "fallback", "rejoining"]


def fallback_limit(limit: int, *, processes: int | None, share: float | None) -> int:
    """How many slots a process may use while it cannot rely on Redis.

    ``share`` is a fraction of the last known limit; without one the limit
    is split equally among ``processes`` (the processes last seen using
    the endpoint).  Knowing neither -- Redis was never reached -- a process
    takes one slot, the only amount that is safe whatever else runs.
    """
    limit = max(1, int(limit))
    if share is not None:
        return max(1, int(limit * share))
    if processes is None or processes < 1:
        return 1
    return max(1, limit // processes)


@final
class LinkChange(msgspec.Struct, frozen=True, kw_only=True):
    """The link moved from ``before`` to ``after`` at ``at``."""

    at: float
    before: Mode
    after: Mode
    reason: str = ""
    #: While rejoining, when the process may leave its share.
    until: float | None = None


@final
class Link:
    """The coordinator's view of Redis: connected, fallback or rejoining.

    ``generation`` changes whenever Redis is lost or joined again, so the
    answer of a command sent in an earlier generation can be recognised
    and ignored: it describes a Redis state this process no longer relies
    on.
    """

    __slots__ = ("generation", "joins", "last_reason", "losses", "mode", "rejoin_delay", "until")

    def __init__(self, *, rejoin_delay: float) -> None:
        self.rejoin_delay = rejoin_delay
        # Before the first contact nothing is known: behave as if Redis
        # were down until a join proves otherwise.
        self.mode: Mode = "fallback"
        self.generation = 0
        self.until: float | None = None
        self.losses = 0
        self.joins = 0
        self.last_reason = ""

    @property
    def trusted(self) -> bool:
        """Redis may be used (connected or rejoining)."""
        return self.mode != "fallback"

    @property
    def capped(self) -> bool:
        """The fallback share applies (fallback or rejoining)."""
        return self.mode != "connected"

    def lost(self, now: float, reason: str) -> LinkChange | None:
        """A command failed or timed out, or Redis forgot its state."""
        if self.mode == "fallback":
            return None
        before = self.mode
        self.mode = "fallback"
        self.until = None
        self.generation += 1
        self.losses += 1
        self.last_reason = reason
        return LinkChange(at=now, before=before, after="fallback", reason=reason)

    def joined(self, now: float) -> LinkChange | None:
        """Every endpoint's running leases are counted into Redis again."""
        if self.mode != "fallback":
            return None
        self.mode = "rejoining"
        self.until = now + self.rejoin_delay
        self.generation += 1
        self.joins += 1
        return LinkChange(at=now, before="fallback", after="rejoining", until=self.until)

    def tick(self, now: float) -> LinkChange | None:
        """Leave ``rejoining`` once its delay has passed."""
        if self.mode != "rejoining" or self.until is None or now < self.until:
            return None
        self.mode = "connected"
        self.until = None
        return LinkChange(at=now, before="rejoining", after="connected")

    def __repr__(self) -> str:
        return f"<Link {self.mode} generation={self.generation} losses={self.losses}>"
