"""Adaptive: invariants under any samples, and closed-loop runs against a model server.

The model is a continuous-batching server stepped in virtual time: every
step each running request writes one token, and a step takes ``base`` seconds
up to ``knee`` running requests and grows in proportion past it, so
throughput is flat beyond the knee and only latency grows.  ``slots``, when
set, lets that many run and queues the rest (time to first token then
carries the wait).  A saturated client keeps the limit full, which is what
any overload (3x or 30x) looks like to a limit.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import random
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from lmgate._errors import InvalidParameter
from lmgate.policies._adaptive import Adaptive, AdaptiveState
from lmgate.policies._sample import OUTCOME_CLASSES, OutcomeClass, Sample

Trace = tuple[tuple[float, int], ...]


class Run(NamedTuple):
    """What a closed-loop run leaves: the limit after every step, and the final counts."""

    trace: Trace
    detail: tuple[tuple[str, float], ...]


@functools.cache
def serve(
    config: Adaptive,
    *,
    knee: int = 16,
    seconds: float = 300.0,
    seed: int = 1,
    ttft: bool = True,
    slots: int | None = None,
    sublinear: tuple[float, float] | None = None,
    change_at: float = math.inf,
    speed_after: float = 1.0,
    knee_after: int | None = None,
    quiet: tuple[float, float, int] | None = None,
) -> Run:
    """Run the model server under ``config``; the (time, limit) after every step.

    ``quiet`` is ``(start, end, requests)``: the client wants only that many
    requests in flight between ``start`` and ``end``.
    """
    rng = random.Random(seed)
    state = config.build()
    now, trace = 0.0, []
    running: list[list[Any]] = []  # [start, written, wanted, first_token_at, in_flight]
    while now < seconds:
        changed = now >= change_at
        k = knee_after if changed and knee_after is not None else knee
        wanted = state.tick(now)
        if quiet is not None and quiet[0] <= now < quiet[1]:
            wanted = min(wanted, quiet[2])
        while len(running) < wanted:
            running.append([now, 0, rng.randint(20, 200), None, len(running) + 1])
        batch = len(running) if slots is None else min(len(running), slots)
        if sublinear is not None:
            step = sublinear[0] + sublinear[1] * batch
        else:
            step = 0.02 * max(1.0, batch / k)
        now += step * (1.0 + 0.1 * rng.uniform(-1.0, 1.0)) / (speed_after if changed else 1.0)
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
                ttft=first - start if ttft else None,
                prompt_tokens=300 if ttft else None,
                output_tokens=tokens,
            )
            state.update(sample, now)
        trace.append((now, state.limit))
    return Run(tuple(trace), tuple(state.statistics().detail.items()))


def over(trace: Trace, start: float, end: float) -> tuple[float, float, int, int]:
    """Time-weighted mean and coefficient of variation, and the range, in [start, end)."""
    total = weighted = squares = 0.0
    values = []
    for (t0, limit), (t1, _) in itertools.pairwise(trace):
        if start <= t0 < end:
            total += t1 - t0
            weighted += limit * (t1 - t0)
            squares += limit * limit * (t1 - t0)
            values.append(limit)
    mean = weighted / total
    return mean, math.sqrt(max(0.0, squares / total - mean * mean)) / mean, min(values), max(values)


def share_within(trace: Trace, start: float, end: float, low: int, high: int) -> float:
    """The share of time in [start, end) the limit spent within [low, high]."""
    inside = total = 0.0
    for (t0, limit), (t1, _) in itertools.pairwise(trace):
        if start <= t0 < end:
            total += t1 - t0
            inside += (t1 - t0) if low <= limit <= high else 0.0
    return inside / total


# -- closed loop -----------------------------------------------------------------


@pytest.mark.parametrize("ttft", [True, False])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_holds_the_knee_steadily(seed: int, ttft: bool) -> None:
    """Knee at 16, saturated: mean in [14, 20], CV <= 5 %, no collapse, no drift."""
    mean, cv, low, high = over(serve(Adaptive(), seed=seed, ttft=ttft).trace, 60.0, 300.0)
    assert 14.0 <= mean <= 20.0
    assert cv <= 0.05
    assert low >= 12
    assert high <= 24


@pytest.mark.parametrize("seed", [1, 2])
def test_capacity_halving_keeps_the_knee(seed: int) -> None:
    """Every step twice as slow from t=300: within 10 s the limit is back at the knee."""
    trace = serve(Adaptive(), seed=seed, seconds=420.0, change_at=300.0, speed_after=0.5).trace
    mean, cv, _, _ = over(trace, 310.0, 420.0)
    assert 14.0 <= mean <= 20.0
    assert cv <= 0.08
    assert share_within(trace, 310.0, 420.0, 14, 20) >= 0.9


@pytest.mark.parametrize("seed", [1, 2])
def test_knee_halving_is_found(seed: int) -> None:
    """The knee moves from 16 to 8 at t=300: the limit follows within 40 s, and stays."""
    trace = serve(Adaptive(), seed=seed, seconds=460.0, change_at=300.0, knee_after=8).trace
    assert min(t for t, limit in trace if t >= 300.0 and limit <= 11) <= 340.0
    mean, _, _, _ = over(trace, 360.0, 460.0)
    assert 7.0 <= mean <= 11.0
    assert 7 <= trace[-1][1] <= 10


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_queueing_knee_is_read_from_time_to_first_token(seed: int) -> None:
    """With 16 slots and a queue behind them the wait shows in TTFT: it holds at 16."""
    trace = serve(Adaptive(), knee=1000, slots=16, seed=seed).trace
    mean, cv, _, _ = over(trace, 60.0, 300.0)
    assert 14.0 <= mean <= 20.0
    assert cv <= 0.05
    assert max(limit for _, limit in trace) <= 32


def test_batching_that_still_pays_is_not_mistaken_for_a_queue() -> None:
    """Per-token time rising gently with batch size (a GPU): the limit climbs far past 14."""
    trace = serve(Adaptive(), sublinear=(0.0033, 0.00005), seconds=200.0).trace
    mean, _, _, high = over(trace, 100.0, 200.0)
    assert mean >= 64.0
    assert high <= Adaptive().max_limit


def test_starting_high_comes_down_to_the_knee() -> None:
    """An initial limit four times the knee is undone by the startup's growing down-steps."""
    trace = serve(Adaptive(initial_limit=64), seconds=300.0).trace
    assert min(t for t, limit in trace if limit <= 20) <= 90.0
    mean, _, _, _ = over(trace, 150.0, 300.0)
    assert 14.0 <= mean <= 20.0


@pytest.mark.parametrize("wanted", [16, 20])
def test_a_client_that_never_fills_the_limit_cannot_raise_it(wanted: int) -> None:
    """A client that wants 16 or 20 in flight: the limit ends at what it wants, not beyond."""
    run = serve(Adaptive(initial_limit=16), knee=1000, seconds=300.0, quiet=(0.0, 300.0, wanted))
    assert run.trace[-1][1] == wanted
    assert dict(run.detail)["aborted"] >= 3


def test_a_quiet_client_is_not_read_as_a_faster_server() -> None:
    """Windows while the client wants few requests neither move nor re-reference the limit."""
    run = serve(Adaptive(), sublinear=(0.0033, 0.00005), seconds=200.0, quiet=(150.0, 200.0, 20))
    _, _, low, high = over(run.trace, 160.0, 200.0)
    assert low == high == run.trace[-1][1] >= 64
    assert dict(run.detail)["shifts"] == 0


@settings(max_examples=6, deadline=None)
@given(st.integers(min_value=6, max_value=40), st.integers(min_value=0, max_value=10**6))
def test_settles_near_any_knee(knee: int, seed: int) -> None:
    """For any knee the steady limit sits at it or a little past it, never far off."""
    mean, _, _, _ = over(serve(Adaptive(), knee=knee, seed=seed, seconds=240.0).trace, 120.0, 240.0)
    assert 0.85 * knee <= mean <= 1.3 * knee + 1


def test_same_seed_same_run_other_seed_other_probes() -> None:
    """The probe jitter comes from the config's seed: runs replay exactly."""
    a = serve(Adaptive(seed=5), seconds=200.0).trace
    assert a == serve(Adaptive(seed=5), seconds=200.0).trace
    assert a != serve(Adaptive(seed=6), seconds=200.0).trace


# -- synthetic streams -----------------------------------------------------------


def drive(
    config: Adaptive,
    law: Callable[[int, float], float],
    steps: int,
    seed: int = 0,
    prompts: Callable[[random.Random, float], int] | None = None,
    outputs: tuple[int, int] = (1, 500),
) -> tuple[AdaptiveState, list[int]]:
    """Feed samples slowed by ``law(limit, now)``; the held limits seen after each.

    Prefill costs 50 ms plus 50 ms per 1024 prompt tokens (the default
    ``prompt_scale``), each further token 20 ms, both times the law.
    """
    rng = random.Random(seed)
    state = config.build()
    held = []
    for i in range(steps):
        now = i * 0.05
        limit = state.tick(now)
        slow = law(limit, now)
        prompt = prompts(rng, now) if prompts is not None else None
        tokens = rng.randint(*outputs)
        ttft = 0.05 * (1 + (prompt or 0) / 1024) * slow
        sample = Sample(
            start=now,
            duration=ttft + (tokens - 1) * 0.02 * slow,
            in_flight=limit,
            outcome="success",
            ttft=ttft,
            prompt_tokens=prompt,
            output_tokens=tokens,
        )
        state.update(sample, now)
        held.append(int(state.statistics().detail["held_limit"]))
    return state, held


QUICK = Adaptive(initial_limit=8, max_limit=200, settle=0.0, probe_interval=2.0)


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=0, max_value=10**6))
def test_flat_latency_only_ever_raises_the_limit(seed: int) -> None:
    """Latency that no concurrency changes: the held limit never falls and climbs to the top."""
    _, held = drive(QUICK, lambda c, t: 1.0, 3000, seed)
    assert all(b >= a for a, b in itertools.pairwise(held))
    assert held[-1] == QUICK.max_limit


@settings(max_examples=20, deadline=None)
@given(st.floats(min_value=1.0, max_value=3.0), st.integers(min_value=0, max_value=10**6))
def test_latency_growing_with_concurrency_only_ever_lowers_it(power: float, seed: int) -> None:
    """Latency at least proportional to concurrency: the held limit never rises."""
    _, held = drive(QUICK, lambda c, t: float(c) ** power, 3000, seed)
    assert all(b <= a for a, b in itertools.pairwise(held))
    assert held[-1] < QUICK.initial_limit


@settings(max_examples=20, deadline=None)
@given(
    st.integers(min_value=2, max_value=60),
    st.floats(min_value=1.0, max_value=3.0),
    st.integers(min_value=0, max_value=10**6),
)
def test_exact_knee_is_held_without_drift(knee: int, power: float, seed: int) -> None:
    """Flat below a knee and steep past it: the held limit ends at or just past the knee."""
    _, held = drive(QUICK, lambda c, t: max(1.0, c / knee) ** power, 6000, seed)
    step = max(1, round(knee * QUICK.probe_step))
    assert knee - step <= held[-1] <= math.ceil(1.25 * knee) + 1


@pytest.mark.parametrize(("amplitude", "period"), [(0.1, 10.0), (0.05, 5.0), (0.2, 40.0)])
def test_drift_in_latency_is_not_read_as_a_knee(amplitude: float, period: float) -> None:
    """Latency swinging with time, not with load: bracketed probes do not follow it.

    A swing whose period is near a window's length can now and then fake one
    down-step (the step's window in a trough, the windows around it at the
    same phase); it stays one step, and the next probe up undoes it.
    """

    def law(c: int, t: float) -> float:
        return 1.0 + amplitude * math.sin(2 * math.pi * t / period)

    config = Adaptive(initial_limit=8, max_limit=60, settle=0.0, probe_interval=2.0)
    state, held = drive(config, law, 6000)
    assert 60 in held
    top = held.index(60)
    assert all(b >= a for a, b in itertools.pairwise(held[: top + 1]))
    assert min(held[top:]) >= 60 - round(60 * config.probe_step)
    assert sum(b < a for a, b in itertools.pairwise(held)) <= 2
    assert state.statistics().detail["probes"] >= 20


def test_prompt_and_output_sizes_are_not_read_as_load() -> None:
    """Prompts of 10 to 8000 tokens and short outputs: predictions per request keep it flat."""
    _, held = drive(
        Adaptive(initial_limit=8, max_limit=60, settle=0.0, probe_interval=2.0),
        lambda c, t: 1.0,
        3000,
        prompts=lambda rng, t: rng.randint(10, 8000),
        outputs=(2, 60),
    )
    assert all(b >= a for a, b in itertools.pairwise(held))
    assert held[-1] == 60


def test_a_change_in_prompt_mix_is_not_a_shift() -> None:
    """Phases of short and very long prompts: TTFT is judged per prompt size."""

    def prompts(rng: random.Random, t: float) -> int:
        return rng.randint(50, 200) if int(t // 20) % 2 == 0 else rng.randint(4000, 8000)

    config = Adaptive(initial_limit=8, max_limit=60, settle=0.0, probe_interval=2.0)
    state, held = drive(config, lambda c, t: 1.0, 3000, prompts=prompts, outputs=(2, 10))
    assert all(b >= a for a, b in itertools.pairwise(held))
    assert state.statistics().detail["shifts"] == 0


@settings(max_examples=25, deadline=None)
@given(st.floats(min_value=20.0, max_value=35.0))
def test_a_slowdown_during_a_probe_is_not_read_as_a_knee(at: float) -> None:
    """The server halves its speed at any moment, even mid-probe: the limit never falls."""
    config = Adaptive(
        initial_limit=8, max_limit=60, settle=0.0, probe_interval=2.0, probe_jitter=0.0
    )
    _, held = drive(config, lambda c, t: 1.0 if t < at else 2.0, 1200)
    assert all(b >= a for a, b in itertools.pairwise(held))


# -- rules -----------------------------------------------------------------------


def success(now: float, *, in_flight: int = 4, duration: float = 1.0) -> Sample:
    return Sample(
        start=now, duration=duration, in_flight=in_flight, outcome="success", output_tokens=100
    )


def drop(start: float, outcome: OutcomeClass = "overload") -> Sample:
    return Sample(start=start, duration=0.001, in_flight=1, outcome=outcome)


def test_startup_doubles_while_latency_stays_flat() -> None:
    """Flat windows: 4, then 8, then 16."""
    state = Adaptive(initial_limit=4, settle=0.0).build()
    seen = [state.limit]
    for i in range(40):
        state.update(success(i * 0.2, in_flight=state.limit), i * 0.2)
        if state.limit != seen[-1]:
            seen.append(state.limit)
    assert seen[:3] == [4, 8, 16]


@pytest.mark.parametrize("outcome", ["overload", "timeout", "error"])
def test_a_fresh_drop_cuts_at_once_and_a_stale_one_does_not(outcome: OutcomeClass) -> None:
    """One cut per overload: drops of requests granted before the cut are not news."""
    state = Adaptive(initial_limit=40, max_limit=100, timeout_share=0.0).build()
    assert state.update(drop(0.0, outcome), 1.0) == 36
    assert state.update(drop(0.5, outcome), 1.1) == 36
    assert state.update(drop(1.05, outcome), 1.2) == 32
    assert state.statistics().detail["cuts"] == 2


def test_a_burst_of_drops_the_old_limit_let_in_cuts_once() -> None:
    """A fast 503 from a request granted above today's limit is the overload already cut for."""
    state = Adaptive(initial_limit=8, max_limit=100).build()
    assert state.update(drop(0.0), 1.0) == 7
    burst = [Sample(start=1.0, duration=0.001, in_flight=n, outcome="overload") for n in (8, 8, 8)]
    assert [state.update(sample, 1.01) for sample in burst] == [7, 7, 7]
    fresh = Sample(start=1.0, duration=0.001, in_flight=7, outcome="overload")
    assert state.update(fresh, 1.02) == 6
    assert state.statistics().detail["cuts"] == 2


def test_stray_timeouts_do_not_cut_but_a_pile_of_them_does() -> None:
    """One timeout in four finished requests is long answers; one in two is a cut."""
    state = Adaptive(initial_limit=40, max_limit=100).build()
    now = 0.0
    for i in range(200):
        now += 0.1
        state.update(drop(now, "timeout") if i % 4 == 3 else success(now, in_flight=1), now)
    assert state.statistics().detail["cuts"] == 0
    for i in range(40):
        now += 0.1
        state.update(drop(now, "timeout") if i % 2 else success(now, in_flight=1), now)
    assert state.statistics().detail["cuts"] == 1
    assert state.statistics().detail["held_limit"] == 36


def test_fast_failures_are_never_read_as_latency() -> None:
    """A stream of instant 429s only ever lowers the limit, down to the floor."""
    state = Adaptive(initial_limit=30, max_limit=100).build()
    seen = []
    for i in range(200):
        seen.append(state.update(drop(i * 0.1), i * 0.1 + 0.01))
        state.tick(i * 0.1 + 0.05)
    assert seen == sorted(seen, reverse=True)
    assert seen[-1] == 1
    assert state.statistics().detail["windows"] == 0


@pytest.mark.parametrize("outcome", ["cancelled", "client_error", "loading"])
def test_outcomes_that_say_nothing_are_not_samples(outcome: OutcomeClass) -> None:
    """Cancelled, client-error and loading outcomes change nothing at all."""
    state = Adaptive().build()
    for i in range(5):
        state.update(success(i * 0.5), i * 0.5)
    before = copy.deepcopy(state.statistics())
    for i in range(50):
        state.update(Sample(start=3.0, duration=0.001 * i, in_flight=1, outcome=outcome), 3.0 + i)
    assert state.statistics() == before


def test_a_window_holds_at_most_max_window_samples() -> None:
    """Memory is bounded: a long window closes once it holds max_window_samples."""
    state = Adaptive(window=3600.0, window_samples=10, max_window_samples=50, settle=0.0).build()
    for i in range(1000):
        state.update(success(i * 0.01, in_flight=state.limit), i * 0.01)
    assert state.statistics().detail["windows"] == 20


def test_statistics_and_repr() -> None:
    """Statistics name the policy and stay finite; repr shows the held limit."""
    state = Adaptive().build()
    stats = state.statistics()
    assert (stats.policy, stats.limit, stats.samples) == ("Adaptive", 4, 0)
    assert stats.detail["startup"] == 1.0
    assert "limit=4" in repr(state)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial_limit": 0}, "initial_limit"),
        ({"min_limit": 5, "max_limit": 4}, "max_limit"),
        ({"max_limit": 2}, "initial_limit"),
        ({"elasticity": 0.0}, "elasticity"),
        ({"elasticity": 1.5}, "elasticity"),
        ({"elasticity": 0.7, "down_elasticity": 0.6}, "down_elasticity"),
        ({"down_elasticity": 2.5}, "down_elasticity"),
        ({"min_latency": -1.0}, "min_latency"),
        ({"precision": 0.0}, "precision"),
        ({"probe_step": 0.0}, "probe_step"),
        ({"probe_interval": -1.0}, "probe_interval"),
        ({"probe_jitter": 1.0}, "probe_jitter"),
        ({"probe_timeout": 0.0}, "probe_timeout"),
        ({"startup_factor": 0.5}, "startup_factor"),
        ({"settle": math.nan}, "settle"),
        ({"jump": 0.0}, "jump"),
        ({"backoff": 1.0}, "backoff"),
        ({"timeout_share": 1.5}, "timeout_share"),
        ({"smoothing": 2.0}, "smoothing"),
        ({"window": math.inf}, "window"),
        ({"window_samples": 0}, "window_samples"),
        ({"window_samples": 10, "max_window_samples": 5}, "max_window_samples"),
        ({"prompt_scale": -1.0}, "prompt_scale"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_config_refuses_bad_values(kwargs: dict[str, Any], field: str) -> None:
    """Bad settings raise InvalidParameter naming the field."""
    with pytest.raises(InvalidParameter) as info:
        Adaptive(**kwargs)
    assert info.value.field == field


# -- any input -------------------------------------------------------------------

finite_or_not = st.floats(allow_nan=True, allow_infinity=True)
samples = st.builds(
    Sample,
    start=st.one_of(st.floats(min_value=-10.0, max_value=1e4), finite_or_not),
    duration=st.one_of(
        st.just(0.0), st.floats(min_value=1e-9, max_value=1e4), st.floats(min_value=-1e300)
    )
    | finite_or_not,
    in_flight=st.integers(min_value=-5, max_value=10_000),
    outcome=st.sampled_from(OUTCOME_CLASSES),
    ttft=st.none() | st.floats(min_value=0.0, max_value=1e4) | finite_or_not,
    prompt_tokens=st.none() | st.integers(min_value=-5, max_value=10**7),
    output_tokens=st.none() | st.integers(min_value=-5, max_value=10**7),
)


class AdaptiveMachine(RuleBasedStateMachine):
    """Any samples, ticks and clocks: bounds hold, drops never raise, nothing is NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.config = Adaptive(
            initial_limit=6,
            min_limit=2,
            max_limit=40,
            window_samples=2,
            settle=0.0,
            probe_interval=1.0,
            window=0.0,
        )
        self.state = self.config.build()
        self.now = 0.0

    @rule(s=samples, dt=st.floats(min_value=0.0, max_value=5.0))
    def feed(self, s: Sample, dt: float) -> None:
        self.now += dt
        before = self.state.limit
        after = self.state.update(s, self.now)
        if s.outcome in ("overload", "timeout", "error"):
            assert after <= before

    @rule(
        s=samples,
        scale=st.floats(min_value=0.5, max_value=3.0),
        dt=st.floats(min_value=0.0, max_value=1.0),
    )
    def feed_plausible(self, s: Sample, scale: float, dt: float) -> None:
        """A success like a real one, so windows close and probes run."""
        self.now += dt
        self.state.update(
            Sample(
                start=self.now,
                duration=scale,
                in_flight=self.state.limit,
                outcome="success",
                ttft=scale / 10,
                output_tokens=s.output_tokens,
            ),
            self.now,
        )

    @rule(now=st.one_of(finite_or_not, st.floats(min_value=0.0, max_value=1e3)))
    def tick(self, now: float) -> None:
        assert self.state.tick(now) == self.state.limit

    @invariant()
    def bounded_and_finite(self) -> None:
        stats = self.state.statistics()
        assert self.config.min_limit <= stats.limit <= self.config.max_limit
        assert self.config.min_limit <= stats.detail["held_limit"] <= self.config.max_limit
        assert all(math.isfinite(v) for v in stats.detail.values())


TestAdaptiveMachine = AdaptiveMachine.TestCase
TestAdaptiveMachine.settings = settings(max_examples=40, stateful_step_count=60, deadline=None)


def test_reset_forgets_latencies_and_keeps_the_limit() -> None:
    """After a model swap the state measures afresh from the limit it held."""
    from lmgate.policies import Adaptive, Sample

    state = Adaptive(seed=3).build()
    now = 0.0
    for i in range(400):
        now = i * 0.05
        state.update(
            Sample(
                start=now - 1.0,
                duration=1.0,
                in_flight=state.limit,
                outcome="success",
                ttft=0.1,
                prompt_tokens=100,
                output_tokens=50,
            ),
            now,
        )
    held = state.limit
    state.reset()
    assert state.limit == held
    for i in range(400, 800):
        now = i * 0.05
        limit = state.update(
            Sample(
                start=now - 2.0,
                duration=2.0,
                in_flight=state.limit,
                outcome="success",
                ttft=0.2,
                prompt_tokens=100,
                output_tokens=50,
            ),
            now,
        )
        assert limit >= 1
    stats = state.statistics()
    assert stats.samples > 0


def _noisy(
    config: Adaptive, law: Callable[[int], float], sigma: float, seed: int, steps: int = 10_000
) -> tuple[int, int]:
    """Samples every 20 ms, ``law(limit)`` times log-normal noise: (last held limit, cuts of it)."""
    rng = random.Random(seed)
    state = config.build()
    held, lowered = config.initial_limit, 0
    for i in range(steps):
        now = i * 0.02
        limit = state.tick(now)
        duration = law(limit) * math.exp(rng.gauss(0.0, sigma))
        sample = Sample(
            start=now, duration=duration, in_flight=limit, outcome="success", output_tokens=100
        )
        state.update(sample, now)
        now_held = int(state.statistics().detail["held_limit"])
        lowered += now_held < held
        held = now_held
    return held, lowered


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_noisy_server_gets_windows_long_enough_to_decide(seed: int) -> None:
    """Latency flat in load, +-30 % per request: windows of 8 decide by chance, precise ones not."""
    config = Adaptive(
        initial_limit=8, max_limit=64, settle=0.0, window=0.0, probe_interval=5.0, probe_cv=1.0
    )
    precise = _noisy(config, lambda c: 1.0, 0.3, seed)
    by_chance = _noisy(msgspec.structs.replace(config, precision=100.0), lambda c: 1.0, 0.3, seed)
    assert precise[0] >= 56
    assert precise[1] * 3 <= by_chance[1]


def test_calls_without_latency_keep_the_limit_the_client_fills() -> None:
    """Microsecond calls whose turn-around grows with concurrency: the limit must not collapse."""
    config = Adaptive(initial_limit=8, max_limit=256, settle=0.0, probe_interval=5.0)
    held, _ = _noisy(config, lambda c: 2e-6 * c, 0.05, 0)
    assert held >= 64
    collapsing = msgspec.structs.replace(config, min_latency=0.0)
    assert _noisy(collapsing, lambda c: 2e-6 * c, 0.05, 0)[0] < 8


def test_a_client_that_fills_the_limit_only_later_still_gets_the_startup() -> None:
    """A step the client could not fill ends nothing: once it fills, doubling goes on."""
    run = serve(Adaptive(), knee=1000, seconds=240.0, quiet=(0.0, 60.0, 6))
    assert max(limit for t, limit in run.trace if t < 60.0) <= 16
    assert min(t for t, limit in run.trace if limit >= 64) <= 150.0


def test_a_doubling_that_fails_below_elasticity_is_searched_by_halves() -> None:
    """Latency growing as limit^0.45: the doubling 8 -> 16 is too dear for startup
    (over elasticity/2) but each slot still pays, so the climb from 8 searches
    the doubling by halves (8 -> 12 -> 14 ...) instead of crawling a slot at a time
    through steps whose latency change a window's noise would drown."""
    config = Adaptive(initial_limit=8, max_limit=200, settle=0.0, probe_interval=2.0)
    _, held = drive(config, lambda limit, now: limit**0.45, 6000)
    levels = [h for i, h in enumerate(held) if i == 0 or h != held[i - 1]]
    assert levels[0] == 8
    assert levels[1] == 12, levels[:6]
    assert levels[2] == 14, levels[:6]
