"""Prometheus metrics for a scheduler (optional extra: ``pip install 'lmgate[prometheus]'``).

::

    from prometheus_client import REGISTRY
    from lmgate.prometheus import instrument

    async with lmgate.Scheduler(endpoints) as sched:
        instrument(sched, registry=REGISTRY)   # gauges, counters, latency histograms

Importing this module needs ``prometheus-client``; ``import lmgate`` does not.
"""

from lmgate.observability._prometheus import (
    DURATION_BUCKETS,
    QUEUE_WAIT_BUCKETS,
    LatencyHistograms,
    LmgateCollector,
    instrument,
)

__all__ = [
    "DURATION_BUCKETS",
    "LatencyHistograms",
    "LmgateCollector",
    "QUEUE_WAIT_BUCKETS",
    "instrument",
]
