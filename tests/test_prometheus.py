"""The Prometheus collector, scraped and parsed back with the client's own parser."""

from __future__ import annotations

import math
import threading
from typing import Any

import anyio
import msgspec
import pytest
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import lmgate
from lmgate._errors import InvalidParameter
from lmgate.observability._prometheus import LatencyHistograms, LmgateCollector
from lmgate.policies import Fixed
from lmgate.prometheus import instrument
from lmgate.sim import Dist, SimServer


class FakeEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    url: str
    kind: str
    limit: int
    in_flight: int
    state: str
    routing: str = "up"
    latency_ewma: float | None = None
    ttft_ewma: float | None = None
    by_class: dict[str, int] = {}


class FakeEvents(msgspec.Struct, frozen=True, kw_only=True):
    published: int
    subscribers: int
    dropped: int


class FakeResources(msgspec.Struct, frozen=True, kw_only=True):
    recommendation: str


class FakeStats(msgspec.Struct, frozen=True, kw_only=True):
    submitted: int
    outcomes: dict[str, int]
    queued: int
    in_flight: int
    queue_size: int
    endpoints: tuple[FakeEndpoint, ...]
    events: FakeEvents
    resources: FakeResources | None = None


OUTCOMES = {
    "completed": 90,
    "failed": 3,
    "rejected": 2,
    "deadline_exceeded": 1,
    "cancelled": 1,
    "unavailable": 0,
    "closed": 0,
}

STATS = FakeStats(
    submitted=104,
    outcomes=OUTCOMES,
    queued=4,
    in_flight=3,
    queue_size=1024,
    endpoints=(
        FakeEndpoint(
            name="gpu",
            url="http://user:pw@127.0.0.1:8080/v1?key=SECRET",
            kind="llamacpp",
            limit=4,
            in_flight=3,
            state="healthy",
            latency_ewma=0.8,
            by_class={"success": 90, "error": 3},
        ),
        FakeEndpoint(
            name="cloud",
            url="https://api.example.com/v1",
            kind="openai",
            limit=16,
            in_flight=0,
            state="open",
        ),
    ),
    events=FakeEvents(published=12, subscribers=1, dropped=2),
    resources=FakeResources(recommendation="shed_low_priority"),
)


class FakeScheduler:
    def __init__(self, stats: Any) -> None:
        self.stats_value = stats
        self.calls = 0

    def stats(self) -> Any:
        self.calls += 1
        if isinstance(self.stats_value, Exception):
            raise self.stats_value
        return self.stats_value


def scrape(collector: LmgateCollector) -> dict[str, Any]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(family: Any, suffix: str = "") -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for s in family.samples
        if s.name == family.name + suffix
    }


def end(c: LmgateCollector, endpoint: str | None, wait: float, duration: float | None) -> None:
    c.on_request_end(
        None,
        endpoint=endpoint,
        model="m",
        outcome="completed" if duration is not None else "rejected",
        queue_wait=wait,
        duration=duration,
    )


def test_scrape_has_queue_limits_outcomes_and_endpoint_gauges() -> None:
    """Every stats figure arrives in the scrape with its labels."""
    families = scrape(LmgateCollector(FakeScheduler(STATS)))
    assert samples(families["lmgate_queue_depth"]) == {(): 4.0}
    assert samples(families["lmgate_queue_capacity"]) == {(): 1024.0}
    assert samples(families["lmgate_in_flight"]) == {(): 3.0}
    assert samples(families["lmgate_requests_submitted"], "_total") == {(): 104.0}
    outcomes = samples(families["lmgate_requests"], "_total")
    assert outcomes == {(("outcome", k),): float(v) for k, v in OUTCOMES.items()}
    assert sum(outcomes.values()) + 4 + 3 == 104
    assert samples(families["lmgate_endpoint_limit"]) == {
        (("endpoint", "gpu"),): 4.0,
        (("endpoint", "cloud"),): 16.0,
    }
    assert samples(families["lmgate_endpoint_in_flight"])[(("endpoint", "gpu"),)] == 3.0
    assert samples(families["lmgate_endpoint_state"]) == {
        (("endpoint", "gpu"), ("state", "healthy")): 1.0,
        (("endpoint", "cloud"), ("state", "open")): 1.0,
    }
    assert samples(families["lmgate_endpoint_routing"]) == {
        (("endpoint", "gpu"), ("routing", "up")): 1.0,
        (("endpoint", "cloud"), ("routing", "up")): 1.0,
    }
    assert samples(families["lmgate_endpoint_latency_ewma_seconds"]) == {
        (("endpoint", "gpu"),): 0.8
    }
    assert samples(families["lmgate_endpoint_samples"], "_total") == {
        (("class", "error"), ("endpoint", "gpu")): 3.0,
        (("class", "success"), ("endpoint", "gpu")): 90.0,
    }
    assert samples(families["lmgate_events_dropped"], "_total") == {(): 2.0}
    assert samples(families["lmgate_resource_pressure"]) == {
        (("recommendation", "shed_low_priority"),): 2.0
    }


def test_endpoint_urls_lose_credentials_and_queries() -> None:
    """A URL label carries scheme, host, port and path only."""
    info = samples(scrape(LmgateCollector(FakeScheduler(STATS)))["lmgate_endpoint_info"])
    urls = {dict(k)["endpoint"]: dict(k)["url"] for k in info}
    assert urls == {"gpu": "http://127.0.0.1:8080/v1", "cloud": "https://api.example.com/v1"}


def test_latency_histograms_per_endpoint() -> None:
    """Finished requests fill cumulative buckets, counts and sums per endpoint."""
    c = LmgateCollector(FakeScheduler(STATS), duration_buckets=(0.1, 1.0, 10.0))
    for d in (0.05, 0.5, 0.5, 5.0, 50.0):
        end(c, "gpu", 0.002, d)
    end(c, None, 0.3, None)  # refused before any endpoint
    end(c, "cloud", 0.0, math.nan)  # a nonsense duration is dropped
    c.on_request_end(
        None,
        endpoint="gpu",
        model="m",
        outcome="completed",
        queue_wait=0.0,
        duration=1.0,
        ttft=0.25,
    )
    families = scrape(c)
    hist = families["lmgate_request_duration_seconds"]
    buckets = samples(hist, "_bucket")
    gpu = {dict(k)["le"]: v for k, v in buckets.items() if dict(k)["endpoint"] == "gpu"}
    assert gpu == {"0.1": 1.0, "1.0": 4.0, "10.0": 5.0, "+Inf": 6.0}
    assert samples(hist, "_count") == {(("endpoint", "gpu"),): 6.0}
    assert samples(hist, "_sum")[(("endpoint", "gpu"),)] == pytest.approx(57.05)
    waits = samples(families["lmgate_queue_wait_seconds"], "_count")
    assert waits == {(("endpoint", "gpu"),): 6.0, (("endpoint", "none"),): 1.0,
                     (("endpoint", "cloud"),): 1.0}  # fmt: skip
    ttft = samples(families["lmgate_time_to_first_token_seconds"], "_count")
    assert ttft == {(("endpoint", "gpu"),): 1.0}


def test_registration_does_not_read_stats() -> None:
    """describe() names the metrics without calling stats() on a scheduler not yet open."""
    sched = FakeScheduler(RuntimeError("not open"))
    registry = CollectorRegistry(auto_describe=True)
    registry.register(LmgateCollector(sched))
    assert sched.calls == 0
    with pytest.raises(RuntimeError):
        generate_latest(registry)


def test_a_minimal_stats_object_is_enough() -> None:
    """Only the fields the scheduler core promises are needed."""

    class Minimal(msgspec.Struct, frozen=True):
        submitted: int
        outcomes: dict[str, int]
        queued: int
        in_flight: int
        endpoints: tuple[Any, ...]

    families = scrape(LmgateCollector(lambda: Minimal(1, {"completed": 1}, 0, 0, ())))
    assert samples(families["lmgate_requests"], "_total") == {(("outcome", "completed"),): 1.0}
    assert samples(families["lmgate_queue_capacity"]) == {}
    assert samples(families["lmgate_resource_pressure"]) == {}


def test_histogram_labels_are_bounded() -> None:
    """Past max_endpoints, new endpoints share the 'other' series."""
    c = LmgateCollector(FakeScheduler(STATS), max_endpoints=2)
    for i in range(10):
        end(c, f"ep{i}", 0.0, 0.5)
    counts = samples(scrape(c)["lmgate_request_duration_seconds"], "_count")
    assert counts == {(("endpoint", "ep0"),): 1.0, (("endpoint", "ep1"),): 1.0,
                      (("endpoint", "other"),): 8.0}  # fmt: skip


def test_scrapes_from_another_thread_see_consistent_histograms() -> None:
    """Observations from several threads are all counted, and _count equals +Inf."""
    hist = LatencyHistograms((0.1, 1.0))
    stop = threading.Event()
    bad: list[str] = []

    def scraper() -> None:
        while not stop.is_set():
            for _, buckets, _ in hist.snapshot():
                values = [v for _, v in buckets]
                if values != sorted(values):
                    bad.append("not cumulative")

    def writer() -> None:
        for i in range(5000):
            hist.observe("gpu", (i % 3) * 0.5)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    reader = threading.Thread(target=scraper)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    reader.join()
    ((label, buckets, total),) = hist.snapshot()
    assert label == "gpu"
    assert buckets[-1] == ("+Inf", 20000.0)
    assert total == pytest.approx(4 * (1666 * 0.5 + 1666 * 1.0 + 0.5))
    assert bad == []


@pytest.mark.parametrize("buckets", [(), (1.0, 1.0), (2.0, 1.0), (0.0, 1.0), (1.0, math.inf)])
def test_bad_buckets_are_refused(buckets: tuple[float, ...]) -> None:
    """Buckets must be positive, finite and strictly increasing."""
    with pytest.raises(InvalidParameter):
        LatencyHistograms(buckets)


def test_bad_collector_arguments_are_refused() -> None:
    """A scheduler without stats() or a bad namespace is refused at construction."""
    with pytest.raises(InvalidParameter):
        LmgateCollector(object())
    with pytest.raises(InvalidParameter):
        LmgateCollector(FakeScheduler(STATS), namespace="bad-name")
    assert repr(LmgateCollector(FakeScheduler(STATS))) == "<LmgateCollector namespace='lmgate'>"


def test_a_real_scheduler_scraped_after_simulated_traffic() -> None:
    """Simulated traffic through a Scheduler; the scrape parses back and matches stats()."""

    async def main() -> tuple[dict[str, Any], Any]:
        servers = {
            name: SimServer(
                name=name,
                port=port,
                model="m",
                slots=4,
                knee=2,
                base_step=0.01,
                output_tokens=Dist.fixed(10),
                seed=port,
            )
            for name, port in (("fast", 8080), ("slow", 8081))
        }

        async def call(lease: lmgate.Lease) -> Any:
            return await servers[lease.endpoint.name](lease)

        registry = CollectorRegistry()
        endpoints = [s.endpoint() for s in servers.values()]
        async with lmgate.Scheduler(
            endpoints, limit=Fixed(2), queue=lmgate.QueueOptions(size=8)
        ) as sched:
            instrument(sched, registry=registry)

            async def client(priority: int) -> None:
                for _ in range(20):
                    try:
                        await sched.run(call, model="m", priority=priority, timeout=5.0)
                    except lmgate.LmgateError:
                        await anyio.sleep(0.1)

            async with anyio.create_task_group() as tg:
                for i in range(16):  # more than slots + queue: some are refused
                    tg.start_soon(client, i % 3)
            text = generate_latest(registry).decode()
            stats = sched.stats()
        return {f.name: f for f in text_string_to_metric_families(text)}, stats

    clock = trio.testing.MockClock(autojump_threshold=0)
    families, stats = anyio.run(main, backend="trio", backend_options={"clock": clock})
    outcomes = samples(families["lmgate_requests"], "_total")
    assert outcomes == {(("outcome", k),): float(v) for k, v in stats.outcomes.items()}
    assert samples(families["lmgate_requests_submitted"], "_total") == {(): 320.0}
    assert stats.submitted == 320
    assert sum(outcomes.values()) == 320.0  # nothing left queued or in flight
    assert samples(families["lmgate_endpoint_limit"]) == {
        (("endpoint", "fast"),): 2.0,
        (("endpoint", "slow"),): 2.0,
    }
    durations = samples(families["lmgate_request_duration_seconds"], "_count")
    waits = samples(families["lmgate_queue_wait_seconds"], "_count")
    assert set(durations) == {(("endpoint", "fast"),), (("endpoint", "slow"),)}
    served = stats.outcomes["completed"] + stats.outcomes["failed"]
    assert sum(durations.values()) == served > 0
    assert sum(waits.values()) == 320.0  # every request, refusals under "none"
    assert stats.outcomes["rejected"] > 0
    assert waits[(("endpoint", "none"),)] == float(stats.outcomes["rejected"])
    assert samples(families["lmgate_resource_pressure"]) == {(("recommendation", "proceed"),): 0.0}
    assert samples(families["lmgate_admission_paused"]) == {(): 0.0}


def test_instrument_needs_a_scheduler() -> None:
    """instrument() refuses an object without add_hook() and registers nothing."""
    registry = CollectorRegistry()
    with pytest.raises(InvalidParameter):
        instrument(FakeScheduler(STATS), registry=registry)
    assert list(registry.collect()) == []


def test_public_modules_export_their_names_and_lmgate_needs_no_extras() -> None:
    """The public extras export sorted names; ``import lmgate`` loads neither extra."""
    import subprocess
    import sys

    import lmgate.otel
    import lmgate.prometheus

    for module in (lmgate.prometheus, lmgate.otel):
        assert list(module.__all__) == sorted(module.__all__)
        assert all(hasattr(module, name) for name in module.__all__)
    code = (
        "import sys, lmgate; "
        "assert not {'prometheus_client', 'opentelemetry'} & {m.split('.')[0] for m in sys.modules}"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
