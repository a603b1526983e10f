"""One actor per endpoint: its limit, circuit breaker, health and model lives.

Leases drop ``Sample``s into the actor's bounded mailbox without waiting;
its health monitor (``_health.py``) drops probe results into the same
mailbox, so the breaker, the lifecycle and the limit policy see every
observation in one order, with the time the actor read.  The actor tells
the admission controller what follows: the limit, and the routing --
``up`` while the breaker is closed or half-open, ``held`` while it holds
traffic (a Retry-After, a model loading), ``down`` while it is open.

Half-open trials.  Admission grants without asking the actor -- that is
its fast path -- so the actor cannot hand out breaker permits at grant
time.  Instead, while half-open it publishes ``trials`` (the breaker's
``half_open_trials``) and admission never lets more than that many leases
run on the endpoint at once; the actor counts the trials when their
samples come back.  A sample whose lease was granted before the breaker's
last opening or recovery (``sample.start`` earlier than that instant)
belongs to an old state: the breaker ignores it, except as news of a
Retry-After or a loading model.  Leases still running from before an
opening count against the trial cap, so a black hole's stuck calls delay
the first trial until they end: no extra load reaches a sick server.

A refused connection fails in no time, so a cap on concurrent trials alone
would let queued requests file through one after another before the
actor's answer arrives.  Admission therefore anticipates the actor on the
release itself: a failed trial sets the endpoint's ``trials`` to 0, and a
Retry-After or a loading answer holds it.  The actor, which gets that very
sample, always answers: it re-sends its routing after any failure while
half-open, and a pause from the server always holds its breaker.

Evidence.  A cold request (the model was loading) neither feeds the limit
nor counts as a failure.  A call still running at its request's deadline
counts against the endpoint only if it ran long enough to have finished
on a healthy one (``Resilience.timeout_evidence`` times the warm latency);
otherwise it counts as nothing, like a cancellation.  Everything the actor
starts -- the timer, the monitor, the warm-up -- lives in its task group,
so nothing outlives it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import final

import anyio
import anyio.abc
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from lmgate._backend import backend_clock
from lmgate._endpoint import Endpoint
from lmgate.actors._engine_watch import EngineWatch
from lmgate.actors._health import ActorMessage, HealthMonitor, HealthReport, Moved, WarmedUp
from lmgate.actors._messages import (
    ControllerMessage,
    EngineNews,
    Routing,
    ServerBusy,
    StateChanged,
    Tick,
    UrlChanged,
)
from lmgate.actors._messages import LimitChanged as LimitMessage
from lmgate.actors._resilience import Resilience
from lmgate.actors._server_view import ServerView, ServerViewReader
from lmgate.actors._statistics import EndpointActorStatistics, resilience_fields
from lmgate.actors._timer import WakeTimer, warm_up
from lmgate.detect._learn import endpoint_key
from lmgate.observability._events import EventHub
from lmgate.policies._breaker import BreakerStateName, Permit, Transition
from lmgate.policies._engine import EngineAware, EngineReading
from lmgate.policies._health import url_port
from lmgate.policies._limit import LimitState
from lmgate.policies._resilience_events import (
    EndpointStateChanged,
    LimitChanged,
    ModelChanged,
    breaker_event,
    moved_event,
)
from lmgate.policies._sample import OUTCOME_CLASSES, OutcomeClass, Sample

__all__ = ["EndpointActor", "EndpointActorStatistics", "resilience_fields"]

_STALE = Permit(False, -1)  # a result from before the breaker's last epoch
_MAX_IDENTITIES = 64


@final
class EndpointActor:
    """The task that owns one endpoint's feedback, breaker and health."""

    def __init__(
        self,
        index: int,
        endpoint: Endpoint,
        limit: LimitState,
        controller: anyio.abc.ObjectSendStream[ControllerMessage],
        inbox: MemoryObjectReceiveStream[ActorMessage],
        tick_send: MemoryObjectSendStream[ActorMessage],
        events: EventHub,
        *,
        tick_interval: float = 1.0,
        resilience: Resilience | None = None,
        rng: random.Random | None = None,
    ) -> None:
        res = resilience if resilience is not None else Resilience()
        rng = rng if rng is not None else random.Random(res.seed)
        self.index = index
        self._clock: Callable[[], float] = anyio.current_time
        self.endpoint = endpoint
        self._res = res
        self._limit = limit
        self._policy = limit.statistics().policy
        self._controller = controller
        self._inbox = inbox
        self._tick_send = tick_send
        self._events = events
        self._tick_interval = tick_interval
        self._rng = random.Random(rng.random())
        self._breaker = res.breaker.build(random.Random(rng.random()))
        self._trials = res.breaker.half_open_trials
        self._lifecycle = res.lifecycle.build()
        # Without a model on the sample, one lifecycle entry stands for all.
        self._key = endpoint.models[0] if len(endpoint.models) == 1 else "*"
        self._url = endpoint.url
        self._monitor: HealthMonitor | None = None
        #: Reads the server's own view after a cancellation (``_server_view``).
        self._viewer: ServerViewReader | None = None
        #: Reads the server's metrics while it has traffic (``_engine_watch``).
        self._engine: EngineWatch | None = None
        #: The limit policy's reader of engine metrics, if it has one.
        self._observe_engine = limit.observe_engine if isinstance(limit, EngineAware) else None
        self._published_limit = limit.limit
        self._routing: tuple[Routing, str, int | None] = ("up", "healthy", None)
        self._phase_since = -math.inf
        self._loading_news = -math.inf
        self._reprobe = False  # moved: hold traffic until the new address answers
        self._timer = WakeTimer(tick_send, tick_interval)
        self._samples = 0
        self._by_class: dict[str, int] = dict.fromkeys(OUTCOME_CLASSES, 0)
        self._latency: float | None = None
        self._ttft: float | None = None
        self._ignored_timeouts = 0
        self._probes = 0
        self._probe_failures = 0
        self._last_probe: HealthReport | None = None
        self._last_probe_at: float | None = None
        self._refused_since_ok = False
        self._addresses: tuple[str, ...] | None = None
        self._identities: dict[str, str] = {}
        self._moves = 0
        self._opens_before = 0  # openings of the breakers of earlier addresses
        self._model_changes = 0
        self._warmups = 0
        self._warmup_failures = 0

    @property
    def limit(self) -> int:
        return self._published_limit

    @property
    def url(self) -> str:
        """Where the endpoint's server answers now (it moves with the server)."""
        return self._url

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with anyio.create_task_group() as tg, self._inbox, self._controller, self._tick_send:
            tg.start_soon(self._timer.run)
            if self.endpoint.health is not None:
                self._monitor = HealthMonitor(
                    self.endpoint,
                    self._res.probes,
                    self._tick_send.clone(),
                    self._pace,
                    rng=random.Random(self._rng.random()),
                    resolve=self._res.resolve,
                    resolve_timeout=self._res.resolve_timeout,
                )
                tg.start_soon(self._monitor.run)
            ep = self.endpoint
            if ep.server_view or (ep.server_view is None and ep.probe):
                self._viewer = ServerViewReader(
                    lambda: self._url, self._tick_send.clone(), api_key=endpoint_key(ep)
                )
                tg.start_soon(self._viewer.run)
            if ep.reads_engine_metrics:
                self._engine = EngineWatch(
                    lambda: self._url,
                    self._tick_send.clone(),
                    source=ep.metrics,
                    api_key=endpoint_key(ep),
                )
                tg.start_soon(self._engine.run)
            if self.endpoint.warmup and self._res.warmup is not None:
                tg.start_soon(
                    warm_up,
                    self.endpoint,
                    lambda: self._url,
                    self._res.warmup,
                    self._res.warmup_timeout,
                    self._tick_send.clone(),
                )
            self._clock = backend_clock()
            task_status.started()
            inbox = self._inbox
            while True:
                try:
                    message = await inbox.receive()
                except anyio.EndOfStream:
                    break
                await self._handle(message)
                # Drain what queued up meanwhile without a task switch per
                # sample: under load leases finish far faster than a switch.
                for _ in range(256):
                    try:
                        message = inbox.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    await self._handle(message)
            tg.cancel_scope.cancel()

    # -- messages ---------------------------------------------------------------

    async def _handle(self, message: ActorMessage) -> None:
        now = self._clock()
        match message:
            case Sample():
                await self._on_sample(message, now)
            case Tick():
                await self._publish_limit(self._limit.tick(now), now)
                await self._after(self._breaker.tick(now), now)
            case HealthReport():
                await self._on_probe(message, now)
            case Moved(old_url=old, new_url=new):
                await self._on_moved(old, new, now)
            case ServerView(at=at, busy=busy, tasks=tasks):
                await self._controller.send(ServerBusy(self.index, at, busy, tasks))
            case EngineReading():
                await self._on_engine(message, now)
            case WarmedUp(model=model, ok=ok):
                self._warmups += 1
                if ok:
                    self._lifecycle.loaded(model)
                else:
                    self._warmup_failures += 1

    async def _on_engine(self, reading: EngineReading, now: float) -> None:
        """The server's own figures: for the limit policy and the token budget."""
        if self._observe_engine is not None:
            await self._publish_limit(self._observe_engine(reading, now), now)
        await self._controller.send(EngineNews(self.index, reading))

    async def _on_sample(self, sample: Sample, now: float) -> None:
        self._samples += 1
        if self._engine is not None:
            self._engine.busy(now)
        self._by_class[sample.outcome] += 1
        outcome: OutcomeClass = sample.outcome
        reported = outcome
        if self._viewer is not None and (outcome == "cancelled" or outcome == "timeout"):
            self._viewer.cancelled(now)  # it may still run: watch the server let it go
        if outcome == "timeout" and not self._timeout_is_evidence(sample):
            # Granted with too little time left to tell anything.
            self._ignored_timeouts += 1
            outcome = "cancelled"
            sample = msgspec.structs.replace(sample, outcome=outcome)
        model = getattr(sample, "model", None) or self._key
        verdict = self._lifecycle.finished(model, sample.start, now, outcome, sample.ttft)
        if outcome == "success" and not verdict.cold:
            d = sample.duration
            self._latency = (
                d if self._latency is None else self._latency + 0.1 * (d - self._latency)
            )
            if sample.ttft is not None:
                t = sample.ttft
                self._ttft = t if self._ttft is None else self._ttft + 0.1 * (t - self._ttft)
        elif outcome == "loading":
            self._lifecycle.loading(model)
        breaker = self._breaker
        told = verdict.breaker_outcome
        transition = None
        if told != "success" or sample.start >= self._loading_news:
            # (A success that started before the server last said it was
            # loading proves nothing about the load being over.)
            permit = _STALE if sample.start < self._phase_since else breaker.acquire(now)
            transition = breaker.record(told, now, sample.retry_after, permit=permit)
            if told == "loading":
                self._loading_news = now
        if verdict.feed_limit:
            await self._publish_limit(self._limit.update(sample, now), now)
        # Admission judged the sample as it was sent, before a timeout that
        # is no evidence became a cancellation here: answer what it saw.
        failed = reported == "error" or reported == "timeout"
        if failed and self._routing[2] is not None:
            # Admission stopped granting trials on this failure; say again
            # what holds now, whatever the breaker made of the sample.
            await self._after(transition, now, force=True)
        elif transition is not None or told == "overload" or told == "loading":
            await self._after(transition, now)

    def _timeout_is_evidence(self, sample: Sample) -> bool:
        base = self._latency
        return base is None or sample.duration >= self._res.timeout_evidence * base

    async def _on_probe(self, report: HealthReport, now: float) -> None:
        self._probes += 1
        self._last_probe = report
        self._last_probe_at = now
        if report.addresses is not None:
            self._addresses = report.addresses
        if not report.ok:
            self._probe_failures += 1
            self._refused_since_ok = self._refused_since_ok or report.refused
        elif self._refused_since_ok:
            # The process was gone and is back: every model loads again.
            self._refused_since_ok = False
            self._lifecycle.restarted()
        if report.loading:
            self._loading_news = now
            for model in self.endpoint.models:
                self._lifecycle.loading(model)
            self._lifecycle.loading(self._key)
        if report.identities:
            await self._identify(report.identities, now)
        transition = self._breaker.probe_result(report.ok, now, loading=report.loading)
        if self._reprobe and report.ok and report.url == self._url:
            self._reprobe = False
            self._events.publish(
                EndpointStateChanged(
                    at=now,
                    endpoint=self.endpoint.name,
                    old="moved",
                    new=self._breaker.state(now),
                    reason="probed_at_new_address",
                )
            )
        await self._after(transition, now)

    async def _on_moved(self, old: str, new: str, now: float) -> None:
        """The server answers elsewhere: a new address starts with a clean record.

        The breaker's failures (and its backed-off open time) belong to the
        old address, so the new one gets a fresh breaker; until a probe of
        the new address succeeds, traffic is held at most.
        """
        self._url = new
        self._moves += 1
        self._lifecycle.restarted()
        self._events.publish(moved_event(self.endpoint.name, old, new, at=now))
        await self._controller.send(UrlChanged(self.index, new))
        self._opens_before += self._breaker.statistics().opens
        self._breaker = self._res.breaker.build(random.Random(self._rng.random()))
        self._phase_since = now
        self._reprobe = True
        await self._after(None, now)

    async def _identify(self, identities: dict[str, str], now: float) -> None:
        for model, identity in identities.items():
            if model not in self._identities and len(self._identities) >= _MAX_IDENTITIES:
                continue
            self._identities[model] = identity
            change = self._lifecycle.identity(model, identity, now)
            if change is None:
                continue
            self._model_changes += 1
            self._events.publish(
                ModelChanged(
                    at=now, endpoint=self.endpoint.name, model=model, old=change.old, new=change.new
                )
            )
            # A different build is a different latency: learn it again.
            self._latency = self._ttft = None
            if self._key != model:
                self._lifecycle.loading(self._key)
            reset = getattr(self._limit, "reset", None)
            if callable(reset):
                reset()
                await self._publish_limit(self._limit.limit, now)

    # -- telling others ----------------------------------------------------------

    async def _after(
        self, transition: Transition | None, now: float, *, force: bool = False
    ) -> None:
        """Publish a breaker transition, route accordingly, arm the timer."""
        breaker = self._breaker
        if transition is not None:
            if transition.after == "open" or transition.reason == "recovered":
                self._phase_since = now  # the breaker started a new epoch
            self._events.publish(
                breaker_event(self.endpoint.name, transition, half_open_trials=self._trials)
            )
            if self._monitor is not None:
                self._monitor.replan()
        state = breaker.state(now)
        if state == "closed":
            routing: tuple[Routing, str, int | None] = ("up", "healthy", None)
        elif state == "half_open":
            routing = ("up", "half_open", self._trials)
        elif state == "held":
            routing = ("held", breaker.statistics(now).held_by or "held", None)
        else:
            routing = ("down", "open", None)
        if self._reprobe and routing[0] == "up":
            routing = ("held", "moved", None)
        if routing != self._routing or force:
            self._routing = routing
            await self._controller.send(StateChanged(self.index, *routing))
        until = breaker.next_change(now)
        if until is not None:
            self._timer.arm(until)

    async def _publish_limit(self, proposed: int, now: float) -> None:
        new = max(1, int(proposed))
        if new != self._published_limit:
            old, self._published_limit = self._published_limit, new
            self._events.publish(
                LimitChanged(
                    at=now, endpoint=self.endpoint.name, old=old, new=new, policy=self._policy
                )
            )
            await self._controller.send(LimitMessage(self.index, new))

    def _pace(self, now: float) -> tuple[BreakerStateName, float | None]:
        return self._breaker.state(now), self._breaker.retry_at(now)

    # -- introspection -----------------------------------------------------------------

    def statistics(self) -> EndpointActorStatistics:
        probe = self._last_probe
        return EndpointActorStatistics(
            name=self.endpoint.name,
            state=self._routing[1],
            url=self._url,
            port=url_port(self._url),
            samples=self._samples,
            by_class=dict(self._by_class),
            latency_ewma=self._latency,
            ttft_ewma=self._ttft,
            limit=self._limit.statistics(),
            breaker=self._breaker.statistics(),
            opens=self._opens_before + self._breaker.statistics().opens,
            lifecycle=self._lifecycle.statistics(),
            probes=self._probes,
            probe_failures=self._probe_failures,
            last_probe_at=self._last_probe_at,
            last_probe_ok=None if probe is None else probe.ok,
            probe_latency=None if probe is None else probe.latency,
            addresses=self._addresses,
            identities=dict(self._identities),
            moves=self._moves,
            port_searches=0 if self._monitor is None else self._monitor.searches,
            model_changes=self._model_changes,
            ignored_timeouts=self._ignored_timeouts,
            warmups=self._warmups,
            warmup_failures=self._warmup_failures,
            engine=None if self._engine is None else self._engine.statistics(),
        )

    def __repr__(self) -> str:
        return (
            f"<EndpointActor {self.endpoint.name} state={self._routing[1]}"
            f" limit={self._published_limit}>"
        )
