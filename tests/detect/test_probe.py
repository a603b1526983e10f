"""The probe against each server's documented responses, and its manners."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from lmgate._errors import InvalidParameter
from lmgate.detect import ServerInfo, invalidate, probe
from lmgate.detect._probe import _CACHE, MAX_BODY

from . import _fixtures


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    _CACHE.clear()
    yield
    _CACHE.clear()


# The detection table: (fixture, URL, variants, api_key) -> expected facts.
DETECTION_TABLE: list[tuple[str, str, tuple[str, ...], dict[str, Any]]] = [
    (
        "llamacpp",
        "http://127.0.0.1:8080",
        (),
        {
            "kind": "llamacpp",
            "local": True,
            "slots": 4,
            "version": "b0-unknown",
            "context_windows": {"/tmp/tiny.gguf": 256},
            "health_route": "/health",
        },
    ),
    (
        "llamacpp",
        "https://llm.example.com/v1",  # reverse proxy on a public name
        (),
        {"kind": "llamacpp", "local": True, "slots": 4, "kv_source": "props"},
    ),
    (
        "ollama",
        "http://127.0.0.1:11434",
        (),
        {
            "kind": "ollama",
            "local": True,
            "version": "0.5.1",
            "context_windows": {"llama3.2:latest": 4096, "mistral:latest": 8192},
            "slots": None,
        },
    ),
    (
        "vllm",
        "http://10.0.0.5:8000/v1",
        (),
        {
            "kind": "vllm",
            "local": True,
            "version": "0.6.3",
            "context_windows": {"meta-llama/Llama-3.1-8B-Instruct": 16384},
            "kv_tokens": 2048 * 16,  # num_gpu_blocks x block_size, from /metrics
            "kv_source": "metrics",
        },
    ),
    (
        "tgi",
        "http://tgi:8080",
        (),
        {
            "kind": "tgi",
            "local": True,
            "version": "3.3.4",
            "context_windows": {"meta-llama/Llama-3.1-8B-Instruct": 4096},
        },
    ),
    (
        "lmstudio",
        "http://192.168.1.20:1234/v1",
        (),
        {
            "kind": "lmstudio",
            "local": True,
            "context_windows": {
                "qwen2-vl-7b-instruct": 4096,
                "meta-llama-3.1-8b-instruct": 8192,
                "text-embedding-nomic-embed-text-v1.5": 2048,
            },
            "health_route": "/v1/models",
        },
    ),
    (
        "localai",
        "http://localhost:8080",  # answers Ollama's routes and heartbeat too
        (),
        {
            "kind": "localai",
            "local": True,
            "version": "v2.26.0 (09941c0bfb9119bb01a04b2a0a2c75a8f4b2ee25)",
        },
    ),
    (
        "openai",
        "https://api.openai.com/v1",
        (),
        {"kind": "openai", "local": False, "context_windows": {"gpt-4o": 128000}},
    ),
    (
        "openai",
        "http://127.0.0.1:4000/v1",  # a local proxy to a cloud API
        (),
        {"kind": "openai", "local": False},
    ),
    (
        "openai",
        "https://api.openai.com/v1",
        ("nokey",),
        {"kind": "openai", "local": False, "models": ()},
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("server", "url", "variants", "expected"), DETECTION_TABLE)
async def test_detection_table(
    server: str, url: str, variants: tuple[str, ...], expected: dict[str, Any]
) -> None:
    """Each documented server is identified with its models, windows and slots."""
    async with _fixtures.client(server, variants=variants) as client:
        info = await probe(url, client=client)
    assert info.reachable
    for field, value in expected.items():
        got = getattr(info, field)
        if field == "context_windows":
            assert {k: got[k] for k in value} == value, info.window_sources
        else:
            assert got == value, (field, info.reason, info.evidence)


@pytest.mark.anyio
async def test_localai_shows_ollama_signals_yet_is_localai() -> None:
    """LocalAI's Ollama imitation is in the evidence but does not decide."""
    async with _fixtures.client("localai") as client:
        info = await probe("http://127.0.0.1:8080", client=client)
    assert info.kind == "localai"
    assert any(e.points_to == "ollama" for e in info.evidence)
    assert any(e.source == "GET /.well-known/localai.json" for e in info.evidence)


@pytest.mark.anyio
async def test_ollama_window_is_not_the_trained_maximum() -> None:
    """Ollama's *.context_length is only a cap, never the window used."""
    async with _fixtures.client("ollama") as client:
        info = await probe("http://127.0.0.1:11434", client=client)
    assert info.trained_windows["llama3.2:latest"] == 131072
    assert info.context_windows["llama3.2:latest"] == 4096
    assert info.window_sources["mistral:latest"] == "server: loaded model"


def _generic(models: list[str]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            data = [{"id": m, "object": "model", "owned_by": "me"} for m in models]
            return httpx.Response(200, json={"object": "list", "data": data})
        return httpx.Response(404, json={"detail": "Not Found"})

    return httpx.MockTransport(answer)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("url", "models", "local"),
    [
        ("http://127.0.0.1:9000/v1", ["my-model"], True),
        ("http://ollama-proxy:9000/v1", ["my-model"], True),
        ("https://llm.example.com/v1", ["my-model"], False),
        ("https://llm.example.com/v1", ["qwen2.5:7b"], True),
        ("https://api.groq.com/openai/v1", ["my-model"], False),
    ],
)
async def test_no_fingerprint_locality_decides(url: str, models: list[str], local: bool) -> None:
    """A server with no fingerprint is judged by its URL, then its model names."""
    async with httpx.AsyncClient(transport=_generic(models)) as client:
        info = await probe(url, client=client)
    assert (info.kind, info.local) == ("unknown", local), info.reason


@pytest.mark.anyio
async def test_requested_model_gets_a_window_even_if_unlisted() -> None:
    """Asking about a model the server does not list still yields a window."""
    async with httpx.AsyncClient(transport=_generic([])) as client:
        info = await probe("http://127.0.0.1:9000", model="llama-3-8b", client=client)
    assert info.context_windows == {"llama-3-8b": 8192}
    assert info.window_sources["llama-3-8b"] == "family default"


@pytest.mark.anyio
async def test_cross_host_redirect_is_not_followed_and_key_stays_home() -> None:
    """A redirect to another host is refused; the key never leaves its origin."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "127.0.0.1" and request.url.path == "/v1/models":
            return httpx.Response(302, headers={"location": "http://evil.example.com/v1/models"})
        if request.url.host == "127.0.0.1" and request.url.path == "/props":
            return httpx.Response(307, headers={"location": "/props/"})
        return httpx.Response(404)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        info = await probe("http://127.0.0.1:8080/v1", client=client, api_key="sk-secret")
    assert {r.url.host for r in seen} == {"127.0.0.1"}
    assert all(r.headers.get("authorization") == "Bearer sk-secret" for r in seen)
    assert any(r.url.path == "/props/" for r in seen)  # same-origin redirect followed
    assert "sk-secret" not in repr(info)


@pytest.mark.anyio
async def test_key_is_not_sent_to_a_client_default_elsewhere() -> None:
    """A client-wide Authorization header is dropped on other origins."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(404)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        await probe("http://127.0.0.1:8080", client=client)
    assert all("authorization" not in r.headers for r in seen)


@pytest.mark.anyio
async def test_body_is_capped() -> None:
    """A body over 1 MiB is cut and ignored, not parsed or buffered whole."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            pad = "x" * (MAX_BODY + 10)
            return httpx.Response(200, json={"data": [{"id": "m", "owned_by": "vllm"}], "p": pad})
        return httpx.Response(404)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        info = await probe("http://127.0.0.1:8000", client=client)
    assert info.kind == "unknown"
    assert info.models == ()


@pytest.mark.anyio
async def test_garbage_is_no_evidence() -> None:
    """Malformed JSON, wrong types and huge numbers never crash the probe."""
    bodies = [b"{", b"[]", b'{"data": 5}', b'{"data": [{"id": 7, "max_model_len": true}]}']

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=bodies[len(request.url.path) % len(bodies)])

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        info = await probe("http://127.0.0.1:8000", client=client)
    assert info.kind == "unknown"
    assert info.local is True


@pytest.mark.anyio
async def test_unreachable_is_reported_and_not_cached() -> None:
    """A server that refuses connections is unreachable, and asked again next time."""
    calls = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        first = await probe("http://127.0.0.1:1", client=client)
        n = calls
        await probe("http://127.0.0.1:1", client=client)
    assert not first.reachable
    assert first.error is not None
    assert "ConnectError" in first.error
    assert calls == 2 * n


@pytest.mark.anyio
async def test_cache_and_invalidate() -> None:
    """A second probe is served from cache until the URL is invalidated."""
    seen: list[httpx.Request] = []
    async with _fixtures.client("llamacpp", seen=seen) as client:
        a = await probe("http://127.0.0.1:8080", client=client)
        n = len(seen)
        b = await probe("http://127.0.0.1:8080/", client=client)
        assert b is a
        assert len(seen) == n
        invalidate("http://127.0.0.1:8080")
        c = await probe("http://127.0.0.1:8080", client=client)
        assert len(seen) == 2 * n
        d = await probe("http://127.0.0.1:8080", client=client, refresh=True)
    assert c == a
    assert d == a
    assert len(seen) == 3 * n


def test_cache_expires_in_virtual_time(virtual_backend: tuple[str, dict[str, Any]]) -> None:
    """After the TTL the cached answer is dropped and the server asked again."""
    seen: list[httpx.Request] = []

    async def main() -> None:
        async with _fixtures.client("vllm", seen=seen) as client:
            await probe("http://127.0.0.1:8000", client=client)
            n = len(seen)
            await anyio.sleep(299)
            await probe("http://127.0.0.1:8000", client=client)
            assert len(seen) == n
            await anyio.sleep(2)
            await probe("http://127.0.0.1:8000", client=client)
            assert len(seen) == 2 * n

    backend, options = virtual_backend
    anyio.run(main, backend=backend, backend_options=options)


def test_slow_server_times_out_in_virtual_time(virtual_backend: tuple[str, dict[str, Any]]) -> None:
    """A server that never answers costs at most the probe's timeout per round."""

    async def answer(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(3600)
        return httpx.Response(200)

    async def main() -> ServerInfo:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
            start = anyio.current_time()
            info = await probe("http://127.0.0.1:8000", client=client, timeout=1.5)
            assert anyio.current_time() - start == pytest.approx(1.5)
            return info

    backend, options = virtual_backend
    info = anyio.run(main, backend=backend, backend_options=options)
    assert not info.reachable
    assert info.error == "timeout"


@pytest.mark.anyio
@pytest.mark.parametrize("url", ["", "ftp://x/", "http://", 5])
async def test_invalid_url_is_refused(url: Any) -> None:
    """A URL that is not usable is refused with a typed error."""
    with pytest.raises(InvalidParameter) as err:
        await probe(url)
    assert err.value.field == "url"


@pytest.mark.anyio
@pytest.mark.parametrize("parallel", [None, "4", "junk"])
async def test_ollama_kv_budget_is_the_loaded_context_times_its_parallel_slots(
    parallel: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ollama's API does not say OLLAMA_NUM_PARALLEL: only this environment can."""
    if parallel is None:
        monkeypatch.delenv("OLLAMA_NUM_PARALLEL", raising=False)
    else:
        monkeypatch.setenv("OLLAMA_NUM_PARALLEL", parallel)
    async with _fixtures.client("ollama") as client:
        info = await probe("http://127.0.0.1:11434", client=client)
    loaded = info.context_windows["mistral:latest"]
    if parallel == "4":
        assert (info.kv_tokens, info.kv_source) == (4 * loaded, "api/ps")
    else:
        assert info.kv_tokens is None
