"""The simulated Ollama server, and LocalAI, which imitates its routes.

Ollama answers its native API (``/api/tags``, ``/api/ps``, ``/api/show``,
NDJSON ``/api/chat``) next to the OpenAI one, loads a model on its first
request instead of refusing traffic, truncates a prompt longer than
``num_ctx`` without a word, and says "server busy" when its pending queue
is full.  LocalAI answers the same routes and heartbeat but tells itself
apart with ``/.well-known/localai.json``, ``/readyz`` and its version.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec

from lmgate.sim.http._base import (
    SimEngine,
    SimRequest,
    SimResponse,
    json_response,
    prompt_tokens,
    text_response,
)
from lmgate.sim.http._dialect import Dialect

__all__ = ["LocalAI", "Ollama"]


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


class Ollama(Dialect):
    kind = "ollama"
    version = "0.5.7"

    def __init__(self, engine: SimEngine) -> None:
        super().__init__(engine)
        self.loaded: set[str] = set()
        self.routes.update(
            {
                ("GET", "/"): self.heartbeat,
                ("GET", "/api/version"): self.api_version,
                ("GET", "/api/tags"): self.tags,
                ("GET", "/api/ps"): self.ps,
                ("POST", "/api/show"): self.show,
                ("POST", "/api/chat"): self.api_chat,
            }
        )

    def always_up(self) -> frozenset[str]:
        return frozenset(p for _, p in self.routes)  # a model loads per request instead

    def not_found(self, req: SimRequest) -> SimResponse:
        return text_response(404, "404 page not found")

    def overloaded(self) -> SimResponse | None:
        if self.engine.waiting >= self.config.max_queue:
            return json_response(
                503, {"error": "server busy, please try again.  maximum pending requests exceeded"}
            )
        return None

    def _find(self, name: Any) -> str | None:
        if not isinstance(name, str):
            return None
        for m in self.config.models:
            if name in (m, f"{m}:latest") or m == f"{name}:latest":
                return m
        return None

    async def _load(self) -> None:
        started = self.engine.started_at or anyio.current_time()
        await anyio.sleep(max(0.0, started + self.config.load_time - anyio.current_time()))

    async def heartbeat(self, req: SimRequest) -> SimResponse:
        return text_response(200, "Ollama is running")

    async def api_version(self, req: SimRequest) -> SimResponse:
        return json_response(200, {"version": self.version})

    def _details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "8.0B",
            "quantization_level": "Q4_K_M",
        }

    async def tags(self, req: SimRequest) -> SimResponse:
        models = [
            {
                "name": m,
                "model": m,
                "modified_at": "2024-11-04T14:56:49.277302595-07:00",
                "size": 4920753328,
                "digest": _digest(m),
                "details": self._details(),
            }
            for m in self.config.models
        ]
        return json_response(200, {"models": models})

    async def ps(self, req: SimRequest) -> SimResponse:
        models = [
            {
                "name": m,
                "model": m,
                "size": 6654289920,
                "digest": _digest(m),
                "details": self._details(),
                "expires_at": "2099-01-01T00:00:00Z",
                "size_vram": 6654289920,
                "context_length": self.config.n_ctx,
            }
            for m in self.config.models
            if m in self.loaded
        ]
        return json_response(200, {"models": models})

    async def show(self, req: SimRequest) -> SimResponse:
        body = req.json()
        m = self._find(body.get("model", body.get("name")) if isinstance(body, dict) else None)
        if m is None:
            return json_response(404, {"error": "model not found"})
        return json_response(
            200,
            {
                "modelfile": f"FROM /models/{m}\n",
                "parameters": f"num_ctx                        {self.config.n_ctx}",
                "template": "{{ .Prompt }}",
                "details": self._details(),
                "model_info": {
                    "general.architecture": "llama",
                    "llama.context_length": self.config.trained_ctx,
                },
                "capabilities": ["completion"],
            },
        )

    async def chat(self, req: SimRequest) -> SimResponse:
        await self._load()
        return await super().chat(req)

    def overflow(self, prompt: int, n: int) -> SimResponse | None:
        return None  # Ollama truncates the prompt to num_ctx without a word

    async def api_chat(self, req: SimRequest) -> SimResponse:
        body = req.json()
        if not isinstance(body, dict):
            return json_response(400, {"error": "invalid request"})
        model = self._find(body.get("model"))
        if model is None:
            return json_response(
                404, {"error": f'model "{body.get("model")}" not found, try pulling it first'}
            )
        prompt = prompt_tokens(body.get("messages"))
        if prompt is None:
            return json_response(400, {"error": "messages must be a list"})
        prompt = min(prompt, self.config.n_ctx)
        opts = body.get("options")
        predict = opts.get("num_predict") if isinstance(opts, dict) else None
        n: int = predict if isinstance(predict, int) and predict > 0 else self.config.max_tokens
        busy = self.overloaded()
        if busy is not None:
            return busy
        await self._load()
        self.loaded.add(model)
        self.engine.requests += 1
        if body.get("stream", True):
            return SimResponse(
                status=200,
                headers=[("content-type", "application/x-ndjson")],
                stream=self._ndjson(model, prompt, n),
            )
        text = "".join([t async for t in self.engine.generate(prompt, n)])
        return json_response(
            200,
            {**self._final(model, prompt, n), "message": {"role": "assistant", "content": text}},
        )

    def _final(self, model: str, prompt: int, n: int) -> dict[str, Any]:
        return {
            "model": model,
            "created_at": "2024-01-01T00:00:00Z",
            "done_reason": "length",
            "done": True,
            "total_duration": 1,
            "load_duration": 1,
            "prompt_eval_count": prompt,
            "prompt_eval_duration": 1,
            "eval_count": n,
            "eval_duration": 1,
        }

    async def _ndjson(self, model: str, prompt: int, n: int) -> AsyncIterator[bytes]:
        async for tok in self.engine.generate(prompt, n):
            yield (
                msgspec.json.encode(
                    {
                        "model": model,
                        "created_at": "2024-01-01T00:00:00Z",
                        "message": {"role": "assistant", "content": tok},
                        "done": False,
                    }
                )
                + b"\n"
            )
        final = {**self._final(model, prompt, n), "message": {"role": "assistant", "content": ""}}
        yield msgspec.json.encode(final) + b"\n"

    async def models(self, req: SimRequest) -> SimResponse:
        data = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "library"}
            for m in self.config.models
        ]
        return json_response(200, {"object": "list", "data": data})


class LocalAI(Ollama):
    kind = "localai"
    version = "0.9.0"

    def __init__(self, engine: SimEngine) -> None:
        super().__init__(engine)
        self.routes.update(
            {
                ("GET", "/version"): self.localai_version,
                ("GET", "/readyz"): self.ok,
                ("GET", "/healthz"): self.ok,
                ("GET", "/.well-known/localai.json"): self.well_known,
            }
        )

    def not_found(self, req: SimRequest) -> SimResponse:
        return json_response(404, {"message": "Not Found"})

    def overloaded(self) -> SimResponse | None:
        return None

    async def ok(self, req: SimRequest) -> SimResponse:
        return SimResponse(status=200)

    async def localai_version(self, req: SimRequest) -> SimResponse:
        return json_response(200, {"version": "v2.26.0 (sim)"})

    async def well_known(self, req: SimRequest) -> SimResponse:
        return json_response(
            200,
            {
                "version": "v2.26.0 (sim)",
                "endpoints": {"models": "/v1/models", "chat_completions": "/v1/chat/completions"},
            },
        )

    async def ps(self, req: SimRequest) -> SimResponse:
        models = [
            {
                "name": f"{m}:latest",
                "model": f"{m}:latest",
                "digest": f"sha256:{_digest(m)}",
                "details": {"format": "gguf", "family": "llama-cpp"},
                "expires_at": "2099-01-01T00:00:00Z",
            }
            for m in self.config.models
            if m in self.loaded
        ]
        return json_response(200, {"models": models})

    async def models(self, req: SimRequest) -> SimResponse:
        return json_response(
            200,
            {"object": "list", "data": [{"id": m, "object": "model"} for m in self.config.models]},
        )
