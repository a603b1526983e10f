"""Adaptive with the server's own metrics: a queue, room, preemption.

The model server here is the one of ``test_adaptive.py`` cut down: each
step every running request writes one token; ``slots`` run at once and the
rest wait at the server; a step lasts ``base * batch ** power``.  Once a
second the server publishes what a vLLM or llama.cpp ``/metrics`` would:
running, waiting, KV usage and a preemption counter, which rises while
more than ``preempt_above`` requests run.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from lmgate.policies import Adaptive, EngineAware, EngineReading
from lmgate.policies._sample import Sample


def run(
    config: Adaptive,
    *,
    slots: int = 10_000,
    power: float = 0.0,
    preempt_above: int = 10_000,
    seconds: float = 120.0,
    engine: bool = True,
    seed: int = 1,
) -> tuple[list[tuple[float, int]], dict[str, float]]:
    rng = random.Random(seed)
    state = config.build()
    now, next_read, preemptions = 0.0, 0.0, 0
    trace: list[tuple[float, int]] = []
    running: list[list[Any]] = []  # [start, written, wanted, first_token_at, in_flight]
    while now < seconds:
        wanted = state.tick(now)
        while len(running) < wanted:
            running.append([now, 0, rng.randint(20, 200), None, len(running) + 1])
        batch = min(len(running), slots)
        now += 0.02 * batch**power * (1.0 + 0.1 * rng.uniform(-1.0, 1.0))
        if batch > preempt_above:
            preemptions += 1
            now += 0.02  # the preempted request's prompt is prefilled again
        for request in running[:batch]:
            request[1] += 1
            if request[3] is None:
                request[3] = now
        for request in [r for r in running[:batch] if r[1] >= r[2]]:
            running.remove(request)
            start, _, tokens, first, in_flight = request
            sample = Sample(
                start=start,
                duration=now - start,
                in_flight=in_flight,
                outcome="success",
                ttft=first - start,
                prompt_tokens=300,
                output_tokens=tokens,
            )
            state.update(sample, now)
        if engine and now >= next_read:
            reading = EngineReading(
                at=now,
                running=batch,
                waiting=len(running) - batch,
                kv_usage=min(1.0, batch / max(preempt_above, 1)),
                preemptions=preemptions,
            )
            state.observe_engine(reading, now)
            next_read = now + 1.0
        trace.append((now, state.limit))
    return trace, state.statistics().detail


def limit_at(trace: list[tuple[float, int]], t: float) -> int:
    return next((limit for at, limit in trace if at >= t), trace[-1][1])


def test_the_default_state_reads_engine_metrics() -> None:
    assert isinstance(Adaptive().build(), EngineAware)


def test_a_queue_at_the_server_brings_the_limit_down_to_its_slots() -> None:
    """Eight slots, the limit far above: the waiting requests are taken off."""
    trace, detail = run(Adaptive(initial_limit=32), slots=8)
    assert detail["server_queue_cuts"] >= 1
    assert 8 <= limit_at(trace, 110.0) <= 9
    # Only the latency would have told it, and more slowly.
    trace_blind, blind = run(Adaptive(initial_limit=32), slots=8, engine=False)
    assert blind["server_queue_cuts"] == 0
    first = next(at for at, limit in trace if limit <= 9)
    first_blind = next((at for at, limit in trace_blind if limit <= 9), math.inf)
    assert first < first_blind


def test_no_queue_at_the_server_lets_startup_double_past_a_costly_batch() -> None:
    """Latency grows as the square root of the batch (elasticity 0.5): cheap
    enough to keep, too dear for a blind doubling, which cannot tell it from
    a hard knee hidden inside the doubling."""
    trace, _ = run(Adaptive(max_limit=64), power=0.5, seconds=90.0)
    _, blind = run(Adaptive(max_limit=64), power=0.5, seconds=90.0, engine=False)
    assert limit_at(trace, 85.0) == 64
    assert blind["held_limit"] < 16


def test_a_doubling_under_which_the_server_preempts_is_undone_at_once() -> None:
    """Preemptions past 20 running: the doubling to 32 ends at the first reading
    that shows them, not after a window of requests that each pay for them."""

    def seconds_at_32(trace: list[tuple[float, int]]) -> float:
        start = next(at for at, limit in trace if limit == 32)
        return next(at for at, limit in trace if at > start and limit != 32) - start

    trace, detail = run(Adaptive(), preempt_above=20)
    blind_trace, _ = run(Adaptive(), preempt_above=20, engine=False)
    assert detail["engine_refusals"] >= 1
    assert seconds_at_32(trace) <= 1.5
    assert seconds_at_32(trace) < seconds_at_32(blind_trace) / 4


@pytest.mark.parametrize("waiting", [0, 3])
def test_readings_with_nothing_to_say_change_nothing(waiting: int) -> None:
    state = Adaptive().build()
    assert state.observe_engine(EngineReading(at=1.0), 1.0) == 4
    state.observe_engine(EngineReading(at=2.0, waiting=waiting), 2.0)
    assert state.limit == 4  # one reading is no window: nothing moves
    assert state.statistics().detail["readings"] == 2
