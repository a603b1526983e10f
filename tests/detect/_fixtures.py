"""Serve the documented responses in ``fixtures/`` through an httpx mock."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

FIXTURES = Path(__file__).parent / "fixtures"
SERVERS = ("llamacpp", "ollama", "vllm", "tgi", "lmstudio", "localai", "openai")


def load(name: str) -> dict[str, Any]:
    """The fixture document of server ``name``."""
    doc: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return doc


def _response(spec: Mapping[str, Any], headers: Mapping[str, str]) -> httpx.Response:
    body = spec.get("body", "")
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    hdrs = {k: v for k, v in spec.get("headers", {}).items() if k.lower() != "content-length"}
    hdrs.update(headers)
    return httpx.Response(spec["status"], headers=hdrs, content=content)


def handler(
    name: str,
    *,
    variants: tuple[str, ...] = (),
    headers: Mapping[str, str] | None = None,
    seen: list[httpx.Request] | None = None,
) -> Callable[[httpx.Request], httpx.Response]:
    """A request handler answering like server ``name``.

    ``variants`` picks ``"METHOD /path#variant"`` entries over the plain ones;
    ``headers`` are added to every response; ``seen`` collects requests.
    """
    doc = load(name)
    routes: dict[str, Any] = doc["routes"]
    extra = dict(headers or {})

    def answer(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        key = f"{request.method} {request.url.path}"
        spec = next((routes[f"{key}#{v}"] for v in variants if f"{key}#{v}" in routes), None)
        if spec is None:
            spec = routes.get(key)
        if spec is not None and "by_model" in spec:
            model = json.loads(request.content or b"{}").get("model", "")
            spec = spec["by_model"].get(model)
        if spec is None:
            spec = doc["not_found"]
        return _response(spec, extra)

    return answer


def transport(name: str, **kwargs: Any) -> httpx.MockTransport:
    return httpx.MockTransport(handler(name, **kwargs))


def client(name: str, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport(name, **kwargs))
