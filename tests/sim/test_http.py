"""Simulated servers over HTTP: dialects, streaming, slots, crashes."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import anyio
import httpx
import pytest

from lmgate._errors import InvalidParameter
from lmgate.detect import probe
from lmgate.detect._probe import _CACHE
from lmgate.sim.http._app import HTTP_DIALECTS, SimHTTPConfig, SimHTTPServer, sim_transport

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}


@pytest.mark.anyio
@pytest.mark.parametrize("kind", HTTP_DIALECTS)
async def test_each_dialect_is_recognised_over_tcp(kind: str) -> None:
    """The probe identifies every simulated dialect over a real socket."""
    _CACHE.clear()
    async with SimHTTPServer(SimHTTPConfig(kind=kind, models=("m",), n_ctx=1024)) as server:
        info = await probe(server.url + "/v1")
    assert info.kind == kind
    assert info.local is (kind != "openai")
    if kind in ("llamacpp", "vllm", "tgi", "lmstudio"):
        assert info.context_windows["m"] == 1024


@pytest.mark.anyio
@pytest.mark.parametrize("kind", HTTP_DIALECTS)
async def test_openai_chat_in_every_dialect(kind: str) -> None:
    """Every dialect answers OpenAI-style chat, streaming with SSE."""
    async with (
        SimHTTPServer(SimHTTPConfig(kind=kind, models=("m",))) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        r = await client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200
        assert r.json()["usage"]["completion_tokens"] == 3
        async with client.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "stream": True}
        ) as s:
            assert s.headers["content-type"] == "text/event-stream"
            assert s.headers["transfer-encoding"] == "chunked"
            lines = [line async for line in s.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert sum('"content"' in line for line in lines) == 4  # role chunk + 3 tokens


@pytest.mark.anyio
async def test_keep_alive_reuses_one_connection() -> None:
    """Sequential requests share a connection."""
    async with SimHTTPServer() as server, httpx.AsyncClient(base_url=server.url) as client:
        for _ in range(5):
            assert (await client.get("/health")).status_code == 200
        assert server.statistics().connections == 1


@pytest.mark.anyio
async def test_slots_bound_concurrency() -> None:
    """No more than ``slots`` requests generate at once; the rest wait."""
    cfg = SimHTTPConfig(models=("m",), slots=2, token_time=0.01)
    async with SimHTTPServer(cfg) as server, httpx.AsyncClient(base_url=server.url) as client:
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(partial(client.post, "/v1/chat/completions", json=CHAT))
        stats = server.statistics()
    assert stats.max_in_flight == 2
    assert stats.completed == 8


@pytest.mark.anyio
async def test_ollama_native_chat_ndjson() -> None:
    """Ollama's /api/chat streams NDJSON by default; the last line has counts."""
    cfg = SimHTTPConfig(kind="ollama", models=("llama3:8b",), n_ctx=2048)
    async with SimHTTPServer(cfg) as server, httpx.AsyncClient(base_url=server.url) as client:
        body = {"model": "llama3:8b", "messages": CHAT["messages"]}
        async with client.stream("POST", "/api/chat", json=body) as s:
            assert s.headers["content-type"] == "application/x-ndjson"
            objs = [json.loads(line) async for line in s.aiter_lines() if line]
        whole = (await client.post("/api/chat", json={**body, "stream": False})).json()
        ps = (await client.get("/api/ps")).json()
        missing = await client.post("/api/chat", json={**body, "model": "nope"})
    assert objs[-1]["done"] is True
    assert objs[-1]["eval_count"] == 16
    assert not any(o["done"] for o in objs[:-1])
    assert whole["done"] is True
    assert whole["message"]["content"]
    assert ps["models"][0]["context_length"] == 2048
    assert missing.status_code == 404
    assert "not found" in missing.json()["error"]


@pytest.mark.anyio
async def test_ollama_truncates_silently() -> None:
    """Ollama does not refuse a prompt longer than num_ctx: it cuts it."""
    cfg = SimHTTPConfig(kind="ollama", models=("m",), n_ctx=64)
    async with SimHTTPServer(cfg) as server, httpx.AsyncClient(base_url=server.url) as client:
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": "x" * 4000}],
            "stream": False,
        }
        r = await client.post("/api/chat", json=body)
    assert r.status_code == 200
    assert r.json()["prompt_eval_count"] == 64


def _run_virtual(fn: Any, virtual_backend: tuple[str, dict[str, Any]]) -> Any:
    backend, options = virtual_backend
    return anyio.run(fn, backend=backend, backend_options=options)


def test_ollama_busy_when_queue_full(virtual_backend: tuple[str, dict[str, Any]]) -> None:
    """Past OLLAMA_MAX_QUEUE waiting requests, Ollama answers 503 server busy."""
    cfg = SimHTTPConfig(kind="ollama", models=("m",), slots=1, max_queue=2, token_time=1.0)

    async def main() -> list[int]:
        statuses: list[int] = []
        async with httpx.AsyncClient(transport=sim_transport(cfg), base_url="http://o") as client:

            async def one() -> None:
                r = await client.post("/api/chat", json={**CHAT, "stream": False})
                statuses.append(r.status_code)
                if r.status_code == 503:
                    assert "server busy" in r.json()["error"]

            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(one)
                    await anyio.wait_all_tasks_blocked()
                tg.start_soon(one)
        return sorted(statuses)

    assert _run_virtual(main, virtual_backend) == [200, 200, 200, 503]


def test_loading_then_ready(virtual_backend: tuple[str, dict[str, Any]]) -> None:
    """While loading, llama.cpp answers 503 Loading model, then serves."""
    cfg = SimHTTPConfig(models=("m",), load_time=30.0)

    async def main() -> tuple[int, str, int]:
        async with httpx.AsyncClient(transport=sim_transport(cfg), base_url="http://l") as client:
            early = await client.get("/health")
            await anyio.sleep(31)
            late = await client.get("/health")
        return early.status_code, early.json()["error"]["message"], late.status_code

    assert _run_virtual(main, virtual_backend) == (503, "Loading model", 200)


def test_tgi_overloaded(virtual_backend: tuple[str, dict[str, Any]]) -> None:
    """TGI refuses past max_concurrent_requests with 429 overloaded."""
    cfg = SimHTTPConfig(kind="tgi", models=("m",), slots=1, max_queue=1, token_time=1.0)

    async def main() -> int:
        transport = sim_transport(cfg)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://t") as client,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(partial(client.post, "/v1/chat/completions", json=CHAT))
            await anyio.wait_all_tasks_blocked()
            r = await client.post("/v1/chat/completions", json=CHAT)
        assert r.json()["error_type"] == "overloaded"
        return r.status_code

    assert _run_virtual(main, virtual_backend) == 429


async def _read_while_stopping(client: httpx.AsyncClient, server: SimHTTPServer) -> None:
    body = {**CHAT, "max_tokens": 1000, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body) as s:
        async for _ in s.aiter_bytes():
            await server.stop()


@pytest.mark.anyio
async def test_crash_mid_stream_and_restart_on_same_port() -> None:
    """Stopping drops open streams; starting again serves on the same port."""
    cfg = SimHTTPConfig(models=("m",), token_time=0.05, max_tokens=1000)
    async with SimHTTPServer(cfg) as server, httpx.AsyncClient(base_url=server.url) as client:
        port = server.port
        with pytest.raises(httpx.TransportError):
            await _read_while_stopping(client, server)
        with pytest.raises(httpx.ConnectError):
            await client.get("/health")
        await server.start()
        assert server.port == port
        assert (await client.get("/health")).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kind", "status", "check"),
    [
        ("llamacpp", 404, lambda r: r.json()["error"]["type"] == "not_found_error"),
        ("ollama", 404, lambda r: r.text == "404 page not found"),
        ("vllm", 404, lambda r: r.json() == {"detail": "Not Found"}),
        ("lmstudio", 200, lambda r: "Unexpected endpoint" in r.json()["error"]),
    ],
)
async def test_unknown_routes_answer_like_the_server(kind: str, status: int, check: Any) -> None:
    """Unknown routes get each server's own not-found answer."""
    async with httpx.AsyncClient(transport=sim_transport(SimHTTPConfig(kind=kind))) as client:
        r = await client.get("http://s/no/such/route")
    assert r.status_code == status
    assert check(r)


@pytest.mark.anyio
async def test_bad_bodies_are_400() -> None:
    """Malformed chat bodies are refused, never crash the server."""
    async with SimHTTPServer() as server, httpx.AsyncClient(base_url=server.url) as client:
        for body in (b"{", b"[]", b'{"messages": 5}', b'{"messages": [{"content": 7}]}'):
            r = await client.post("/v1/chat/completions", content=body)
            assert r.status_code == 400
        assert (await client.get("/health")).status_code == 200


@pytest.mark.anyio
async def test_cloud_dialect_requires_its_key() -> None:
    """The cloud dialect answers 401 without the configured key."""
    cfg = SimHTTPConfig(kind="openai", models=("m",), api_key="sk-test")
    async with httpx.AsyncClient(transport=sim_transport(cfg), base_url="http://c") as client:
        denied = await client.get("/v1/models")
        allowed = await client.get("/v1/models", headers={"authorization": "Bearer sk-test"})
    assert denied.status_code == 401
    assert denied.headers["openai-version"] == "2020-10-01"
    assert allowed.status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"kind": "nope"}, "kind"), ({"slots": 0}, "slots"), ({"token_time": -1.0}, "token_time")],
)
def test_config_is_validated(kwargs: dict[str, Any], field: str) -> None:
    """Bad simulator settings are refused with the field named."""
    with pytest.raises(InvalidParameter) as err:
        SimHTTPConfig(**kwargs)
    assert err.value.field == field
