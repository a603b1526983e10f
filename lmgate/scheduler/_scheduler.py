"""The ``Scheduler``: the facade users hold, and the owner of every actor.

It validates arguments (bad input changes nothing), turns ``timeout=`` into
one absolute deadline, runs the call in the caller's own task under its
lease, and on every exit path gives the lease back.  Closing stops
admission, lets in-flight work finish within ``grace`` seconds, cancels what
is left, and returns only when no actor task remains.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, final

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectSendStream

from lmgate._backend import backend_clock, running_backend
from lmgate._chat import Message
from lmgate._config_schema import ContextConfig
from lmgate._endpoint import Endpoint
from lmgate._errors import (
    DeadlineExceeded,
    EndpointUnavailable,
    InvalidParameter,
    LmgateError,
    SchedulerClosed,
)
from lmgate._events import EventHub
from lmgate.actors._endpoint import EndpointActor, resilience_fields
from lmgate.actors._health import ActorMessage
from lmgate.actors._resilience import Resilience
from lmgate.actors._resources import Reader
from lmgate.policies._limit import Fixed, LimitPolicy, check_float, check_int
from lmgate.policies._retry import Retry, check_fallbacks
from lmgate.policies._throttle import Throttle
from lmgate.policies.context import ContextStrategy
from lmgate.policies.resources import ResourceGuard
from lmgate.scheduler._admission import Admission, EndpointSlot
from lmgate.scheduler._context_gate import ContextGate, ContextRequest
from lmgate.scheduler._controller import AdmissionController
from lmgate.scheduler._coordinator import Coordinator, CoordinatorHandle, SharesLimits
from lmgate.scheduler._discovery import Discovery
from lmgate.scheduler._hooks import RequestHook, Watch
from lmgate.scheduler._lease import EventLike, Lease, ScopeLike, Waiter
from lmgate.scheduler._messages import ControllerMessage
from lmgate.scheduler._pressure import Resources
from lmgate.scheduler._reconfigure import Reconfigurer, from_config
from lmgate.scheduler._retrying import Retrying
from lmgate.scheduler._stats import EndpointStats, Stats
from lmgate.scheduler._throttling import throttling_for
from lmgate.transports._pool import ClientPool

__all__ = ["Scheduler"]

T = TypeVar("T")
_MAX_PRIORITY = 1_000_000


@final
class Scheduler:
    """Admission control and routing for calls to language-model endpoints.

    Use it as an async context manager; nothing runs before ``__aenter__``
    and nothing survives ``__aexit__``.
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        limit: LimitPolicy | None = None,
        queue_size: int = 1024,
        aging: float = 10.0,
        grace: float = 5.0,
        tick_interval: float = 1.0,
        mailbox_size: int = 4096,
        coordinator: Coordinator | None = None,
        retry: Retry | None = None,
        fallbacks: Mapping[str, Sequence[str]] | None = None,
        resilience: Resilience | None = None,
        hooks: Sequence[RequestHook] = (),
        resources: ResourceGuard | None = None,
        resource_interval: float = 5.0,
        resource_dirs: Sequence[str | os.PathLike[str]] = (),
        resource_reader: Reader | None = None,
        state_dirs: Sequence[str | os.PathLike[str]] = (),
        context: ContextStrategy | ContextConfig | None = None,
        throttle: Throttle | None = Throttle(),  # noqa: B008 - frozen, shared safely
    ) -> None:
        if isinstance(endpoints, Endpoint) or not isinstance(endpoints, Sequence):
            raise InvalidParameter("endpoints must be a list of Endpoint", field="endpoints")
        if not endpoints:
            raise InvalidParameter("at least one endpoint is required", field="endpoints")
        names: set[str] = set()
        for ep in endpoints:
            if not isinstance(ep, Endpoint):
                raise InvalidParameter(
                    f"endpoints must hold Endpoint, got {type(ep).__name__}", field="endpoints"
                )
            if ep.name in names:
                raise InvalidParameter(f"duplicate endpoint name {ep.name!r}", field="endpoints")
            names.add(ep.name)
        if limit is None:
            limit = _default_limit()
        if not hasattr(limit, "build"):
            raise InvalidParameter("limit must be a policy config such as Fixed(8)", field="limit")
        self._endpoints = tuple(endpoints)
        self._limit_policy = limit
        self._queue_size = check_int("queue_size", queue_size, low=0, high=10_000_000)
        self._aging = check_float("aging", aging, low=0.0)
        self._grace = check_float("grace", grace, low=0.0)
        self._tick = check_float("tick_interval", tick_interval, low=0.0, low_open=True)
        self._mailbox = check_int("mailbox_size", mailbox_size, low=1)
        self.events = EventHub()
        self._coordinator = coordinator
        slots = []
        self._limit_states = []
        for i, ep in enumerate(self._endpoints):
            policy = ep.limit or limit
            if isinstance(coordinator, SharesLimits):
                state = coordinator.limit_state(ep, policy)
            else:
                state = policy.build()
            self._limit_states.append(state)
            slots.append(EndpointSlot(i, ep, state.limit, None))
        self._admission = Admission(slots, queue_size=self._queue_size, aging=self._aging)
        self._actors: list[EndpointActor] = []
        self._controller: AdmissionController | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._running = False
        self._entered = False
        self._new_scope: Callable[..., ScopeLike] = anyio.CancelScope
        self._resilience, self._retrying = self._resilience_of(retry, fallbacks, resilience)
        self._admission.throttling = throttling_for(throttle, self._resilience.seed)
        # Request hooks (metrics, traces), and the machine around the scheduler:
        # resource pressure, exposed local servers, leftover temp files.
        self._watch = Watch(self._admission, hooks)
        self._resources = Resources(
            self._admission,
            self._watch,
            self.events,
            self._endpoints,
            guard=resources,
            interval=resource_interval,
            dirs=resource_dirs,
            read=resource_reader,
            state_dirs=state_dirs,
        )
        # Prompts (``messages=``) fitted to the granted endpoint's window;
        # a strategy here replaces the per-locality default for every endpoint.
        self._context = ContextGate(context, self.events)
        self._reconf = Reconfigurer(self)
        # Endpoint(probe=True) learning at start, and the HTTP clients lmgate opens.
        self._discovery = Discovery(self.events)
        self._clients: ClientPool | None = None

    def _resilience_of(
        self,
        retry: Retry | None,
        fallbacks: Mapping[str, Sequence[str]] | None,
        resilience: Resilience | None,
    ) -> tuple[Resilience, Retrying | None]:
        if resilience is None:
            resilience = Resilience()
        elif not isinstance(resilience, Resilience):
            raise InvalidParameter("resilience must be a Resilience", field="resilience")
        if retry is not None and not isinstance(retry, Retry):
            raise InvalidParameter("retry must be a Retry", field="retry")
        chains = check_fallbacks(fallbacks) if fallbacks is not None else {}
        for m in {m for k, v in chains.items() for m in (k, *v)}:
            if m not in self._admission.by_model:
                raise InvalidParameter(f"fallbacks: no endpoint serves {m!r}", field="fallbacks")
        self._rng = random.Random(resilience.seed)
        if retry is None and not chains:
            return resilience, None
        rng = random.Random(self._rng.random())
        return resilience, Retrying(self, retry or Retry(), chains, rng)

    @classmethod
    def from_config(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        coordinator: Coordinator | None = None,
        **overrides: Any,
    ) -> Scheduler:
        """A scheduler from ``lmgate.toml``, ``LMGATE_*`` env vars and ``overrides``.

        ``path`` defaults to ``$LMGATE_CONFIG``, else ``./lmgate.toml`` if it
        exists.  ``overrides`` are config keys with ``__`` (or ``.``) between
        levels, such as ``queue__size=64``; they win over env, which wins
        over the file.  With a file, the running scheduler re-checks file and
        env every ``watch.interval`` seconds and applies a valid change
        whole or refuses it whole (``ConfigApplied`` / ``ConfigRefused``
        events).
        """
        extra = {"coordinator": coordinator} if coordinator is not None else {}
        return from_config(cls, path, env, overrides, extra)

    # -- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> Scheduler:
        if self._entered:
            raise SchedulerClosed("a Scheduler can be entered once")
        self._entered = True
        self._admission.clock, self._admission.new_event, self._new_scope = _backend_primitives()
        await self._discovery.start(self)  # before anything routes
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        csend: MemoryObjectSendStream[ControllerMessage] | None = None
        try:
            csend, crecv = anyio.create_memory_object_stream[ControllerMessage](self._mailbox)
            self._controller = AdmissionController(self._admission, crecv)
            await tg.start(self._controller.run)
            for slot, state in zip(self._admission.slots, self._limit_states, strict=True):
                esend, erecv = anyio.create_memory_object_stream[ActorMessage](self._mailbox)
                slot.feedback = esend
                actor = EndpointActor(
                    slot.index,
                    slot.endpoint,
                    state,
                    csend.clone(),
                    erecv,
                    esend.clone(),
                    self.events,
                    tick_interval=self._tick,
                    resilience=self._resilience,
                    rng=random.Random(self._rng.random()),
                )
                self._actors.append(actor)
                await self._reconf.start_actor(tg, actor)
            if self._coordinator is not None:
                self._admission.on_release = self._coordinator.release
                await tg.start(self._coordinator.run, CoordinatorHandle(self, csend.clone()))
            await self._reconf.start(tg, csend)
            await self._resources.start(tg)
            csend.close()
        except BaseException as exc:
            # Startup failed: close every stream we opened, stop what started,
            # and surface the one error rather than a group around it.
            tg.cancel_scope.cancel()
            if csend is not None:
                csend.close()
            for slot in self._admission.slots:
                if slot.feedback is not None:
                    slot.feedback.close()
            try:
                await tg.__aexit__(type(exc), exc, exc.__traceback__)
            except BaseExceptionGroup as group:
                if len(group.exceptions) == 1:
                    raise group.exceptions[0] from exc
                raise
            raise
        self._running = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self._shutdown()
        if self._clients is not None:
            with anyio.CancelScope(shield=True):
                await self._clients.aclose()
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        # The body's exception is the caller's own: handing it to the task
        # group would come back wrapped in an ExceptionGroup.  Only an
        # actor's crash is raised from here; otherwise the body's propagates.
        await self._tg.__aexit__(None, None, None)
        return None

    async def _shutdown(self) -> None:
        adm = self._admission
        self._running = False
        adm.close()
        if self._retrying is not None:
            self._retrying.close()
        with anyio.CancelScope(shield=True):
            if adm.in_flight:
                with anyio.move_on_after(self._grace):
                    await adm.drained_event().wait()
            if adm.in_flight:
                for lease in list(adm.live):
                    lease._revoked = True
                    if lease._scope is not None:
                        lease._scope.cancel()
                    else:
                        adm.finish(lease, None, outcome="cancelled", result="closed")
                with anyio.move_on_after(1.0):
                    await adm.drained_event().wait()
                for lease in list(adm.live):  # calls that shield themselves from cancel
                    adm.finish(lease, None, outcome="cancelled", result="closed")
        for slot in adm.slots:
            if slot.feedback is not None:
                slot.feedback.close()
        self.events.close()

    # -- requests -------------------------------------------------------------------------

    async def run(
        self,
        call: Callable[[Lease], Awaitable[T]],
        *,
        model: str,
        priority: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 -- the API's relative deadline
        idempotent: bool = False,
        messages: Iterable[Message | Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
    ) -> T:
        """Run ``await call(lease)`` on an endpoint serving ``model``.

        Waits for a slot (lower ``priority`` first), then runs the call in
        this task.  ``timeout`` (seconds from now) bounds queueing and the
        call together.  With a retry policy or fallbacks, a failed call is
        tried again within that deadline when ``idempotent`` is true or it
        failed before anything was sent.

        With ``messages`` (the prompt, OpenAI-shaped dicts or lmgate's
        messages) the request goes only to an endpoint whose context window
        can take the prompt plus ``max_tokens``; the call finds the prompt
        fitted to that window in ``lease.messages`` (and ``lease.fitted``).
        A prompt that no window can take raises ContextOverflow, and
        nothing is sent.
        """
        if not callable(call):
            raise InvalidParameter("call must be an async callable taking the lease", field="call")
        if type(priority) is not int:
            priority = _as_priority(priority)
        if self._retrying is not None:
            if type(idempotent) is not bool:
                raise InvalidParameter("idempotent must be a bool", field="idempotent")
            if messages is not None:  # each attempt fits the prompt to its own endpoint
                adm = self._admission
                prompt = self._context.prepare(adm, "", messages, max_tokens, route=False)
                call = self._context.wrap(call, prompt)
            return await self._retrying.run(call, model, priority, timeout, idempotent)
        req: ContextRequest | None = None
        if self._coordinator is not None:
            lease = await self.acquire(
                model=model,
                priority=priority,
                timeout=timeout,
                messages=messages,
                max_tokens=max_tokens,
            )
            waiter = None
        else:
            # One cancel scope covers the wait and the call: it is the
            # request's one deadline, and the handle close() cancels.
            deadline = self._deadline(model, priority, timeout)
            if type(model) is not str:
                model = str.__str__(model)
            adm = self._admission
            if messages is not None:
                req = self._context.prepare(adm, model, messages, max_tokens, priority=priority)
            need = None if req is None else req.need
            got = adm.submit(model, priority, deadline, adm.clock(), min_window=need)
            if isinstance(got, Lease):
                lease, waiter = got, None
            else:
                lease, waiter = None, got
        if waiter is not None:
            scope = self._new_scope(deadline=waiter.deadline)
        else:
            assert lease is not None
            scope = self._new_scope(deadline=lease.deadline)
        try:
            with scope:
                if waiter is not None:
                    await waiter.event.wait()
                    if waiter.error is not None:
                        raise waiter.error
                    lease = waiter.lease
                assert lease is not None
                lease._scope = scope
                if req is not None:
                    await self._context.fit(lease, req)
                result = await call(lease)
        except BaseException as exc:
            if waiter is not None and (lease is None or lease._scope is None):
                self._admission.leave(waiter, "cancelled")
                raise
            assert lease is not None
            replacement = self._after_error(lease, exc, scope)
            if replacement is None:
                raise
            raise replacement from exc
        if scope.cancelled_caught:
            if waiter is not None and (lease is None or lease._scope is None):
                self._admission.leave(waiter, "deadline_exceeded")
                raise DeadlineExceeded(f"no slot for {model!r} before the deadline")
            assert lease is not None
            raise self._interrupted(lease)
        assert lease is not None
        self._admission.finish(lease, None)
        return result

    def lease(
        self,
        *,
        model: str,
        priority: int = 0,
        timeout: float | None = None,
        messages: Iterable[Message | Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
    ) -> _LeaseContext:
        """``async with sched.lease(model=...) as lease:`` -- hold a slot for a block.

        The block runs under the request's deadline; leaving it, by any
        path, releases the slot.  ``messages`` and ``max_tokens`` as in
        :meth:`run`: the fitted prompt is ``lease.messages``.
        """
        return _LeaseContext(self, model, priority, timeout, messages, max_tokens)

    async def acquire(
        self,
        *,
        model: str,
        priority: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 -- the API's relative deadline
        messages: Iterable[Message | Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
    ) -> Lease:
        """Wait for a lease that the caller must ``release()`` itself.

        For work whose release happens in another task or callback (a
        response stream closed later); ``run()`` and ``lease()`` are safer.
        The deadline is not enforced on the work: check ``lease.remaining()``.
        """
        if type(priority) is not int:
            priority = _as_priority(priority)
        deadline = self._deadline(model, priority, timeout)
        if type(model) is not str:
            model = str.__str__(model)
        adm = self._admission
        req = (
            None
            if messages is None
            else self._context.prepare(adm, model, messages, max_tokens, priority=priority)
        )
        need = None if req is None else req.need
        got = adm.submit(model, priority, deadline, adm.clock(), min_window=need)
        lease = got if isinstance(got, Lease) else await self._wait(got)
        if self._coordinator is not None:
            await self._coordinate(lease)
        if req is not None:
            await self._context.fit_held(lease, req)
        return lease

    async def _coordinate(self, lease: Lease) -> None:
        """Take the shared (cross-process) slot too, within the same deadline."""
        assert self._coordinator is not None
        adm = self._admission
        try:
            with anyio.CancelScope(deadline=lease.deadline) as scope:
                await self._coordinator.acquire(lease)
        except BaseException as exc:
            adm.finish(lease, None, outcome="cancelled", result=_coordination_outcome(exc))
            raise
        if scope.cancelled_caught:
            adm.finish(lease, None, outcome="cancelled", result="deadline_exceeded")
            raise DeadlineExceeded("no shared slot before the deadline")
        lease._coordinated = True
        # The call starts now: time spent waiting for the shared slot is
        # queueing, not service, for the samples and the service time.
        lease.granted_at = adm.clock()

    def _deadline(self, model: object, priority: object, timeout: object) -> float:
        if not self._running:
            raise SchedulerClosed("the scheduler is not running (use `async with`)")
        if not isinstance(model, str) or not model or len(model) > 4096 or "\x00" in model:
            raise InvalidParameter("model must be a non-empty string without NUL", field="model")
        if type(priority) is not int or not -_MAX_PRIORITY <= priority <= _MAX_PRIORITY:
            raise InvalidParameter(
                f"priority must be an int in [-{_MAX_PRIORITY}, {_MAX_PRIORITY}]", field="priority"
            )
        if timeout is None:
            return math.inf
        if (
            type(timeout) not in (int, float)
            and isinstance(timeout, int | float)
            and not isinstance(timeout, bool)
        ):
            # A float or int subclass (numpy.float64, IntEnum) counts as its value.
            timeout = (
                float.__float__(timeout) if isinstance(timeout, float) else int.__index__(timeout)
            )
        if type(timeout) not in (int, float) or timeout != timeout or timeout < 0:  # type: ignore[operator]
            raise InvalidParameter("timeout must be None or a number >= 0", field="timeout")
        if timeout == math.inf:
            return math.inf
        return self._admission.clock() + float(timeout)  # type: ignore[arg-type]

    async def _wait(self, waiter: Waiter) -> Lease:
        adm = self._admission
        try:
            if waiter.deadline == math.inf:
                await waiter.event.wait()
            else:
                with anyio.CancelScope(deadline=waiter.deadline):
                    await waiter.event.wait()
        except BaseException:
            adm.leave(waiter, "cancelled")
            raise
        if waiter.lease is not None:
            return waiter.lease
        if waiter.error is not None:
            raise waiter.error
        adm.leave(waiter, "deadline_exceeded")
        raise DeadlineExceeded(f"no slot for {waiter.model!r} before the deadline")

    def _after_error(
        self, lease: Lease, exc: BaseException, scope: ScopeLike
    ) -> BaseException | None:
        """Release after the call raised; return an error to raise instead, if any."""
        adm = self._admission
        if lease._revoked:
            adm.finish(lease, None, outcome="cancelled", result="closed")
            return SchedulerClosed("the scheduler closed while the call ran")
        if scope.cancel_called and not lease._released:
            # Our deadline interrupted the call and the call turned the
            # cancellation into its own error.
            adm.finish(lease, None, outcome="timeout", result="deadline_exceeded")
            return DeadlineExceeded(f"deadline passed during the call on {lease.endpoint.name}")
        adm.finish(lease, exc)
        return None

    def _interrupted(self, lease: Lease) -> BaseException:
        adm = self._admission
        if lease._revoked:
            adm.finish(lease, None, outcome="cancelled", result="closed")
            return SchedulerClosed("the scheduler closed while the call ran")
        adm.finish(lease, None, outcome="timeout", result="deadline_exceeded")
        return DeadlineExceeded(f"deadline passed during the call on {lease.endpoint.name}")

    # -- introspection ----------------------------------------------------------------------

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    @property
    def clients(self) -> ClientPool:
        """One bounded HTTP client per endpoint, made on first use, closed with the scheduler."""
        if self._clients is None:
            self._clients = ClientPool(self._endpoints)
        return self._clients

    def add_hook(self, hook: RequestHook) -> None:
        """Call ``hook`` for every request submitted from now on.

        A hook sees each request's start, grant and outcome exactly once
        (``RequestHook``): ``lmgate.prometheus.LmgateCollector`` fills latency
        histograms with it, ``lmgate.otel.OtelHook`` emits spans.
        """
        self._watch.add(hook)

    def statistics(self) -> Stats:
        """The same snapshot as :meth:`stats` (the name every stateful lmgate object uses)."""
        return self.stats()

    def stats(self) -> Stats:
        """A consistent snapshot of queue, in-flight, limits, states and outcomes."""
        adm = self._admission
        eps = []
        throttles = adm.throttling.statistics() if adm.throttling is not None else {}
        for slot, state in zip(adm.slots, self._limit_states, strict=True):
            if self._reconf.hidden(slot):  # removed from the config, and drained
                continue
            actor = self._actors[slot.index] if slot.index < len(self._actors) else None
            a = actor.statistics() if actor is not None else None
            eps.append(
                EndpointStats(
                    name=slot.endpoint.name,
                    url=a.url if a else slot.endpoint.url,
                    kind=slot.endpoint.kind,
                    models=slot.models,
                    state=slot.state,
                    routing=slot.routing,
                    limit=slot.limit,
                    in_flight=slot.in_flight,
                    peak_in_flight=slot.peak_in_flight,
                    service_time=slot.service_time,
                    latency_ewma=a.latency_ewma if a else None,
                    ttft_ewma=a.ttft_ewma if a else None,
                    samples=a.samples if a else 0,
                    by_class=a.by_class if a else {},
                    dropped_samples=slot.dropped_samples,
                    policy=state.statistics(),
                    discovery=self._discovery.statistics_for(slot.endpoint.name),
                    throttle=throttles.get(slot.endpoint.name),
                    **(resilience_fields(a) if a else {}),
                )
            )
        return Stats(
            submitted=adm.submitted,
            outcomes=dict(adm.outcomes),
            queued=adm.queued,
            in_flight=adm.in_flight,
            peak_queued=adm.peak_queued,
            queue_size=adm.queue_size,
            closed=adm.closed,
            endpoints=tuple(eps),
            events=self.events.statistics(),
            retries=self._retrying.retries if self._retrying else 0,
            fallbacks=self._retrying.fallbacks if self._retrying else 0,
            resources=self._resources.statistics(),
            context=self._context.statistics(),
        )

    def __repr__(self) -> str:
        adm = self._admission
        state = "running" if self._running else ("closed" if adm.closed else "idle")
        return (
            f"<Scheduler {state} endpoints={[e.name for e in self._endpoints]}"
            f" queued={adm.queued} in_flight={adm.in_flight}>"
        )


def _as_priority(priority: object) -> int:
    """An int subclass (an ``IntEnum`` level) as its plain value; anything else refused.

    The plain value is what the queue hashes and compares, so a subclass
    with odd comparisons cannot reach it.
    """
    if isinstance(priority, int) and not isinstance(priority, bool):
        return int.__index__(priority)
    raise InvalidParameter(
        f"priority must be an int in [-{_MAX_PRIORITY}, {_MAX_PRIORITY}]", field="priority"
    )


def _coordination_outcome(exc: BaseException) -> str:
    """The outcome of a request whose shared slot could not be taken."""
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return "cancelled"
    if isinstance(exc, SchedulerClosed):
        return "closed"
    if isinstance(exc, DeadlineExceeded):
        return "deadline_exceeded"
    if isinstance(exc, EndpointUnavailable):
        return "unavailable"
    return "rejected" if isinstance(exc, LmgateError) else "failed"


def _backend_primitives() -> tuple[
    Callable[[], float], Callable[[], EventLike], Callable[..., ScopeLike]
]:
    """The running backend's clock, event and cancel scope, looked up once.

    anyio's portable wrappers find the backend on every call; on the
    per-request path that lookup costs more than the work it wraps.
    """
    clock = backend_clock()
    if running_backend() == "trio":
        import trio

        return clock, trio.Event, trio.CancelScope
    import asyncio

    return clock, asyncio.Event, anyio.CancelScope


def _default_limit() -> LimitPolicy:
    try:
        from lmgate.policies._adaptive import Adaptive
    except ImportError:  # pragma: no cover
        return Fixed(8)
    return Adaptive()


@final
class _LeaseContext:
    """What ``Scheduler.lease()`` returns: the async context holding a lease."""

    __slots__ = ("_lease", "_max_tokens", "_messages", "_model", "_priority", "_sched", "_timeout")

    def __init__(
        self,
        sched: Scheduler,
        model: str,
        priority: int,
        timeout: float | None,
        messages: Iterable[Message | Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
    ):
        self._sched = sched
        self._model = model
        self._priority = priority
        self._timeout = timeout
        self._messages = messages
        self._max_tokens = max_tokens
        self._lease: Lease | None = None

    async def __aenter__(self) -> Lease:
        if self._lease is not None:
            raise InvalidParameter("this lease context is already in use", field="lease")
        lease = await self._sched.acquire(
            model=self._model,
            priority=self._priority,
            timeout=self._timeout,
            messages=self._messages,
            max_tokens=self._max_tokens,
        )
        scope = self._sched._new_scope(deadline=lease.deadline)
        lease._scope = scope
        scope.__enter__()
        self._lease = lease
        return lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        lease = self._lease
        assert lease is not None
        assert lease._scope is not None
        scope = lease._scope
        swallowed = scope.__exit__(exc_type, exc, tb)
        sched = self._sched
        if exc is None or swallowed:
            if scope.cancelled_caught:
                raise sched._interrupted(lease)
            sched._admission.finish(lease, None)
            return bool(swallowed)
        replacement = sched._after_error(lease, exc, scope)
        if replacement is not None:
            raise replacement from exc
        return False

    def __repr__(self) -> str:
        return f"<lease context model={self._model!r} priority={self._priority}>"
