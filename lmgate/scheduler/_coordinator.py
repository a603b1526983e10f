"""The seam between a scheduler and a cross-process coordinator.

By default a scheduler coordinates nothing beyond its own process.  A
coordinator (``lmgate.coordination.Redis``) adds a second gate: after local
admission grants a lease, the lease must also hold one of the endpoint's
*shared* slots, taken within the same deadline and given back, without
blocking, when the lease is released.  The coordinator runs as an actor in
the scheduler's task group and may adjust local limits through its handle.
"""

from __future__ import annotations

from typing import Protocol, final, runtime_checkable

import anyio.abc
from anyio.streams.memory import MemoryObjectSendStream

from lmgate._endpoint import Endpoint
from lmgate.actors._messages import ControllerMessage, LimitChanged, Routing, StateChanged
from lmgate.observability._events import Event, EventHub
from lmgate.policies._limit import LimitPolicy, LimitState
from lmgate.scheduler._admission import Admission
from lmgate.scheduler._lease import Lease

__all__ = ["Coordinator", "CoordinatorHandle", "SharesLimits"]


@runtime_checkable
class Coordinator(Protocol):
    async def run(
        self,
        handle: CoordinatorHandle,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the scheduler until cancelled (started with ``tg.start``)."""
        ...

    async def acquire(self, lease: Lease) -> None:
        """Wait for a shared slot of ``lease.endpoint.name``; raise to refuse."""
        ...

    def release(self, lease: Lease) -> None:
        """Give the shared slot back; must not block."""
        ...


@runtime_checkable
class SharesLimits(Protocol):
    """A coordinator that also owns each endpoint's limit (optional).

    The scheduler then gives each endpoint actor the state this returns
    instead of ``policy.build()``: it sees every sample of the endpoint and
    answers with the limit shared by all processes.
    """

    def limit_state(self, endpoint: Endpoint, policy: LimitPolicy) -> LimitState: ...


@final
class CoordinatorHandle:
    """What a coordinator may see and do inside the scheduler."""

    def __init__(
        self,
        admission: Admission,
        events: EventHub,
        controller: anyio.abc.ObjectSendStream[ControllerMessage],
    ) -> None:
        self._adm = admission
        self._events = events
        self._controller = controller
        self._index = {slot.endpoint.name: slot.index for slot in admission.slots}

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(slot.endpoint for slot in self._adm.slots)

    def local_limit(self, name: str) -> int:
        return self._adm.slots[self._index[name]].limit

    def local_in_flight(self, name: str) -> int:
        return self._adm.slots[self._index[name]].in_flight

    @property
    def closed(self) -> bool:
        """True once the scheduler admits nothing more."""
        return self._adm.closed

    def local_state(self, name: str) -> tuple[Routing, str, int | None]:
        """Routing, state name and half-open trials admission uses for an endpoint."""
        slot = self._adm.slots[self._index[name]]
        return slot.routing, slot.state, slot.trials

    async def set_local_state(
        self, name: str, routing: Routing, state: str, trials: int | None = None
    ) -> None:
        """Route an endpoint as another process's breaker says (or restore ours)."""
        await self._controller.send(StateChanged(self._index[name], routing, state, trials))

    async def set_local_limit(self, name: str, limit: int) -> None:
        """Change this process's limit for an endpoint (e.g. a fallback share)."""
        await self._controller.send(LimitChanged(self._index[name], max(1, int(limit))))

    def publish(self, event: Event) -> None:
        self._events.publish(event)

    def close(self) -> None:
        """The coordinator is done sending: close its mailbox clone (as actors do)."""
        if isinstance(self._controller, MemoryObjectSendStream):
            self._controller.close()

    def __repr__(self) -> str:
        return f"<CoordinatorHandle endpoints={list(self._index)}>"
