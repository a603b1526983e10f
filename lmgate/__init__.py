"""lmgate: schedule language-model requests onto local and cloud endpoints.

The scheduler decides which endpoint serves a request and when: one admission
controller with adaptive per-endpoint limits, one actor per endpoint for
feedback and health, one deadline per request, and a lease that is always
released.  The optional extras live in their own modules and are not
imported here: ``lmgate.prometheus``, ``lmgate.otel``, and the Redis
coordinator in ``lmgate.coordination``.
"""

from lmgate import coordination, detect, policies, sim, transports
from lmgate._chat import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    UserMessage,
)
from lmgate._config import (
    Config,
    ConfigApplied,
    ConfigDiff,
    ConfigRefused,
    ConfigWatcher,
    load_config,
    write_config,
)
from lmgate._conversation import Conversation
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
from lmgate._exposure import ListenerReport, ServerExposed, ServerRunsAsRoot
from lmgate._logging import RateLimitFilter
from lmgate._params import SamplingParams, normalize_params
from lmgate._secrets import RedactingFilter, Secret, SecretStr
from lmgate.actors._resilience import ProbeReport, Resilience
from lmgate.actors._resources import ResourceRecommendationChanged
from lmgate.policies._context_report import ContextApplied
from lmgate.policies._resilience_events import (
    BreakerClosed,
    BreakerHalfOpen,
    BreakerOpened,
    EndpointMoved,
    EndpointStateChanged,
    LimitChanged,
    ModelChanged,
)
from lmgate.policies.context import Fitted, afit_messages, fit_messages, reachable_tokens
from lmgate.scheduler import EndpointStats, Lease, Scheduler, Stats
from lmgate.scheduler._discovery_watch import EndpointDiscovered, EndpointDiscoveryFailed
from lmgate.scheduler._hooks import RequestHook
from lmgate.scheduler._pressure import QueueShed, TempFilesCleaned
from lmgate.scheduler._reconfigure import EndpointAdded, EndpointRemoved, LimitRebuilt

__version__ = "0.1.0.dev0"

__all__ = [
    "AssistantMessage",
    "BreakerClosed",
    "BreakerHalfOpen",
    "BreakerOpened",
    "Config",
    "ConfigApplied",
    "ConfigDiff",
    "ConfigRefused",
    "ConfigWatcher",
    "ContextApplied",
    "ContextOverflow",
    "Conversation",
    "DeadlineExceeded",
    "Endpoint",
    "EndpointAdded",
    "EndpointDiscovered",
    "EndpointDiscoveryFailed",
    "EndpointMoved",
    "EndpointRef",
    "EndpointRemoved",
    "EndpointStateChanged",
    "EndpointStats",
    "EndpointUnavailable",
    "Event",
    "EventHub",
    "Fitted",
    "InvalidParameter",
    "Lease",
    "LimitChanged",
    "LimitRebuilt",
    "ListenerReport",
    "LmgateError",
    "Message",
    "ModelChanged",
    "Overloaded",
    "ProbeReport",
    "QueueShed",
    "RateLimitFilter",
    "RedactingFilter",
    "Rejected",
    "RequestHook",
    "Resilience",
    "ResourceRecommendationChanged",
    "SamplingParams",
    "Scheduler",
    "SchedulerClosed",
    "Secret",
    "SecretStr",
    "ServerExposed",
    "ServerRunsAsRoot",
    "Stats",
    "Subscription",
    "SystemMessage",
    "TempFilesCleaned",
    "ToolCall",
    "ToolMessage",
    "UserMessage",
    "afit_messages",
    "coordination",
    "detect",
    "fit_messages",
    "load_config",
    "normalize_params",
    "policies",
    "reachable_tokens",
    "sim",
    "transports",
    "write_config",
]
