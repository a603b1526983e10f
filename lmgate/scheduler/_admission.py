"""Admission: who gets a slot on which endpoint, and when.

``Admission`` holds the queue, the per-endpoint in-flight counts and limits,
and the outcome counters.  Callers touch it only through short synchronous
methods (submit, leave, finish) with no await between check and update, so
on a single-threaded event loop each is atomic: a request that needs no
waiting is granted without a task switch, and a release hands its slot to
the next waiter before anyone else can look.  Everything that needs time or
news from the endpoints -- limit changes, health, dispatch after either --
runs in the controller actor (``AdmissionController``) that owns it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from functools import partial
from typing import final

import anyio
import msgspec

from lmgate._errors import (
    ContextOverflow,
    DeadlineExceeded,
    EndpointUnavailable,
    Rejected,
    SchedulerClosed,
)
from lmgate.actors._messages import Routing
from lmgate.policies._queueing import QueueControl, QueueControlState
from lmgate.policies._sample import OutcomeClass
from lmgate.scheduler._feedback import feed_back
from lmgate.scheduler._hooks import HookedRequest
from lmgate.scheduler._lease import EventLike, Lease, SubmitWatch, Waiter
from lmgate.scheduler._occupancy import expire, linger, seen_busy
from lmgate.scheduler._outcomes import OUTCOMES, classify_error, unknown_model
from lmgate.scheduler._queue import RequestQueue
from lmgate.scheduler._queue_control import next_waiter, predicted_done
from lmgate.scheduler._slot import (
    EndpointSlot,
    Size,
    fits,
    tokens_fit,
    too_large,
    window_fits,
)
from lmgate.scheduler._throttling import Throttling

__all__ = ["Admission"]


_SERVICE_ALPHA = 0.1


@final
class Admission:
    """The synchronous core the controller actor owns; see the module doc."""

    def __init__(
        self,
        slots: list[EndpointSlot],
        *,
        queue_size: int,
        aging: float,
        clock: Callable[[], float] = anyio.current_time,
        new_event: Callable[[], EventLike] = anyio.Event,
        control: QueueControl | None = None,
    ) -> None:
        self.slots = slots
        #: Queue control (deadline-aware admission, CoDel, adaptive LIFO);
        #: None is a plain priority queue that refuses nothing on a forecast.
        self.control: QueueControlState | None = None if control is None else control.build()
        #: The event loop's own clock and event type, bound once: looking
        #: the backend up on every call costs more than the rest of a grant.
        self.clock = clock
        self.new_event = new_event
        self.queue = RequestQueue()
        self.queue_size = queue_size
        self.aging = aging
        self.by_model: dict[str, tuple[EndpointSlot, ...]] = {}
        for slot in slots:
            for m in slot.models:
                self.by_model[m] = (*self.by_model.get(m, ()), slot)
        self.submitted = 0
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.queued = 0
        self.in_flight = 0
        self.peak_queued = 0
        self.closed = False
        self.live: set[Lease] = set()
        #: Endpoints holding released calls their server may still run.
        self.lingering: set[EndpointSlot] = set()
        self._drained: anyio.Event | None = None
        #: Gives a cross-process slot back (set when a coordinator is used).
        self.on_release: Callable[[Lease], None] | None = None
        #: The slow path of submit (``_watch.Watch``), installed only while
        #: request hooks or resource pressure need to see each submission.
        self.watch: SubmitWatch | None = None
        #: Resource pressure, set by ``_pressure.Resources``: the factor for
        #: the context threshold of new requests, the priority number above
        #: which new requests are shed, and whether granting is paused.
        self.context_factor = 1.0
        self.shed_above: int | None = None
        self.paused = False
        #: Client-side throttling (``_throttling.Throttling``), when enabled.
        self.throttling: Throttling | None = None

    # -- caller side ---------------------------------------------------------------

    def submit(
        self,
        model: str,
        priority: int,
        deadline: float,
        now: float,
        *,
        exclude: Collection[int] | None = None,
        count: bool = True,
        min_window: int | None = None,
        size: Size | None = None,
        request: HookedRequest | None = None,
        watched: bool = False,
    ) -> Lease | Waiter:
        """Count a request and grant it now, or queue it, or refuse it.

        A retry passes ``count=False`` (the request was counted when first
        submitted) and the endpoints it failed on as ``exclude``: they are
        passed over for an immediate grant, but a retry that has to queue
        takes whichever endpoint frees up first.  ``min_window`` is the
        smallest context window that can take the request's prompt: only
        endpoints with such a window (or an unknown one) are given it.
        ``size`` is (prompt tokens, max_tokens) as far as known: an endpoint
        with a KV budget grants it only while its tokens fit.
        """
        if self.watch is not None and not watched:
            # Hooks or resource pressure: the watch looks first, then calls
            # back with watched=True (a retry passes its hooks as request).
            return self.watch.submit(
                model,
                priority,
                deadline,
                now,
                exclude,
                count,
                request,
                min_window=min_window,
                size=size,
            )
        slots = self.by_model.get(model)
        if slots is None and not self.closed:
            # Bad input, not a request: refused before anything is counted.
            raise self.unknown_model(model)
        if count:
            self.submitted += 1
        if self.closed:
            self.outcomes["closed"] += 1
            raise SchedulerClosed("the scheduler is closed")
        assert slots is not None
        if size is not None and (error := too_large(slots, model, size)) is not None:
            self.outcomes["rejected"] += 1
            raise error
        if not self.queue.waiting(model):
            throttling = self.throttling
            refusals = throttling.refusals if throttling is not None else 0
            slot = self._pick(slots, now, exclude, model, min_window, size)
            if slot is not None:
                return self._grant(slot, model, priority, deadline, now, now, size)
            if throttling is not None and throttling.refused(
                slots, now, refusals, exclude, model, min_window
            ):
                self.outcomes["rejected"] += 1
                raise throttling.rejected(model)
        if all(s.routing == "down" for s in slots if window_fits(s, model, min_window)):
            self.outcomes["unavailable"] += 1
            raise EndpointUnavailable(f"every endpoint serving {model!r} is down")
        if self.queued >= self.queue_size:
            self.outcomes["rejected"] += 1
            raise Rejected(f"queue full ({self.queue_size} waiting)", reason="queue_full")
        predicted = math.nan
        if self.control is not None:
            # Newest first while the queue stands: only more urgent ones go before it.
            lifo = self.control.order() == "lifo"
            ahead = self.queue.ahead_of(model, priority - 1 if lifo else priority)
            done, predicted = predicted_done(self.control, slots, ahead)
            if now + done > deadline:
                self.outcomes["rejected"] += 1
                self.control.predicted_refused += 1
                raise Rejected(
                    f"predicted to finish in {done:.3f}s, after the {deadline - now:.3f}s left",
                    reason="deadline",
                )
        waiter = Waiter(model, priority, deadline, now, self.new_event(), min_window, size)
        waiter.predicted_wait = predicted
        self.queue.push(waiter, now + priority * self.aging)
        self.queued += 1
        if self.queued > self.peak_queued:
            self.peak_queued = self.queued
        if exclude is None:
            # A slot with room while requests wait: the heads need a larger
            # window; the most urgent request that fits it goes now.
            for s in slots:
                if s.has_room():
                    self._hand_over(s, now)
        return waiter

    def unknown_model(self, model: str) -> EndpointUnavailable:
        """The refusal of a model no endpoint serves, naming those that are served."""
        return unknown_model(self.by_model, model)

    def predicted_wait(self, model: str, priority: int) -> float:
        """Seconds until a new request for ``model`` at ``priority`` would be done
        (0 without queue control or observations)."""
        if self.control is None:
            return 0.0
        ahead = self.queue.ahead_of(model, priority)
        return predicted_done(self.control, self.by_model[model], ahead)[0]

    def leave(self, waiter: Waiter, outcome: str) -> None:
        """The caller stopped waiting (deadline or cancellation)."""
        if waiter.lease is not None:
            # Granted in the same instant the caller gave up: give it back
            # (nothing was sent, so nothing lingers).
            waiter.lease._sent = False
            self.finish(waiter.lease, None, outcome="cancelled", result=outcome)
            waiter.lease = None
        elif waiter.queued:
            waiter.queued = False
            self.queue.discard(waiter)
            self.queued -= 1
            self.outcomes[outcome] += 1
            if waiter._request is not None:
                waiter._request.end(outcome, self.clock())

    def finish(
        self,
        lease: Lease,
        error: BaseException | None,
        *,
        outcome: OutcomeClass | None = None,
        result: str | None = None,
        retry_after: float | None = None,
        count: bool = True,
    ) -> None:
        """Release ``lease``: count its outcome, feed back, hand the slot on.

        ``count=False`` ends an attempt whose request goes on (a retry): the
        sample is fed back, no outcome is counted.
        """
        if lease._released:
            return
        lease._released = True
        now = self.clock()
        slot = lease._slot
        slot.in_flight -= 1
        self.in_flight -= 1
        kv = slot.kv
        self.live.discard(lease)
        if error is not None and outcome is None:
            outcome, retry_after = classify_error(error, slot.endpoint.classify)
        elif outcome is None:
            outcome = "success"
        if result is None:
            result = "completed" if error is None else "failed"
            if outcome == "cancelled":
                result = "cancelled"
            elif isinstance(error, DeadlineExceeded):
                # A transport releasing an acquire()d lease at its deadline.
                result = "deadline_exceeded"
            elif isinstance(error, ContextOverflow) and error.before_send:
                # The prompt fit no window: refused by lmgate, nothing sent.
                result = "rejected"
        lease._result = result
        if count:
            self.outcomes[result] += 1
        duration = now - lease.granted_at
        if outcome == "success" or result == "deadline_exceeded":
            slot.durations.observe(duration)
        release = None
        if lease._coordinated and self.on_release is not None:
            release = partial(self.on_release, lease)
        given_up = result == "cancelled" or result == "deadline_exceeded"
        held = given_up and linger(slot, lease, now, release)
        if held:
            self.lingering.add(slot)  # its tokens stay charged until it ends
        if kv is not None:
            kv.ended(
                outcome, 0 if held else lease._charge, lease._prompt_tokens, lease._output_tokens
            )
        if outcome == "success":
            prev = slot.service_time
            slot.service_time = (
                duration if prev is None else prev + _SERVICE_ALPHA * (duration - prev)
            )
        if slot.feedback is not None:
            feed_back(slot, lease, duration, outcome, retry_after)
        if self.throttling is not None:
            self.throttling.record(slot, outcome, now)
        if release is not None and not held:
            release()
        if count and lease._request is not None:
            lease._request.end(result, now, lease=lease, error=error)
        if self.queued and slot.routing == "up":
            self._hand_over(slot, now)
        if self.closed and self.in_flight == 0 and self._drained is not None:
            self._drained.set()

    # -- controller side --------------------------------------------------------------

    def set_limit(self, index: int, limit: int, now: float) -> None:
        self.slots[index].limit = max(1, limit)

    def set_state(
        self, index: int, routing: Routing, state: str, trials: int | None, now: float
    ) -> None:
        slot = self.slots[index]
        slot.routing = routing
        slot.state = state
        slot.trials = trials

    def expire_lingering(self, now: float) -> None:
        """End the lingering calls whose time is up (``_occupancy``), and hand on."""
        for slot in expire(self.lingering, now):
            if self.queued and slot.routing == "up":
                self._hand_over(slot, now)

    def server_busy(
        self, index: int, busy: int | None, tasks: frozenset[int] | None, at: float, now: float
    ) -> None:
        """The server's own view of its busy work, read at ``at``."""
        slot = self.slots[index]
        if seen_busy(self.lingering, slot, busy, tasks, at) and self.queued:
            self._hand_over(slot, now)

    def set_url(self, index: int, url: str) -> None:
        """The endpoint's server moved: new leases carry its new URL."""
        slot = self.slots[index]
        slot.refs = {m: msgspec.structs.replace(ref, url=url) for m, ref in slot.refs.items()}

    def dispatch(self, now: float) -> None:
        """Grant queued requests to endpoints with room; fail the unroutable."""
        if not self.queued:
            return
        while not self.paused:
            best: tuple[tuple[float, int], Waiter, EndpointSlot] | None = None
            for model in list(self.queue.models_waiting()):
                head = self.queue.peek(model)
                if head is None:
                    continue
                first = head[2]
                slot = self._pick(
                    self.by_model[model], now, None, model, first.min_window, first.size
                )
                if slot is not None and (best is None or head[:2] < best[0]):
                    best = (head[:2], first, slot)
            if best is None:
                break
            _, waiter, slot = best
            self.queue.pop(waiter.model)
            self._give(waiter, slot, now)
        if self.queued:  # requests behind a head too long for a free slot
            for s in self.slots:
                if s.has_room():
                    self._hand_over(s, now)
        for model in list(self.queue.models_waiting()):
            if all(s.routing == "down" for s in self.by_model[model]):
                down = f"every endpoint serving {model!r} is down"
                while (w := self.queue.pop(model)) is not None:
                    self._refuse(w, EndpointUnavailable(down), "unavailable")

    def close(self) -> None:
        """Admit nothing more; end every queued request with ``SchedulerClosed``."""
        self.closed = True
        for w in self.queue.drain():
            self._refuse(w, SchedulerClosed("the scheduler closed"), "closed")

    def drained_event(self) -> anyio.Event:
        """Set once the scheduler is closed and nothing is in flight."""
        if self._drained is None:
            self._drained = anyio.Event()
        if self.closed and self.in_flight == 0:
            self._drained.set()
        return self._drained

    # -- internals ----------------------------------------------------------------------

    def _pick(
        self,
        slots: tuple[EndpointSlot, ...],
        now: float,
        exclude: Collection[int] | None = None,
        model: str = "",
        need: int | None = None,
        size: Size | None = None,
    ) -> EndpointSlot | None:
        """The least loaded endpoint (relative to its limit) with room (window, tokens)."""
        best: EndpointSlot | None = None
        best_load = 2.0
        for s in slots:
            if s.routing != "up" or (exclude is not None and s.index in exclude):
                continue
            if need is not None and not window_fits(s, model, need):
                continue
            limit = s.effective_limit
            if s.in_flight + s.held >= limit:
                continue
            if s.throttle is not None and s.throttle(now):
                continue
            if s.kv is not None and not tokens_fit(s, size):
                continue
            load = (s.in_flight + s.held) / limit
            if load < best_load:
                best, best_load = s, load
        return best

    def _grant(
        self,
        slot: EndpointSlot,
        model: str,
        priority: int,
        deadline: float,
        now: float,
        submitted_at: float,
        size: Size | None = None,
    ) -> Lease:
        slot.in_flight += 1
        if slot.in_flight > slot.peak_in_flight:
            slot.peak_in_flight = slot.in_flight
        self.in_flight += 1
        lease = Lease(
            self,
            slot,
            slot.refs[model],
            priority,
            deadline,
            now,
            slot.in_flight,
            now - submitted_at,
        )
        kv = slot.kv
        if kv is not None:
            lease._charge = kv.charge(None, None) if size is None else kv.charge(size[0], size[1])
            kv.take(lease._charge)
        if size is not None and size[0] is not None:
            lease._prompt_tokens = size[0]  # an estimate, until the caller reports
        self.live.add(lease)
        return lease

    def _give(self, waiter: Waiter, slot: EndpointSlot, now: float) -> None:
        waiter.queued = False
        self.queued -= 1
        if self.control is not None:
            self.control.record_wait(waiter.predicted_wait, now - waiter.enqueued_at)
        waiter.lease = self._grant(
            slot,
            waiter.model,
            waiter.priority,
            waiter.deadline,
            now,
            waiter.enqueued_at,
            waiter.size,
        )
        waiter.lease._request = waiter._request
        waiter.event.set()

    def _refuse(self, waiter: Waiter, error: BaseException, outcome: str) -> None:
        waiter.queued = False
        self.queued -= 1
        self.outcomes[outcome] += 1
        waiter.error = error
        if waiter._request is not None:
            waiter._request.end(outcome, self.clock(), error=error)
        waiter.event.set()

    def _hand_over(self, slot: EndpointSlot, now: float) -> None:
        while not self.paused and slot.in_flight + slot.held < slot.effective_limit:
            if slot.throttle is not None and slot.throttle(now):
                # Throttled: a request with nowhere else to go fails fast.
                throttling = self.throttling
                if throttling is None or not throttling.must_refuse(self.slots, slot, now):
                    return
                refused = self.queue.best_fitting(slot.models, lambda w: fits(slot, w))
                if refused is None:
                    return
                self._refuse(refused, throttling.rejected(refused.model), "rejected")
                continue
            if self.control is None:
                waiter = self.queue.best_fitting(slot.models, lambda w: fits(slot, w))
            else:
                peers = [p for p in self.slots if p is slot or set(p.models) & set(slot.models)]
                decision = next_waiter(self.control, self.queue, slot, peers, now)
                for refused, error in decision.refused:
                    self._refuse(refused, error, "rejected")
                waiter = decision.waiter
            if waiter is None:
                return
            self._give(waiter, slot, now)
