"""Load generators: open-loop Poisson arrivals and closed-loop clients.

Open loop is how independent users arrive -- they do not wait for each
other, so an overloaded server sees its queue grow without bound, which is
the case admission control exists for.  Closed loop is how an agent's worker
pool behaves: each worker sends, waits for the answer, thinks, sends again,
so load falls when latency rises.  Both only call a user-supplied ``submit``
coroutine (scheduler-agnostic) and sleep with anyio, so they run in virtual
time; a rate or a number of workers may change at given times (phases).
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, final

import anyio
import msgspec
from anyio.abc import TaskGroup

from lmgate._errors import InvalidParameter
from lmgate._validate import check_float
from lmgate.sim._scenarios import ClientSpec

__all__ = ["REFUSED_BACKOFF", "ClientLoad", "LoadReport", "LoadRequest", "Submit", "run_load"]

#: Seconds a closed-loop worker waits after a request that ended at once.
REFUSED_BACKOFF: Final = 0.5


@final
class LoadRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One request the generator asks ``submit`` to make.

    Sizes are None when the client spec leaves them to the server's own
    distributions; ``timeout`` is seconds from ``issued_at``.
    """

    index: int
    client: str
    worker: int
    issued_at: float
    prompt_tokens: int | None
    output_tokens: int | None
    #: The output cap the request states (the scheduler sizes it by it).
    max_tokens: int | None = None
    timeout: float | None
    priority: int
    server: str | None


Submit = Callable[[LoadRequest], Awaitable[object]]


@final
class ClientLoad(msgspec.Struct, frozen=True, kw_only=True):
    issued: int
    ok: int
    failed: int
    cancelled: int


@final
class LoadReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a run issued and how ``submit`` ended, per client and by error type."""

    issued: int
    ok: int
    failed: int
    cancelled: int
    errors: dict[str, int]
    clients: dict[str, ClientLoad]
    started: float
    ended: float


class _Counts:
    __slots__ = ("failed", "issued", "ok")

    def __init__(self) -> None:
        self.issued = self.ok = self.failed = 0


class _Run:
    def __init__(self, submit: Submit, start: float, end: float, seed: int) -> None:
        self.submit = submit
        self.start = start
        self.end = end
        self.seed = seed
        self.index = 0
        self.errors: dict[str, int] = {}
        self.counts: dict[str, _Counts] = {}

    def request(self, spec: ClientSpec, rng: random.Random, worker: int) -> LoadRequest:
        self.index += 1
        self.counts[spec.name].issued += 1
        return LoadRequest(
            index=self.index,
            client=spec.name,
            worker=worker,
            issued_at=anyio.current_time(),
            prompt_tokens=None
            if spec.prompt_tokens is None
            else spec.prompt_tokens.sample_int(rng),
            output_tokens=_capped(spec, rng),
            max_tokens=spec.max_tokens,
            timeout=spec.timeout,
            priority=spec.priority,
            server=spec.server,
        )

    async def one(self, request: LoadRequest) -> None:
        counts = self.counts[request.client]
        try:
            await self.submit(request)
        except Exception as exc:
            counts.failed += 1
            name = type(exc).__name__
            self.errors[name] = self.errors.get(name, 0) + 1
        else:
            counts.ok += 1

    def window(self, spec: ClientSpec) -> tuple[float, float]:
        """The client's active span, in seconds from the start of the run."""
        duration = self.end - self.start
        return spec.start, duration if spec.stop is None else min(duration, spec.stop)

    async def open_loop(self, spec: ClientSpec, tg: TaskGroup) -> None:
        rng = random.Random(f"{self.seed}:{spec.name}")
        times, levels = _steps(spec, spec.rate)
        # Offsets from the start, so a phase boundary compares exactly.
        offset, stop = self.window(spec)
        while offset < stop:
            i = bisect.bisect_right(times, offset) - 1
            change = min(times[i + 1] if i + 1 < len(times) else math.inf, stop)
            if levels[i] <= 0.0:
                offset = change
                continue
            gap = rng.expovariate(levels[i])
            if offset + gap >= change:
                offset = change  # arrivals are memoryless: redraw from the boundary
                continue
            offset += gap
            await anyio.sleep_until(self.start + offset)
            tg.start_soon(self.one, self.request(spec, rng, -1))

    async def closed_worker(self, spec: ClientSpec, worker: int) -> None:
        rng = random.Random(f"{self.seed}:{spec.name}:{worker}")
        times, levels = _steps(spec, float(spec.clients))
        begin, end = self.window(spec)
        stop = self.start + end
        await anyio.sleep_until(self.start + begin)
        phase = 0
        while (now := anyio.current_time()) < stop:
            while phase + 1 < len(times) and self.start + times[phase + 1] <= now:
                phase += 1
            if worker >= levels[phase]:
                if phase + 1 >= len(times):
                    return
                await anyio.sleep_until(min(self.start + times[phase + 1], stop))
                phase += 1
                continue
            await self.one(self.request(spec, rng, worker))
            pause = spec.think.sample(rng)
            if anyio.current_time() == now:
                # Refused at once: back off as a client does, rather than
                # resubmit in the same instant for ever.
                pause = max(pause, REFUSED_BACKOFF)
            if pause > 0.0:
                await anyio.sleep(pause)


def _steps(spec: ClientSpec, initial: float) -> tuple[list[float], list[float]]:
    """Phase start offsets and the level (rate or workers) from each on."""
    times, levels = [0.0], [initial]
    for phase in spec.phases:
        level = phase.rate if spec.mode == "open" else phase.clients
        if level is None:
            continue
        if phase.at == times[-1]:
            levels[-1] = float(level)
        else:
            times.append(phase.at)
            levels.append(float(level))
    return times, levels


async def run_load(
    submit: Submit,
    clients: Sequence[ClientSpec],
    *,
    duration: float,
    seed: int = 0,
    drain: bool = True,
) -> LoadReport:
    """Generate the clients' load for ``duration`` seconds of anyio time.

    With ``drain`` the call returns once every request issued has ended;
    without it, requests still running at the end are cancelled.  Exceptions
    from ``submit`` are counted by type, never raised: failures are data.
    """
    check_float("duration", duration)
    names = [c.name for c in clients]
    for i, spec in enumerate(clients):
        if not isinstance(spec, ClientSpec):
            raise InvalidParameter("clients must be ClientSpec values", field=f"clients[{i}]")
    if len(set(names)) != len(names):
        raise InvalidParameter("client names must be unique", field="clients")
    start = anyio.current_time()
    run = _Run(submit, start, start + duration, seed)
    run.counts = {name: _Counts() for name in names}
    async with anyio.create_task_group() as tg:
        for spec in clients:
            if spec.mode == "open":
                tg.start_soon(run.open_loop, spec, tg)
            else:
                most = max([spec.clients, *(p.clients or 0 for p in spec.phases)])
                for worker in range(most):
                    tg.start_soon(run.closed_worker, spec, worker)
        if not drain:
            await anyio.sleep_until(run.end)
            tg.cancel_scope.cancel()
    # What neither returned nor raised was cancelled, whether or not it had
    # started running when the end came.
    per = {
        name: ClientLoad(
            issued=c.issued, ok=c.ok, failed=c.failed, cancelled=c.issued - c.ok - c.failed
        )
        for name, c in run.counts.items()
    }
    return LoadReport(
        issued=sum(c.issued for c in per.values()),
        ok=sum(c.ok for c in per.values()),
        failed=sum(c.failed for c in per.values()),
        cancelled=sum(c.cancelled for c in per.values()),
        errors=dict(sorted(run.errors.items())),
        clients=per,
        started=start,
        ended=anyio.current_time(),
    )


def _capped(spec: ClientSpec, rng: random.Random) -> int | None:
    """A sampled output length, no longer than the ``max_tokens`` the client states."""
    if spec.output_tokens is None:
        return None
    n = spec.output_tokens.sample_int(rng)
    return n if spec.max_tokens is None else min(n, spec.max_tokens)
