"""Sans-IO policies: limits, hysteresis, throttling, breakers, retries, context."""

from lmgate.policies._limit import Fixed, FixedState, LimitPolicy, LimitState, LimitStatistics
from lmgate.policies._sample import OUTCOME_CLASSES, OutcomeClass, Sample

__all__ = [
    "OUTCOME_CLASSES",
    "Fixed",
    "FixedState",
    "LimitPolicy",
    "LimitState",
    "LimitStatistics",
    "OutcomeClass",
    "Sample",
]
