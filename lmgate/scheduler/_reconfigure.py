"""A running scheduler taking a new configuration: applied whole, or refused whole.

``Scheduler.from_config`` builds a scheduler from ``lmgate.toml``, env and
arguments, and when there is a file, watches it (and the ``LMGATE_*`` env)
from the scheduler's own task group.  A valid change is applied in two
steps.  First everything that can fail or must wait is prepared: the new
endpoints' and rebuilt limits' actors are started, but nothing routes to
them yet; if any step fails they are stopped again and the change is
refused.  Then the change is committed in one synchronous step, with no
await, so no request ever sees half of it:

- an endpoint that was removed, or whose settings changed (``replaced``),
  stops taking new requests at once (its slot leaves routing and its
  actor is stopped); its calls in flight finish on it, and it disappears
  from ``stats()`` once the last one is released;
- an endpoint whose limit policy changed gets a fresh limit state and a
  fresh actor (breaker and health start over, routing ``up``);
- new endpoints join routing; queue size and aging, ``grace`` and the
  context settings change in place;
- requests still queued for a model nobody serves any more end
  ``unavailable``, and those whose prompt no remaining window can take end
  ``rejected`` (with ``ContextOverflow``).

Refused whole, with a ``ConfigRefused`` event naming the reason and the
old config kept: a config that fails validation; one without endpoints;
a change to ``scheduler.mailbox_size`` or ``scheduler.tick_interval`` (the
mailboxes and timers of running actors cannot be resized); endpoint
changes while a coordinator shares this scheduler's endpoints with other
processes; limit changes when the coordinator owns the limits.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar, final

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectSendStream

from lmgate._endpoint import Endpoint
from lmgate._errors import ContextOverflow, EndpointUnavailable, InvalidParameter, SchedulerClosed
from lmgate.actors._endpoint import EndpointActor
from lmgate.actors._health import ActorMessage
from lmgate.actors._messages import ControllerMessage, LimitChanged
from lmgate.actors._resilience import Resilience
from lmgate.config._load import parse_config, resolve_path
from lmgate.config._schema import Config
from lmgate.config._watch import Changed, ConfigWatcher, watch_config
from lmgate.observability._events import Event
from lmgate.policies._default import default_limit
from lmgate.policies._limit import LimitState
from lmgate.scheduler._coordinator import SharesLimits
from lmgate.scheduler._core import SchedulerInternals
from lmgate.scheduler._options import QueueOptions, ResourceOptions
from lmgate.scheduler._slot import EndpointSlot, window_fits

__all__ = ["EndpointAdded", "EndpointRemoved", "Reconfigurer", "from_config"]


class EndpointAdded(Event, frozen=True, kw_only=True):
    """A new endpoint (or the new version of a replaced one) takes requests now."""

    endpoint: str
    replaced: bool = False


class EndpointRemoved(Event, frozen=True, kw_only=True):
    """An endpoint takes no new requests; ``in_flight`` calls finish on it first."""

    endpoint: str
    in_flight: int
    replaced: bool = False


class LimitRebuilt(Event, frozen=True, kw_only=True):
    """An endpoint's limit policy changed: it starts over with a fresh limit state."""

    endpoint: str
    limit: int


@final
class _Prepared:
    """A slot's new actor, started but not yet routed to."""

    __slots__ = ("actor", "feedback", "slot", "state")

    def __init__(
        self,
        slot: EndpointSlot,
        state: LimitState,
        actor: EndpointActor,
        feedback: MemoryObjectSendStream[ActorMessage],
    ) -> None:
        self.slot, self.state, self.actor, self.feedback = slot, state, actor, feedback


@final
class Reconfigurer:
    """Owns the actors' cancel scopes, the config watcher and the apply step."""

    __slots__ = ("_controller", "_env", "_path", "_retired", "_sched", "_scopes", "_watcher")

    def __init__(self, sched: SchedulerInternals) -> None:
        self._sched = sched
        self._scopes: dict[int, anyio.CancelScope] = {}
        self._retired: set[int] = set()
        self._controller: MemoryObjectSendStream[ControllerMessage] | None = None
        self._watcher: ConfigWatcher | None = None
        self._path: Path | None = None
        self._env: Mapping[str, str] | None = None

    @property
    def watcher(self) -> ConfigWatcher | None:
        return self._watcher

    def watch(self, watcher: ConfigWatcher, path: Path, env: Mapping[str, str] | None) -> None:
        self._watcher, self._path, self._env = watcher, path, env

    def hidden(self, slot: EndpointSlot) -> bool:
        """A removed endpoint whose last call has ended: no longer reported."""
        return slot.index in self._retired and slot.in_flight == 0

    # -- running ----------------------------------------------------------------------

    async def start_actor(self, tg: anyio.abc.TaskGroup, actor: EndpointActor) -> None:
        """Start ``actor`` in ``tg`` under a scope of its own, so it can be stopped alone."""
        await tg.start(self._run_actor, actor)

    async def _run_actor(
        self, actor: EndpointActor, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        with anyio.CancelScope() as scope:
            self._scopes[id(actor)] = scope
            try:
                await actor.run(task_status=task_status)
            finally:
                self._scopes.pop(id(actor), None)

    async def start(
        self,
        tg: anyio.abc.TaskGroup,
        controller: MemoryObjectSendStream[ControllerMessage],
    ) -> None:
        """Start watching the config, if the scheduler was built from a file."""
        if self._watcher is None:
            return
        self._controller = controller.clone()
        tg.start_soon(self._watch, name="lmgate.config-watcher")

    async def _watch(self) -> None:
        assert self._watcher is not None
        assert self._path is not None
        assert self._controller is not None
        with self._controller:
            await watch_config(
                self._path,
                None,
                self.apply,
                watcher=self._watcher,
                env=self._env,
                hub=self._sched.events,
            )

    # -- applying ---------------------------------------------------------------------

    async def apply(self, change: Changed) -> None:
        """Apply ``change`` whole, or raise with the reason and change nothing."""
        sched, adm = self._sched, self._sched._admission
        if not sched._running or adm.closed or sched._tg is None or self._controller is None:
            raise SchedulerClosed("the scheduler is closing")
        assert self._watcher is not None
        old, new, diff = self._watcher.config, change.config, change.diff
        self._check(old, new, change)
        endpoints = {ep.name: ep for ep in new.endpoints()}
        policy = new.limit_policy() or default_limit()
        active = {s.endpoint.name: s for s in adm.slots if s.index not in self._retired}
        prepared: list[_Prepared] = []
        try:
            next_index = len(adm.slots)
            for name in (*diff.replaced, *diff.added):
                ep = endpoints[name]
                slot = EndpointSlot(next_index, ep, 1, None)
                next_index += 1
                prepared.append(await self._prepare(slot, (ep.limit or policy).build()))
            for name in diff.limits:
                ep, slot = endpoints[name], active[name]
                prepared.append(await self._prepare(slot, (ep.limit or policy).build()))
            if adm.closed:  # it began closing while the actors started
                raise SchedulerClosed("the scheduler is closing")
        except BaseException:
            for p in prepared:
                self._stop(p.actor, p.feedback)
            raise
        self._commit(new, endpoints, prepared, change)
        # A stopped actor may have left a limit in the controller's mailbox;
        # this one follows it, so the new state's limit is the one that holds.
        for p in prepared:
            await self._controller.send(LimitChanged(p.slot.index, p.state.limit))

    def _check(self, old: Config, new: Config, change: Changed) -> None:
        diff, sched = change.diff, self._sched
        if not new.endpoint_configs:
            raise InvalidParameter("the new config names no endpoint", field="endpoints")
        for field in ("mailbox_size", "tick_interval"):
            if getattr(old.scheduler, field) != getattr(new.scheduler, field):
                raise InvalidParameter(
                    f"scheduler.{field} cannot change while the scheduler runs"
                    " (its actors' mailboxes and timers are fixed); restart to apply",
                    field=f"scheduler.{field}",
                )
        if sched._coordinator is not None and (diff.added or diff.removed or diff.replaced):
            raise InvalidParameter(
                "endpoints cannot be added, removed or replaced while a coordinator"
                " shares them with other processes; restart to apply",
                field="endpoints",
            )
        if isinstance(sched._coordinator, SharesLimits) and diff.limits:
            raise InvalidParameter(
                "limit policies are owned by the coordinator; restart to apply",
                field="limit",
            )

    async def _prepare(self, slot: EndpointSlot, state: LimitState) -> _Prepared:
        sched = self._sched
        assert sched._tg is not None
        assert self._controller is not None
        esend, erecv = anyio.create_memory_object_stream[ActorMessage](sched._mailbox)
        actor = EndpointActor(
            slot.index,
            slot.endpoint,
            state,
            self._controller.clone(),
            erecv,
            esend.clone(),
            sched.events,
            tick_interval=sched._tick,
            resilience=sched._resilience,
            rng=random.Random(sched._rng.random()),
        )
        try:
            await self.start_actor(sched._tg, actor)
        except BaseException:
            esend.close()
            raise
        return _Prepared(slot, state, actor, esend)

    def _stop(self, actor: EndpointActor, feedback: object) -> None:
        scope = self._scopes.pop(id(actor), None)
        if scope is not None:
            scope.cancel()
        if isinstance(feedback, MemoryObjectSendStream):
            feedback.close()

    def _commit(
        self,
        new: Config,
        endpoints: dict[str, Endpoint],
        prepared: list[_Prepared],
        change: Changed,
    ) -> None:
        """Everything at once, without an await: no request sees half a config."""
        sched, adm, diff = self._sched, self._sched._admission, change.diff
        now = adm.clock()
        events: list[Event] = []
        active = {s.endpoint.name: s for s in adm.slots if s.index not in self._retired}
        for name in (*diff.removed, *diff.replaced):
            slot = active.pop(name)
            events.append(
                EndpointRemoved(
                    at=now, endpoint=name, in_flight=slot.in_flight, replaced=name in endpoints
                )
            )
            self._retire(slot)
        for p in prepared:
            slot = p.slot
            if slot.index < len(adm.slots):  # a limit rebuilt in place
                self._stop(sched._actors[slot.index], slot.feedback)
                slot.feedback = p.feedback
                slot.limit = p.state.limit
                slot.routing, slot.state, slot.trials = "up", "healthy", None
                sched._limit_states[slot.index] = p.state
                sched._actors[slot.index] = p.actor
                events.append(LimitRebuilt(at=now, endpoint=slot.endpoint.name, limit=slot.limit))
            else:
                slot.feedback = p.feedback
                slot.limit = p.state.limit
                adm.slots.append(slot)
                sched._limit_states.append(p.state)
                sched._actors.append(p.actor)
                active[slot.endpoint.name] = slot
                events.append(
                    EndpointAdded(
                        at=now,
                        endpoint=slot.endpoint.name,
                        replaced=slot.endpoint.name in diff.replaced,
                    )
                )
        order = [active[name] for name in endpoints]
        by_model: dict[str, tuple[EndpointSlot, ...]] = {}
        for slot in order:
            for m in slot.models:
                by_model[m] = (*by_model.get(m, ()), slot)
        adm.by_model = by_model
        sched._endpoints = tuple(s.endpoint for s in order)
        adm.queue_size = sched._queue_size = new.queue.size
        adm.aging = sched._aging = new.queue.aging
        sched._grace = new.scheduler.grace
        sched._context.configure(new.context)
        for name in (*diff.removed, *diff.replaced):
            if name not in endpoints:
                sched._context.forget(name)
        _refresh_retry_windows(sched)
        self._refuse_stranded(now)
        adm.dispatch(now)
        for event in events:
            sched.events.publish(event)

    def _retire(self, slot: EndpointSlot) -> None:
        self._retired.add(slot.index)
        self._stop(self._sched._actors[slot.index], slot.feedback)
        slot.models = ()  # hand-over looks a freed slot's waiters up by its models
        slot.routing, slot.state = "down", "removed"

    def _refuse_stranded(self, now: float) -> None:
        """End queued requests that nothing left in the new config can serve."""
        adm = self._sched._admission
        for model in list(adm.queue.models_waiting()):
            slots = adm.by_model.get(model)
            if not slots:
                while (w := adm.queue.pop(model)) is not None:
                    adm._refuse(
                        w,
                        EndpointUnavailable(f"no endpoint serves {model!r} after reconfiguration"),
                        "unavailable",
                    )
                continue
            for w in adm.queue.waiters(model):
                need = w.min_window
                if need is not None and not any(window_fits(s, model, need) for s in slots):
                    adm.queue.discard(w)
                    largest = max((s.endpoint.window_for(model) or 0) for s in slots)
                    adm._refuse(
                        w,
                        ContextOverflow(
                            f"no endpoint left for {model!r} has a window of {need} tokens",
                            tokens=need,
                            window=largest,
                            before_send=True,
                        ),
                        "rejected",
                    )

    def __repr__(self) -> str:
        return f"<Reconfigurer retired={len(self._retired)} watching={self._watcher is not None}>"


def _refresh_retry_windows(sched: SchedulerInternals) -> None:
    """The retry layer routes overflows by the largest window per model: keep it current."""
    if sched._retrying is not None:
        sched._retrying.refresh_windows(sched._endpoints)


class Configurable(Protocol):
    """A scheduler built from a config, whose reconfigurer then watches it."""

    @property
    def _reconf(self) -> Reconfigurer: ...


S = TypeVar("S", bound=Configurable)


def from_config(
    cls: Callable[..., S],
    path: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    overrides: Mapping[str, Any],
    extra: Mapping[str, Any],
) -> S:
    """See ``Scheduler.from_config``."""
    environ = os.environ if env is None else env
    keys = {k.replace("__", "."): v for k, v in overrides.items()}
    p = resolve_path(path, environ)
    watcher: ConfigWatcher | None = None
    if p is not None:
        watcher = ConfigWatcher.load(p, env=environ, overrides=keys)
        config = watcher.config
    else:
        config = parse_config(None, environ, keys, source="arguments")
    if not config.endpoint_configs:
        raise InvalidParameter("the config names no endpoint", field="endpoints")
    flat = config.scheduler_kwargs()
    kwargs: dict[str, Any] = {
        "queue": QueueOptions(size=flat.pop("queue_size"), aging=flat.pop("aging")),
        "resilience": Resilience(
            tick_interval=flat.pop("tick_interval"), mailbox_size=flat.pop("mailbox_size")
        ),
        **flat,
    }
    if p is not None:
        # Leftover temp files of an interrupted atomic write sit beside the file:
        # a scheduler made from a config file cleans them at start.
        from lmgate.security._tempfiles import state_dirs_of

        kwargs["resources"] = ResourceOptions(state_dirs=tuple(state_dirs_of(p)))
    kwargs.update(extra)
    sched = cls(config.endpoints(), **kwargs)
    if watcher is not None and p is not None:
        sched._reconf.watch(watcher, p, env)
    return sched
