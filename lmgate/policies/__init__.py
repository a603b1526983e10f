"""Sans-IO policies: limits, hysteresis, throttling, breakers, retries, resources.

Every policy here is a frozen config plus a state machine fed observations
and an explicit ``now``; none sleeps, reads a clock or does I/O.  It may
import lmgate's errors, validation helpers, observability events and
:mod:`lmgate.context` (whose strategies it re-exports), and nothing from
detect, transports, actors or the scheduler: a test in ``tests/test_layers.py``
keeps it so.
"""

from lmgate.context._fit import (
    Applied,
    Chain,
    Compress,
    ContextStrategy,
    ResetWithSummary,
    SlidingWindow,
)
from lmgate.policies._adaptive import Adaptive, AdaptiveState
from lmgate.policies._aimd import AIMD, AIMDState
from lmgate.policies._breaker import (
    Breaker,
    BreakerState,
    BreakerStateName,
    BreakerStatistics,
    Permit,
    Transition,
)
from lmgate.policies._classify import (
    Classification,
    Classifier,
    UserClassifier,
    classify,
    compose,
    endpoint_fault,
    parse_retry_after,
)
from lmgate.policies._default import default_limit
from lmgate.policies._engine import EngineAware, EngineReading
from lmgate.policies._gradient2 import Gradient2, Gradient2State
from lmgate.policies._health import (
    HealthSchedule,
    PortSearch,
    PortSearchStatistics,
    default_ports,
    replace_port,
    url_port,
)
from lmgate.policies._hysteresis import Hysteresis, HysteresisState
from lmgate.policies._lifecycle import (
    ColdVerdict,
    Lifecycle,
    LifecycleState,
    LifecycleStatistics,
    ModelChange,
)
from lmgate.policies._limit import Fixed, FixedState, LimitPolicy, LimitState, LimitStatistics
from lmgate.policies._queueing import QueueControl, QueueControlState, QueueControlStatistics
from lmgate.policies._retry import (
    Retry,
    RetryDecision,
    check_fallbacks,
    choose_larger_window,
    next_target,
    plan_fallbacks,
)
from lmgate.policies._sample import OUTCOME_CLASSES, OutcomeClass, Sample
from lmgate.policies._throttle import Throttle, ThrottleState, ThrottleStatistics
from lmgate.policies._token_budget import TokenBudget, TokenBudgetStatistics, TokenSettings
from lmgate.policies._vegas import Vegas, VegasState
from lmgate.policies.resources import (
    RECOMMENDATIONS,
    Recommendation,
    ResourceGuard,
    ResourceGuardState,
    ResourceReadings,
    ResourceStatistics,
    Thresholds,
)

__all__ = [
    "AIMD",
    "AIMDState",
    "Adaptive",
    "AdaptiveState",
    "Applied",
    "Breaker",
    "BreakerState",
    "BreakerStateName",
    "BreakerStatistics",
    "Chain",
    "Classification",
    "Classifier",
    "ColdVerdict",
    "Compress",
    "ContextStrategy",
    "EngineAware",
    "EngineReading",
    "Fixed",
    "FixedState",
    "Gradient2",
    "Gradient2State",
    "HealthSchedule",
    "Hysteresis",
    "HysteresisState",
    "Lifecycle",
    "LifecycleState",
    "LifecycleStatistics",
    "LimitPolicy",
    "LimitState",
    "LimitStatistics",
    "ModelChange",
    "OUTCOME_CLASSES",
    "OutcomeClass",
    "Permit",
    "PortSearch",
    "PortSearchStatistics",
    "QueueControl",
    "QueueControlState",
    "QueueControlStatistics",
    "RECOMMENDATIONS",
    "Recommendation",
    "ResetWithSummary",
    "ResourceGuard",
    "ResourceGuardState",
    "ResourceReadings",
    "ResourceStatistics",
    "Retry",
    "RetryDecision",
    "Sample",
    "SlidingWindow",
    "Thresholds",
    "Throttle",
    "ThrottleState",
    "ThrottleStatistics",
    "TokenBudget",
    "TokenBudgetStatistics",
    "TokenSettings",
    "Transition",
    "UserClassifier",
    "Vegas",
    "VegasState",
    "check_fallbacks",
    "choose_larger_window",
    "classify",
    "compose",
    "default_limit",
    "default_ports",
    "endpoint_fault",
    "next_target",
    "parse_retry_after",
    "plan_fallbacks",
    "replace_port",
    "url_port",
]
