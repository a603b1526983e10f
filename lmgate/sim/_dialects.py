"""What each simulated server says: routes, fields, headers and errors.

Each dialect answers the routes lmgate uses exactly as the real server does
(shapes recorded in ``tests/detect/fixtures``): the documented probe
routes, OpenAI-style chat with SSE streaming, and each server's own way of
saying that a prompt does not fit, that it is busy, or that it is still
loading.  vLLM, TGI, LM Studio and the cloud API live here; llama.cpp and
Ollama (with LocalAI, which imitates it) have modules of their own.
``DIALECT_CLASSES`` maps each kind to its class.
"""

from __future__ import annotations

from typing import Any

from lmgate.sim.http._base import (
    SimEngine,
    SimRequest,
    SimResponse,
    json_response,
    text_response,
    tokens_of,
)
from lmgate.sim.http._dialect import Dialect
from lmgate.sim.http._llamacpp import LlamaCpp
from lmgate.sim.http._ollama import LocalAI, Ollama

__all__ = ["DIALECT_CLASSES"]


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
        return json_response(
            400, {"error": {"message": msg, "type": "BadRequestError", "param": None, "code": 400}}
        )

    async def health(self, req: SimRequest) -> SimResponse:
        return SimResponse(status=200)

    async def version(self, req: SimRequest) -> SimResponse:
        return json_response(200, {"version": "0.6.3"})

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
        return json_response(200, {"object": "list", "data": data})

    async def metrics(self, req: SimRequest) -> SimResponse:
        m = self.config.models[0]
        text = (
            f'vllm:num_requests_running{{model_name="{m}"}} {float(self.engine.in_flight)}\n'
            f'vllm:num_requests_waiting{{model_name="{m}"}} {float(self.engine.waiting)}\n'
            # The cache as vLLM states it: blocks of 16 tokens for every slot's context.
            f'vllm:cache_config_info{{block_size="16",num_gpu_blocks='
            f'"{self.config.n_ctx * self.config.slots // 16}"}} 1.0\n'
        )
        return text_response(200, text, "text/plain; version=0.0.4; charset=utf-8")

    async def tokenize(self, req: SimRequest) -> SimResponse:
        body = req.json()
        prompt = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(prompt, str):
            return self.bad_request("prompt is required")
        n = tokens_of(prompt)
        return json_response(
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
            return json_response(
                422, {"error": "missing field `inputs`", "error_type": "validation"}
            )
        toks = [
            {"id": i, "text": "t", "start": 4 * i, "stop": 4 * i + 4}
            for i in range(tokens_of(inputs))
        ]
        return json_response(200, toks)

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
        return json_response(422, {"error": msg, "error_type": "validation"})

    def overloaded(self) -> SimResponse | None:
        if self.engine.in_flight + self.engine.waiting >= self.config.max_queue:
            return json_response(429, {"error": "Model is overloaded", "error_type": "overloaded"})
        return None

    async def health(self, req: SimRequest) -> SimResponse:
        return SimResponse(status=200)

    async def info(self, req: SimRequest) -> SimResponse:
        c = self.config
        return json_response(
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
        return json_response(
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
        return json_response(
            200, {"error": f"Unexpected endpoint or method. ({req.method} {req.path})"}
        )

    def overflow(self, prompt: int, n: int) -> SimResponse | None:
        ctx = self.config.n_ctx
        if prompt <= ctx:
            return None
        return json_response(
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
        return json_response(200, {"data": data, "object": "list"})

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
        return json_response(200, {"object": "list", "data": data})

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
        return json_response(200, {"models": models})


class OpenAICloud(Dialect):
    kind = "openai"

    async def handle(self, req: SimRequest) -> SimResponse:
        key = self.config.api_key
        if key is not None and req.headers.get("authorization") != f"Bearer {key}":
            resp = json_response(
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
        return json_response(
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
        return json_response(
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
        return json_response(
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
        return json_response(200, {"object": "list", "data": data})


DIALECT_CLASSES: dict[str, type[Dialect]] = {
    "llamacpp": LlamaCpp,
    "ollama": Ollama,
    "vllm": VLLM,
    "tgi": TGI,
    "lmstudio": LMStudio,
    "localai": LocalAI,
    "openai": OpenAICloud,
}
