"""One overload-benchmark run: a scenario, a limit policy, a real Scheduler, virtual time.

The scenario's simulated servers sit behind a real :class:`~lmgate.Scheduler`
whose limit is the policy under test; the scenario's clients drive it and
its fault schedule plays against the servers, all under trio's
``MockClock(autojump_threshold=0)`` so ten simulated minutes take a second
or two and replay identically.  Each request's issue, grant and end are
recorded, and the enforced limit (summed over endpoints) is read once a
second; :mod:`lmgate.bench._metrics` turns that into the figures.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from functools import partial
from typing import Any, final

import anyio
import msgspec

from lmgate._errors import DeadlineExceeded, EndpointUnavailable, Rejected
from lmgate.actors._resilience import Resilience
from lmgate.policies._limit import LimitPolicy
from lmgate.policies._throttle import Throttle
from lmgate.sim._faults import run_schedule
from lmgate.sim._health import sim_health
from lmgate.sim._load import LoadRequest, run_load
from lmgate.sim._scenarios import Scenario

__all__ = ["Record", "Trace", "preemptions_of", "run_scenario", "run_virtual"]

#: How a request ended, as the benchmark counts it.
KINDS = ("completed", "deadline", "rejected", "failed", "unavailable")


@final
class Record(msgspec.Struct, frozen=True, array_like=True):
    """One request: when it was issued, granted (NaN: never) and ended, and how."""

    client: str
    issued: float
    granted: float
    ended: float
    kind: str


@final
class Trace(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a run leaves: every finished request and the limit once a second.

    Times count from the start of the run.  ``probing`` is 1 where any
    endpoint's policy was measuring a probe step (``detail["probing"]``).
    """

    scenario: str
    policy: str
    duration: float
    records: tuple[Record, ...]
    times: tuple[float, ...]
    limits: tuple[int, ...]
    in_flight: tuple[int, ...]
    probing: tuple[int, ...]
    outcomes: dict[str, int]
    grants_over_limit: int
    #: Requests the servers threw out of their KV cache to recompute later.
    preemptions: int = 0


def _kind(exc: BaseException) -> str:
    if isinstance(exc, DeadlineExceeded):
        return "deadline"
    if isinstance(exc, Rejected):
        return "rejected"
    if isinstance(exc, EndpointUnavailable):
        return "unavailable"
    return "failed"


async def run_scenario(
    scenario: Scenario,
    policy: LimitPolicy,
    *,
    name: str = "",
    throttle: Throttle | None = Throttle(),  # noqa: B008 - frozen
    sample_every: float = 1.0,
    on_start: Callable[[Any], None] | None = None,
    tokens: bool = True,
    engine: bool = False,
) -> Trace:
    """Run ``scenario`` once under ``policy``; requests still running at the end are dropped.

    ``on_start`` gets the running scheduler (tests use it to watch admission).
    ``tokens=False`` hides the servers' KV budgets from lmgate (admission by
    request count alone); ``engine=True`` lets lmgate read the servers'
    own metrics, as ``Endpoint(engine_metrics=True)`` does on a real one.
    """
    from lmgate.scheduler._scheduler import Scheduler

    servers = scenario.build_servers()
    health = sim_health(servers)
    extra: dict[str, Any] = {} if tokens else {"kv_tokens": None}
    endpoints = [
        server.endpoint(health=health, **extra, **({"metrics": server.metrics} if engine else {}))
        for server in servers.values()
    ]
    every = (*scenario.servers, *scenario.engines)
    models = {config.name: config.model for config in every}
    only = every[0].model
    sched = Scheduler(
        endpoints,
        limit=policy,
        resilience=Resilience(seed=scenario.seed, throttle=throttle),
    )
    records: list[Record] = []
    times: list[float] = []
    limits: list[int] = []
    in_flight: list[int] = []
    probing: list[int] = []
    over = [0]
    async with sched:
        if on_start is not None:
            on_start(sched)
        adm = sched._admission
        _count_grants_over_limit(adm, over)
        t0 = anyio.current_time()

        async def submit(request: LoadRequest) -> None:
            issued = request.issued_at - t0
            granted = math.nan

            async def call(lease: Any) -> object:
                nonlocal granted
                granted = anyio.current_time() - t0
                server = servers[lease.endpoint.name]
                return await server.serve(
                    lease,
                    prompt_tokens=request.prompt_tokens,
                    output_tokens=request.output_tokens,
                )

            model = only if request.server is None else models[request.server]
            kind = "completed"
            try:
                await sched.run(
                    call,
                    model=model,
                    priority=request.priority,
                    timeout=request.timeout,
                    prompt_tokens=request.prompt_tokens,
                    max_tokens=request.max_tokens,
                )
            except Exception as exc:
                kind = _kind(exc)
            ended = anyio.current_time() - t0
            records.append(Record(request.client, issued, granted, ended, kind))

        async def sample() -> None:
            while True:
                await anyio.sleep_until(t0 + (len(times) + 1) * sample_every)
                stats = sched.stats()
                times.append(anyio.current_time() - t0)
                limits.append(sum(e.limit for e in stats.endpoints))
                in_flight.append(stats.in_flight)
                probing.append(
                    int(any(e.policy.detail.get("probing", 0.0) for e in stats.endpoints))
                )

        async with anyio.create_task_group() as tg:
            tg.start_soon(sample)
            for server_name, server in servers.items():
                tg.start_soon(
                    partial(run_schedule, start=t0), server, scenario.schedule(server_name)
                )
            await run_load(
                submit,
                scenario.clients,
                duration=scenario.duration,
                seed=scenario.seed,
                drain=False,
            )
            tg.cancel_scope.cancel()
        outcomes = dict(adm.outcomes)
    return Trace(
        scenario=scenario.name,
        policy=name or type(policy).__name__,
        duration=scenario.duration,
        records=tuple(sorted(records, key=lambda r: (r.ended, r.issued))),
        times=tuple(times),
        limits=tuple(limits),
        in_flight=tuple(in_flight),
        probing=tuple(probing),
        outcomes=outcomes,
        grants_over_limit=over[0],
        preemptions=preemptions_of(servers),
    )


def preemptions_of(servers: dict[str, Any]) -> int:
    """How often the (stepped) servers preempted a running request."""
    return sum(int(getattr(s, "preemptions", 0)) for s in servers.values())


def _count_grants_over_limit(adm: Any, over: list[int]) -> None:
    """Count grants that take an endpoint past the limit admission enforces.

    Any is a bug in admission: the limit a policy publishes is a promise
    that no more than that many requests run on the endpoint.
    """
    grant = adm._grant

    def checked(slot: Any, *args: Any) -> Any:
        lease = grant(slot, *args)
        if slot.in_flight > slot.effective_limit:
            over[0] += 1
        return lease

    adm._grant = checked


def run_virtual(
    scenario: Scenario,
    policy: LimitPolicy,
    *,
    name: str = "",
    throttle: Throttle | None = Throttle(),  # noqa: B008 - frozen
    seed: int = 0,
    on_start: Callable[[Any], None] | None = None,
    tokens: bool = True,
    engine: bool = False,
) -> Trace:
    """:func:`run_scenario` under trio's mock clock, from a blocking caller.

    Trio shuffles the order of tasks woken in the same instant with a
    module-level generator; it is seeded here so a run replays exactly.
    """
    import trio
    import trio.testing

    shuffle = getattr(getattr(trio, "_core", None), "_run", None)
    rng = getattr(shuffle, "_r", None)
    if isinstance(rng, random.Random):
        rng.seed(f"{seed}:{scenario.name}:{name}")
    clock = trio.testing.MockClock(autojump_threshold=0)

    async def main() -> Trace:
        return await run_scenario(
            scenario,
            policy,
            name=name,
            throttle=throttle,
            on_start=on_start,
            tokens=tokens,
            engine=engine,
        )

    return trio.run(main, clock=clock)
