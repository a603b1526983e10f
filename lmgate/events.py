"""Every event lmgate publishes, in one place.

Subscribe with ``sched.events.subscribe()`` (an :class:`EventHub`): each
event is a frozen msgspec Struct with an ``at`` time on the scheduler's
clock.  The classes live beside the code that decides them; this module
gathers them so a subscriber can ``match`` on any of them with one import.
Nothing in lmgate imports this module.
"""

from lmgate.actors._resources import ResourceRecommendationChanged
from lmgate.config._watch import ConfigApplied, ConfigRefused
from lmgate.context._report import ContextApplied
from lmgate.coordination._events import (
    CoordinationLost,
    CoordinationRejoining,
    CoordinationRestored,
    LeadershipChanged,
    SharedLimitPublished,
    SharedStateApplied,
)
from lmgate.observability._events import Event, EventHub, EventHubStatistics, Subscription
from lmgate.policies._resilience_events import (
    BreakerClosed,
    BreakerHalfOpen,
    BreakerOpened,
    EndpointMoved,
    EndpointStateChanged,
    LimitChanged,
    ModelChanged,
)
from lmgate.scheduler._discovery_watch import EndpointDiscovered, EndpointDiscoveryFailed
from lmgate.scheduler._pressure import QueueShed, TempFilesCleaned
from lmgate.scheduler._reconfigure import EndpointAdded, EndpointRemoved, LimitRebuilt
from lmgate.security._exposure import ServerExposed, ServerRunsAsRoot

__all__ = [
    "BreakerClosed",
    "BreakerHalfOpen",
    "BreakerOpened",
    "ConfigApplied",
    "ConfigRefused",
    "ContextApplied",
    "CoordinationLost",
    "CoordinationRejoining",
    "CoordinationRestored",
    "EndpointAdded",
    "EndpointDiscovered",
    "EndpointDiscoveryFailed",
    "EndpointMoved",
    "EndpointRemoved",
    "EndpointStateChanged",
    "Event",
    "EventHub",
    "EventHubStatistics",
    "LeadershipChanged",
    "LimitChanged",
    "LimitRebuilt",
    "ModelChanged",
    "QueueShed",
    "ResourceRecommendationChanged",
    "ServerExposed",
    "ServerRunsAsRoot",
    "SharedLimitPublished",
    "SharedStateApplied",
    "Subscription",
    "TempFilesCleaned",
]
