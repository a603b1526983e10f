"""lmgate: schedule language-model requests onto local and cloud endpoints."""

from lmgate import policies
from lmgate._endpoint import Endpoint, EndpointRef
from lmgate._errors import (
    ContextOverflow,
    DeadlineExceeded,
    EndpointUnavailable,
    InvalidParameter,
    LmgateError,
    Overloaded,
    Rejected,
    SchedulerClosed,
)
from lmgate._events import Event, EventHub, Subscription
from lmgate.scheduler import EndpointStats, Lease, Scheduler, Stats

__version__ = "0.1.0.dev0"

__all__ = [
    "ContextOverflow",
    "DeadlineExceeded",
    "Endpoint",
    "EndpointRef",
    "EndpointStats",
    "EndpointUnavailable",
    "Event",
    "EventHub",
    "InvalidParameter",
    "Lease",
    "LmgateError",
    "Overloaded",
    "Rejected",
    "Scheduler",
    "SchedulerClosed",
    "Stats",
    "Subscription",
    "policies",
]
