"""The ``Scheduler``: the facade users hold, and the owner of every actor.

It validates arguments (bad input changes nothing), turns ``timeout=`` into
one absolute deadline, runs the call in the caller's own task under its
lease, and on every exit path gives the lease back.  Closing stops
admission, lets in-flight work finish within ``grace`` seconds, cancels what
is left, and returns only when no actor task remains.
"""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, final

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectSendStream

from lmgate._backend import current_task
from lmgate._endpoint import Endpoint
from lmgate._errors import (
    InvalidParameter,
    SchedulerClosed,
)
from lmgate._validate import check_float
from lmgate.actors._endpoint import EndpointActor
from lmgate.actors._health import ActorMessage
from lmgate.actors._messages import ControllerMessage
from lmgate.actors._resilience import Resilience
from lmgate.config._schema import ContextConfig
from lmgate.context._fit import ContextStrategy
from lmgate.context._messages import Message
from lmgate.observability._events import EventHub
from lmgate.policies._default import default_limit
from lmgate.policies._limit import LimitPolicy
from lmgate.policies._retry import Retry
from lmgate.policies.resources import ResourceGuard
from lmgate.scheduler._admission import Admission
from lmgate.scheduler._arguments import (
    as_priority,
    backend_primitives,
    check_model,
    check_priority,
    deadline_of,
    size_of,
)
from lmgate.scheduler._context_gate import ContextGate
from lmgate.scheduler._controller import AdmissionController
from lmgate.scheduler._coordinator import Coordinator, CoordinatorHandle, SharesLimits
from lmgate.scheduler._discovery import Discovery
from lmgate.scheduler._hooks import RequestHook
from lmgate.scheduler._lease import Lease, ScopeLike
from lmgate.scheduler._lease_context import LeaseContext
from lmgate.scheduler._options import QueueOptions, ResourceOptions, split_legacy
from lmgate.scheduler._pressure import Resources
from lmgate.scheduler._reconfigure import Reconfigurer, from_config
from lmgate.scheduler._request_path import coordinate, in_call, run_call, wait_granted
from lmgate.scheduler._retrying import Retrying
from lmgate.scheduler._slot import EndpointSlot
from lmgate.scheduler._stats import Stats, snapshot
from lmgate.scheduler._throttling import throttling_for
from lmgate.scheduler._watch import Watch
from lmgate.transports._pool import ClientPool

__all__ = ["Scheduler"]

T = TypeVar("T")
_MAX_PRIORITY = 1_000_000


@final
class Scheduler:
    r"""Admission control and routing for calls to language-model endpoints.

    Use it as an async context manager; nothing runs before ``__aenter__``
    and nothing survives ``__aexit__``.  With the defaults, entering it
    starts no thread, touches no file, opens no socket and resolves no
    name: probing (``Endpoint(probe=True)``), resource sampling, exposure
    checks and DNS re-resolution each run only when asked for.

    Args:
        endpoints: the servers requests may go to (``Endpoint``), names unique.
        limit: the concurrency-limit policy config for every endpoint
            (an endpoint's own ``limit`` wins); default
            :func:`lmgate.default_limit` (``Adaptive``).
        queue: :class:`QueueOptions` -- queue bound and priority aging.
        resilience: :class:`~lmgate.Resilience` -- breakers, probes,
            retries, fallbacks, throttling, actor pacing.
        context: a context strategy or ``ContextConfig``: how prompts given
            as ``messages=`` are fitted to the granted endpoint's window.
        resources: :class:`ResourceOptions` (or a bare ``ResourceGuard``) --
            resource sampling and start-up checks, all off by default.
        coordinator: shares leases and limits across processes
            (``lmgate.coordination.Redis``).
        hooks: ``RequestHook``\ s that see every request's start, grant and
            end (metrics, traces).
        grace: seconds that calls in flight get to finish at close before
            they are cancelled.

    The flat keywords of the first release (``queue_size=``, ``aging=``,
    ``tick_interval=``, ``mailbox_size=``, ``retry=``, ``fallbacks=``,
    ``throttle=``, ``resource_interval=``, ``resource_dirs=``,
    ``resource_reader=``, ``state_dirs=``) still work for one release and
    warn with ``DeprecationWarning``.
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        limit: LimitPolicy | None = None,
        queue: QueueOptions | None = None,
        resilience: Resilience | None = None,
        context: ContextStrategy | ContextConfig | None = None,
        resources: ResourceOptions | ResourceGuard | None = None,
        coordinator: Coordinator | None = None,
        hooks: Sequence[RequestHook] = (),
        grace: float = 5.0,
        **deprecated: Any,
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
            limit = default_limit()
        if not hasattr(limit, "build"):
            raise InvalidParameter("limit must be a policy config such as Fixed(8)", field="limit")
        queue, resilience, res = split_legacy(deprecated, queue, resilience, resources)
        self._endpoints = tuple(endpoints)
        self._limit_policy = limit
        self._queue_size = queue.size
        self._aging = queue.aging
        self._grace = check_float("grace", grace, low=0.0, high=1e9)
        self._tick = resilience.tick_interval
        self._mailbox = resilience.mailbox_size
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
        self._admission = Admission(
            slots, queue_size=self._queue_size, aging=self._aging, control=queue.control
        )
        self._actors: list[EndpointActor] = []
        self._controller: AdmissionController | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._running = False
        self._entered = False
        self._exited = False
        self._host: object = None
        self._new_scope: Callable[..., ScopeLike] = anyio.CancelScope
        self._resilience = resilience
        self._retrying = self._retrying_of(resilience)
        self._admission.throttling = throttling_for(resilience.throttle, resilience.seed)
        # Request hooks (metrics, traces), and the machine around the scheduler:
        # resource pressure, exposed local servers, leftover temp files.
        self._watch = Watch(self._admission, hooks)
        self._resources = Resources(self._admission, self._watch, self.events, self._endpoints, res)
        # Prompts (``messages=``) fitted to the granted endpoint's window;
        # a strategy here replaces the per-locality default for every endpoint.
        self._context = ContextGate(context, self.events)
        self._reconf = Reconfigurer(self)
        # Endpoint(probe=True) learning at start, and the HTTP clients lmgate opens.
        self._discovery = Discovery(self.events)
        self._clients: ClientPool | None = None

    def _retrying_of(self, resilience: Resilience) -> Retrying | None:
        chains = resilience.fallbacks
        for m in {m for k, v in chains.items() for m in (k, *v)}:
            if m not in self._admission.by_model:
                raise InvalidParameter(f"fallbacks: no endpoint serves {m!r}", field="fallbacks")
        self._rng = random.Random(resilience.seed)
        if resilience.retry is None and not chains:
            return None
        rng = random.Random(self._rng.random())
        return Retrying(self, resilience.retry or Retry(), chains, rng)

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
        self._admission.clock, self._admission.new_event, self._new_scope = backend_primitives()
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
                await tg.start(
                    self._coordinator.run,
                    CoordinatorHandle(self._admission, self.events, csend.clone()),
                )
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
        self._host = current_task()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._tg is None:
            raise SchedulerClosed("this Scheduler was never entered (use `async with`)")
        if self._exited:
            return None  # closed already: leaving again changes nothing
        if in_call(self) or current_task() is not self._host:
            # Exiting the actors' task group from anywhere but the task that
            # entered it, outside every call's cancel scope, would tear those
            # scopes apart; refuse, and change nothing.
            raise SchedulerClosed(
                "a Scheduler closes when its `async with` block is left, in the task that"
                " entered it; it cannot be closed from inside one of its calls or another task"
            )
        self._exited = True
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
        prompt_tokens: int | None = None,
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

        ``prompt_tokens`` (else counted from ``messages``) and ``max_tokens``
        size it for a KV budget (``Endpoint(kv_tokens=)``): granted while its
        tokens fit; larger than every budget, it raises ContextOverflow.
        """
        if not callable(call):
            raise InvalidParameter("call must be an async callable taking the lease", field="call")
        if type(priority) is not int:
            priority = as_priority(priority)
        if self._retrying is not None:
            if type(idempotent) is not bool:
                raise InvalidParameter("idempotent must be a bool", field="idempotent")
            size = size_of(prompt_tokens, max_tokens)
            if messages is not None:  # each attempt fits the prompt to its own endpoint
                ctx, adm = self._context, self._admission
                prompt = ctx.prepare(adm, "", messages, max_tokens, route=False)
                call = ctx.wrap(call, prompt)
                if prompt_tokens is None and type(model) is str:
                    counted = ctx.prompt_size(adm, model, prompt.messages, prompt.reserve)
                    size = size_of(None, max_tokens, counted)
            return await self._retrying.run(call, model, priority, timeout, idempotent, size)
        return await run_call(
            self, call, model, priority, timeout, messages, max_tokens, prompt_tokens
        )

    def lease(
        self,
        *,
        model: str,
        priority: int = 0,
        timeout: float | None = None,
        messages: Iterable[Message | Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
        prompt_tokens: int | None = None,
    ) -> LeaseContext:
        """``async with sched.lease(model=...) as lease:`` -- hold a slot for a block.

        The block runs under the request's deadline; leaving it, by any
        path, releases the slot.  ``messages`` and ``max_tokens`` as in
        :meth:`run`: the fitted prompt is ``lease.messages``.
        """
        return LeaseContext(self, model, priority, timeout, messages, max_tokens, prompt_tokens)

    async def acquire(
        self,
        *,
        model: str,
        priority: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 -- the API's relative deadline
        messages: Iterable[Message | Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
        prompt_tokens: int | None = None,
    ) -> Lease:
        """Wait for a lease that the caller must ``release()`` itself.

        For work released in another task or callback (a stream closed later);
        ``run()`` and ``lease()`` are safer.  The deadline is not enforced on
        the work: check ``lease.remaining()``.  Arguments as in :meth:`run`.
        """
        if type(priority) is not int:
            priority = as_priority(priority)
        deadline = self._deadline(model, priority, timeout)
        if type(model) is not str:
            model = str.__str__(model)
        adm = self._admission
        req, need, counted = None, None, None
        if messages is not None:
            req = self._context.prepare(adm, model, messages, max_tokens, priority=priority)
            need, counted = req.need, req.prompt_tokens
        size = size_of(prompt_tokens, max_tokens, counted)
        got = adm.submit(model, priority, deadline, adm.clock(), min_window=need, size=size)
        lease = got if isinstance(got, Lease) else await wait_granted(adm, got)
        if self._coordinator is not None:
            await coordinate(adm, self._coordinator, lease)
        if req is not None:
            await self._context.fit_held(lease, req)
        return lease

    def _deadline(self, model: object, priority: object, timeout: object) -> float:
        if not self._running:
            raise SchedulerClosed("the scheduler is not running (use `async with`)")
        check_model(model)
        check_priority(priority)
        return deadline_of(timeout, self._admission.clock)

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
        actors = [a.statistics() for a in self._actors]
        retrying = self._retrying
        return snapshot(
            adm,
            self._limit_states,
            actors,
            hidden=self._reconf.hidden,
            discovery=self._discovery.statistics_for,
            events=self.events.statistics(),
            retries=(retrying.retries, retrying.fallbacks) if retrying else (0, 0),
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
