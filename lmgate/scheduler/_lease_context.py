"""``async with sched.lease(...) as lease:``: a slot held for a block.

The block runs under the request's deadline (a cancel scope entered at
grant); leaving it by any path -- return, raise, deadline, cancellation --
releases the slot exactly once, with the outcome that path means.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextvars import Token
from types import TracebackType
from typing import Any, Protocol, final

from lmgate._errors import InvalidParameter
from lmgate.context._messages import Message
from lmgate.scheduler._admission import Admission
from lmgate.scheduler._lease import Lease, ScopeLike
from lmgate.scheduler._request_path import CALLING, after_error, interrupted

__all__ = ["LeaseContext"]


class _Holder(Protocol):
    """What a lease context uses of its scheduler."""

    _admission: Admission

    @property
    def _new_scope(self) -> Callable[..., ScopeLike]: ...

    async def acquire(
        self,
        *,
        model: str,
        priority: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 -- the API's relative deadline
        messages: Iterable[Message | Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
        prompt_tokens: int | None = None,
    ) -> Lease: ...


@final
class LeaseContext:
    """What ``Scheduler.lease()`` returns: the async context holding a lease."""

    __slots__ = (
        "_lease",
        "_max_tokens",
        "_messages",
        "_model",
        "_priority",
        "_prompt_tokens",
        "_sched",
        "_timeout",
        "_token",
    )

    def __init__(
        self,
        sched: _Holder,
        model: str,
        priority: int,
        timeout: float | None,
        messages: Iterable[Message | Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
        prompt_tokens: int | None = None,
    ):
        self._sched = sched
        self._model = model
        self._priority = priority
        self._timeout = timeout
        self._messages = messages
        self._max_tokens = max_tokens
        self._prompt_tokens = prompt_tokens
        self._lease: Lease | None = None
        self._token: Token[object] | None = None

    async def __aenter__(self) -> Lease:
        if self._lease is not None:
            raise InvalidParameter("this lease context is already in use", field="lease")
        lease = await self._sched.acquire(
            model=self._model,
            priority=self._priority,
            timeout=self._timeout,
            messages=self._messages,
            max_tokens=self._max_tokens,
            prompt_tokens=self._prompt_tokens,
        )
        scope = self._sched._new_scope(deadline=lease.deadline)
        lease._scope = scope
        scope.__enter__()
        self._lease = lease
        self._token = CALLING.set(self._sched)
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
        if self._token is not None:
            CALLING.reset(self._token)
            self._token = None
        swallowed = scope.__exit__(exc_type, exc, tb)
        sched = self._sched
        if exc is None or swallowed:
            if scope.cancelled_caught:
                raise interrupted(sched._admission, lease)
            sched._admission.finish(lease, None)
            return bool(swallowed)
        replacement = after_error(sched._admission, lease, exc, scope)
        if replacement is not None:
            raise replacement from exc
        return False

    def __repr__(self) -> str:
        return f"<lease context model={self._model!r} priority={self._priority}>"
