"""The slow path of admission: hooks, shedding and pausing, only while needed.

``Admission.submit`` hands a submission to the :class:`Watch` only while one
is installed -- while a request hook is registered, or resource pressure
sheds or pauses -- so a scheduler without either pays a single ``is None``
check per request.  The watch starts the request's hooks, refuses shed
priorities, queues everything while admission is paused, then calls the
plain path back.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, final

from lmgate._errors import Rejected
from lmgate.scheduler._admission import Admission
from lmgate.scheduler._hooks import HookedRequest, RequestHook, check_hooks
from lmgate.scheduler._lease import EventLike, Lease, Waiter

__all__ = ["ResumeEvent", "Watch"]


@final
class ResumeEvent:
    """A queued request's wake-up that reports its grant from its own task.

    The grant itself happens in whichever task freed the slot; a tracer
    must make the call span current in the caller's context, so the hooks
    hear of it when the caller's ``wait()`` returns.
    """

    __slots__ = ("_event", "_waiter")

    def __init__(self, event: EventLike, waiter: Waiter) -> None:
        self._event = event
        self._waiter = waiter

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        waiter = self._waiter
        if waiter.lease is not None and waiter._request is not None:
            waiter._request.granted(waiter.lease)


@final
class Watch:
    """The slow path of ``Admission.submit``: hooks, shedding and pausing.

    Installed on the admission (``admission.watch``) only while it has
    something to do; :meth:`refresh` decides that after every change.
    """

    __slots__ = ("_adm", "hooks", "shed")

    def __init__(self, admission: Admission, hooks: Sequence[RequestHook] = ()) -> None:
        self._adm = admission
        self.hooks: tuple[RequestHook, ...] = check_hooks(hooks)
        #: Submissions refused because their priority was shed.
        self.shed = 0
        self.refresh()

    def add(self, hook: RequestHook) -> None:
        """Call ``hook`` for requests submitted from now on."""
        self.hooks = check_hooks((*self.hooks, hook))
        self.refresh()

    def refresh(self) -> None:
        adm = self._adm
        active = bool(self.hooks) or adm.shed_above is not None or adm.paused
        adm.watch = self if active else None

    def submit(
        self,
        model: str,
        priority: int,
        deadline: float,
        now: float,
        exclude: Collection[int] | None,
        count: bool,
        request: HookedRequest | None,
        **options: Any,
    ) -> Lease | Waiter:
        """Hooks start, shedding refuses, pausing queues; then the plain path.

        ``options`` are the rest of ``Admission.submit``'s keywords, passed on.
        """
        adm = self._adm
        if model not in adm.by_model and not adm.closed:
            raise adm.unknown_model(model)  # bad input: no request, so no hooks
        if request is None and count and self.hooks:
            request = HookedRequest(self.hooks, model, priority, now)
        cutoff = adm.shed_above
        if cutoff is not None and priority > cutoff:
            if count:
                adm.submitted += 1
            adm.outcomes["rejected"] += 1
            self.shed += 1
            error = Rejected(
                f"shed under resource pressure (priority {priority} > {cutoff})", reason="shed"
            )
            if request is not None:
                request.end("rejected", now, error=error)
            raise error
        if adm.paused:
            # Admission is paused: every endpoint is passed over for an
            # immediate grant, so the request queues (within the bound).
            exclude = frozenset(s.index for s in adm.slots)
        before = tuple(adm.outcomes.values()) if request is not None else ()
        try:
            got = adm.submit(
                model,
                priority,
                deadline,
                now,
                exclude=exclude,
                count=count,
                watched=True,
                **options,
            )
        except BaseException as exc:
            if request is not None:
                request.end(_counted(adm.outcomes, before), now, error=exc)
            raise
        if request is not None:
            got._request = request
            if type(got) is Lease:
                request.granted(got)
            else:
                got.event = ResumeEvent(got.event, got)
                if got.lease is not None:  # queued, and handed a slot within submit
                    got.lease._request = request
        return got

    def refused(
        self, model: str, priority: int, outcome: str, error: BaseException, now: float
    ) -> None:
        """A request counted and refused before it reached ``submit`` (a prompt
        no window can take): the hooks see it start and end, as if submitted.
        """
        if self.hooks:
            HookedRequest(self.hooks, model, priority, now).end(outcome, now, error=error)

    def __repr__(self) -> str:
        return f"<Watch hooks={len(self.hooks)} shed={self.shed}>"


def _counted(outcomes: dict[str, int], before: tuple[int, ...]) -> str:
    """The outcome a refusal just counted (the one counter that moved)."""
    for (name, n), m in zip(outcomes.items(), before, strict=False):
        if n != m:
            return name
    return "failed"
