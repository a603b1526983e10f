"""Retries and fallbacks inside a request's one deadline.

``Scheduler.run()`` hands a request here when the scheduler has a retry
policy or fallback chains.  Each attempt is one lease -- granted, run in
the caller's task, released -- exactly as without retries; what changes is
what happens when the call fails.  The next attempt goes, in order, to
another endpoint serving the same model, then down the model's fallback
chain, and only when every candidate has failed back to where it failed,
after the backoff (or the server's Retry-After).  A call is retried only
if the caller marked it idempotent or it failed before anything was sent,
and never if the wait would leave less than ``Retry.min_remaining`` of the
deadline.  A context overflow moves to a model of the chain with a larger
known window, whatever the retry policy says about client errors: the
server refused the prompt, so nothing ran.

Counting.  ``submitted`` counts requests, not attempts: a request is
counted when it is first submitted and ends in exactly one outcome, that
of its last attempt.  An attempt that is retried is released with its
sample (the endpoint's actor learns from it) but no outcome; between two
attempts the request waits inside the scheduler and is counted as
``queued``, so ``submitted == sum(outcomes) + queued + in_flight`` holds at
every instant.  For the same reason a retry needs room in the queue: with
the queue full the request ends with its failure.  ``retries`` counts the
attempts after the first and ``fallbacks`` those moved to another model.
A request refused while it waits in the queue (every endpoint of its model
went down) ends there, as without retries.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar, final

import anyio

from lmgate._endpoint import Endpoint
from lmgate._errors import ContextOverflow, DeadlineExceeded, SchedulerClosed
from lmgate.policies._classify import Classification
from lmgate.policies._retry import Retry, choose_larger_window, plan_fallbacks
from lmgate.scheduler._core import SchedulerInternals, largest_windows
from lmgate.scheduler._lease import Lease, Waiter
from lmgate.scheduler._outcomes import classification_of
from lmgate.scheduler._request_path import CALLING, after_error, coordinate, interrupted

__all__ = ["Retrying"]

T = TypeVar("T")


@final
class _Pause:
    """A request waiting for its next attempt; ``ended`` once close() ended it."""

    __slots__ = ("ended", "event")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.ended = False


@final
class Retrying:
    """Runs requests attempt by attempt for one ``Scheduler`` (see the module doc)."""

    __slots__ = (
        "_adm",
        "_chains",
        "_closed",
        "_fallbacks",
        "_paused",
        "_retry",
        "_rng",
        "_sched",
        "_windows",
        "fallbacks",
        "retries",
    )

    def __init__(
        self,
        sched: SchedulerInternals,
        retry: Retry,
        fallbacks: Mapping[str, tuple[str, ...]],
        rng: random.Random,
    ) -> None:
        self._sched = sched
        self._adm = sched._admission
        self._retry = retry
        self._fallbacks = fallbacks
        self._rng = rng
        self._chains: dict[str, tuple[str, ...]] = {}
        self._paused: set[_Pause] = set()
        self._closed = False
        self._windows = largest_windows(sched.endpoints)
        self.retries = 0
        self.fallbacks = 0

    def refresh_windows(self, endpoints: Iterable[Endpoint]) -> None:
        """Endpoints changed (probed at start, or reconfigured): route overflows anew."""
        self._windows = largest_windows(endpoints)

    def close(self) -> None:
        """The scheduler is closing: requests waiting to retry end ``closed`` now."""
        self._closed = True
        for pause in list(self._paused):
            self._end(pause, "closed")
            pause.event.set()

    async def run(
        self,
        call: Callable[[Lease], Awaitable[T]],
        model: str,
        priority: int,
        timeout: float | None,  # noqa: ASYNC109 - becomes the request's one deadline
        idempotent: bool,
        size: tuple[int | None, int | None] | None = None,
    ) -> T:
        sched = self._sched
        adm = self._adm
        deadline = sched._deadline(model, priority, timeout)
        if type(model) is not str:
            model = str.__str__(model)
        chain = self._chain(model)
        target = self._start(chain)
        if target != model:
            self.fallbacks += 1
        failed: set[int] = set()
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1:
                adm.queued -= 1  # the request's wait ends; submit counts it again
            got = adm.submit(
                target,
                priority,
                deadline,
                adm.clock(),
                exclude=failed or None,
                count=attempt == 1,
                size=size,
            )
            lease: Lease | None
            waiter: Waiter | None
            if type(got) is Lease:
                lease, waiter = got, None
            else:
                lease, waiter = None, got
            scope = sched._new_scope(deadline=deadline)
            try:
                with scope:
                    if waiter is not None:
                        await waiter.event.wait()
                        if (error := waiter.take_error()) is not None:
                            raise error
                        lease = waiter.lease
                    assert lease is not None
                    if sched._coordinator is not None:
                        await coordinate(self._adm, sched._coordinator, lease)
                    lease._scope = scope
                    token = CALLING.set(sched)
                    try:
                        result = await call(lease)
                    finally:
                        CALLING.reset(token)
            except BaseException as exc:
                if lease is None or lease._scope is None:
                    if waiter is not None:
                        adm.leave(waiter, "cancelled")
                    raise
                if lease._revoked or scope.cancel_called or not isinstance(exc, Exception):
                    replacement = after_error(self._adm, lease, exc, scope)
                    if replacement is None:
                        raise
                    raise replacement from exc
                c = classification_of(exc, lease._slot.endpoint.classify)
                step = self._next(
                    c, exc, attempt, target, chain, failed, deadline, idempotent, lease
                )
                if step is None:
                    adm.finish(lease, exc, outcome=c.outcome, retry_after=c.retry_after)
                    raise
                adm.finish(lease, exc, outcome=c.outcome, retry_after=c.retry_after, count=False)
                self.retries += 1
                new_target, delay = step
                if new_target != target:
                    self.fallbacks += 1
                    target = new_target
                await self._pause(delay)
                continue
            if scope.cancelled_caught:
                if lease is None or lease._scope is None:
                    assert waiter is not None
                    adm.leave(waiter, "deadline_exceeded")
                    raise DeadlineExceeded(f"no slot for {target!r} before the deadline")
                raise interrupted(self._adm, lease)
            assert lease is not None
            adm.finish(lease, None)
            return result

    # -- deciding ---------------------------------------------------------------

    def _chain(self, model: str) -> tuple[str, ...]:
        chain = self._chains.get(model)
        if chain is None:
            chain = plan_fallbacks(model, self._fallbacks)
            if model in self._adm.by_model:  # bounded: only served models are kept
                self._chains[model] = chain
        return chain

    def _start(self, chain: tuple[str, ...]) -> str:
        """The first model of the chain that some endpoint can take now."""
        for m in chain:
            if any(s.routing != "down" for s in self._adm.by_model.get(m, ())):
                return m
        return chain[0]

    def _elsewhere(self, target: str, chain: tuple[str, ...], failed: set[int]) -> str | None:
        """The model to try next on an endpoint that has not failed this request.

        One with room now comes first, in chain order: a retry that has to
        queue may be granted any endpoint of its model, the failed one too.
        """
        start = chain.index(target) if target in chain else 0
        models = (target, *chain[start + 1 :])
        by_model = self._adm.by_model
        for m in models:
            for s in by_model.get(m, ()):
                if s.index not in failed and s.has_room():
                    return m
        for m in models:
            for s in by_model.get(m, ()):
                if s.index not in failed and s.routing != "down":
                    return m
        return None

    def _next(
        self,
        c: Classification,
        exc: BaseException,
        attempt: int,
        target: str,
        chain: tuple[str, ...],
        failed: set[int],
        deadline: float,
        idempotent: bool,
        lease: Lease,
    ) -> tuple[str, float] | None:
        """Where and after how long to try again, or None to end the request."""
        adm = self._adm
        if self._closed or adm.closed or adm.queued >= adm.queue_size:
            return None
        retry = self._retry
        now = adm.clock()
        if c.context_overflow:
            if attempt >= retry.attempts or now + retry.min_remaining > deadline:
                return None
            bigger = self._larger_window(target, exc, chain)
            if bigger is None:
                return None
            failed.clear()
            return bigger, 0.0
        failed.add(lease._slot.index)
        nxt = self._elsewhere(target, chain, failed)
        decision = retry.next_attempt(
            attempt, c, now, deadline, idempotent, self._rng.random(), same_endpoint=nxt is None
        )
        if not decision.retry:
            return None
        if nxt is None:
            failed.clear()  # everything failed once: try again where it may have recovered
            nxt = target
        return nxt, decision.delay

    def _larger_window(self, target: str, exc: BaseException, chain: tuple[str, ...]) -> str | None:
        needed = _overflow_tokens(exc)
        if needed is None:
            window = self._windows.get(target)
            if window is None:
                return None
            needed = window + 1
        return choose_larger_window(target, needed, self._windows, chain)

    # -- waiting ----------------------------------------------------------------

    async def _pause(self, delay: float) -> None:
        """Wait ``delay`` seconds before the next attempt, counted as queued."""
        adm = self._adm
        adm.queued += 1
        if adm.queued > adm.peak_queued:
            adm.peak_queued = adm.queued
        if delay <= 0.0:
            return
        pause = _Pause()
        self._paused.add(pause)
        try:
            with anyio.move_on_after(delay):
                await pause.event.wait()
        except BaseException:
            if not pause.ended:
                self._end(pause, "cancelled")
            raise
        finally:
            self._paused.discard(pause)
        if pause.ended:
            raise SchedulerClosed("the scheduler closed while the request waited to retry")

    def _end(self, pause: _Pause, outcome: str) -> None:
        pause.ended = True
        self._adm.queued -= 1
        self._adm.outcomes[outcome] += 1

    def __repr__(self) -> str:
        return f"<Retrying retries={self.retries} fallbacks={self.fallbacks}>"


def _overflow_tokens(exc: BaseException) -> int | None:
    """The prompt size a context overflow reported, looking through causes."""
    seen: Any = exc
    for _ in range(6):
        if seen is None:
            return None
        if isinstance(seen, ContextOverflow):
            tokens = seen.tokens
            return tokens if isinstance(tokens, int) and tokens > 0 else None
        seen = seen.__cause__ or seen.__context__
    return None
