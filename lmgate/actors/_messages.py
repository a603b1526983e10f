"""Messages between the actors: frozen, tagged msgspec Structs.

Endpoint actors tell the admission controller what changed about their
endpoint; leases tell endpoint actors how a call went (a ``Sample``, sent
without waiting).  Nothing else crosses between actors.
"""

from __future__ import annotations

from typing import Literal, final

import msgspec

from lmgate.policies._engine import EngineReading
from lmgate.policies._sample import Sample

__all__ = [
    "ControllerMessage",
    "EndpointMessage",
    "EngineNews",
    "LimitChanged",
    "Routing",
    "ServerBusy",
    "StateChanged",
    "Tick",
    "UrlChanged",
]

#: How admission may use an endpoint: ``up`` routes to it; ``held`` keeps
#: its requests queued (loading a model, waiting out Retry-After); ``down``
#: routes nothing to it and fails requests that have no other endpoint.
Routing = Literal["up", "held", "down"]


@final
class LimitChanged(msgspec.Struct, frozen=True, tag=True):
    endpoint: int
    limit: int


@final
class StateChanged(msgspec.Struct, frozen=True, tag=True):
    endpoint: int
    routing: Routing
    state: str
    #: While half-open, how many trial requests may be in flight at once.
    trials: int | None = None


@final
class UrlChanged(msgspec.Struct, frozen=True, tag=True):
    """The endpoint's server answers at ``url`` now (it moved ports)."""

    endpoint: int
    url: str


@final
class ServerBusy(msgspec.Struct, frozen=True, tag=True):
    """What the server itself says it is running, read at ``at``.

    ``tasks`` are the ids of its busy tasks when it names them (llama.cpp's
    ``/slots``); ``busy`` is how many requests it runs when it only counts
    them (``requests_processing`` in its metrics).
    """

    endpoint: int
    at: float
    busy: int | None = None
    tasks: frozenset[int] | None = None


@final
class EngineNews(msgspec.Struct, frozen=True, tag=True):
    """A reading of the server's own metrics, for admission's token budget."""

    endpoint: int
    reading: EngineReading


ControllerMessage = LimitChanged | StateChanged | UrlChanged | ServerBusy | EngineNews


@final
class Tick(msgspec.Struct, frozen=True, tag=True):
    """Time passed: let time-driven policies run."""


#: What admission sends an endpoint actor (its own timers and probes add more).
EndpointMessage = Sample | Tick
