"""How a request's wait and call end: every exit path releases exactly once.

``Scheduler.run()``, ``lease()`` and the retry layer share these steps.
A queued request wakes with a lease, an error, or its deadline
(:func:`wait_granted`); a call that raised is released with the outcome
its error means, or with ``deadline_exceeded`` when the request's own
deadline interrupted it, or ``closed`` when the scheduler revoked it
(:func:`after_error`, :func:`interrupted`).  ``Admission.finish`` is the
release itself: synchronous and idempotent, so no path can block in it
or release twice.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from typing import Any, TypeVar

import anyio

from lmgate._errors import DeadlineExceeded, SchedulerClosed
from lmgate.context._messages import Message
from lmgate.scheduler._admission import Admission
from lmgate.scheduler._arguments import coordination_outcome, size_of
from lmgate.scheduler._context_gate import ContextRequest
from lmgate.scheduler._coordinator import Coordinator
from lmgate.scheduler._core import SchedulerInternals
from lmgate.scheduler._lease import Lease, ScopeLike, Waiter

__all__ = [
    "CALLING",
    "after_error",
    "coordinate",
    "in_call",
    "interrupted",
    "run_call",
    "wait_granted",
]

#: The scheduler whose call (or lease block) the current task is inside, if
#: any: closing it from there would tear the call's own cancel scope apart.
CALLING: ContextVar[object] = ContextVar("lmgate_calling", default=None)


def in_call(sched: object) -> bool:
    """Whether the current task is inside one of ``sched``'s calls."""
    return CALLING.get() is sched


T = TypeVar("T")


async def wait_granted(adm: Admission, waiter: Waiter) -> Lease:
    """Sleep until ``waiter`` is granted, refused, or past its deadline."""
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
    if (error := waiter.take_error()) is not None:
        raise error
    adm.leave(waiter, "deadline_exceeded")
    raise DeadlineExceeded(f"no slot for {waiter.model!r} before the deadline")


async def coordinate(adm: Admission, coordinator: Coordinator | None, lease: Lease) -> None:
    """Take the shared (cross-process) slot too, within the same deadline."""
    assert coordinator is not None
    try:
        with anyio.CancelScope(deadline=lease.deadline) as scope:
            await coordinator.acquire(lease)
    except BaseException as exc:
        adm.finish(lease, None, outcome="cancelled", result=coordination_outcome(exc))
        raise
    if scope.cancelled_caught:
        adm.finish(lease, None, outcome="cancelled", result="deadline_exceeded")
        raise DeadlineExceeded("no shared slot before the deadline")
    lease._coordinated = True
    # The call starts now: time spent waiting for the shared slot is
    # queueing, not service, for the samples and the service time.
    lease.granted_at = adm.clock()


def after_error(
    adm: Admission, lease: Lease, exc: BaseException, scope: ScopeLike
) -> BaseException | None:
    """Release after the call raised; return an error to raise instead, if any."""
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


def interrupted(adm: Admission, lease: Lease) -> BaseException:
    """Release a call its deadline (or the scheduler's close) cancelled; the error to raise."""
    if lease._revoked:
        adm.finish(lease, None, outcome="cancelled", result="closed")
        return SchedulerClosed("the scheduler closed while the call ran")
    adm.finish(lease, None, outcome="timeout", result="deadline_exceeded")
    return DeadlineExceeded(f"deadline passed during the call on {lease.endpoint.name}")


async def run_call(
    s: SchedulerInternals,
    call: Callable[[Lease], Awaitable[T]],
    model: str,
    priority: int,
    timeout: float | None,  # noqa: ASYNC109 -- becomes the request's one deadline
    messages: Iterable[Message | Mapping[str, Any]] | None,
    max_tokens: int | None,
    prompt_tokens: int | None = None,
) -> T:
    """``Scheduler.run()`` without retries: one cancel scope is the wait's and the call's.

    That scope is the request's one deadline and the handle close uses to
    cancel; a request granted at once never waits on an event.
    """
    req: ContextRequest | None = None
    if s._coordinator is not None:
        lease = await s.acquire(
            model=model,
            priority=priority,
            timeout=timeout,
            messages=messages,
            max_tokens=max_tokens,
            prompt_tokens=prompt_tokens,
        )
        waiter = None
    else:
        # One cancel scope covers the wait and the call: it is the
        # request's one deadline, and the handle close() cancels.
        deadline = s._deadline(model, priority, timeout)
        if type(model) is not str:
            model = str.__str__(model)
        adm = s._admission
        if messages is not None:
            req = s._context.prepare(adm, model, messages, max_tokens, priority=priority)
        need = None if req is None else req.need
        size = size_of(prompt_tokens, max_tokens, None if req is None else req.prompt_tokens)
        got = adm.submit(model, priority, deadline, adm.clock(), min_window=need, size=size)
        if isinstance(got, Lease):
            lease, waiter = got, None
        else:
            lease, waiter = None, got
    if waiter is not None:
        scope = s._new_scope(deadline=waiter.deadline)
    else:
        assert lease is not None
        scope = s._new_scope(deadline=lease.deadline)
    try:
        with scope:
            if waiter is not None:
                await waiter.event.wait()
                if (error := waiter.take_error()) is not None:
                    raise error
                lease = waiter.lease
            assert lease is not None
            lease._scope = scope
            if req is not None:
                await s._context.fit(lease, req)
            token = CALLING.set(s)
            try:
                result = await call(lease)
            finally:
                CALLING.reset(token)
    except BaseException as exc:
        if waiter is not None and (lease is None or lease._scope is None):
            s._admission.leave(waiter, "cancelled")
            raise
        assert lease is not None
        replacement = after_error(s._admission, lease, exc, scope)
        if replacement is None:
            raise
        raise replacement from exc
    if scope.cancelled_caught:
        if waiter is not None and (lease is None or lease._scope is None):
            s._admission.leave(waiter, "deadline_exceeded")
            raise DeadlineExceeded(f"no slot for {model!r} before the deadline")
        assert lease is not None
        raise interrupted(s._admission, lease)
    assert lease is not None
    s._admission.finish(lease, None)
    return result
