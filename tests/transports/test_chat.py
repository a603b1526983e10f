"""The chat helpers and the per-endpoint client pool, against simulated servers."""

from __future__ import annotations

from contextlib import aclosing

import httpx
import pytest

from lmgate._endpoint import Endpoint, EndpointRef
from lmgate._errors import ContextOverflow, InvalidParameter, Overloaded, SchedulerClosed
from lmgate.sim.http._app import SimHTTPConfig, sim_transport
from lmgate.transports import (
    ClientPool,
    ollama_chat,
    ollama_stream,
    openai_chat,
    openai_stream,
)

MESSAGES = [{"role": "user", "content": "hello"}]


class Lease:
    def __init__(self, url: str, model: str) -> None:
        self.endpoint = EndpointRef(name="e", url=url, model=model)
        self.reported: dict[str, float | int] = {}

    def report(self, **kw: float | int | None) -> None:
        self.reported.update({k: v for k, v in kw.items() if v is not None})


def client(cfg: SimHTTPConfig) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=sim_transport(cfg))


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["llamacpp", "vllm", "openai", "ollama", "lmstudio"])
async def test_openai_chat_and_stream(kind: str) -> None:
    """One answer and one stream, usage and TTFT reported to the lease."""
    cfg = SimHTTPConfig(kind=kind, models=("m",), max_tokens=5)
    lease = Lease("http://s:1/v1", "m")
    async with client(cfg) as c:
        result = await openai_chat(c, lease, MESSAGES)
        assert lease.reported["output_tokens"] == 5
        lease.reported.clear()
        async with aclosing(openai_stream(c, lease, MESSAGES)) as stream:  # type: ignore[type-var]
            parts = [p async for p in stream]
    assert result.output_tokens == 5
    assert "".join(parts).split() == result.text.split()
    assert lease.reported["output_tokens"] == 5
    assert lease.reported["ttft"] >= 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kind", "window"),
    [("llamacpp", 64), ("vllm", 64), ("tgi", 64), ("lmstudio", 64), ("openai", 64)],
)
async def test_openai_chat_raises_context_overflow(kind: str, window: int) -> None:
    """Each server's context error surfaces as ContextOverflow with its numbers."""
    cfg = SimHTTPConfig(kind=kind, models=("m",), n_ctx=window)
    lease = Lease("http://s:1", "m")
    async with client(cfg) as c:
        with pytest.raises(ContextOverflow) as err:
            await openai_chat(c, lease, [{"role": "user", "content": "y" * 2000}])
    assert err.value.window == window
    assert err.value.tokens is not None
    assert err.value.tokens > window


@pytest.mark.anyio
async def test_overload_raises_overloaded() -> None:
    """A 429 from a cloud API raises Overloaded with its Retry-After."""
    cfg = SimHTTPConfig(kind="openai", models=("m",), rate_limit=0, retry_after=4)
    async with client(cfg) as c:
        with pytest.raises(Overloaded) as err:
            await openai_chat(c, Lease("https://api.x/v1", "m"), MESSAGES)
    assert (err.value.status, err.value.retry_after) == (429, 4.0)


@pytest.mark.anyio
async def test_ollama_chat_and_stream() -> None:
    """Ollama's native API: answer, NDJSON stream, counts and num_ctx."""
    seen: list[httpx.Request] = []
    inner = sim_transport(SimHTTPConfig(kind="ollama", models=("llama3:8b",), max_tokens=6))

    async def spy(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return await inner.handle_async_request(request)

    lease = Lease("http://gpu:11434/v1", "llama3:8b")
    async with httpx.AsyncClient(transport=httpx.MockTransport(spy)) as c:
        result = await ollama_chat(c, lease, MESSAGES, num_ctx=8192)
        async with aclosing(ollama_stream(c, lease, MESSAGES)) as stream:  # type: ignore[type-var]
            parts = [p async for p in stream]
    assert str(seen[0].url) == "http://gpu:11434/api/chat"
    assert b'"num_ctx":8192' in seen[0].content
    assert result.output_tokens == 6
    assert result.prompt_tokens is not None
    assert len(parts) == 6
    assert lease.reported["output_tokens"] == 6


@pytest.mark.anyio
async def test_client_pool_per_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """One client per endpoint, with its own key, timeouts and pool bound."""
    monkeypatch.setenv("CLOUD_KEY", "sk-cloud")
    eps = [
        Endpoint("local", url="http://127.0.0.1:8080", connect_timeout=1.0, read_timeout=9.0),
        Endpoint("cloud", url="https://api.x/v1", api_key_env="CLOUD_KEY", max_connections=3),
    ]
    async with ClientPool(eps) as pool:
        local, cloud = pool.client("local"), pool.client(eps[1])
        assert pool.client("local") is local
        assert "authorization" not in local.headers
        assert cloud.headers["authorization"] == "Bearer sk-cloud"
        assert (local.timeout.connect, local.timeout.read) == (1.0, 9.0)
        assert str(cloud.base_url) == "https://api.x/v1/"
        with pytest.raises(InvalidParameter):
            pool.client("nope")
        assert "sk-cloud" not in repr(pool)
    assert local.is_closed
    assert cloud.is_closed
    with pytest.raises(SchedulerClosed):
        pool.client("local")
