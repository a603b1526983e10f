"""Request hooks: metrics and traces see every request exactly once.

Admission is the one place where every request is counted, so that is
where hooks are called: ``on_request_start`` when a request is submitted,
``on_request_granted`` when it first gets a slot, ``on_request_end`` when
its outcome is counted -- refusals included.  A retry is the same request:
its attempts share one set of calls.

Nothing here touches the plain path.  ``Admission.submit`` hands a
submission to the :class:`Watch` only while one is installed -- while a hook
is registered or resource pressure sheds or pauses -- so a scheduler
without either pays a single ``is None`` check per request.

Where each call runs matters to a tracer, whose "current span" lives in the
caller's context: ``on_request_start`` and ``on_request_granted`` always run
in the requesting task (a queued request is told of its grant when its task
wakes up with the lease), ``on_request_end`` wherever the outcome is decided,
usually the same task but not always (a release from another task, a
refusal by the controller, shutdown).  A hook that raises is logged, rate
limited, and otherwise ignored: an observer never breaks a release.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, final, runtime_checkable

from lmgate._endpoint import EndpointRef
from lmgate._errors import InvalidParameter
from lmgate.observability._logging import RateLimitedLogger

__all__ = ["HOOK_METHODS", "GrantedCall", "HookedRequest", "RequestHook"]

_log = RateLimitedLogger("lmgate.hooks")

HOOK_METHODS = ("on_request_start", "on_request_granted", "on_request_end")
#: Bounds the hooks one scheduler calls (each costs every request a call).
MAX_HOOKS = 32


@runtime_checkable
class RequestHook(Protocol):
    """What a scheduler calls for each request; see the module doc for where.

    ``on_request_start`` returns a handle (anything, ``None`` included) that
    the two later calls receive.  ``on_request_end`` gets the outcome as
    counted in ``stats().outcomes``; for a request that held a lease,
    ``endpoint`` names the endpoint of its last attempt and ``duration`` is
    that attempt's call time, otherwise both are ``None``.  ``error`` is the
    call's exception or the refusal raised to the caller.
    """

    def on_request_start(self, *, model: str, priority: int) -> Any: ...

    def on_request_granted(
        self, handle: Any, *, endpoint: EndpointRef, queue_wait: float
    ) -> None: ...

    def on_request_end(
        self,
        handle: Any,
        *,
        endpoint: str | None,
        model: str,
        outcome: str,
        queue_wait: float,
        duration: float | None,
        ttft: float | None = None,
        error: BaseException | None = None,
    ) -> None: ...


def check_hooks(hooks: object) -> tuple[RequestHook, ...]:
    """Validate a sequence of hooks (bad input changes nothing)."""
    if isinstance(hooks, str | bytes) or not isinstance(hooks, Sequence | set | frozenset):
        raise InvalidParameter("hooks must be a list of request hooks", field="hooks")
    out = tuple(hooks)
    if len(out) > MAX_HOOKS:
        raise InvalidParameter(f"at most {MAX_HOOKS} hooks", field="hooks")
    for hook in out:
        missing = [m for m in HOOK_METHODS if not callable(getattr(hook, m, None))]
        if missing:
            raise InvalidParameter(
                f"a request hook needs {', '.join(missing)}; {type(hook).__name__} lacks it",
                field="hooks",
            )
    return out


def _failed(hook: object, method: str, exc: Exception) -> None:
    # The type only: a hook's message may quote what it was handed.
    name = type(hook).__name__
    _log.warning(
        f"hook_failed:{name}.{method}",
        "request hook %s.%s raised %s; ignored",
        name,
        method,
        type(exc).__name__,
        hook=name,
        method=method,
    )


class GrantedCall(Protocol):
    """What the hooks are told of a granted request (a ``Lease`` is one)."""

    @property
    def endpoint(self) -> EndpointRef: ...
    @property
    def queued_for(self) -> float: ...
    @property
    def granted_at(self) -> float: ...
    @property
    def _ttft(self) -> float | None: ...


@final
class HookedRequest:
    """One request's hook handles, carried from submit to its outcome.

    It lives on the request's ``Waiter`` and ``Lease`` (and across a retry's
    attempts) and makes each hook call happen at most once.
    """

    __slots__ = ("_ended", "_granted", "handles", "hooks", "model", "priority", "submitted_at")

    def __init__(
        self, hooks: tuple[RequestHook, ...], model: str, priority: int, now: float
    ) -> None:
        self.hooks = hooks
        self.model = model
        self.priority = priority
        self.submitted_at = now
        self._granted = False
        self._ended = False
        handles: list[Any] = []
        for hook in hooks:
            try:
                handles.append(hook.on_request_start(model=model, priority=priority))
            except Exception as exc:
                _failed(hook, "on_request_start", exc)
                handles.append(None)
        self.handles = handles

    @property
    def ended(self) -> bool:
        return self._ended

    def granted(self, lease: GrantedCall) -> None:
        """The request got its first slot; call in the requesting task."""
        if self._granted or self._ended:
            return
        self._granted = True
        for hook, handle in zip(self.hooks, self.handles, strict=False):
            try:
                hook.on_request_granted(
                    handle, endpoint=lease.endpoint, queue_wait=lease.queued_for
                )
            except Exception as exc:
                _failed(hook, "on_request_granted", exc)

    def end(
        self,
        outcome: str,
        now: float,
        *,
        lease: GrantedCall | None = None,
        error: BaseException | None = None,
    ) -> None:
        """The request's outcome was counted."""
        if self._ended:
            return
        self._ended = True
        if lease is not None:
            endpoint: str | None = lease.endpoint.name
            model = lease.endpoint.model
            queue_wait = lease.queued_for
            duration: float | None = max(0.0, now - lease.granted_at)
            ttft = lease._ttft
        else:
            endpoint, model, duration, ttft = None, self.model, None, None
            queue_wait = max(0.0, now - self.submitted_at)
        for hook, handle in zip(self.hooks, self.handles, strict=False):
            try:
                hook.on_request_end(
                    handle,
                    endpoint=endpoint,
                    model=model,
                    outcome=outcome,
                    queue_wait=queue_wait,
                    duration=duration,
                    ttft=ttft,
                    error=error,
                )
            except Exception as exc:
                _failed(hook, "on_request_end", exc)

    def __repr__(self) -> str:
        state = "ended" if self._ended else "granted" if self._granted else "waiting"
        return f"<HookedRequest {self.model} hooks={len(self.hooks)} {state}>"
