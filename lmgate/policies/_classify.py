"""Turning the exception a call raised into an outcome class.

The breaker, the limit and the retry policy must agree on what a failure
*means*, and the popular routers got this wrong both ways: a caller's
cancellation mapped to a 500 cooled down a healthy deployment, and
connection errors left out of the count kept a dead local server in
rotation.  So classification happens once, here, and everything downstream
only sees a :class:`Classification`.

Optional clients are recognised without importing them: an exception of an
``httpx`` or ``openai`` type can only exist once that package has been
imported, so the classifier looks the package up in :data:`sys.modules` and
lmgate keeps both as optional dependencies.  Nothing here reads a clock: an
HTTP-date ``Retry-After`` is measured against the response's own ``Date``
header when it has one (immune to clock skew), else against ``now_epoch``.
"""

from __future__ import annotations

import errno
import math
import sys
from collections.abc import Callable
from typing import Any, Final, Protocol, final, get_args

import msgspec

from lmgate._errors import (
    ContextOverflow,
    EndpointUnavailable,
    InvalidParameter,
    Overloaded,
    Rejected,
)
from lmgate.policies._classify_http import (
    CONTEXT_HINTS,
    LOADING_HINTS,
    body_text,
    has_hint,
    parse_retry_after,
    response_text,
    retry_after_from,
)
from lmgate.policies._sample import OutcomeClass

__all__ = [
    "Classification",
    "Classifier",
    "UserClassifier",
    "classify",
    "compose",
    "endpoint_fault",
    "parse_retry_after",
]

_OUTCOMES: Final = frozenset(get_args(OutcomeClass))
_MAX_DEPTH = 6
# Errnos that prove the connection was never established.
_BEFORE_SEND_ERRNOS: Final = frozenset(
    getattr(errno, n)
    for n in ("ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "EADDRNOTAVAIL", "EHOSTDOWN")
    if hasattr(errno, n)
)


@final
class Classification(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What one call's ending says about the endpoint.

    ``before_send`` is True only when the request certainly never reached
    the server (connection refused, DNS failure, connect timeout): such a
    call is safe to retry even when it is not idempotent.  ``reason`` is a
    short machine-readable token (``"connect_refused"``, ``"http_503"``,
    ``"deadline"``...) for logs and tests; ``context_overflow`` marks a
    client error that a model with a larger window could serve.
    """

    outcome: OutcomeClass
    retry_after: float | None = None
    before_send: bool = False
    reason: str = ""
    status: int | None = None
    context_overflow: bool = False


class Classifier(Protocol):
    """The shape of :func:`classify` and of what :func:`compose` returns."""

    def __call__(
        self,
        exc: BaseException | None,
        *,
        deadline_expired: bool = False,
        cancelled_exc: type[BaseException] | None = None,
        now_epoch: float | None = None,
    ) -> Classification: ...


#: What ``Endpoint(classify=...)`` may be: it maps an exception to an outcome
#: class (or a full Classification), or returns None to defer to the default.
UserClassifier = Callable[[BaseException], "OutcomeClass | Classification | None"]

_SUCCESS: Final = Classification(outcome="success", reason="ok")
_CANCELLED: Final = Classification(outcome="cancelled", reason="cancelled")
_DEADLINE: Final = Classification(outcome="timeout", reason="deadline")


def endpoint_fault(outcome: OutcomeClass) -> bool:
    """Whether ``outcome`` counts as a failure against the endpoint's health.

    Only ``error`` and ``timeout`` do.  ``overload`` is deliberately not a
    failure: the server is alive and said so; it feeds the limit (which
    shrinks) and the breaker's Retry-After hold instead, and only a sustained
    *rate* of overloads holds traffic.  ``loading`` holds traffic without a
    failure; ``client_error`` and ``cancelled`` say nothing about the server.
    """
    return outcome == "error" or outcome == "timeout"


def classify(
    exc: BaseException | None,
    *,
    deadline_expired: bool = False,
    cancelled_exc: type[BaseException] | None = None,
    now_epoch: float | None = None,
) -> Classification:
    """The default classifier: lmgate's, the standard library's, httpx's, openai's.

    A cancellation is the caller giving up -- unless the request's deadline
    expired while the call was running (``deadline_expired``): a black-holed
    server shows nothing else, so that counts as a timeout against the
    endpoint.  ``cancelled_exc`` is the running backend's cancellation class
    (``anyio.get_cancelled_exc_class()``); asyncio's and trio's are known
    anyway.  Unknown exceptions are classified by their ``__cause__`` when it
    is known, else count as ``error``.
    """
    if exc is None:
        return _SUCCESS
    if _is_cancellation(exc, cancelled_exc):
        return _DEADLINE if deadline_expired else _CANCELLED
    if isinstance(exc, BaseExceptionGroup):
        return _classify_group(exc, deadline_expired, cancelled_exc, now_epoch)
    found = _known(exc, now_epoch, 0)
    if found is not None:
        return found
    return Classification(outcome="error", reason=f"unknown:{type(exc).__name__}")


def compose(user: UserClassifier | None, default: Classifier = classify) -> Classifier:
    """Put an endpoint's own classifier in front of the default one.

    Cancellation and the deadline rule stay the default's: a user mapping
    must not turn a caller giving up into an endpoint fault.  ``before_send``
    and ``retry_after`` are facts about the exception, so they are kept from
    the default when the user only names a class.  A user classifier that
    raises or returns junk is ignored for that exception -- releasing a
    lease must never fail.
    """
    if user is None:
        return default

    def composed(
        exc: BaseException | None,
        *,
        deadline_expired: bool = False,
        cancelled_exc: type[BaseException] | None = None,
        now_epoch: float | None = None,
    ) -> Classification:
        base = default(
            exc,
            deadline_expired=deadline_expired,
            cancelled_exc=cancelled_exc,
            now_epoch=now_epoch,
        )
        if exc is None or base.outcome == "cancelled" or base.reason == "deadline":
            return base
        try:
            mine = user(exc)
        except Exception:
            return base
        if mine is None:
            return base
        if isinstance(mine, Classification):
            return mine
        if not isinstance(mine, str) or mine not in _OUTCOMES:
            return base
        keep_wait = mine in ("overload", "loading")
        return Classification(
            outcome=mine,
            retry_after=base.retry_after if keep_wait else None,
            before_send=base.before_send,
            reason=f"user:{base.reason}",
            status=base.status,
            context_overflow=base.context_overflow and mine == "client_error",
        )

    return composed


def _is_cancellation(exc: BaseException, cancelled_exc: type[BaseException] | None) -> bool:
    if cancelled_exc is not None and isinstance(exc, cancelled_exc):
        return True
    # asyncio.CancelledError, trio.Cancelled, KeyboardInterrupt, SystemExit
    return not isinstance(exc, Exception) and not isinstance(exc, BaseExceptionGroup)


def _classify_group(
    group: BaseExceptionGroup[BaseException],
    deadline_expired: bool,
    cancelled_exc: type[BaseException] | None,
    now_epoch: float | None,
) -> Classification:
    # The first leaf that is not a cancellation decides; all-cancelled is a cancel.
    stack: list[BaseException] = [group]
    seen = 0
    while stack and seen < 64:
        e = stack.pop(0)
        seen += 1
        if isinstance(e, BaseExceptionGroup):
            stack[:0] = list(e.exceptions)
            continue
        if not _is_cancellation(e, cancelled_exc):
            return classify(e, now_epoch=now_epoch)
    return _DEADLINE if deadline_expired else _CANCELLED


def _known(exc: BaseException, now_epoch: float | None, depth: int) -> Classification | None:
    """A classification from the exception's type, or None if unknown."""
    if isinstance(exc, Overloaded):
        return _overloaded(exc)
    if isinstance(exc, ContextOverflow):
        return Classification(
            outcome="client_error", reason="context_overflow", context_overflow=True
        )
    if isinstance(exc, InvalidParameter):
        return Classification(outcome="client_error", reason="invalid_parameter")
    if isinstance(exc, Rejected):
        return Classification(outcome="overload", before_send=True, reason=f"rejected:{exc.reason}")
    if isinstance(exc, EndpointUnavailable):
        return Classification(outcome="error", before_send=True, reason="endpoint_unavailable")
    for name in ("openai", "httpx", "httpx2"):
        module = sys.modules.get(name)
        if module is None:
            continue
        found = (_openai if name == "openai" else _httpx)(module, exc, now_epoch, depth)
        if found is not None:
            return found
    trio = sys.modules.get("trio")
    if isinstance(exc, TimeoutError) or (trio is not None and isinstance(exc, trio.TooSlowError)):
        return Classification(outcome="timeout", reason="timeout")
    if isinstance(exc, OSError):
        return _os_error(exc)
    cause = exc.__cause__
    if cause is not None and depth < _MAX_DEPTH:
        return _known(cause, now_epoch, depth + 1)
    return None


def _overloaded(exc: Overloaded) -> Classification:
    retry_after = exc.retry_after
    if retry_after is not None and (not math.isfinite(retry_after) or retry_after < 0):
        retry_after = None
    if exc.status == 503 and has_hint(str(exc), LOADING_HINTS):
        return Classification(
            outcome="loading", retry_after=retry_after, reason="loading", status=503
        )
    return Classification(
        outcome="overload",
        retry_after=retry_after,
        reason=f"http_{exc.status}" if exc.status else "overloaded",
        status=exc.status,
    )


def _os_error(exc: OSError) -> Classification:
    gaierror = getattr(sys.modules.get("socket"), "gaierror", None)
    if gaierror is not None and isinstance(exc, gaierror):
        return Classification(outcome="error", before_send=True, reason="dns")
    if isinstance(exc, ConnectionRefusedError) or exc.errno in _BEFORE_SEND_ERRNOS:
        return Classification(outcome="error", before_send=True, reason="connect_refused")
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return Classification(outcome="error", reason="connection_reset")
    return Classification(outcome="error", reason=f"os_error:{type(exc).__name__}")


def _httpx(
    module: Any, exc: BaseException, now_epoch: float | None, depth: int
) -> Classification | None:
    """httpx (and its fork httpx2, which the openai SDK uses) share a hierarchy."""
    if isinstance(exc, module.InvalidURL):
        return Classification(outcome="client_error", before_send=True, reason="invalid_url")
    if not isinstance(exc, module.HTTPError):
        return None
    if isinstance(exc, module.HTTPStatusError):
        response = exc.response
        return _from_status(
            response.status_code, response.headers, response_text(response), now_epoch
        )
    if isinstance(exc, module.ConnectTimeout):
        return Classification(outcome="timeout", before_send=True, reason="connect_timeout")
    if isinstance(exc, module.PoolTimeout):
        # Waiting for a pooled connection: nothing reached the server yet.
        return Classification(outcome="timeout", before_send=True, reason="pool_timeout")
    if isinstance(exc, module.TimeoutException):
        return Classification(outcome="timeout", reason="read_timeout")
    if isinstance(exc, module.ConnectError):
        inner = _cause_before_send(exc, depth)
        reason = inner.reason if inner is not None else "connect_error"
        return Classification(outcome="error", before_send=True, reason=reason)
    if isinstance(exc, module.LocalProtocolError | module.UnsupportedProtocol):
        return Classification(outcome="client_error", before_send=True, reason="local_protocol")
    if isinstance(exc, module.TooManyRedirects):
        return Classification(outcome="client_error", reason="too_many_redirects")
    if isinstance(exc, module.RemoteProtocolError):
        return Classification(outcome="error", reason="remote_protocol")
    return Classification(outcome="error", reason=f"transport:{type(exc).__name__}")


def _openai(
    module: Any, exc: BaseException, now_epoch: float | None, depth: int
) -> Classification | None:
    if not isinstance(exc, module.OpenAIError):
        return None
    if isinstance(exc, module.APIStatusError):
        text = body_text(getattr(exc, "body", None), getattr(exc, "code", None), str(exc))
        return _from_status(exc.status_code, exc.response.headers, text, now_epoch)
    if isinstance(exc, module.APITimeoutError):
        inner = _cause_before_send(exc, depth)
        if inner is not None:
            return Classification(outcome="timeout", before_send=True, reason=inner.reason)
        return Classification(outcome="timeout", reason="read_timeout")
    if isinstance(exc, module.APIConnectionError):
        inner = _cause_before_send(exc, depth)
        if inner is not None:
            return Classification(outcome=inner.outcome, before_send=True, reason=inner.reason)
        return Classification(outcome="error", reason="connection_error")
    if isinstance(exc, module.APIResponseValidationError):
        return Classification(outcome="error", reason="invalid_response")
    if isinstance(exc, module.LengthFinishReasonError | module.ContentFilterFinishReasonError):
        return Classification(outcome="client_error", reason=type(exc).__name__)
    return Classification(outcome="error", reason=f"openai:{type(exc).__name__}")


def _cause_before_send(exc: BaseException, depth: int) -> Classification | None:
    """The classification of a wrapped cause that proves nothing was sent."""
    cause = exc.__cause__ or exc.__context__
    while cause is not None and depth < _MAX_DEPTH:
        depth += 1
        inner = _known(cause, None, depth) if not isinstance(cause, BaseExceptionGroup) else None
        if inner is not None and inner.before_send:
            return inner
        cause = cause.__cause__ or cause.__context__
    return None


def _from_status(status: int, headers: Any, text: str, now_epoch: float | None) -> Classification:
    """Map an HTTP status to an outcome.

    503 is overload by default (Ollama's "server busy" is a 503 without
    Retry-After), loading when the body says a model is loading; a server
    that is gone shows up as refused connections or a 502 instead.
    """
    reason = f"http_{status}"
    if status == 429 or status == 503:
        retry_after = retry_after_from(headers, now_epoch)
        if status == 503 and has_hint(text, LOADING_HINTS):
            return Classification(
                outcome="loading", retry_after=retry_after, reason="loading", status=status
            )
        return Classification(
            outcome="overload", retry_after=retry_after, reason=reason, status=status
        )
    if status == 408 or status == 504:
        return Classification(outcome="timeout", reason=reason, status=status)
    if status >= 500:
        return Classification(outcome="error", reason=reason, status=status)
    if 400 <= status < 500:
        if has_hint(text, CONTEXT_HINTS):
            return Classification(
                outcome="client_error",
                reason="context_overflow",
                status=status,
                context_overflow=True,
            )
        return Classification(outcome="client_error", reason=reason, status=status)
    return Classification(outcome="error", reason=reason, status=status)
