"""Per-request scheduling options for code that does not call the scheduler itself.

An SDK call (``client.chat.completions.create(...)``) reaches lmgate only
as an HTTP request.  ``with lmgate.request_options(priority=-5, timeout=30,
session="agent-7"):`` puts typed options in a context variable for every
request made inside the block, in this task and the tasks it starts;
``SchedulingTransport`` reads them.  Blocks nest: an inner block overrides
the fields it sets.  The same ``RequestOptions`` can ride on one request as
the ``lmgate.options`` httpx extension, which wins over the block; the
``X-Lmgate-Priority`` / ``X-Lmgate-Timeout`` headers are the fallback.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, final

import msgspec

from lmgate._errors import InvalidParameter
from lmgate._validate import check_label, check_priority

__all__ = ["RequestOptions", "current_options", "options_of", "request_options"]


@final
class RequestOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How one request is scheduled; ``None`` leaves a field to the next source.

    ``priority``: lower numbers first.  ``timeout``: seconds from the moment
    the request reaches the transport, covering queueing and the response.
    ``session``: the conversation or agent the request belongs to.
    ``tenant``: who it is for.  ``idempotent``: whether it may be sent again.
    """

    priority: int | None = None
    timeout: float | None = None
    session: str | None = None
    tenant: str | None = None
    idempotent: bool | None = None

    def __post_init__(self) -> None:
        if self.priority is not None:
            msgspec.structs.force_setattr(self, "priority", check_priority(self.priority))
        if self.timeout is not None:
            t = self.timeout
            if isinstance(t, bool) or not isinstance(t, int | float) or not (0 <= t < math.inf):
                raise InvalidParameter(
                    "timeout must be None or a finite number >= 0", field="timeout"
                )
            msgspec.structs.force_setattr(self, "timeout", float(t))
        for name in ("session", "tenant"):
            value = getattr(self, name)
            if value is not None:
                check_label(name, value)
        if self.idempotent is not None and type(self.idempotent) is not bool:
            raise InvalidParameter("idempotent must be a bool", field="idempotent")

    def over(self, base: RequestOptions | None) -> RequestOptions:
        """These options with ``base``'s filling the fields left ``None``."""
        if base is None:
            return self
        fields = {
            f: getattr(self, f) if getattr(self, f) is not None else getattr(base, f)
            for f in self.__struct_fields__
        }
        return RequestOptions(**fields)


_CURRENT: ContextVar[RequestOptions | None] = ContextVar("lmgate_request_options", default=None)


def current_options() -> RequestOptions | None:
    """The options of the innermost ``request_options`` block, if any."""
    return _CURRENT.get()


@contextmanager
def request_options(
    *,
    priority: int | None = None,
    timeout: float | None = None,
    session: str | None = None,
    tenant: str | None = None,
    idempotent: bool | None = None,
) -> Iterator[RequestOptions]:
    """Schedule every request made through lmgate inside the block with these options.

    Bad values raise ``InvalidParameter`` at the ``with``, before anything
    is sent.  Yields the options in force (merged with an outer block's).
    """
    mine = RequestOptions(
        priority=priority, timeout=timeout, session=session, tenant=tenant, idempotent=idempotent
    )
    merged = mine.over(_CURRENT.get())
    token = _CURRENT.set(merged)
    try:
        yield merged
    finally:
        _CURRENT.reset(token)


def options_of(extension: Any) -> RequestOptions | None:
    """The ``lmgate.options`` extension of one request, as ``RequestOptions``."""
    if extension is None or isinstance(extension, RequestOptions):
        return extension
    if isinstance(extension, dict):
        try:
            return msgspec.convert(extension, RequestOptions)
        except msgspec.ValidationError as exc:
            raise InvalidParameter(f"lmgate.options: {exc}", field="lmgate.options") from None
    raise InvalidParameter(
        "the lmgate.options extension must be a RequestOptions or a dict", field="lmgate.options"
    )
