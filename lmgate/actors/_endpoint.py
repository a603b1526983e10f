"""One actor per endpoint: it owns the endpoint's limit policy and health.

Leases drop ``Sample``s into its bounded mailbox without waiting; the actor
feeds them to the limit policy with the time it read, and tells the
admission controller when the limit or the routing state changes.  A child
ticker lets time-driven policies run and, when the endpoint has a health
check, probes it under a short deadline.  Everything it starts lives in its
own task group, so nothing outlives it.
"""

from __future__ import annotations

from typing import final

import anyio
import anyio.abc
import msgspec

from lmgate._endpoint import Endpoint
from lmgate._events import Event, EventHub
from lmgate.policies._limit import LimitState, LimitStatistics
from lmgate.policies._sample import OUTCOME_CLASSES, Sample
from lmgate.scheduler._messages import (
    ControllerMessage,
    EndpointMessage,
    LimitChanged,
    ProbeResult,
    StateChanged,
    Tick,
)

__all__ = ["EndpointActor", "EndpointActorStatistics", "LimitChangedEvent", "StateChangedEvent"]


class LimitChangedEvent(Event, frozen=True, kw_only=True, tag="limit_changed"):
    endpoint: str
    old: int
    new: int


class StateChangedEvent(Event, frozen=True, kw_only=True, tag="endpoint_state"):
    endpoint: str
    old: str
    new: str
    detail: str = ""


@final
class EndpointActorStatistics(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    state: str
    samples: int
    by_class: dict[str, int]
    latency_ewma: float | None
    ttft_ewma: float | None
    limit: LimitStatistics
    probes: int
    probe_failures: int


@final
class EndpointActor:
    """The task that owns one endpoint's feedback and health."""

    def __init__(
        self,
        index: int,
        endpoint: Endpoint,
        limit: LimitState,
        controller: anyio.abc.ObjectSendStream[ControllerMessage],
        inbox: anyio.abc.ObjectReceiveStream[EndpointMessage],
        tick_send: anyio.abc.ObjectSendStream[EndpointMessage],
        events: EventHub,
        *,
        tick_interval: float = 1.0,
        probe_interval: float = 5.0,
        probe_timeout: float = 2.0,
    ) -> None:
        self.index = index
        self.endpoint = endpoint
        self._limit = limit
        self._controller = controller
        self._inbox = inbox
        self._tick_send = tick_send
        self._events = events
        self._tick_interval = tick_interval
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._published_limit = limit.limit
        self._state = "healthy"
        self._samples = 0
        self._by_class = dict.fromkeys(OUTCOME_CLASSES, 0)
        self._latency: float | None = None
        self._ttft: float | None = None
        self._probes = 0
        self._probe_failures = 0

    @property
    def limit(self) -> int:
        return self._published_limit

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg, self._inbox, self._controller:
            tg.start_soon(self._ticker)
            if self.endpoint.health is not None:
                tg.start_soon(self._prober)
            task_status.started()
            async for message in self._inbox:
                await self._handle(message)
            tg.cancel_scope.cancel()

    async def _handle(self, message: EndpointMessage) -> None:
        now = anyio.current_time()
        match message:
            case Sample():
                self._observe(message)
                await self._publish_limit(self._limit.update(message, now), now)
            case Tick():
                await self._publish_limit(self._limit.tick(now), now)
            case ProbeResult(ok=ok, detail=detail):
                self._probes += 1
                if not ok:
                    self._probe_failures += 1
                new = "healthy" if ok else "down"
                if new != self._state:
                    old, self._state = self._state, new
                    self._events.publish(
                        StateChangedEvent(
                            at=now, endpoint=self.endpoint.name, old=old, new=new, detail=detail
                        )
                    )
                    await self._controller.send(
                        StateChanged(self.index, "up" if ok else "down", new)
                    )

    def _observe(self, sample: Sample) -> None:
        self._samples += 1
        self._by_class[sample.outcome] += 1
        if sample.outcome == "success":
            d = sample.duration
            self._latency = d if self._latency is None else self._latency + 0.1 * (d - self._latency)
            if sample.ttft is not None:
                t = sample.ttft
                self._ttft = t if self._ttft is None else self._ttft + 0.1 * (t - self._ttft)

    async def _publish_limit(self, proposed: int, now: float) -> None:
        new = max(1, int(proposed))
        if new != self._published_limit:
            old, self._published_limit = self._published_limit, new
            self._events.publish(
                LimitChangedEvent(at=now, endpoint=self.endpoint.name, old=old, new=new)
            )
            await self._controller.send(LimitChanged(self.index, new))

    async def _ticker(self) -> None:
        while True:
            await anyio.sleep(self._tick_interval)
            try:
                self._tick_send.send_nowait(Tick())
            except anyio.WouldBlock:
                pass  # the actor is busy; the next tick will do
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return

    async def _prober(self) -> None:
        check = self.endpoint.health
        assert check is not None
        while True:
            ok = False
            detail = ""
            with anyio.move_on_after(self._probe_timeout) as scope:
                try:
                    ok = bool(await check(self.endpoint))
                except Exception as exc:
                    detail = f"{type(exc).__name__}: {exc}"[:200]
            if scope.cancelled_caught:
                detail = "probe timed out"
            try:
                await self._tick_send.send(ProbeResult(ok, detail))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            await anyio.sleep(self._probe_interval)

    def statistics(self) -> EndpointActorStatistics:
        return EndpointActorStatistics(
            name=self.endpoint.name,
            state=self._state,
            samples=self._samples,
            by_class=dict(self._by_class),
            latency_ewma=self._latency,
            ttft_ewma=self._ttft,
            limit=self._limit.statistics(),
            probes=self._probes,
            probe_failures=self._probe_failures,
        )

    def __repr__(self) -> str:
        return (
            f"<EndpointActor {self.endpoint.name} state={self._state}"
            f" limit={self._published_limit}>"
        )


