"""A Prometheus collector for a scheduler (optional extra ``lmgate[prometheus]``).

Gauges and counters are read from ``sched.stats()`` at scrape time, so the
request path pays nothing for them.  Latency histograms cannot be rebuilt
from a snapshot; the collector is also a request hook that the scheduler
calls once per finished request, and keeps fixed buckets per endpoint
(bounded: at most ``max_endpoints`` label values).  Scrapes usually run in
the exporter's thread, so the histograms are guarded by a lock.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, final
from urllib.parse import urlsplit, urlunsplit

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.metrics_core import Metric
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "lmgate's Prometheus collector needs prometheus-client: pip install 'lmgate[prometheus]'"
    ) from exc

from lmgate._errors import InvalidParameter

__all__ = [
    "DURATION_BUCKETS",
    "QUEUE_WAIT_BUCKETS",
    "LatencyHistograms",
    "LmgateCollector",
    "instrument",
]

#: Seconds; a local model answers in 50 ms to minutes.
DURATION_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
QUEUE_WAIT_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0)
#: The label value for requests that never reached an endpoint.
NO_ENDPOINT: Final = "none"
#: The label value once ``max_endpoints`` distinct endpoints are tracked.
OVERFLOW: Final = "other"
_SEVERITY: Final = {
    "proceed": 0,
    "reduce_context": 1,
    "shed_low_priority": 2,
    "pause_admission": 3,
}


@final
class _Series:
    __slots__ = ("counts", "sum")

    def __init__(self, n: int) -> None:
        self.counts = [0] * (n + 1)
        self.sum = 0.0


@final
class LatencyHistograms:
    """Fixed-bucket histograms keyed by one label, bounded in label values."""

    __slots__ = ("_bounds", "_lock", "_max", "_series")

    def __init__(self, buckets: Sequence[float], *, max_labels: int = 64) -> None:
        bounds = tuple(float(b) for b in buckets)
        if not bounds or any(not math.isfinite(b) or b <= 0 for b in bounds):
            raise InvalidParameter("buckets must be positive finite numbers", field="buckets")
        if any(a >= b for a, b in itertools.pairwise(bounds)):
            raise InvalidParameter("buckets must be strictly increasing", field="buckets")
        if isinstance(max_labels, bool) or not isinstance(max_labels, int) or max_labels < 1:
            raise InvalidParameter("max_labels must be a positive int", field="max_labels")
        self._bounds = bounds
        self._max = max_labels
        self._series: dict[str, _Series] = {}
        self._lock = threading.Lock()

    def observe(self, label: str, value: float) -> None:
        if not (value >= 0.0 and math.isfinite(value)):
            return  # a clock hiccup must not poison the sum
        i = bisect.bisect_left(self._bounds, value)
        with self._lock:
            series = self._series.get(label)
            if series is None:
                if len(self._series) >= self._max:
                    label = OVERFLOW
                series = self._series.get(label)
                if series is None:
                    series = self._series[label] = _Series(len(self._bounds))
            series.counts[i] += 1
            series.sum += value

    def snapshot(self) -> list[tuple[str, list[tuple[str, float]], float]]:
        """``(label, cumulative buckets with +Inf, sum)`` per label, consistent."""
        with self._lock:
            raw = [(k, list(s.counts), s.sum) for k, s in self._series.items()]
        out = []
        for label, counts, total in sorted(raw):
            acc = 0
            buckets: list[tuple[str, float]] = []
            for bound, n in zip((*map(str, self._bounds), "+Inf"), counts, strict=True):
                acc += n
                buckets.append((bound, float(acc)))
            out.append((label, buckets, total))
        return out


@final
class LmgateCollector:
    """Exposes a scheduler's stats and per-endpoint latency histograms.

    Register it (``registry.register(collector)``) and pass it to the
    scheduler as a request hook so the histograms fill.  ``sched`` is
    anything with a ``stats()`` method, or a zero-argument callable that
    returns the stats.
    """

    def __init__(
        self,
        sched: Any,
        *,
        namespace: str = "lmgate",
        duration_buckets: Sequence[float] = DURATION_BUCKETS,
        queue_wait_buckets: Sequence[float] = QUEUE_WAIT_BUCKETS,
        max_endpoints: int = 64,
    ) -> None:
        stats = getattr(sched, "stats", sched)
        if not callable(stats):
            raise InvalidParameter("sched must have a stats() method", field="sched")
        if not isinstance(namespace, str) or not namespace.replace("_", "a").isalnum():
            raise InvalidParameter("namespace must be [a-zA-Z0-9_]+", field="namespace")
        self._stats: Callable[[], Any] = stats
        self._ns = namespace
        self.durations = LatencyHistograms(duration_buckets, max_labels=max_endpoints)
        self.queue_waits = LatencyHistograms(queue_wait_buckets, max_labels=max_endpoints)
        self.ttfts = LatencyHistograms(duration_buckets, max_labels=max_endpoints)

    # -- request hook ---------------------------------------------------------

    def on_request_start(self, *, model: str, priority: int) -> None:
        return None

    def on_request_granted(self, handle: object, *, endpoint: Any, queue_wait: float) -> None:
        return None

    def on_request_end(
        self,
        handle: object,
        *,
        endpoint: str | None,
        model: str,
        outcome: str,
        queue_wait: float,
        duration: float | None,
        ttft: float | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Record one finished request; cheap, never raises on odd numbers."""
        label = endpoint if endpoint is not None else NO_ENDPOINT
        self.queue_waits.observe(label, queue_wait)
        if duration is not None and endpoint is not None:
            self.durations.observe(endpoint, duration)
        if ttft is not None and endpoint is not None:
            self.ttfts.observe(endpoint, ttft)

    # -- prometheus_client Collector ------------------------------------------

    def describe(self) -> list[Metric]:
        """The metric names, without calling ``stats()`` at registration."""
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._stats())

    def _families(self, s: Any) -> Iterator[Metric]:
        ns = self._ns

        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{ns}_{name}", doc, labels=labels)

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
            return CounterMetricFamily(f"{ns}_{name}", doc, labels=labels)

        queued = gauge("queue_depth", "Requests waiting for a slot.")
        capacity = gauge("queue_capacity", "The queue's bound.")
        in_flight = gauge("in_flight", "Leases held now, all endpoints.")
        submitted = counter("requests_submitted", "Requests submitted.")
        outcomes = counter("requests", "Finished requests by outcome.", ["outcome"])
        ep_in_flight = gauge("endpoint_in_flight", "Leases held now.", ["endpoint"])
        ep_limit = gauge("endpoint_limit", "Concurrency limit in force.", ["endpoint"])
        ep_state = gauge(
            "endpoint_state", "1 for the endpoint's current state.", ["endpoint", "state"]
        )
        ep_routing = gauge(
            "endpoint_routing", "1 for how admission uses the endpoint.", ["endpoint", "routing"]
        )
        ep_info = gauge("endpoint_info", "Static endpoint facts.", ["endpoint", "kind", "url"])
        ep_latency = gauge("endpoint_latency_ewma_seconds", "Smoothed call latency.", ["endpoint"])
        ep_ttft = gauge("endpoint_ttft_ewma_seconds", "Smoothed time to first token.", ["endpoint"])
        ep_samples = counter(
            "endpoint_samples", "Feedback samples by class.", ["endpoint", "class"]
        )
        ev_published = counter("events_published", "Events published.")
        ev_dropped = counter("events_dropped", "Events dropped by slow subscribers.")
        pressure = gauge(
            "resource_pressure",
            "Resource guard severity: 0 proceed .. 3 pause_admission.",
            ["recommendation"],
        )
        paused = gauge("admission_paused", "1 while resource pressure pauses admission.")
        context_factor = gauge("context_factor", "Factor on the context threshold of new requests.")
        shed = counter("requests_shed", "Requests refused under resource pressure.", ["where"])
        retries = counter("retries", "Attempts after a request's first.")
        fallbacks = counter("fallbacks", "Attempts moved to another model.")
        if s is not None:
            queued.add_metric([], _num(getattr(s, "queued", 0)))
            if getattr(s, "queue_size", None) is not None:
                capacity.add_metric([], _num(s.queue_size))
            in_flight.add_metric([], _num(getattr(s, "in_flight", 0)))
            submitted.add_metric([], _num(getattr(s, "submitted", 0)))
            for outcome, n in sorted((getattr(s, "outcomes", None) or {}).items()):
                outcomes.add_metric([str(outcome)], _num(n))
            for ep in getattr(s, "endpoints", ()) or ():
                name = str(ep.name)
                ep_in_flight.add_metric([name], _num(getattr(ep, "in_flight", 0)))
                ep_limit.add_metric([name], _num(getattr(ep, "limit", 0)))
                ep_state.add_metric([name, str(getattr(ep, "state", "unknown"))], 1.0)
                routing = getattr(ep, "routing", None)
                if routing is not None:
                    ep_routing.add_metric([name, str(routing)], 1.0)
                ep_info.add_metric(
                    [name, str(getattr(ep, "kind", "unknown")), _safe_url(getattr(ep, "url", ""))],
                    1.0,
                )
                for fam, field in ((ep_latency, "latency_ewma"), (ep_ttft, "ttft_ewma")):
                    value = getattr(ep, field, None)
                    if value is not None:
                        fam.add_metric([name], _num(value))
                for cls, n in sorted((getattr(ep, "by_class", None) or {}).items()):
                    ep_samples.add_metric([name, str(cls)], _num(n))
            events = getattr(s, "events", None)
            if events is not None:
                ev_published.add_metric([], _num(getattr(events, "published", 0)))
                ev_dropped.add_metric([], _num(getattr(events, "dropped", 0)))
            res = getattr(s, "resources", None)
            rec = getattr(res, "recommendation", None)
            if rec in _SEVERITY:
                pressure.add_metric([str(rec)], float(_SEVERITY[str(rec)]))
            if res is not None and hasattr(res, "paused"):
                paused.add_metric([], 1.0 if res.paused else 0.0)
                context_factor.add_metric([], _num(getattr(res, "context_factor", 1.0)))
                shed.add_metric(["submit"], _num(getattr(res, "shed", 0)))
                shed.add_metric(["queue"], _num(getattr(res, "evicted", 0)))
            for family, field in ((retries, "retries"), (fallbacks, "fallbacks")):
                if hasattr(s, field):
                    family.add_metric([], _num(getattr(s, field)))
        yield from (queued, capacity, in_flight, submitted, outcomes)
        yield from (ep_in_flight, ep_limit, ep_state, ep_routing, ep_info)
        yield from (ep_latency, ep_ttft, ep_samples)
        yield from (ev_published, ev_dropped, pressure, paused, context_factor, shed)
        yield from (retries, fallbacks)
        for hist, name, doc in (
            (self.durations, "request_duration_seconds", "Call duration per endpoint."),
            (self.queue_waits, "queue_wait_seconds", "Time from submit to grant or refusal."),
            (self.ttfts, "time_to_first_token_seconds", "Reported time to first token."),
        ):
            histogram = HistogramMetricFamily(f"{ns}_{name}", doc, labels=["endpoint"])
            if s is not None:
                for label, buckets, total in hist.snapshot():
                    histogram.add_metric([label], buckets, total)
            yield histogram

    def __repr__(self) -> str:
        return f"<LmgateCollector namespace={self._ns!r}>"


def instrument(
    sched: Any, *, registry: CollectorRegistry | None = REGISTRY, **options: Any
) -> LmgateCollector:
    """Export ``sched``'s metrics: a collector, registered and added as a request hook.

    ``options`` go to :class:`LmgateCollector`; ``registry=None`` skips
    registration (register the returned collector yourself).
    """
    add_hook = getattr(sched, "add_hook", None)
    if not callable(add_hook):
        raise InvalidParameter("sched must be a Scheduler (with add_hook())", field="sched")
    collector = LmgateCollector(sched, **options)
    if registry is not None:
        registry.register(collector)
    try:
        add_hook(collector)
    except BaseException:
        if registry is not None:
            registry.unregister(collector)
        raise
    return collector


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _safe_url(url: Any) -> str:
    """The URL without credentials, query or fragment: a label is public."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return ""
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))
