"""What each simulated server says: routes, fields, headers and errors.

Each class answers the routes lmgate uses exactly as the real server does
(shapes recorded in ``tests/detect/fixtures``): the documented probe
routes, OpenAI-style chat with SSE streaming, Ollama's native chat with
NDJSON streaming, and each server's own way of saying that a prompt does
not fit, that it is busy, or that it is still loading -- including the
servers that say nothing (Ollama and LocalAI truncate a long prompt).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec

from lmgate.sim._http import (
    Dialect,
    SimEngine,
    SimRequest,
    SimResponse,
    _json,
    _text,
    prompt_tokens,
    tokens_of,
)

__all__ = ["DIALECT_CLASSES"]


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


class LlamaCpp(Dialect):
    kind = "llamacpp"
    server_header = "llama.cpp"

    def __init__(self, engine: SimEngine) -> None:
        super().__init__(engine)
        self.routes.update(
            {
                ("GET", "/health"): self.health,
                ("GET", "/props"): self.props,
                ("GET", "/slots"): self.slots,
                ("GET", "/models"): self.models,
                ("GET", "/metrics"): self.metrics,
                ("POST", "/chat/completions"): self.chat,
                ("POST", "/tokenize"): self.tokenize,
            }
        )

    def not_found(self, req: SimRequest) -> SimResponse:
        return _json(
            404, {"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}}
        )

    def overflow(self, prompt: int, n: int) -> SimResponse | None:
        ctx = self.config.n_ctx
        if prompt <= ctx:
            return None
        msg = (
            f"request ({prompt} tokens) exceeds the available context size ({ctx} tokens),"
            " try increasing it"
        )
        return _json(
            400,
            {
                "error": {
                    "code": 400,
                    "message": msg,
                    "type": "exceed_context_size_error",
                    "n_prompt_tokens": prompt,
                    "n_ctx": ctx,
                }
            },
        )

    async def health(self, req: SimRequest) -> SimResponse:
        return _json(200, {"status": "ok"})

    async def props(self, req: SimRequest) -> SimResponse:
        m = self.config.models[0]
        return _json(
            200,
            {
                "default_generation_settings": {
                    "params": {"n_predict": -1, "temperature": 0.8},
                    "n_ctx": self.config.n_ctx,
                },
                "total_slots": self.config.slots,
                "model_alias": m,
                "model_path": f"/models/{m}.gguf",
                "endpoint_slots": True,
                "endpoint_props": False,
                "endpoint_metrics": True,
                "build_info": "b0-sim",
            },
        )

    async def slots(self, req: SimRequest) -> SimResponse:
        busy = self.engine.in_flight
        return _json(
            200,
            [
                {
                    "id": i,
                    "n_ctx": self.config.n_ctx,
                    "speculative": False,
                    "is_processing": i < busy,
                }
                for i in range(self.config.slots)
            ],
        )

    async def models(self, req: SimRequest) -> SimResponse:
        c = self.config
        ollama_style = [
            {
                "name": m,
                "model": m,
                "modified_at": "",
                "size": "",
                "digest": "",
                "type": "model",
                "description": "",
                "tags": [""],
                "capabilities": ["completion"],
                "parameters": "",
                "details": {
                    "parent_model": "",
                    "format": "gguf",
                    "family": "",
                    "families": [""],
                    "parameter_size": "",
                    "quantization_level": "",
                },
            }
            for m in c.models
        ]
        data = [
            {
                "id": m,
                "aliases": [m],
                "tags": [],
                "object": "model",
                "created": 1700000000,
                "owned_by": "llamacpp",
                "meta": {
                    "vocab_type": 1,
                    "n_vocab": 32000,
                    "n_ctx": c.n_ctx,
                    "n_ctx_train": c.trained_ctx,
                    "n_embd": 4096,
                },
            }
            for m in c.models
        ]
        return _json(200, {"models": ollama_style, "object": "list", "data": data})

    async def metrics(self, req: SimRequest) -> SimResponse:
        e = self.engine
        text = (
            "# HELP llamacpp:requests_processing Number of requests processing.\n"
            "# TYPE llamacpp:requests_processing gauge\n"
            f"llamacpp:requests_processing {e.in_flight}\n"
            "# HELP llamacpp:requests_deferred Number of requests deferred.\n"
            "# TYPE llamacpp:requests_deferred gauge\n"
            f"llamacpp:requests_deferred {e.waiting}\n"
        )
        return _text(200, text, "text/plain; version=0.0.4")

    async def tokenize(self, req: SimRequest) -> SimResponse:
        body = req.json()
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, str):
            return self.bad_request('"content" must be provided')
        return _json(200, {"tokens": list(range(1, tokens_of(content) + 1))})


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
        return _text(404, "404 page not found")

    def overloaded(self) -> SimResponse | None:
        if self.engine.waiting >= self.config.max_queue:
            return _json(
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
        return _text(200, "Ollama is running")

    async def api_version(self, req: SimRequest) -> SimResponse:
        return _json(200, {"version": self.version})

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
        return _json(200, {"models": models})

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
        return _json(200, {"models": models})

    async def show(self, req: SimRequest) -> SimResponse:
        body = req.json()
        m = self._find(body.get("model", body.get("name")) if isinstance(body, dict) else None)
        if m is None:
            return _json(404, {"error": "model not found"})
        return _json(
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
            return _json(400, {"error": "invalid request"})
        model = self._find(body.get("model"))
        if model is None:
            return _json(
                404, {"error": f'model "{body.get("model")}" not found, try pulling it first'}
            )
        prompt = prompt_tokens(body.get("messages"))
        if prompt is None:
            return _json(400, {"error": "messages must be a list"})
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
        return _json(
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
        return _json(200, {"object": "list", "data": data})


class VLLM(Dialect):
    kind = "vllm"
    server_header = "uvicorn"

    def __init__(self, engine: SimEngine) -> None:
        super().__init__(engine)
        self.routes.update(
            {
                ("GET", "/health"): self.health,
                ("GET", "/version"): self.version,
                ("GET", "/metrics"): self.metrics,
                ("POST", "/tokenize"): self.tokenize,
            }
        )

    def not_found(self, req: SimRequest) -> SimResponse:
        return SimResponse(
            status=404,
            headers=[("content-type", "application/json")],
            body=b'{"detail":"Not Found"}',
        )

    def overflow(self, prompt: int, n: int) -> SimResponse | None:
        ctx = self.config.n_ctx
        if prompt + n <= ctx:
            return None
        msg = (
            f"This model's maximum context length is {ctx} tokens. However, you requested"
            f" {prompt + n} tokens ({prompt} in the messages, {n} in the completion)."
            " Please reduce the length of the messages or completion."
        )
        return _json(
            400, {"error": {"message": msg, "type": "BadRequestError", "param": None, "code": 400}}
        )

    async def health(self, req: SimRequest) -> SimResponse:
        return SimResponse(status=200)

    async def version(self, req: SimRequest) -> SimResponse:
        return _json(200, {"version": "0.6.3"})

    async def models(self, req: SimRequest) -> SimResponse:
        data: list[dict[str, Any]] = [
            {
                "id": m,
                "object": "model",
                "created": 1700000000,
                "owned_by": "vllm",
                "root": m,
                "parent": None,
                "max_model_len": self.config.n_ctx,
                "permission": [],
            }
            for m in self.config.models
        ]
        return _json(200, {"object": "list", "data": data})

    async def metrics(self, req: SimRequest) -> SimResponse:
        m = self.config.models[0]
        text = (
            f'vllm:num_requests_running{{model_name="{m}"}} {float(self.engine.in_flight)}\n'
            f'vllm:num_requests_waiting{{model_name="{m}"}} {float(self.engine.waiting)}\n'
        )
        return _text(200, text, "text/plain; version=0.0.4; charset=utf-8")

    async def tokenize(self, req: SimRequest) -> SimResponse:
        body = req.json()
        prompt = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(prompt, str):
            return self.bad_request("prompt is required")
        n = tokens_of(prompt)
        return _json(
            200, {"count": n, "max_model_len": self.config.n_ctx, "tokens": list(range(n))}
        )


class TGI(Dialect):
    kind = "tgi"

    def __init__(self, engine: SimEngine) -> None:
        super().__init__(engine)
        self.routes.update(
            {
                ("GET", "/info"): self.info,
                ("GET", "/health"): self.health,
                ("POST", "/tokenize"): self.tokenize,
            }
        )

    async def tokenize(self, req: SimRequest) -> SimResponse:
        body = req.json()
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, str):
            return _json(422, {"error": "missing field `inputs`", "error_type": "validation"})
        toks = [
            {"id": i, "text": "t", "start": 4 * i, "stop": 4 * i + 4}
            for i in range(tokens_of(inputs))
        ]
        return _json(200, toks)

    def not_found(self, req: SimRequest) -> SimResponse:
        return SimResponse(status=404)

    def overflow(self, prompt: int, n: int) -> SimResponse | None:
        ctx = self.config.n_ctx
        if prompt + n <= ctx:
            return None
        msg = (
            f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= {ctx}. "
            f"Given: {prompt} `inputs` tokens and {n} `max_new_tokens`"
        )
        return _json(422, {"error": msg, "error_type": "validation"})

    def overloaded(self) -> SimResponse | None:
        if self.engine.in_flight + self.engine.waiting >= self.config.max_queue:
            return _json(429, {"error": "Model is overloaded", "error_type": "overloaded"})
        return None

    async def health(self, req: SimRequest) -> SimResponse:
        return SimResponse(status=200)

    async def info(self, req: SimRequest) -> SimResponse:
        c = self.config
        return _json(
            200,
            {
                "model_id": c.models[0],
                "model_sha": None,
                "model_dtype": "torch.float16",
                "model_device_type": "cuda",
                "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": c.max_queue,
                "max_best_of": 2,
                "max_stop_sequences": 4,
                "max_input_tokens": c.n_ctx - 1,
                "max_total_tokens": c.n_ctx,
                "waiting_served_ratio": 0.3,
                "max_batch_total_tokens": c.n_ctx * c.slots,
                "max_waiting_tokens": 20,
                "max_batch_size": None,
                "validation_workers": 2,
                "max_client_batch_size": 4,
                "router": "text-generation-router",
                "version": "3.3.4",
                "sha": None,
                "docker_label": None,
            },
        )

    async def models(self, req: SimRequest) -> SimResponse:
        m = self.config.models[0]
        return _json(
            200,
            {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": m}]},
        )


class LMStudio(Dialect):
    kind = "lmstudio"

    def __init__(self, engine: SimEngine) -> None:
        super().__init__(engine)
        self.routes.update(
            {
                ("GET", "/api/v0/models"): self.v0_models,
                ("GET", "/api/v1/models"): self.v1_models,
                ("POST", "/api/v0/chat/completions"): self.chat,
            }
        )

    def not_found(self, req: SimRequest) -> SimResponse:
        return _json(200, {"error": f"Unexpected endpoint or method. ({req.method} {req.path})"})

    def overflow(self, prompt: int, n: int) -> SimResponse | None:
        ctx = self.config.n_ctx
        if prompt <= ctx:
            return None
        return _json(
            400,
            {
                "error": (
                    f"Trying to keep the first {prompt} tokens when context the overflows."
                    " However, the model is loaded with context length of only"
                    f" {ctx} tokens, which is not enough. Try to load the model"
                    " with a larger context length, or provide a shorter input"
                )
            },
        )

    async def models(self, req: SimRequest) -> SimResponse:
        data = [
            {"id": m, "object": "model", "owned_by": "organization_owner"}
            for m in self.config.models
        ]
        return _json(200, {"data": data, "object": "list"})

    async def v0_models(self, req: SimRequest) -> SimResponse:
        c = self.config
        data = [
            {
                "id": m,
                "object": "model",
                "type": "llm",
                "publisher": "lmstudio-community",
                "arch": "llama",
                "compatibility_type": "gguf",
                "quantization": "Q4_K_M",
                "state": "loaded",
                "max_context_length": c.trained_ctx,
                "loaded_context_length": c.n_ctx,
            }
            for m in c.models
        ]
        return _json(200, {"object": "list", "data": data})

    async def v1_models(self, req: SimRequest) -> SimResponse:
        c = self.config
        models = [
            {
                "type": "llm",
                "publisher": "lmstudio-community",
                "key": m,
                "display_name": m,
                "architecture": "llama",
                "quantization": {"name": "Q4_K_M", "bits_per_weight": 4},
                "size_bytes": 4920753328,
                "params_string": "8B",
                "loaded_instances": [{"id": m, "config": {"context_length": c.n_ctx}}],
                "max_context_length": c.trained_ctx,
                "format": "gguf",
            }
            for m in c.models
        ]
        return _json(200, {"models": models})


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
        return _json(404, {"message": "Not Found"})

    def overloaded(self) -> SimResponse | None:
        return None

    async def ok(self, req: SimRequest) -> SimResponse:
        return SimResponse(status=200)

    async def localai_version(self, req: SimRequest) -> SimResponse:
        return _json(200, {"version": "v2.26.0 (sim)"})

    async def well_known(self, req: SimRequest) -> SimResponse:
        return _json(
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
        return _json(200, {"models": models})

    async def models(self, req: SimRequest) -> SimResponse:
        return _json(
            200,
            {"object": "list", "data": [{"id": m, "object": "model"} for m in self.config.models]},
        )


class OpenAICloud(Dialect):
    kind = "openai"

    async def handle(self, req: SimRequest) -> SimResponse:
        key = self.config.api_key
        if key is not None and req.headers.get("authorization") != f"Bearer {key}":
            resp = _json(
                401,
                {
                    "error": {
                        "message": "Incorrect API key provided.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                },
            )
        else:
            resp = await super().handle(req)
        resp.headers += [
            ("openai-version", "2020-10-01"),
            ("openai-processing-ms", "12"),
            ("x-request-id", f"req_sim{self.engine.requests}"),
        ]
        return resp

    def not_found(self, req: SimRequest) -> SimResponse:
        return _json(
            404,
            {
                "error": {
                    "message": f"Invalid URL ({req.method} {req.path})",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
        )

    def overflow(self, prompt: int, n: int) -> SimResponse | None:
        ctx = self.config.n_ctx
        if prompt <= ctx:
            return None
        msg = (
            f"This model's maximum context length is {ctx} tokens. However, your messages"
            f" resulted in {prompt} tokens. Please reduce the length of the messages."
        )
        return _json(
            400,
            {
                "error": {
                    "message": msg,
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            },
        )

    def overloaded(self) -> SimResponse | None:
        limit = self.config.rate_limit
        if limit is None or self.engine.in_flight + self.engine.waiting < limit:
            return None
        retry = self.config.retry_after
        return _json(
            429,
            {
                "error": {
                    "message": f"Rate limit reached. Please try again in {retry}s.",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            },
            headers=[
                ("retry-after", f"{retry:g}"),
                ("x-ratelimit-limit-requests", str(limit)),
                ("x-ratelimit-remaining-requests", "0"),
            ],
        )

    async def models(self, req: SimRequest) -> SimResponse:
        data = [
            {"id": m, "object": "model", "created": 1715367049, "owned_by": "system"}
            for m in self.config.models
        ]
        return _json(200, {"object": "list", "data": data})


DIALECT_CLASSES: dict[str, type[Dialect]] = {
    "llamacpp": LlamaCpp,
    "ollama": Ollama,
    "vllm": VLLM,
    "tgi": TGI,
    "lmstudio": LMStudio,
    "localai": LocalAI,
    "openai": OpenAICloud,
}
