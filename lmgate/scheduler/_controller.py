"""The admission controller actor: the one task that owns ``Admission``.

Callers reach admission synchronously for the instant paths (grant now,
queue, leave, release).  Everything that arrives from elsewhere -- a new
limit, a changed health state -- comes through this actor's bounded mailbox
and is followed by a dispatch, so queued requests move as soon as capacity
appears.
"""

from __future__ import annotations

from typing import final

import anyio
import anyio.abc

from lmgate.actors._messages import (
    ControllerMessage,
    LimitChanged,
    StateChanged,
    UrlChanged,
)
from lmgate.scheduler._admission import Admission

__all__ = ["AdmissionController"]


@final
class AdmissionController:
    def __init__(
        self, admission: Admission, inbox: anyio.abc.ObjectReceiveStream[ControllerMessage]
    ) -> None:
        self._admission = admission
        self._inbox = inbox
        self.handled = 0

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        admission = self._admission
        async with self._inbox:
            task_status.started()
            async for message in self._inbox:
                now = anyio.current_time()
                self.handled += 1
                match message:
                    case LimitChanged(endpoint=index, limit=limit):
                        admission.set_limit(index, limit, now)
                    case StateChanged(endpoint=index, routing=routing, state=state, trials=t):
                        admission.set_state(index, routing, state, t, now)
                    case UrlChanged(endpoint=index, url=url):
                        admission.set_url(index, url)
                admission.dispatch(now)

    def __repr__(self) -> str:
        return f"<AdmissionController handled={self.handled}>"
