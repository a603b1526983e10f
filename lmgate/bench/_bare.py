"""The baseline a user could write instead of lmgate: a bare limiter with shedding.

``anyio.CapacityLimiter(n)`` per server, an arrival refused at once when
more than ``shed * n`` requests already wait for it, and the request's
timeout around the wait and the call -- about ten lines.  It runs the same
scenario, servers, load and fault schedule as :func:`~lmgate.bench._run.
run_scenario`, and leaves the same kind of trace, so the benchmark can put
lmgate's figures next to it.  If it wins, lmgate loses.
"""

from __future__ import annotations

import math
from collections import deque
from functools import partial
from typing import Any

import anyio

from lmgate.bench._run import Record, Trace, preemptions_of
from lmgate.sim._faults import run_schedule
from lmgate.sim._load import LoadRequest, run_load
from lmgate.sim._scenarios import Scenario

__all__ = ["run_bare", "run_token_gate"]


class _Lease:
    """What a simulated server needs of a lease: somewhere to report sizes."""

    def report(self, **_: object) -> None:
        pass


async def run_bare(scenario: Scenario, limit: int, *, shed: float = 2.0) -> Trace:
    """Run ``scenario`` through bare limiters of ``limit`` each (no scheduler)."""
    servers = scenario.build_servers()
    limiters = {name: anyio.CapacityLimiter(limit) for name in servers}
    waiting = dict.fromkeys(servers, 0)
    records: list[Record] = []
    t0 = anyio.current_time()
    lease = _Lease()

    def pick(request: LoadRequest) -> str:
        if request.server is not None:
            return request.server
        return min(servers, key=lambda n: (waiting[n] + limiters[n].borrowed_tokens, n))

    async def submit(request: LoadRequest) -> None:
        name = pick(request)
        limiter = limiters[name]
        issued = request.issued_at - t0
        granted = math.nan
        kind = "deadline"
        if limiter.available_tokens == 0 and waiting[name] >= shed * limit:
            records.append(Record(request.client, issued, granted, issued, "rejected"))
            return
        timeout = math.inf if request.timeout is None else request.timeout
        waiting[name] += 1
        queued = True
        try:
            with anyio.move_on_at(request.issued_at + timeout):
                async with limiter:
                    waiting[name] -= 1
                    queued = False
                    granted = anyio.current_time() - t0
                    await servers[name].serve(
                        lease,
                        prompt_tokens=request.prompt_tokens,
                        output_tokens=request.output_tokens,
                    )
                    kind = "completed"
        except Exception:
            kind = "failed"
        finally:
            if queued:
                waiting[name] -= 1
        records.append(Record(request.client, issued, granted, anyio.current_time() - t0, kind))

    await _drive(scenario, servers, submit, t0)
    return _trace(scenario, f"bare-{limit}", records, limit * len(servers), preemptions_of(servers))


class _Gate:
    """FIFO admission while ``prompt + max_tokens`` of the running requests fit."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.running = 0
        self.line: deque[tuple[int, anyio.Event]] = deque()

    def wake(self) -> None:
        while self.line and self.used + self.line[0][0] <= self.budget:
            need, event = self.line.popleft()
            self.used += need
            self.running += 1
            event.set()


async def run_token_gate(scenario: Scenario, *, shed: float = 2.0) -> Trace:
    """Run ``scenario`` through a bare token gate per server: the twenty lines a
    user who knows the server's KV budget could write instead of lmgate."""
    servers = scenario.build_servers()
    gates = {
        name: _Gate(int(getattr(server, "kv_tokens", 0)) or 1 << 60)
        for name, server in servers.items()
    }
    records: list[Record] = []
    t0 = anyio.current_time()
    lease = _Lease()

    async def submit(request: LoadRequest) -> None:
        name = request.server or min(servers, key=lambda n: (gates[n].used, n))
        gate = gates[name]
        need = (request.prompt_tokens or 0) + (request.max_tokens or request.output_tokens or 0)
        issued = request.issued_at - t0
        if need > gate.budget or len(gate.line) >= shed * max(1, gate.running):
            records.append(Record(request.client, issued, math.nan, issued, "rejected"))
            return
        timeout = math.inf if request.timeout is None else request.timeout
        entry = (need, anyio.Event())
        gate.line.append(entry)
        gate.wake()
        granted, kind, started = math.nan, "deadline", False
        try:
            with anyio.move_on_at(request.issued_at + timeout):
                await entry[1].wait()
                started = True
                granted = anyio.current_time() - t0
                try:
                    await servers[name].serve(
                        lease,
                        prompt_tokens=request.prompt_tokens,
                        output_tokens=request.output_tokens,
                    )
                    kind = "completed"
                finally:
                    gate.used -= need
                    gate.running -= 1
        except Exception:
            kind = "failed"
        finally:
            if not entry[1].is_set():
                gate.line.remove(entry)
            elif not started:  # let in at the instant its deadline passed
                gate.used -= need
                gate.running -= 1
            gate.wake()
        records.append(Record(request.client, issued, granted, anyio.current_time() - t0, kind))

    await _drive(scenario, servers, submit, t0)
    return _trace(scenario, "token-gate", records, 0, preemptions_of(servers))


async def _drive(scenario: Scenario, servers: dict[str, Any], submit: Any, t0: float) -> None:
    async with anyio.create_task_group() as tg:
        for server_name, server in servers.items():
            tg.start_soon(partial(run_schedule, start=t0), server, scenario.schedule(server_name))
        await run_load(
            submit, scenario.clients, duration=scenario.duration, seed=scenario.seed, drain=False
        )
        tg.cancel_scope.cancel()


def _trace(
    scenario: Scenario, policy: str, records: list[Record], limit: int, preemptions: int
) -> Trace:
    outcomes: dict[str, int] = {}
    for r in records:
        outcomes[r.kind] = outcomes.get(r.kind, 0) + 1
    n = int(scenario.duration)
    return Trace(
        scenario=scenario.name,
        policy=policy,
        duration=scenario.duration,
        records=tuple(sorted(records, key=lambda r: (r.ended, r.issued))),
        times=tuple(float(i + 1) for i in range(n)),
        limits=(limit,) * n,
        in_flight=(0,) * n,
        probing=(0,) * n,
        outcomes=outcomes,
        grants_over_limit=0,
        preemptions=preemptions,
    )
