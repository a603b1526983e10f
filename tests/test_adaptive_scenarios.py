"""lmgate's default limit through the whole stack, in virtual time: ranges, not exact values.

A real ``Scheduler`` (endpoint actor, admission, throttling) over a
simulated continuous-batching server whose throughput peaks at a batch of
16 -- past it every step slows steeply and the KV cache starts preempting.
The limit is read once a second from ``stats()`` (the one admission
enforces).  Steady-state windows include the policy's periodic probe steps:
they are part of how it holds the knee, so the coefficient of variation
counts them.
"""

from __future__ import annotations

import bisect
import itertools
import math
from typing import Any

import msgspec
import pytest

from lmgate.bench._run import Trace, run_virtual
from lmgate.policies._adaptive import Adaptive
from lmgate.policies._limit import LimitStatistics
from lmgate.policies._sample import Sample
from lmgate.sim import load_scenario, parse_scenario
from lmgate.sim._scenarios import Scenario

SERVER = """
[[servers]]
name = "gpu"
model = "llama-3-8b"
slots = 32
knee = 16
base_step = 0.02
slope_below = 0.0005
slope_above = 0.004
prefill_per_token = 0.0002
kv_budget = 16384
kv_overflow = "preempt"
max_queue = 64
seed = SEED
prompt_tokens = { kind = "lognormal", mean = 500, sigma = 0.5, min = 16, max = 4000 }
output_tokens = { kind = "lognormal", mean = 200, sigma = 0.6, min = 1, max = 1024 }
"""


def saturated(duration: float, *, halve_at: float | None = None, seed: int = 1) -> Scenario:
    """48 closed-loop workers without deadlines: the limit is always full."""
    text = f"duration = {duration}\nseed = {seed}\n" + SERVER.replace("SEED", str(seed))
    text += '\n[[clients]]\nname = "workers"\nmode = "closed"\nclients = 48\n'
    if halve_at is not None:
        text += f'\n[[events]]\nat = {halve_at}\naction = "set_capacity"\n'
        text += "args = { factor = 0.5 }\n"
    return parse_scenario(text, name="saturated")


def window(trace: Trace, start: float, end: float) -> tuple[float, float, int, int]:
    """Time-weighted mean and CV of the limit in [start, end), and its range."""
    total = weighted = squares = 0.0
    seen = []
    for (t0, limit), (t1, _) in itertools.pairwise(zip(trace.times, trace.limits, strict=True)):
        if start <= t0 < end:
            total += t1 - t0
            weighted += limit * (t1 - t0)
            squares += limit * limit * (t1 - t0)
            seen.append(limit)
    mean = weighted / total
    return mean, math.sqrt(max(0.0, squares / total - mean * mean)) / mean, min(seen), max(seen)


def settled_after(trace: Trace, start: float, low: int, high: int) -> float:
    """Seconds from ``start`` until the limit enters [low, high] and never leaves it."""
    since = math.inf
    for t, limit in zip(trace.times, trace.limits, strict=True):
        if t < start:
            continue
        since = min(since, t) if low <= limit <= high else math.inf
    return max(0.0, since - start - 1.0)  # the limit is read once a second


class Recorder(msgspec.Struct, frozen=True):
    """A policy config that builds ``inner`` and keeps what its state is fed."""

    inner: Adaptive
    log: list[Any]

    def build(self) -> RecordingState:
        return RecordingState(self.inner.build(), self.log)


class RecordingState:
    """Forwards to the real state; logs each sample, each tick and the limit after it."""

    def __init__(self, inner: Any, log: list[Any]) -> None:
        self.inner = inner
        self.log = log

    @property
    def limit(self) -> int:
        return int(self.inner.limit)

    def update(self, sample: Sample, now: float) -> int:
        limit = int(self.inner.update(sample, now))
        self.log.append(("sample", now, sample, limit))
        return limit

    def tick(self, now: float) -> int:
        limit = int(self.inner.tick(now))
        self.log.append(("tick", now, None, limit))
        return limit

    def statistics(self) -> LimitStatistics:
        return self.inner.statistics()  # type: ignore[no-any-return]


def test_holds_the_knee_of_a_real_server() -> None:
    """Knee at 16, always saturated: from 2 min on, mean in [14, 20] and CV <= 5 %."""
    trace = run_virtual(saturated(480.0), Adaptive(), name="lmgate")
    mean, cv, low, high = window(trace, 120.0, 480.0)
    assert 14.0 <= mean <= 20.0
    assert cv <= 0.05
    assert 12 <= low <= high <= 24
    assert trace.grants_over_limit == 0
    assert trace.outcomes["completed"] > 0.9 * sum(trace.outcomes.values())


@pytest.mark.parametrize("seed", [1, 2])
def test_reconverges_within_ten_seconds_after_capacity_halves(seed: int) -> None:
    """Throughput halves at t=300, knee still 16: in [14, 20] for good within 10 s, steadily."""
    trace = run_virtual(saturated(540.0, halve_at=300.0, seed=seed), Adaptive(), name="lmgate")
    assert settled_after(trace, 300.0, 14, 20) <= 10.0
    mean, cv, _, _ = window(trace, 310.0, 540.0)
    assert 14.0 <= mean <= 20.0
    assert cv <= 0.05
    assert trace.grants_over_limit == 0


def test_steady_3x_overload_neither_collapses_nor_drifts() -> None:
    """Open loop at 3x capacity, 30 s deadlines: near the knee, far from floor and ceiling."""
    config = Adaptive()
    trace = run_virtual(load_scenario("overload_3x"), config, name="lmgate")
    mean, cv, _, _ = window(trace, 120.0, 600.0)
    assert 13.0 <= mean <= 20.0
    assert cv <= 0.08
    _, _, low, high = window(trace, 90.0, 600.0)
    assert low >= 8 > config.min_limit
    assert high <= 24 < config.max_limit
    assert trace.grants_over_limit == 0


def test_the_endpoint_actor_feeds_the_policy_what_it_needs() -> None:
    """Successes carry TTFT and sizes; in-flight counts the lease, within the limit; 1 tick/s."""
    log: list[Any] = []
    run_virtual(saturated(240.0), Recorder(Adaptive(), log), name="recorded")
    ticks = [now for kind, now, _, _ in log if kind == "tick"]
    assert 0.9 * 240 <= len(ticks) <= 1.1 * 240
    changes = [(now, limit) for _, now, _, limit in log]
    at = [now for now, _ in changes]
    samples = [s for kind, _, s, _ in log if kind == "sample"]
    successes = [s for s in samples if s.outcome == "success"]
    assert len(successes) > 500
    assert all(s.ttft is not None and 0.0 < s.ttft <= s.duration for s in successes)
    assert all(s.prompt_tokens and s.output_tokens for s in successes)
    assert all(s.in_flight >= 1 for s in samples)
    assert max(s.in_flight for s in samples) >= 16
    late = 0
    for s in samples:
        i = bisect.bisect_right(at, s.start)
        in_force = max(changes[j][1] for j in range(max(0, i - 1), i + 1) if j < len(changes))
        late += s.in_flight > in_force
    assert late <= 0.01 * len(samples)
