"""lmgate: schedule language-model requests onto local and cloud endpoints.

The scheduler decides which endpoint serves a request and when: one admission
controller with adaptive per-endpoint limits, one actor per endpoint for
feedback and health, one deadline per request, and a lease that is always
released.  The front door holds what a user needs first; the rest lives in
its subpackage: ``lmgate.policies`` (limits, breakers, retries),
``lmgate.context`` (messages and fitting), ``lmgate.config``,
``lmgate.events``, ``lmgate.transports`` (httpx and the openai SDK),
``lmgate.detect``, ``lmgate.sim``, ``lmgate.security``,
``lmgate.observability``.  The optional extras are not imported here:
``lmgate.prometheus``, ``lmgate.otel``, and the Redis coordinator in
``lmgate.coordination``.  See ARCHITECTURE.md for the map.
"""

from lmgate import config as config
from lmgate import context as context
from lmgate import coordination as coordination
from lmgate import detect as detect
from lmgate import events as events
from lmgate import observability as observability
from lmgate import policies as policies
from lmgate import security as security
from lmgate import sim as sim
from lmgate import transports as transports
from lmgate._endpoint import Endpoint, EndpointRef, ProbeReport
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
from lmgate.actors._resilience import Resilience
from lmgate.config import Config, load_config, write_config
from lmgate.context import (
    AssistantMessage,
    Conversation,
    Fitted,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    UserMessage,
    afit_messages,
    fit_messages,
)
from lmgate.policies import Adaptive, Fixed, default_limit
from lmgate.scheduler import (
    EndpointStats,
    Lease,
    QueueOptions,
    RequestHook,
    ResourceOptions,
    Scheduler,
    Stats,
)
from lmgate.security import Secret, SecretStr
from lmgate.transports import RequestOptions, openai_client, request_options

__version__ = "0.1.0.dev0"

__all__ = [
    "Adaptive",
    "AssistantMessage",
    "Config",
    "ContextOverflow",
    "Conversation",
    "DeadlineExceeded",
    "Endpoint",
    "EndpointRef",
    "EndpointStats",
    "EndpointUnavailable",
    "Fitted",
    "Fixed",
    "InvalidParameter",
    "Lease",
    "LmgateError",
    "Message",
    "Overloaded",
    "ProbeReport",
    "QueueOptions",
    "Rejected",
    "RequestHook",
    "RequestOptions",
    "Resilience",
    "ResourceOptions",
    "Scheduler",
    "SchedulerClosed",
    "Secret",
    "SecretStr",
    "Stats",
    "SystemMessage",
    "ToolCall",
    "ToolMessage",
    "UserMessage",
    "afit_messages",
    "default_limit",
    "fit_messages",
    "load_config",
    "openai_client",
    "request_options",
    "write_config",
]

#: Names that were at the top before they moved to their subpackage: still
#: served from here (with a DeprecationWarning) for one release.
_MOVED = {
    **dict.fromkeys(events.__all__, "lmgate.events"),
    "ConfigDiff": "lmgate.config",
    "ConfigWatcher": "lmgate.config",
    "ListenerReport": "lmgate.security",
    "RateLimitFilter": "lmgate.observability",
    "RedactingFilter": "lmgate.security",
    "SamplingParams": "lmgate.context",
    "normalize_params": "lmgate.context",
    "reachable_tokens": "lmgate.context",
}


def __getattr__(name: str) -> object:
    home = _MOVED.get(name)
    if home is None:
        raise AttributeError(f"module 'lmgate' has no attribute {name!r}")
    import importlib
    import warnings

    warnings.warn(
        f"lmgate.{name} moved to {home}.{name}; the old name goes away in the next release",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(home), name)
