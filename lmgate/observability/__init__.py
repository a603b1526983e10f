"""Events, rate-limited logging, and the Prometheus and OpenTelemetry adapters.

``EventHub`` is how every part of lmgate tells the world what it decided
(bounded subscriptions; a slow subscriber loses events, never blocks the
scheduler).  The logging helpers cap how often one kind of message is
written.  ``lmgate.prometheus`` and ``lmgate.otel`` are thin front doors to
the adapters here, which import their optional libraries only when used.
This package imports only lmgate's errors and validation helpers: every
other layer may use it.
"""

from lmgate.observability._events import Event, EventHub, EventHubStatistics, Subscription
from lmgate.observability._logging import RateLimitedLogger, RateLimitFilter, get_logger

__all__ = [
    "Event",
    "EventHub",
    "EventHubStatistics",
    "RateLimitFilter",
    "RateLimitedLogger",
    "Subscription",
    "get_logger",
]
