"""Actors: one task per endpoint owning its feedback and health, and the samplers.

Each ``EndpointActor`` owns its endpoint's limit policy, breaker, health
probes and model lifecycle; it hears leases' samples and timer ticks on a
bounded mailbox and tells the admission controller of limit and routing
changes (``_messages.py`` holds those messages).  The resource sampler is
here too: the only actor that may start a worker thread, and only when a
``ResourceGuard`` asks for it.  Imports policies, detect, ``Endpoint`` and
observability; never the scheduler, coordination or sim.
"""

from lmgate._endpoint import ProbeReport
from lmgate.actors._endpoint import EndpointActor, EndpointActorStatistics
from lmgate.actors._resilience import Resilience, Resolver, WarmUp, default_resolve
from lmgate.actors._resources import (
    PsutilReader,
    ResourceRecommendationChanged,
    run_resource_sampler,
)

__all__ = [
    "EndpointActor",
    "EndpointActorStatistics",
    "ProbeReport",
    "PsutilReader",
    "Resilience",
    "Resolver",
    "ResourceRecommendationChanged",
    "WarmUp",
    "default_resolve",
    "run_resource_sampler",
]
