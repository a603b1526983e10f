"""The simulated continuous-batching server, in virtual time."""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from typing import Any

import anyio
import msgspec
import pytest
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmgate._errors import ContextOverflow, InvalidParameter, Overloaded
from lmgate.sim import Dist, SimConfig, SimKVOverflow, SimResult, SimServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(virtual_backend: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Every async test here runs in virtual time (trio, autojumping mock clock)."""
    return virtual_backend


def flat(**kw: Any) -> SimServer:
    """A server with a fixed step of 10 ms unless told otherwise."""
    base: dict[str, Any] = {
        "base_step": 0.01,
        "slope_below": 0.0,
        "slope_above": 0.0,
        "output_tokens": Dist.fixed(10),
        "prompt_tokens": Dist.fixed(10),
    }
    base.update(kw)
    return SimServer(SimConfig(**base))


async def gather(n: int, fn: Any) -> list[Any]:
    """Run ``fn()`` ``n`` times concurrently; results (or exceptions) in start order.

    Each call starts once the previous one is blocked, so calls made in the
    same virtual instant reach the server in a known order.
    """
    out: list[Any] = [None] * n

    async def one(i: int) -> None:
        try:
            out[i] = await fn()
        except Exception as exc:
            out[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
            await anyio.wait_all_tasks_blocked()
    return out


async def test_single_request_exact_time(make_lease: Any) -> None:
    """Ten tokens at 10 ms a step with no prefill take exactly 0.1 s."""
    server = flat()
    lease = make_lease()
    result = await server(lease)
    assert anyio.current_time() == 0.1
    assert result.duration == 0.1
    assert result.ttft == 0.01
    assert result.queued == 0.0
    assert (result.prompt_tokens, result.output_tokens, result.finish_reason) == (10, 10, "stop")
    assert lease.reports == [{"ttft": 0.01, "prompt_tokens": 10, "output_tokens": 10}]


async def test_prefill_counts_before_first_token(make_lease: Any) -> None:
    """A 100-token prompt at 1 ms a token delays the first token by 0.1 s."""
    server = flat(prefill_per_token=0.001)
    result = await server.serve(make_lease(), prompt_tokens=100, output_tokens=10)
    assert result.ttft == pytest.approx(0.11)
    assert result.duration == pytest.approx(0.2)


async def test_batch_step_grows_with_batch_size(make_lease: Any) -> None:
    """Four at once past a knee of 2 each step 30 ms; the queued two then run alone."""
    server = flat(slots=4, knee=2, slope_above=0.01)
    results = await gather(6, lambda: server(make_lease()))
    durations = sorted(r.duration for r in results)
    assert durations[:4] == pytest.approx([0.3] * 4)
    assert durations[4:] == pytest.approx([0.4, 0.4])
    assert sorted(r.queued for r in results)[4:] == pytest.approx([0.3, 0.3])
    stats = server.statistics()
    assert (stats.peak_active, stats.peak_queued, stats.served) == (4, 2, 6)
    assert stats.tokens_out == 60


async def closed_loop(server: SimServer, clients: int, requests: int) -> tuple[float, float]:
    """Throughput (requests/s) and mean latency of ``clients`` closed-loop workers."""
    durations: list[float] = []
    start = anyio.current_time()

    async def worker() -> None:
        for _ in range(requests):
            durations.append((await server(_Lease())).duration)

    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(worker)
    return len(durations) / (anyio.current_time() - start), sum(durations) / len(durations)


class _Lease:
    def report(self, **kw: Any) -> None:
        pass


async def test_latency_knee() -> None:
    """Throughput rises with concurrency up to the knee; past it latency climbs steeply."""
    cfg = SimConfig(
        slots=64,
        knee=16,
        base_step=0.02,
        slope_below=0.0005,
        slope_above=0.004,
        output_tokens=Dist.uniform(50, 150),
        max_queue=1000,
    )
    points = {c: await closed_loop(SimServer(cfg), c, 20) for c in (1, 4, 8, 16, 32, 64)}
    throughput = {c: p[0] for c, p in points.items()}
    latency = {c: p[1] for c, p in points.items()}
    assert throughput[1] < throughput[4] < throughput[8] < throughput[16]
    assert throughput[32] < throughput[16]
    assert latency[16] < 1.5 * latency[1]
    assert latency[32] > 2.5 * latency[16]
    assert latency[64] > 2.0 * latency[32]


async def test_peak_active_never_exceeds_slots() -> None:
    """Past the slots requests wait in the server's queue; the batch stays at the slot count."""
    server = flat(slots=3, max_queue=100)
    results = await gather(10, lambda: server(_Lease()))
    assert all(isinstance(r, SimResult) for r in results)
    stats = server.statistics()
    assert stats.peak_active == 3
    assert stats.peak_queued == 7
    assert (stats.active, stats.queued) == (0, 0)


@pytest.mark.parametrize(("status", "retry_after"), [(503, None), (429, 2.5)])
async def test_queue_full_refuses(status: int, retry_after: float | None) -> None:
    """One more than slots plus queue is refused with the configured status."""
    server = flat(
        slots=2, max_queue=1, queue_full_status=status, queue_full_retry_after=retry_after
    )
    results = await gather(4, lambda: server(_Lease()))
    errors = [r for r in results if isinstance(r, Overloaded)]
    assert len(errors) == 1
    assert (errors[0].status, errors[0].retry_after) == (status, retry_after)
    assert server.statistics().failed["queue_full"] == 1


async def test_context_window() -> None:
    """A prompt that fills the window is refused; a long answer is cut at the window."""
    server = flat(context_window=100)
    with pytest.raises(ContextOverflow) as info:
        await server.serve(_Lease(), prompt_tokens=100)
    assert (info.value.tokens, info.value.window) == (100, 100)
    result = await server.serve(_Lease(), prompt_tokens=90, output_tokens=50)
    assert (result.output_tokens, result.finish_reason) == (10, "length")
    assert server.statistics().failed["context_overflow"] == 1


async def test_kv_overflow_fails_youngest() -> None:
    """Two growing sequences fill a 150-token cache; the younger fails, the elder finishes."""
    server = flat(kv_budget=150, kv_overflow="fail")
    first = await gather(2, lambda: server.serve(_Lease(), prompt_tokens=10, output_tokens=100))
    assert isinstance(first[0], SimResult)
    assert isinstance(first[1], SimKVOverflow)
    assert first[1].budget == 150
    # Both grow one token a step from 20 used: full after (150 - 20) / 2 = 65 steps.
    assert first[0].duration == pytest.approx(1.0)
    stats = server.statistics()
    assert stats.failed["kv_overflow"] == 1
    assert stats.kv_peak == 150
    assert stats.kv_used == 0


async def test_kv_overflow_preempts_and_recomputes() -> None:
    """With preemption both finish; the younger is requeued, recomputed and later."""
    server = flat(kv_budget=150, kv_overflow="preempt", prefill_per_token=0.0001)
    results = await gather(2, lambda: server.serve(_Lease(), prompt_tokens=10, output_tokens=100))
    assert all(isinstance(r, SimResult) for r in results)
    assert [r.preemptions for r in results] == [0, 1]
    assert [r.output_tokens for r in results] == [100, 100]
    # Full at step 65.1 (0.1 of prefill); the elder's last 35 steps end at 1.001 s;
    # the younger then recomputes 75 tokens (0.75 steps) and writes its last 35.
    assert results[0].duration == pytest.approx(1.001)
    assert results[1].duration == pytest.approx(1.001 + 0.3575)
    stats = server.statistics()
    assert stats.preempted == 1
    assert stats.failed["kv_overflow"] == 0
    assert stats.kv_peak <= 150


async def test_lone_sequence_over_budget_fails_even_when_preempting() -> None:
    """Preemption cannot help a sequence that alone outgrows the cache: it fails."""
    server = flat(kv_budget=50, kv_overflow="preempt")
    with pytest.raises(SimKVOverflow):
        await server.serve(_Lease(), prompt_tokens=10, output_tokens=100)
    with pytest.raises(SimKVOverflow):
        await server.serve(_Lease(), prompt_tokens=60, output_tokens=1)
    assert server.statistics().failed["kv_overflow"] == 2


async def test_cancelled_request_frees_its_slot() -> None:
    """A caller that gives up frees its slot at once for the next in line."""
    server = flat(slots=1)
    done: list[float] = []

    async def impatient() -> None:
        with anyio.move_on_after(0.05):
            await server(_Lease())

    async def patient() -> None:
        await anyio.sleep(0.01)
        done.append((await server(_Lease())).queued)

    async with anyio.create_task_group() as tg:
        tg.start_soon(impatient)
        tg.start_soon(patient)
    assert done == [pytest.approx(0.04)]
    stats = server.statistics()
    assert stats.failed["cancelled"] == 1
    assert (stats.active, stats.queued, stats.served) == (0, 0, 1)


async def test_same_seed_same_run() -> None:
    """Sizes come only from the server's seeded generator."""
    cfg = SimConfig(
        output_tokens=Dist.lognormal(50, 0.8, min=1, max=500),
        prompt_tokens=Dist.uniform(10, 1000),
        seed=7,
    )

    async def run(config: SimConfig) -> list[tuple[int, int, float]]:
        server = SimServer(config)
        results = await gather(20, lambda: server(_Lease()))
        return sorted((r.prompt_tokens, r.output_tokens, r.duration) for r in results)

    a, b = await run(cfg), await run(cfg)
    c = await run(msgspec.structs.replace(cfg, seed=8))
    # The runs start at different clock readings, so times agree to rounding.
    assert [x[:2] for x in a] == [x[:2] for x in b]
    assert [x[2] for x in a] == pytest.approx([x[2] for x in b], abs=1e-9)
    assert [x[:2] for x in a] != [x[:2] for x in c]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("slots", 0),
        ("base_step", 0.0),
        ("base_step", math.nan),
        ("knee", True),
        ("kv_budget", -1),
        ("kv_overflow", "drop"),
        ("queue_full_status", 500),
        ("context_window", 1),
        ("name", ""),
        ("model", "a\x00b"),
        ("prompt_tokens", 5),
    ],
)
def test_bad_config_is_refused(field: str, value: Any) -> None:
    """Each bad setting fails at construction, naming the field."""
    with pytest.raises(InvalidParameter) as info:
        SimConfig(**{field: value})
    assert info.value.field == field


def test_construction_and_repr() -> None:
    """Keywords build or override a config; the endpoint and repr describe the server."""
    server = SimServer(SimConfig(name="box", slots=8), slots=4, port=9100)
    assert (server.config.name, server.config.slots, server.port) == ("box", 4, 9100)
    endpoint = server.endpoint()
    assert (endpoint.name, endpoint.url, endpoint.kind) == ("box", "http://127.0.0.1:9100", "sim")
    assert endpoint.models == ("sim-model",)
    assert repr(server) == "<SimServer 'box' up port=9100 model='sim-model' active=0/4 queued=0>"
    assert server.statistics().state == "up"
    with pytest.raises(InvalidParameter) as info:
        SimServer(slots=0)
    assert info.value.field == "slots"
    with pytest.raises(InvalidParameter):
        SimServer("box")  # type: ignore[arg-type]


async def test_bad_sizes_are_refused() -> None:
    """Per-call sizes must be positive ints."""
    server = flat()
    with pytest.raises(InvalidParameter):
        await server.serve(_Lease(), output_tokens=0)
    with pytest.raises(InvalidParameter):
        await server.serve(_Lease(), prompt_tokens=1.5)  # type: ignore[arg-type]
    assert server.statistics().served == 0


def test_dist_draws_within_bounds() -> None:
    """Every distribution stays inside its clip and is reproducible from its seed."""
    import random

    dists = [
        Dist.fixed(3),
        Dist.uniform(5, 9),
        Dist.lognormal(100, 1.5, min=10, max=400),
    ]
    for dist in dists:
        draws = [dist.sample(random.Random(1)) for _ in range(3)]
        assert len(set(draws)) == 1
        rng = random.Random(2)
        values = [dist.sample_int(rng) for _ in range(2000)]
        assert min(values) >= max(1, round(dist.min))
        assert max(values) <= dist.max
    rng = random.Random(3)
    mean = sum(Dist.lognormal(100, 0.5).sample(rng) for _ in range(20000)) / 20000
    assert 95 < mean < 105
    with pytest.raises(InvalidParameter):
        Dist.lognormal(-1, 0.5)
    with pytest.raises(InvalidParameter):
        Dist.uniform(9, 5)


# -- equivalence with a step-by-step oracle --------------------------------------


def oracle(cfg: SimConfig, arrivals: list[tuple[float, int, int]]) -> list[float]:
    """Finish times by direct simulation: every active sequence advances dt/step(n)."""

    def step(n: int) -> float:
        return (
            cfg.base_step
            + cfg.slope_below * (min(n, cfg.knee) - 1)
            + cfg.slope_above * max(n - cfg.knee, 0)
        )

    order = sorted(range(len(arrivals)), key=lambda i: arrivals[i][0])
    finish = [math.nan] * len(arrivals)
    remaining: dict[int, float] = {}
    queue: deque[int] = deque()
    now, j = 0.0, 0
    while j < len(order) or remaining or queue:
        s = step(len(remaining))
        t_arrive = arrivals[order[j]][0] if j < len(order) else math.inf
        t_done = now + min(remaining.values()) * s if remaining else math.inf
        t = min(t_arrive, t_done)
        for i in remaining:
            remaining[i] -= (t - now) / s
        now = t
        for i in [i for i, r in remaining.items() if r <= 1e-9]:
            del remaining[i]
            finish[i] = now
        if t_arrive <= t_done:
            queue.append(order[j])
            j += 1
        while queue and len(remaining) < cfg.slots:
            i = queue.popleft()
            _, prompt, output = arrivals[i]
            remaining[i] = prompt * cfg.prefill_per_token / cfg.base_step + output
    return finish


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arrivals=st.lists(
        st.tuples(
            st.floats(0.0, 2.0, allow_nan=False),
            st.integers(1, 200),
            st.integers(1, 60),
        ),
        min_size=1,
        max_size=25,
        unique_by=lambda a: a[0],
    ),
    slots=st.integers(1, 8),
    knee=st.integers(1, 6),
    prefill=st.sampled_from([0.0, 0.0001]),
)
def test_engine_matches_oracle(
    arrivals: list[tuple[float, int, int]], slots: int, knee: int, prefill: float
) -> None:
    """Finish times of the event-driven engine equal a direct step simulation."""
    cfg = SimConfig(
        slots=slots,
        knee=knee,
        base_step=0.01,
        slope_below=0.001,
        slope_above=0.005,
        prefill_per_token=prefill,
        max_queue=1000,
    )
    finished: list[float] = [math.nan] * len(arrivals)
    tokens: list[tuple[int, int]] = [(0, 0)] * len(arrivals)

    async def main() -> None:
        server = SimServer(cfg)

        async def one(i: int) -> None:
            at, prompt, output = arrivals[i]
            await anyio.sleep_until(at)
            result = await server.serve(_Lease(), prompt_tokens=prompt, output_tokens=output)
            finished[i] = anyio.current_time()
            tokens[i] = (result.prompt_tokens, result.output_tokens)

        async with anyio.create_task_group() as tg:
            for i in range(len(arrivals)):
                tg.start_soon(one, i)
        stats = server.statistics()
        assert stats.peak_active <= slots
        assert (stats.active, stats.queued, stats.kv_used) == (0, 0, 0)
        assert stats.served == len(arrivals)

    anyio.run(
        main,
        backend="trio",
        backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)},
    )
    assert finished == pytest.approx(oracle(cfg, arrivals), abs=1e-6)
    assert tokens == [(p, o) for _, p, o in arrivals]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    jobs=st.lists(
        st.tuples(
            st.floats(0.0, 1.0, allow_nan=False),
            st.integers(1, 80),
            st.integers(1, 80),
            st.one_of(st.none(), st.floats(0.001, 1.0, allow_nan=False)),
        ),
        min_size=1,
        max_size=30,
    ),
    budget=st.integers(60, 600),
    mode=st.sampled_from(["fail", "preempt"]),
    slots=st.integers(1, 10),
    max_queue=st.integers(0, 10),
)
def test_every_request_ends_once(
    jobs: list[tuple[float, int, int, float | None]],
    budget: int,
    mode: str,
    slots: int,
    max_queue: int,
) -> None:
    """Under KV pressure, queue limits and cancellation, outcomes add up and nothing leaks."""
    cfg = SimConfig(
        slots=slots,
        knee=3,
        base_step=0.01,
        slope_above=0.002,
        prefill_per_token=0.0002,
        kv_budget=budget,
        kv_overflow=mode,  # type: ignore[arg-type]
        max_queue=max_queue,
    )
    outcomes: list[str] = []

    async def main() -> None:
        server = SimServer(cfg)

        async def one(at: float, prompt: int, output: int, patience: float | None) -> None:
            await anyio.sleep_until(at)
            with anyio.move_on_after(math.inf if patience is None else patience):
                try:
                    result = await server.serve(
                        _Lease(), prompt_tokens=prompt, output_tokens=output
                    )
                except (SimKVOverflow, Overloaded) as exc:
                    outcomes.append(type(exc).__name__)
                else:
                    assert result.output_tokens == output
                    assert result.duration >= output * cfg.base_step - 1e-9
                    outcomes.append("ok")
                return
            outcomes.append("cancelled")

        async with anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(one, *job)
        stats = server.statistics()
        assert len(outcomes) == len(jobs)
        assert stats.served == outcomes.count("ok")
        failed = stats.failed
        assert failed["kv_overflow"] == outcomes.count("SimKVOverflow")
        assert failed["queue_full"] == outcomes.count("Overloaded")
        assert failed["cancelled"] == outcomes.count("cancelled")
        assert stats.peak_active <= slots
        # Preempted sequences wait at the front of the queue beyond its bound.
        assert stats.peak_queued <= max_queue + (slots if mode == "preempt" else 0)
        assert stats.kv_peak <= budget
        assert (stats.active, stats.queued, stats.kv_used) == (0, 0, 0)

    anyio.run(
        main,
        backend="trio",
        backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)},
    )


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_runs_on_real_clocks(anyio_backend: str) -> None:
    """Outside virtual time the server works the same on both backends."""
    server = SimServer(SimConfig(base_step=0.001, output_tokens=Dist.fixed(5), slots=2))
    results = await gather(3, lambda: server(_Lease()))
    assert [r.output_tokens for r in results] == [5, 5, 5]
    assert server.statistics().served == 3


def test_soak_10k_requests_200_clients() -> None:
    """10,000 requests from 200 closed-loop clients finish; the wall time is printed."""
    cfg = SimConfig(
        slots=64,
        knee=16,
        max_queue=1000,
        prefill_per_token=0.0002,
        kv_budget=40_000,
        kv_overflow="preempt",
        prompt_tokens=Dist.lognormal(500, 0.5, min=1, max=4000),
        output_tokens=Dist.lognormal(200, 0.6, min=1, max=1000),
    )
    server = SimServer(cfg)
    ended = [0]

    async def client() -> None:
        for _ in range(50):
            with contextlib.suppress(SimKVOverflow):
                await server(_Lease())
            ended[0] += 1

    async def main() -> float:
        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(client)
        return anyio.current_time()

    wall = time.perf_counter()
    virtual = anyio.run(
        main,
        backend="trio",
        backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)},
    )
    wall = time.perf_counter() - wall
    stats = server.statistics()
    print(
        f"\nsoak: {ended[0]} requests, 200 clients, {virtual:.0f} s virtual in {wall:.2f} s wall;"
        f" served={stats.served} preempted={stats.preempted} peak_active={stats.peak_active}"
    )
    assert ended[0] == 10_000
    assert stats.served + stats.failed["kv_overflow"] == 10_000
    assert stats.peak_active == 64
