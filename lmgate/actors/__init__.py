"""Actors: one task per endpoint owning its feedback and health."""

from lmgate.actors._endpoint import EndpointActor, EndpointActorStatistics

__all__ = ["EndpointActor", "EndpointActorStatistics"]
