"""Coordination of many processes' schedulers: one limit per endpoint.

``Scheduler(endpoints, coordinator=lmgate.coordination.Redis(url))`` makes
every process that names an endpoint alike share its limit, its adaptive
limit policy and its breaker state through Redis (asyncio only), with a
conservative local share of the limit while Redis is unreachable.
"""

from lmgate.coordination._events import (
    CoordinationLost,
    CoordinationRejoining,
    CoordinationRestored,
    LeadershipChanged,
    SharedLimitPublished,
    SharedStateApplied,
)
from lmgate.coordination._fallback import fallback_limit
from lmgate.coordination._redis import EndpointCoordination, Redis, RedisStatistics

__all__ = [
    "CoordinationLost",
    "CoordinationRejoining",
    "CoordinationRestored",
    "EndpointCoordination",
    "LeadershipChanged",
    "Redis",
    "RedisStatistics",
    "SharedLimitPublished",
    "SharedStateApplied",
    "fallback_limit",
]
