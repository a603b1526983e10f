"""The admission controller actor: the one task that owns ``Admission``.

Callers reach admission synchronously for the instant paths (grant now,
queue, leave, release).  Everything that arrives from elsewhere -- a new
limit, a changed health state -- comes through this actor's bounded mailbox
and is followed by a dispatch, so queued requests move as soon as capacity
appears.  Every ``sweep_interval`` seconds it also takes back the leases
nobody else will release in time (``_reclaim.overdue``): work past its
deadline, a response stream whose task is gone, one left unread.  The slot
is freed at once; closing the response (so the server stops) runs in the
actor's own task group, bounded.  Calls the server may still be running
after their caller gave up (``_occupancy``) are let go when their time is
up -- the actor wakes for the first of them -- or when the server's own
view (``ServerBusy``) shows them gone.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import final

import anyio
import anyio.abc

from lmgate.actors._messages import (
    ControllerMessage,
    EngineNews,
    LimitChanged,
    ServerBusy,
    StateChanged,
    UrlChanged,
)
from lmgate.scheduler._admission import Admission
from lmgate.scheduler._occupancy import linger_due
from lmgate.scheduler._reclaim import overdue, reclaim

_log = logging.getLogger("lmgate.scheduler")

__all__ = ["AdmissionController"]


#: How long closing one reclaimed response may take before it is abandoned.
CLOSE_TIMEOUT = 5.0


@final
class AdmissionController:
    def __init__(
        self,
        admission: Admission,
        inbox: anyio.abc.ObjectReceiveStream[ControllerMessage],
        *,
        sweep_interval: float = 0.5,
    ) -> None:
        self._admission = admission
        self._inbox = inbox
        self._interval = sweep_interval
        self.handled = 0
        self.reclaimed: dict[str, int] = {"deadline": 0, "owner_gone": 0, "idle": 0}

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        admission = self._admission
        async with self._inbox, anyio.create_task_group() as closers:
            task_status.started()
            next_sweep = anyio.current_time() + self._interval
            while True:
                with anyio.move_on_at(min(next_sweep, linger_due(admission.lingering))):
                    try:
                        message = await self._inbox.receive()
                    except anyio.EndOfStream:
                        break
                    now = anyio.current_time()
                    self.handled += 1
                    match message:
                        case LimitChanged(endpoint=index, limit=limit):
                            admission.set_limit(index, limit, now)
                        case StateChanged(endpoint=index, routing=routing, state=state, trials=t):
                            admission.set_state(index, routing, state, t, now)
                        case UrlChanged(endpoint=index, url=url):
                            admission.set_url(index, url)
                        case ServerBusy(endpoint=index, at=at, busy=busy, tasks=tasks):
                            admission.server_busy(index, busy, tasks, at, now)
                        case EngineNews(endpoint=index, reading=reading):
                            if (kv := admission.slots[index].kv) is not None:
                                kv.engine(reading)
                    admission.dispatch(now)
                    continue
                now = anyio.current_time()
                admission.expire_lingering(now)
                if now >= next_sweep:
                    self.sweep(now, closers)
                    next_sweep = now + self._interval

    def sweep(self, now: float, closers: anyio.abc.TaskGroup) -> None:
        """Take back every overdue lease now; close their work in the background."""
        adm = self._admission
        for lease, reason in overdue(adm, now):
            closer = reclaim(adm, lease, reason)
            self.reclaimed[reason] += 1
            if closer is not None:
                closers.start_soon(_bounded, closer)

    def __repr__(self) -> str:
        return f"<AdmissionController handled={self.handled} reclaimed={self.reclaimed}>"


async def _bounded(closer: Callable[[], Awaitable[None]]) -> None:
    """Close reclaimed work within ``CLOSE_TIMEOUT``; its failure to close is not ours."""
    try:
        with anyio.move_on_after(CLOSE_TIMEOUT):
            await closer()
    except Exception:  # a connection already broken: the slot is free either way
        _log.debug("closing a reclaimed response failed", exc_info=True)
