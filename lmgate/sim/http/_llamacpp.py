"""The simulated llama.cpp ``llama-server``: props, slots, metrics, tokenizer.

Its model list carries an Ollama-style ``models`` array next to the OpenAI
``data`` (as the real server's does), its windows are per slot (``n_ctx``
in ``/props``, ``/slots`` and ``meta``), and a prompt longer than a slot's
window is refused with ``exceed_context_size_error`` and both numbers.
"""

from __future__ import annotations

from lmgate.sim.http._base import (
    SimEngine,
    SimRequest,
    SimResponse,
    json_response,
    text_response,
    tokens_of,
)
from lmgate.sim.http._dialect import Dialect

__all__ = ["LlamaCpp"]


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
        return json_response(
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
        return json_response(
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
        return json_response(200, {"status": "ok"})

    async def props(self, req: SimRequest) -> SimResponse:
        m = self.config.models[0]
        return json_response(
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
        return json_response(
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
        return json_response(200, {"models": ollama_style, "object": "list", "data": data})

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
        return text_response(200, text, "text/plain; version=0.0.4")

    async def tokenize(self, req: SimRequest) -> SimResponse:
        body = req.json()
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, str):
            return self.bad_request('"content" must be provided')
        return json_response(200, {"tokens": list(range(1, tokens_of(content) + 1))})
