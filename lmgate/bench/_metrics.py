"""The figures of one overload-benchmark run, computed from its trace.

- *goodput*: requests completed (so within their deadline: the scheduler
  ends the others with ``DeadlineExceeded``) per second of the run;
- *p50 / p99 latency* of admitted requests: from issue to end, for every
  request that was granted a lease and then completed or ran into its
  deadline (a server's instant refusal is a failure, not a latency); the
  *service* percentiles count from the grant, the part the limit governs;
- *deadline-miss, rejection and failure rates*: shares of the requests
  that ended within the run;
- *limit mean and CV*: time-weighted over the steady window, the stretch
  from a minute after the scenario's last change (and at least two minutes
  in) to its end; ``cv_hold`` leaves out the seconds a policy spent
  measuring a probe step;
- *converge*: seconds from the scenario's first change (its start when
  nothing changes) until the limit enters, and then never leaves, a band of
  10 % (at least one slot) around its steady mean; None if it never does.
"""

from __future__ import annotations

import math
from typing import final

import msgspec

from lmgate.bench._run import Trace
from lmgate.sim._scenarios import Scenario

__all__ = ["Metrics", "change_times", "measure", "percentile"]

SETTLE = 60.0
WARMUP = 120.0
BAND = 0.10


@final
class Metrics(msgspec.Struct, frozen=True, kw_only=True):
    """One run's figures (see the module doc); times in seconds."""

    scenario: str
    policy: str
    ended: int
    completed: int
    deadline: int
    rejected: int
    failed: int
    unavailable: int
    goodput: float
    p50: float | None
    p99: float | None
    service_p50: float | None
    service_p99: float | None
    deadline_miss_rate: float
    rejection_rate: float
    failure_rate: float
    limit_mean: float
    limit_cv: float
    limit_cv_hold: float
    converge: float | None
    change_at: float
    steady: tuple[float, float]
    grants_over_limit: int
    clients: dict[str, dict[str, int]]


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) by linear interpolation; None for no values."""
    if not values:
        return None
    values = sorted(values)
    pos = q * (len(values) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


def change_times(scenario: Scenario) -> list[float]:
    """When the situation changes: faults, the end of timed faults, load phases."""
    times: set[float] = set()
    for event in scenario.events:
        times.add(event.at)
        seconds = event.args.get("seconds")
        if isinstance(seconds, int | float) and event.action in ("start_loading", "rate_limit"):
            times.add(event.at + float(seconds))
    for client in scenario.clients:
        times.update(phase.at for phase in client.phases)
        if client.start > 0.0:
            times.add(client.start)
        if client.stop is not None:
            times.add(client.stop)
    return sorted(t for t in times if 0.0 < t < scenario.duration)


def _weighted(
    times: tuple[float, ...], limits: tuple[int, ...], keep: list[bool]
) -> tuple[float, float]:
    total = weighted = squares = 0.0
    for i, limit in enumerate(limits):
        if not keep[i]:
            continue
        span = times[i] - times[i - 1] if i else times[0]
        total += span
        weighted += limit * span
        squares += limit * limit * span
    if total <= 0.0:
        return math.nan, math.nan
    mean = weighted / total
    var = max(0.0, squares / total - mean * mean)
    return mean, math.sqrt(var) / mean if mean > 0 else math.nan


def _converge(trace: Trace, start: float, mean: float) -> float | None:
    if not math.isfinite(mean):
        return None
    band = max(1.0, BAND * mean)
    since: float | None = None
    for t, limit in zip(trace.times, trace.limits, strict=True):
        if t < start:
            continue
        if abs(limit - mean) <= band:
            if since is None:
                since = t
        else:
            since = None
    return None if since is None else max(0.0, since - start - 1.0)


def measure(trace: Trace, scenario: Scenario) -> Metrics:
    """The figures of ``trace``, a run of ``scenario``."""
    changes = change_times(scenario)
    end = trace.duration
    begin = min(max(WARMUP, (changes[-1] + SETTLE) if changes else 0.0), end - SETTLE)
    inside = [begin <= t <= end for t in trace.times]
    mean, cv = _weighted(trace.times, trace.limits, inside)
    held = [k and not p for k, p in zip(inside, trace.probing, strict=True)]
    _, cv_hold = _weighted(trace.times, trace.limits, held)
    change_at = changes[0] if changes else 0.0
    counts = dict.fromkeys(("completed", "deadline", "rejected", "failed", "unavailable"), 0)
    clients: dict[str, dict[str, int]] = {}
    latencies: list[float] = []
    service: list[float] = []
    for r in trace.records:
        if r.ended > end:
            continue
        counts[r.kind] = counts.get(r.kind, 0) + 1
        per = clients.setdefault(r.client, {"completed": 0, "deadline": 0, "ended": 0})
        per["ended"] += 1
        if r.kind in ("completed", "deadline"):
            per[r.kind] += 1
            if r.granted == r.granted:
                latencies.append(r.ended - r.issued)
                service.append(r.ended - r.granted)
    ended = sum(counts.values())
    share = (lambda n: n / ended) if ended else (lambda n: 0.0)
    return Metrics(
        scenario=trace.scenario,
        policy=trace.policy,
        ended=ended,
        completed=counts["completed"],
        deadline=counts["deadline"],
        rejected=counts["rejected"],
        failed=counts["failed"],
        unavailable=counts["unavailable"],
        goodput=counts["completed"] / end,
        p50=percentile(latencies, 0.50),
        p99=percentile(latencies, 0.99),
        service_p50=percentile(service, 0.50),
        service_p99=percentile(service, 0.99),
        deadline_miss_rate=share(counts["deadline"]),
        rejection_rate=share(counts["rejected"]),
        failure_rate=share(counts["failed"] + counts["unavailable"]),
        limit_mean=mean,
        limit_cv=cv,
        limit_cv_hold=cv_hold,
        converge=_converge(trace, change_at, mean),
        change_at=change_at,
        steady=(begin, end),
        grants_over_limit=trace.grants_over_limit,
        clients=dict(sorted(clients.items())),
    )
