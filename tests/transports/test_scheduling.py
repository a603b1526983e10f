"""SchedulingTransport: lease per request, rewrite, hold until closed, feedback."""

from __future__ import annotations

import gc
import json
from typing import Any

import anyio
import httpx
import pytest

from lmgate._endpoint import Endpoint
from lmgate._errors import (
    ContextOverflow,
    DeadlineExceeded,
    InvalidParameter,
    Overloaded,
    Rejected,
)
from lmgate.sim.http._app import SimHTTPConfig, sim_transport
from lmgate.transports import SchedulingTransport, StreamDeadlineExceeded

from ._standin import StandInScheduler

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello there, how are you?"}]}


def endpoint(url: str = "http://gpu:8080/v1", **kw: Any) -> Endpoint:
    return Endpoint("gpu", url=url, models=["m"], **kw)


def capture(
    responses: list[httpx.Response] | None = None,
) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if responses:
            return responses.pop(0)
        return httpx.Response(
            200, json={"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
        )

    return httpx.MockTransport(answer), seen


@pytest.mark.anyio
async def test_rewrites_onto_granted_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """URL, key, model name and lmgate headers are rewritten for the endpoint."""
    monkeypatch.setenv("GPU_KEY", "sk-endpoint")
    sched = StandInScheduler([endpoint(api_key_env="GPU_KEY")], aliases={"m": "llama3:8b"})
    inner, seen = capture()
    async with httpx.AsyncClient(transport=SchedulingTransport(sched, inner)) as client:
        r = await client.post(
            "http://lmgate.invalid/v1/chat/completions?x=1",
            json=CHAT,
            headers={
                "authorization": "Bearer caller-placeholder",
                "x-lmgate-priority": "3",
                "x-lmgate-timeout": "12.5",
                "x-trace": "keep",
            },
        )
    assert r.status_code == 200
    (out,) = seen
    assert str(out.url) == "http://gpu:8080/v1/chat/completions?x=1"
    assert out.headers["host"] == "gpu:8080"
    assert out.headers["authorization"] == "Bearer sk-endpoint"
    assert out.headers["x-trace"] == "keep"
    assert not any(k.startswith("x-lmgate") for k in out.headers)
    assert json.loads(out.content)["model"] == "llama3:8b"
    assert int(out.headers["content-length"]) == len(out.content)
    assert sched.calls == [{"model": "m", "priority": 3, "timeout": 12.5}]
    assert sched.prompts == [(1, None)]


@pytest.mark.anyio
async def test_caller_key_never_forwarded_without_endpoint_key() -> None:
    """Without an endpoint key, the caller's placeholder key is dropped."""
    sched = StandInScheduler([endpoint()])
    inner, seen = capture()
    async with httpx.AsyncClient(transport=SchedulingTransport(sched, inner)) as client:
        await client.post(
            "http://x/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer sk-real"}
        )
    assert "authorization" not in seen[0].headers


@pytest.mark.anyio
async def test_extensions_give_priority_and_timeout() -> None:
    """Request extensions carry priority and timeout too."""
    sched = StandInScheduler([endpoint()])
    inner, _ = capture()
    async with httpx.AsyncClient(transport=SchedulingTransport(sched, inner)) as client:
        req = client.build_request("POST", "http://x/v1/chat/completions", json=CHAT)
        req.extensions["lmgate.priority"] = -2
        req.extensions["lmgate.timeout"] = 4.0
        await client.send(req)
    assert sched.calls == [{"model": "m", "priority": -2, "timeout": 4.0}]


@pytest.mark.anyio
async def test_non_streaming_usage_and_release() -> None:
    """A JSON answer releases the lease once, with usage and TTFT reported."""
    sched = StandInScheduler([endpoint()])
    inner, _ = capture()
    async with httpx.AsyncClient(transport=SchedulingTransport(sched, inner)) as client:
        await client.post("http://x/v1/chat/completions", json=CHAT)
    (lease,) = sched.leases
    assert lease.releases == [(None, None)]
    assert lease.reported["prompt_tokens"] == 7
    assert lease.reported["output_tokens"] == 3
    assert lease.reported["ttft"] >= 0
    assert sched.in_flight == 0


@pytest.mark.anyio
async def test_stream_holds_lease_until_closed() -> None:
    """A streamed body keeps the lease until it is read to the end and closed."""
    sched = StandInScheduler([endpoint()])
    transport = SchedulingTransport(sched, sim_transport(SimHTTPConfig(models=("m",))))
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with httpx.AsyncClient(transport=transport) as client:
        async with client.stream("POST", "http://x/v1/chat/completions", json=body) as r:
            assert sched.in_flight == 1
            assert sched.leases[0].releases == []
            lines = [line async for line in r.aiter_lines() if line]
        assert lines[-1] == "data: [DONE]"
    (lease,) = sched.leases
    assert lease.releases == [(None, None)]
    assert lease.reported["output_tokens"] == 16
    assert transport.statistics().open_streams == 0


@pytest.mark.anyio
async def test_early_close_counts_as_cancelled() -> None:
    """Closing a stream before its end releases the lease as cancelled."""
    sched = StandInScheduler([endpoint()])
    transport = SchedulingTransport(sched, sim_transport(SimHTTPConfig(models=("m",))))
    async with (
        httpx.AsyncClient(transport=transport) as client,
        client.stream("POST", "http://x/v1/chat/completions", json={**CHAT, "stream": True}) as r,
    ):
        assert r.status_code == 200  # headers only; the body is never read
    assert sched.leases[0].releases == [(None, "cancelled")]


async def drain(client: httpx.AsyncClient, **kwargs: Any) -> None:
    async with client.stream("POST", "http://x/v1/chat/completions", **kwargs) as r:
        async for _ in r.aiter_bytes():
            pass


def _err(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("response", "kind", "check"),
    [
        (
            _err(429, {"error": {"message": "slow down"}}, {"retry-after": "20"}),
            Overloaded,
            lambda e: e.retry_after == 20.0 and e.status == 429,
        ),
        (
            _err(
                503,
                {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
            ),
            Overloaded,
            lambda e: e.status == 503 and "loading" in str(e),
        ),
        (
            _err(
                503, {"error": "server busy, please try again.  maximum pending requests exceeded"}
            ),
            Overloaded,
            lambda e: e.status == 503 and "loading" not in str(e),
        ),
        (
            _err(
                400,
                {
                    "error": {
                        "code": 400,
                        "message": "request (2053 tokens) exceeds the available context"
                        " size (256 tokens), try increasing it",
                        "type": "exceed_context_size_error",
                        "n_prompt_tokens": 2053,
                        "n_ctx": 256,
                    }
                },
            ),
            ContextOverflow,
            lambda e: (e.tokens, e.window) == (2053, 256),
        ),
    ],
)
async def test_error_statuses_become_lease_outcomes(
    response: httpx.Response, kind: type[BaseException], check: Any
) -> None:
    """429/503/context errors are fed back as lmgate errors; the caller gets the response."""
    sched = StandInScheduler([endpoint()])
    inner, _ = capture([response])
    async with httpx.AsyncClient(transport=SchedulingTransport(sched, inner)) as client:
        r = await client.post("http://x/v1/chat/completions", json=CHAT)
    assert r.status_code == response.status_code
    assert r.json()  # the body is still there for the caller
    ((error, _),) = sched.leases[0].releases
    assert isinstance(error, kind)
    assert check(error)


@pytest.mark.anyio
async def test_raise_errors_raises_the_mapped_error() -> None:
    """With raise_errors the mapped error is raised to the caller."""
    sched = StandInScheduler([endpoint()])
    resp = _err(
        422,
        {
            "error": "Input validation error: `inputs` tokens + `max_new_tokens` must be"
            " <= 4096. Given: 4000 `inputs` tokens and 200 `max_new_tokens`",
            "error_type": "validation",
        },
    )
    inner, _ = capture([resp])
    transport = SchedulingTransport(sched, inner, raise_errors=True)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(ContextOverflow) as err:
            await client.post("http://x/v1/chat/completions", json=CHAT)
    assert (err.value.tokens, err.value.window) == (4200, 4096)


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "outcome"), [(500, "error"), (404, "client_error")])
async def test_unmapped_errors_get_an_outcome(status: int, outcome: str) -> None:
    """Other 5xx count against the endpoint; other 4xx are the caller's."""
    sched = StandInScheduler([endpoint()])
    inner, _ = capture([httpx.Response(status, text="nope")])
    async with httpx.AsyncClient(transport=SchedulingTransport(sched, inner)) as client:
        r = await client.post("http://x/v1/chat/completions", json=CHAT)
    assert r.status_code == status
    assert sched.leases[0].releases[0][1] == outcome


@pytest.mark.anyio
async def test_connect_error_releases_and_raises() -> None:
    """A connection failure releases the lease with the error and re-raises it."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    sched = StandInScheduler([endpoint()])
    async with httpx.AsyncClient(
        transport=SchedulingTransport(sched, httpx.MockTransport(refuse))
    ) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post("http://x/v1/chat/completions", json=CHAT)
    ((error, _),) = sched.leases[0].releases
    assert isinstance(error, httpx.ConnectError)
    assert sched.in_flight == 0


@pytest.mark.anyio
async def test_mid_stream_failure_releases_with_the_error() -> None:
    """A body that breaks off mid-stream releases the lease with that error."""

    async def broken() -> Any:
        yield b"data: {}\n\n"
        raise httpx.ReadError("connection reset")

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=broken())

    sched = StandInScheduler([endpoint()])
    async with httpx.AsyncClient(
        transport=SchedulingTransport(sched, httpx.MockTransport(answer))
    ) as client:
        with pytest.raises(httpx.ReadError):
            await drain(client, json=CHAT)
    ((error, _),) = sched.leases[0].releases
    assert isinstance(error, httpx.ReadError)


def test_deadline_enforced_while_streaming(virtual_backend: tuple[str, dict[str, Any]]) -> None:
    """A stream still running at the lease deadline ends with StreamDeadlineExceeded,
    which is no ``TimeoutError`` (frameworks take those for their own)."""
    sched = StandInScheduler([endpoint()])
    slow = sim_transport(SimHTTPConfig(models=("m",), token_time=1.0, max_tokens=100))

    async def main() -> None:
        async with httpx.AsyncClient(transport=SchedulingTransport(sched, slow)) as client:
            start = anyio.current_time()
            with pytest.raises(StreamDeadlineExceeded) as caught:
                await drain(
                    client, json={**CHAT, "stream": True}, headers={"x-lmgate-timeout": "10"}
                )
            assert not isinstance(caught.value, TimeoutError)
            assert isinstance(caught.value, httpx.TimeoutException)
            assert isinstance(caught.value.__cause__, DeadlineExceeded)
            assert anyio.current_time() - start == pytest.approx(10.0)

    backend, options = virtual_backend
    anyio.run(main, backend=backend, backend_options=options)
    ((error, _),) = sched.leases[0].releases
    assert isinstance(error, DeadlineExceeded)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"json": {"messages": []}}, "model"),
        ({"json": CHAT, "headers": {"x-lmgate-priority": "high"}}, "priority"),
        ({"json": CHAT, "headers": {"x-lmgate-timeout": "-1"}}, "timeout"),
        ({"json": CHAT, "headers": {"x-lmgate-timeout": "nan"}}, "timeout"),
    ],
)
async def test_bad_requests_are_refused_before_a_lease(kwargs: dict[str, Any], field: str) -> None:
    """No model, or a bad priority/timeout, is a typed error and takes no lease."""
    sched = StandInScheduler([endpoint()])
    inner, _ = capture()
    async with httpx.AsyncClient(transport=SchedulingTransport(sched, inner)) as client:
        with pytest.raises(InvalidParameter) as err:
            await client.post("http://x/v1/chat/completions", **kwargs)
    assert err.value.field == field
    assert sched.leases == []


@pytest.mark.anyio
async def test_model_header_for_bodyless_requests() -> None:
    """A GET without a body names its model in X-Lmgate-Model."""
    sched = StandInScheduler([endpoint()])
    inner, seen = capture()
    async with httpx.AsyncClient(transport=SchedulingTransport(sched, inner)) as client:
        await client.get("http://x/v1/models", headers={"x-lmgate-model": "m"})
    assert str(seen[0].url) == "http://gpu:8080/v1/models"


@pytest.mark.anyio
async def test_refusals_raise_or_respond() -> None:
    """A scheduler refusal is raised, or answered as 429 when asked to respond."""
    inner, _ = capture()
    sched = StandInScheduler([endpoint()], refuse=Rejected("queue full", reason="queue_full"))
    async with httpx.AsyncClient(transport=SchedulingTransport(sched, inner)) as client:
        with pytest.raises(Rejected):
            await client.post("http://x/v1/chat/completions", json=CHAT)
    transport = SchedulingTransport(sched, inner, refusal_responses=True)
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.post("http://x/v1/chat/completions", json=CHAT)
    assert r.status_code == 429
    assert r.headers["x-lmgate-error"] == "Rejected"
    assert r.headers["x-lmgate-outcome"] == "rejected"
    assert r.headers["x-should-retry"] == "false"
    assert r.json()["error"]["code"] == "queue_full"


@pytest.mark.anyio
async def test_estimator_calibrates_from_usage() -> None:
    """Usage reports teach the endpoint's token estimator."""
    sched = StandInScheduler([endpoint()])
    transport = SchedulingTransport(sched, sim_transport(SimHTTPConfig(models=("m",))))
    text = "word " * 200
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):
            await client.post(
                "http://x/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": text}]},
            )
    assert transport.estimator("gpu").statistics().samples == 3


@pytest.mark.anyio
async def test_forgotten_response_releases_on_collection() -> None:
    """A response nobody closes gives its slot back when collected."""
    sched = StandInScheduler([endpoint()])
    transport = SchedulingTransport(sched, sim_transport(SimHTTPConfig(models=("m",))))
    async with httpx.AsyncClient(transport=transport) as client:
        req = client.build_request(
            "POST", "http://x/v1/chat/completions", json={**CHAT, "stream": True}
        )
        r = await client.send(req, stream=True)
        assert sched.in_flight == 1
        del r, req
        gc.collect()
    assert sched.in_flight == 0
    assert sched.leases[0].releases == [(None, "cancelled")]


@pytest.mark.anyio
async def test_per_endpoint_timeouts_reach_the_wire() -> None:
    """The endpoint's connect/read timeouts are set on the outbound request."""
    sched = StandInScheduler([endpoint(connect_timeout=1.5, read_timeout=30.0)])
    inner, seen = capture()
    async with httpx.AsyncClient(
        transport=SchedulingTransport(sched, inner), timeout=600
    ) as client:
        await client.post("http://x/v1/chat/completions", json=CHAT)
    t = seen[0].extensions["timeout"]
    assert (t["connect"], t["read"], t["pool"]) == (1.5, 30.0, 1.5)
