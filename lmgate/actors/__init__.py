"""Actors: one task per endpoint owning its feedback and health, and samplers."""

from lmgate._endpoint import ProbeReport
from lmgate.actors._endpoint import EndpointActor, EndpointActorStatistics
from lmgate.actors._resilience import Resilience, Resolver, WarmUp
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
    "run_resource_sampler",
]
