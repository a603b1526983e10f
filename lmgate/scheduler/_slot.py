"""Admission's record of one endpoint: in flight, limit, routing, window.

Only ``Admission`` mutates a slot (on the event loop, with no await between
check and update); the endpoint actor's news reaches it as messages the
controller applies.  ``window_fits`` is the one rule for whether a prompt
of a given size may go to a slot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import final

from anyio.streams.memory import MemoryObjectSendStream

from lmgate._endpoint import Endpoint, EndpointRef
from lmgate.actors._messages import EndpointMessage, Routing
from lmgate.policies._queueing import ServiceWindow

__all__ = ["EndpointSlot", "window_fits"]


@final
class EndpointSlot:
    """Admission's record of one endpoint (mutated only by ``Admission``)."""

    __slots__ = (
        "_limit",
        "dropped_samples",
        "durations",
        "endpoint",
        "feedback",
        "in_flight",
        "index",
        "models",
        "peak_in_flight",
        "peak_limit",
        "refs",
        "routing",
        "service_time",
        "state",
        "throttle",
        "trials",
    )

    def __init__(
        self,
        index: int,
        endpoint: Endpoint,
        limit: int,
        feedback: MemoryObjectSendStream[EndpointMessage] | None,
    ) -> None:
        self.index = index
        self.endpoint = endpoint
        self._limit = limit
        self.peak_limit = limit  # the highest limit in force so far
        self.in_flight = 0
        self.peak_in_flight = 0
        self.models = endpoint.models
        self.refs = {
            m: EndpointRef(
                name=endpoint.name,
                url=endpoint.url,
                model=m,
                kind=endpoint.kind,
                local=endpoint.local,
            )
            for m in endpoint.models
        }
        self.routing: Routing = "up"
        self.state = "healthy"
        self.trials: int | None = None
        self.service_time: float | None = None
        #: Recent service durations (completed, or cut by their deadline).
        self.durations = ServiceWindow()
        self.feedback = feedback
        self.dropped_samples = 0
        # Optional client-side throttle: returns True to refuse a request now.
        self.throttle: Callable[[float], bool] | None = None

    @property
    def limit(self) -> int:
        """The endpoint's limit in force, as its policy last set it."""
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        self._limit = value
        self.peak_limit = max(self.peak_limit, value)

    @property
    def effective_limit(self) -> int:
        return self.limit if self.trials is None else min(self.limit, self.trials)

    def has_room(self) -> bool:
        return self.routing == "up" and self.in_flight < self.effective_limit


def window_fits(slot: EndpointSlot, model: str, need: int | None) -> bool:
    """Whether ``slot``'s window for ``model`` can take a request needing ``need``."""
    if need is None:
        return True
    window = slot.endpoint.window_for(model)
    return window is None or window >= need
