"""The default classifier against real exception instances, and its helpers."""

from __future__ import annotations

import asyncio
import errno
import math
import socket
from collections.abc import Callable
from typing import Any

import httpx
import httpx2
import openai
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgate._errors import (
    ContextOverflow,
    DeadlineExceeded,
    EndpointUnavailable,
    InvalidParameter,
    Overloaded,
    Rejected,
)
from lmgate.policies._classify import (
    Classification,
    classify,
    compose,
    endpoint_fault,
    parse_retry_after,
)
from lmgate.policies._sample import OUTCOME_CLASSES

URL = "http://127.0.0.1:8080/v1/chat/completions"
DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
DATE_EPOCH = 1445412480.0


def _req() -> httpx.Request:
    return httpx.Request("POST", URL)


def _req2() -> httpx2.Request:
    return httpx2.Request("POST", URL)


def _status(code: int, **kw: Any) -> httpx.HTTPStatusError:
    response = httpx.Response(code, request=_req(), **kw)
    return httpx.HTTPStatusError(f"HTTP {code}", request=response.request, response=response)


def _openai_status(
    cls: type[openai.APIStatusError], code: int, body: object = None, **kw: Any
) -> Any:
    response = httpx2.Response(code, request=_req2(), **kw)
    return cls(f"Error code: {code}", response=response, body=body)


def _chained(outer: Callable[[], BaseException], inner: BaseException) -> BaseException:
    """An exception raised ``from`` another, as the SDKs wrap transport errors."""
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer() from e
    except BaseException as caught:
        return caught


def _openai_conn(inner: BaseException) -> BaseException:
    return _chained(lambda: openai.APIConnectionError(request=_req2()), inner)


def _openai_timeout(inner: BaseException) -> BaseException:
    return _chained(lambda: openai.APITimeoutError(request=_req2()), inner)


def _httpx_refused() -> BaseException:
    return _chained(
        lambda: httpx.ConnectError("All connection attempts failed"),
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
    )


class _Wrapped(Exception):
    """A user library's own error wrapping a transport error."""


# (exception factory, outcome, before_send, retry_after, reason or None)
CASES: list[tuple[str, Callable[[], BaseException | None], str, bool, float | None]] = [
    ("none", lambda: None, "success", False, None),
    ("overloaded", lambda: Overloaded(), "overload", False, None),
    ("overloaded 429 ra", lambda: Overloaded(retry_after=3.0, status=429), "overload", False, 3.0),
    (
        "overloaded 503 loading",
        lambda: Overloaded("Loading model", status=503),
        "loading",
        False,
        None,
    ),
    (
        "overloaded 429 says loading",
        lambda: Overloaded("loading", status=429),
        "overload",
        False,
        None,
    ),
    ("overloaded bad ra", lambda: Overloaded(retry_after=math.nan), "overload", False, None),
    (
        "context overflow",
        lambda: ContextOverflow("too long", tokens=9000, window=8192),
        "client_error",
        False,
        None,
    ),
    ("invalid parameter", lambda: InvalidParameter("bad", field="x"), "client_error", False, None),
    ("rejected", lambda: Rejected("full", reason="queue_full"), "overload", True, None),
    ("unavailable", lambda: EndpointUnavailable("none"), "error", True, None),
    ("deadline exceeded", lambda: DeadlineExceeded("late"), "timeout", False, None),
    ("refused", lambda: ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "error", True, None),
    ("reset", lambda: ConnectionResetError(errno.ECONNRESET, "reset"), "error", False, None),
    ("broken pipe", lambda: BrokenPipeError(errno.EPIPE, "pipe"), "error", False, None),
    ("dns", lambda: socket.gaierror(socket.EAI_NONAME, "no such host"), "error", True, None),
    ("unreachable", lambda: OSError(errno.EHOSTUNREACH, "no route"), "error", True, None),
    ("other oserror", lambda: OSError(errno.EIO, "io"), "error", False, None),
    ("timeout", lambda: TimeoutError(), "timeout", False, None),
    ("trio too slow", lambda: trio.TooSlowError(), "timeout", False, None),
    ("httpx connect", lambda: httpx.ConnectError("refused", request=_req()), "error", True, None),
    ("httpx refused chain", _httpx_refused, "error", True, None),
    (
        "httpx connect timeout",
        lambda: httpx.ConnectTimeout("t", request=_req()),
        "timeout",
        True,
        None,
    ),
    ("httpx pool timeout", lambda: httpx.PoolTimeout("t", request=_req()), "timeout", True, None),
    ("httpx read timeout", lambda: httpx.ReadTimeout("t", request=_req()), "timeout", False, None),
    (
        "httpx write timeout",
        lambda: httpx.WriteTimeout("t", request=_req()),
        "timeout",
        False,
        None,
    ),
    (
        "httpx remote protocol",
        lambda: httpx.RemoteProtocolError("eof", request=_req()),
        "error",
        False,
        None,
    ),
    ("httpx read error", lambda: httpx.ReadError("x", request=_req()), "error", False, None),
    (
        "httpx local protocol",
        lambda: httpx.LocalProtocolError("x", request=_req()),
        "client_error",
        True,
        None,
    ),
    ("httpx invalid url", lambda: httpx.InvalidURL("x"), "client_error", True, None),
    ("httpx2 connect", lambda: httpx2.ConnectError("refused"), "error", True, None),
    ("http 429 ra", lambda: _status(429, headers={"Retry-After": "7"}), "overload", False, 7.0),
    (
        "http 429 ra ms",
        lambda: _status(429, headers={"retry-after-ms": "1500"}),
        "overload",
        False,
        1.5,
    ),
    (
        "http 429 date",
        lambda: _status(
            429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT", "Date": DATE}
        ),
        "overload",
        False,
        30.0,
    ),
    (
        "http 429 garbage ra",
        lambda: _status(429, headers={"Retry-After": "soon"}),
        "overload",
        False,
        None,
    ),
    (
        "http 503 loading",
        lambda: _status(
            503,
            json={"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
        ),
        "loading",
        False,
        None,
    ),
    (
        "http 503 loading ra",
        lambda: _status(503, text="model is loading", headers={"Retry-After": "2"}),
        "loading",
        False,
        2.0,
    ),
    (
        "http 503 busy",
        lambda: _status(503, text="server busy, please try again."),
        "overload",
        False,
        None,
    ),
    (
        "http 503 unread stream",
        lambda: _status(503, stream=httpx.ByteStream(b"Loading model")),
        "overload",
        False,
        None,
    ),
    ("http 500", lambda: _status(500), "error", False, None),
    ("http 502", lambda: _status(502), "error", False, None),
    ("http 504", lambda: _status(504), "timeout", False, None),
    ("http 408", lambda: _status(408), "timeout", False, None),
    ("http 400", lambda: _status(400, json={"error": "bad"}), "client_error", False, None),
    ("http 401", lambda: _status(401), "client_error", False, None),
    ("http 404", lambda: _status(404), "client_error", False, None),
    (
        "http 400 llama ctx",
        lambda: _status(
            400,
            json={
                "error": {
                    "code": 400,
                    "message": "the request exceeds the available context size, try increasing it",
                    "type": "exceed_context_size_error",
                }
            },
        ),
        "client_error",
        False,
        None,
    ),
    (
        "http 422 tgi ctx",
        lambda: _status(
            422,
            json={
                "error": "Input validation error: `inputs` tokens + `max_new_tokens` must be"
                " <= 4096. Given: 4000 `inputs` tokens and 200 `max_new_tokens`"
            },
        ),
        "client_error",
        False,
        None,
    ),
    ("http 302", lambda: _status(302), "error", False, None),
    (
        "openai rate limit",
        lambda: _openai_status(openai.RateLimitError, 429, headers={"retry-after": "4"}),
        "overload",
        False,
        4.0,
    ),
    ("openai 500", lambda: _openai_status(openai.InternalServerError, 500), "error", False, None),
    (
        "openai 503",
        lambda: _openai_status(openai.InternalServerError, 503),
        "overload",
        False,
        None,
    ),
    (
        "openai 503 loading",
        lambda: _openai_status(openai.InternalServerError, 503, body={"message": "Loading model"}),
        "loading",
        False,
        None,
    ),
    (
        "openai bad request ctx",
        lambda: _openai_status(
            openai.BadRequestError,
            400,
            body={
                "code": "context_length_exceeded",
                "message": "This model's maximum context length is 4096 tokens.",
            },
        ),
        "client_error",
        False,
        None,
    ),
    (
        "openai bad request",
        lambda: _openai_status(openai.BadRequestError, 400, body={"message": "bad role"}),
        "client_error",
        False,
        None,
    ),
    (
        "openai auth",
        lambda: _openai_status(openai.AuthenticationError, 401),
        "client_error",
        False,
        None,
    ),
    (
        "openai status 409",
        lambda: _openai_status(openai.APIStatusError, 409),
        "client_error",
        False,
        None,
    ),
    (
        "openai conn refused",
        lambda: _openai_conn(httpx2.ConnectError("All connection attempts failed")),
        "error",
        True,
        None,
    ),
    ("openai conn reset", lambda: _openai_conn(httpx2.ReadError("reset")), "error", False, None),
    ("openai conn bare", lambda: openai.APIConnectionError(request=_req2()), "error", False, None),
    (
        "openai read timeout",
        lambda: _openai_timeout(httpx2.ReadTimeout("t")),
        "timeout",
        False,
        None,
    ),
    (
        "openai connect timeout",
        lambda: _openai_timeout(httpx2.ConnectTimeout("t")),
        "timeout",
        True,
        None,
    ),
    ("unknown", lambda: ValueError("x"), "error", False, None),
    (
        "unknown wrapping refused",
        lambda: _chained(lambda: _Wrapped("x"), ConnectionRefusedError()),
        "error",
        True,
        None,
    ),
    ("asyncio cancel", lambda: asyncio.CancelledError(), "cancelled", False, None),
    ("keyboard interrupt", lambda: KeyboardInterrupt(), "cancelled", False, None),
    (
        "group of cancels",
        lambda: BaseExceptionGroup("g", [asyncio.CancelledError()]),
        "cancelled",
        False,
        None,
    ),
    (
        "group with refused",
        lambda: BaseExceptionGroup(
            "g", [asyncio.CancelledError(), ExceptionGroup("h", [ConnectionRefusedError()])]
        ),
        "error",
        True,
        None,
    ),
]


@pytest.mark.parametrize(
    ("name", "make", "outcome", "before_send", "retry_after"), CASES, ids=[c[0] for c in CASES]
)
def test_table(
    name: str,
    make: Callable[[], BaseException | None],
    outcome: str,
    before_send: bool,
    retry_after: float | None,
) -> None:
    """Each known exception maps to its outcome class, before_send and Retry-After."""
    c = classify(make(), now_epoch=DATE_EPOCH)
    assert (c.outcome, c.before_send, c.retry_after) == (outcome, before_send, retry_after)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ContextOverflow("x"),
        CASES[[c[0] for c in CASES].index("http 400 llama ctx")][1],
        CASES[[c[0] for c in CASES].index("openai bad request ctx")][1],
        CASES[[c[0] for c in CASES].index("http 422 tgi ctx")][1],
    ],
)
def test_context_overflow_flag(make: Callable[[], BaseException]) -> None:
    """A context overflow is a client error marked so a larger window can be tried."""
    c = classify(make())
    assert c.outcome == "client_error"
    assert c.context_overflow


def test_plain_bad_request_is_not_context_overflow() -> None:
    """An ordinary 400 does not claim to be a context overflow."""
    assert not classify(_status(400, json={"error": "bad role"})).context_overflow


def test_status_is_carried() -> None:
    """The HTTP status is kept for logs and stats."""
    assert classify(_status(502)).status == 502
    assert classify(_openai_status(openai.RateLimitError, 429)).status == 429


def test_deadline_turns_cancel_into_timeout() -> None:
    """A call cancelled because its deadline expired counts as a timeout."""
    c = classify(asyncio.CancelledError(), deadline_expired=True)
    assert (c.outcome, c.reason) == ("timeout", "deadline")
    group = BaseExceptionGroup("g", [asyncio.CancelledError()])
    assert classify(group, deadline_expired=True).outcome == "timeout"


def test_deadline_does_not_override_other_errors_or_success() -> None:
    """The deadline rule applies to cancellations only."""
    assert classify(None, deadline_expired=True).outcome == "success"
    assert classify(ConnectionRefusedError(), deadline_expired=True).reason == "connect_refused"


def test_backend_cancel_class() -> None:
    """A backend's cancellation class passed in is recognised even if it is an Exception."""

    class Cancelled(Exception):
        pass

    assert classify(Cancelled()).outcome == "error"
    assert classify(Cancelled(), cancelled_exc=Cancelled).outcome == "cancelled"
    assert (
        classify(Cancelled(), cancelled_exc=Cancelled, deadline_expired=True).outcome == "timeout"
    )


def test_real_trio_cancellation() -> None:
    """trio's own Cancelled, caught from a cancelled scope, is a cancellation."""
    caught: list[BaseException] = []

    async def main() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await trio.sleep(1)
            except trio.Cancelled as e:
                caught.append(e)
                raise

    trio.run(main)
    assert classify(caught[0]).outcome == "cancelled"


@pytest.mark.parametrize(
    ("outcome", "fault"),
    [
        ("success", False),
        ("overload", False),
        ("loading", False),
        ("timeout", True),
        ("error", True),
        ("client_error", False),
        ("cancelled", False),
    ],
)
def test_endpoint_fault(outcome: Any, fault: bool) -> None:
    """Only errors and timeouts count against an endpoint."""
    assert endpoint_fault(outcome) is fault


def test_every_outcome_class_has_a_fault_verdict() -> None:
    """The fault table covers every outcome class."""
    assert {o for o in OUTCOME_CLASSES if endpoint_fault(o)} == {"error", "timeout"}


@pytest.mark.parametrize(
    ("value", "now", "expected"),
    [
        ("7", None, 7.0),
        (" 2.5 ", None, 2.5),
        ("0", None, 0.0),
        (b"3", None, 3.0),
        ("-1", None, None),
        ("nan", None, None),
        ("inf", None, None),
        ("1e400", None, None),
        ("", None, None),
        ("soon", DATE_EPOCH, None),
        ("1\x00", None, None),
        ("9" * 100, None, None),
        (b"\xff", None, None),
        (12, None, None),
        (None, None, None),
        (DATE, None, None),
        (DATE, DATE_EPOCH - 10, 10.0),
        (DATE, DATE_EPOCH + 10, 0.0),
        ("Wed, 21 Oct 2015 07:28:00", DATE_EPOCH, None),
        ("Wed, 99 Oct 2015 07:28:00 GMT", DATE_EPOCH, None),
        (DATE, math.nan, None),
    ],
)
def test_parse_retry_after(value: object, now: float | None, expected: float | None) -> None:
    """Seconds and HTTP-dates parse; garbage gives None."""
    assert parse_retry_after(value, now) == expected


@given(st.one_of(st.text(max_size=80), st.binary(max_size=80)), st.one_of(st.none(), st.floats()))
@settings(max_examples=300)
def test_parse_retry_after_never_raises(value: str | bytes, now: float | None) -> None:
    """Any header value gives None or a finite non-negative delay."""
    r = parse_retry_after(value, now)
    assert r is None or (math.isfinite(r) and r >= 0)


@given(
    status=st.integers(100, 599),
    body=st.text(max_size=200),
    retry_after=st.one_of(
        st.none(),
        st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b),
        st.sampled_from(
            [b"5", b"0.5", b"-3", b"nan", DATE.encode(), b"Fri, 31 Dec 9999 23:59:59 GMT"]
        ),
    ),
    date=st.one_of(st.none(), st.sampled_from([DATE.encode(), b"garbage"])),
)
@settings(max_examples=200)
def test_any_status_response_classifies(
    status: int, body: str, retry_after: bytes | None, date: bytes | None
) -> None:
    """Any status/body/header gives a valid class; a response proves the request was sent."""
    headers = {} if retry_after is None else {b"retry-after": retry_after}
    if date is not None:
        headers[b"date"] = date
    c = classify(_status(status, text=body, headers=headers))
    assert c.outcome in OUTCOME_CLASSES
    assert c.outcome not in ("success", "cancelled")
    assert not c.before_send
    assert c.retry_after is None or (math.isfinite(c.retry_after) and c.retry_after >= 0)
    if c.retry_after is not None:
        assert c.outcome in ("overload", "loading")


def test_compose_user_first() -> None:
    """A user mapping decides for the exceptions it knows, the default for the rest."""

    def mine(exc: BaseException) -> Any:
        return "client_error" if isinstance(exc, KeyError) else None

    f = compose(mine)
    assert f(KeyError("x")).outcome == "client_error"
    assert f(ValueError("x")).outcome == "error"
    assert f(None).outcome == "success"


def test_compose_keeps_facts_and_cancellation() -> None:
    """before_send and Retry-After survive a user mapping; cancellations stay the default's."""

    def everything_overload(exc: BaseException) -> Any:
        return "overload"

    f = compose(everything_overload)
    c = f(ConnectionRefusedError())
    assert (c.outcome, c.before_send) == ("overload", True)
    assert f(_status(429, headers={"Retry-After": "5"})).retry_after == 5.0
    assert f(asyncio.CancelledError()).outcome == "cancelled"
    assert f(asyncio.CancelledError(), deadline_expired=True).outcome == "timeout"


def test_compose_tolerates_broken_user_classifiers() -> None:
    """A classifier that raises or returns junk is ignored for that exception."""

    def raises(exc: BaseException) -> Any:
        raise RuntimeError("bug")

    def junk(exc: BaseException) -> Any:
        return "sucess"

    for f in (compose(raises), compose(junk)):
        assert f(ConnectionRefusedError()).reason == "connect_refused"


def test_compose_full_classification_and_none() -> None:
    """A user may return a full Classification; compose(None) is the default."""
    wanted = Classification(outcome="loading", retry_after=1.0, reason="mine")
    assert compose(lambda exc: wanted)(ValueError()) is wanted
    assert compose(None) is classify
