"""Leases the scheduler takes back itself: overdue, orphaned or idle work.

The admission controller calls these on its sweep.  A lease nobody scopes
(``acquire()``d, or a response stream handed to a caller) is taken back
past its deadline; handed-out work also when the task that last read it
has ended, or when nobody has read it for its idle bound.  Taking back is
synchronous (the slot is free at once); closing the work is returned for
the controller to await in its own task group.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from lmgate._backend import task_ended
from lmgate.scheduler._admission import Admission
from lmgate.scheduler._lease import Lease

__all__ = ["overdue", "reclaim"]


def overdue(adm: Admission, now: float) -> list[tuple[Lease, str]]:
    """Leases the scheduler must take back itself, with why.

    Only leases no cancel scope guards (``acquire()``d ones, response
    streams): past their deadline; or handed-out work whose owner task
    ended after reading from it; or unread past its idle bound.  A
    ``run()`` or ``lease()`` block keeps its own deadline.
    """
    out: list[tuple[Lease, str]] = []
    for lease in adm.live:
        if lease._scope is not None:
            continue
        if now >= lease.deadline:
            out.append((lease, "deadline"))
            continue
        ref = lease._watch
        watch = ref() if ref is not None else None
        if watch is None:
            continue
        if watch.owner_read and watch.owner is not None and task_ended(watch.owner):
            out.append((lease, "owner_gone"))
        elif now >= watch.idle_at:
            out.append((lease, "idle"))
    return out


def reclaim(adm: Admission, lease: Lease, reason: str) -> Callable[[], Awaitable[None]] | None:
    """Take ``lease`` back for ``reason``; return the closing of its work, if any."""
    if lease._released:
        return None
    ref = lease._watch
    watch = ref() if ref is not None else None
    if watch is not None:
        # The work knows how to stop (close its response); it may also
        # decline for now (a read already waiting on its own deadline).
        return watch.reclaim(reason)
    if reason == "deadline":
        adm.finish(lease, None, outcome="timeout", result="deadline_exceeded")
    else:
        adm.finish(lease, None, outcome="cancelled", result="cancelled")
    return None
