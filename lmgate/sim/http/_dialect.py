"""The base of every simulated dialect: routing and OpenAI-compatible chat.

A ``Dialect`` maps (method, path) to a handler, answers 503 while the model
loads (except on the routes a server keeps up meanwhile), and serves
``/v1/chat/completions`` with and without SSE streaming.  Each server's
subclass adds its own routes and overrides the hooks that differ: what a
404 looks like, how it says a prompt does not fit or that it is busy.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from lmgate.sim.http._base import (
    SimEngine,
    SimRequest,
    SimResponse,
    json_response,
    prompt_tokens,
)

__all__ = ["Dialect", "Route"]

Route = Callable[[SimRequest], Any]


class Dialect:
    """Base: routing, the OpenAI-compatible chat, and per-server hooks."""

    kind = "openai"
    server_header: str | None = None
    usage_in_stream = "requested"  # "requested" (stream_options) | "always" | "never"

    def __init__(self, engine: SimEngine) -> None:
        self.engine = engine
        self.config = engine.config
        self.routes: dict[tuple[str, str], Route] = {
            ("POST", "/v1/chat/completions"): self.chat,
            ("GET", "/v1/models"): self.models,
        }

    async def handle(self, req: SimRequest) -> SimResponse:
        path = req.path.split("?", 1)[0].rstrip("/") or "/"
        route = self.routes.get((req.method, path))
        if route is None:
            resp = self.not_found(req)
        elif self.engine.loading() and path not in self.always_up():
            resp = self.loading_response()
        else:
            resp = await route(req)
        if self.server_header:
            resp.headers.append(("server", self.server_header))
        return resp

    def always_up(self) -> frozenset[str]:
        return frozenset()

    def not_found(self, req: SimRequest) -> SimResponse:
        return json_response(404, {"error": {"message": "Not Found", "type": "not_found_error"}})

    def loading_response(self) -> SimResponse:
        return json_response(
            503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
        )

    def bad_request(self, message: str) -> SimResponse:
        return json_response(
            400, {"error": {"code": 400, "message": message, "type": "invalid_request_error"}}
        )

    def overflow(self, prompt: int, n: int) -> SimResponse | None:
        """The server's answer when the prompt does not fit, or None if it does."""
        return None

    def overloaded(self) -> SimResponse | None:
        return None

    async def models(self, req: SimRequest) -> SimResponse:
        data = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": self.kind}
            for m in self.config.models
        ]
        return json_response(200, {"object": "list", "data": data})

    async def chat(self, req: SimRequest) -> SimResponse:
        body = req.json()
        if not isinstance(body, dict):
            return self.bad_request("invalid JSON body")
        prompt = prompt_tokens(body.get("messages"))
        if prompt is None:
            return self.bad_request("messages must be a non-empty list")
        raw_n = body.get("max_tokens", body.get("max_completion_tokens"))
        n = raw_n if isinstance(raw_n, int) and raw_n > 0 else self.config.max_tokens
        refusal = self.overflow(prompt, n) or self.overloaded()
        if refusal is not None:
            return refusal
        raw_model = body.get("model")
        model = raw_model if isinstance(raw_model, str) else self.config.models[0]
        cid = f"chatcmpl-sim{self.engine.requests}"
        self.engine.requests += 1
        if body.get("stream"):
            opts = body.get("stream_options")
            want = isinstance(opts, dict) and opts.get("include_usage") is True
            usage = self.usage_in_stream == "always" or (want and self.usage_in_stream != "never")
            stream = self._sse(cid, model, prompt, n, usage)
            return SimResponse(
                status=200, headers=[("content-type", "text/event-stream")], stream=stream
            )
        text = "".join([t async for t in self.engine.generate(prompt, n)])
        return json_response(
            200,
            {
                "id": cid,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "length",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": n,
                    "total_tokens": prompt + n,
                },
            },
        )

    async def _sse(
        self, cid: str, model: str, prompt: int, n: int, usage: bool
    ) -> AsyncIterator[bytes]:
        base = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }

        def event(obj: dict[str, Any]) -> bytes:
            return b"data: " + msgspec.json.encode({**base, **obj}) + b"\n\n"

        role = True
        async for tok in self.engine.generate(prompt, n):
            if role:  # sent once the first token exists, as the servers do
                role = False
                yield event(
                    {
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"role": "assistant", "content": ""},
                                "finish_reason": None,
                            }
                        ]
                    }
                )
            yield event(
                {"choices": [{"index": 0, "delta": {"content": tok}, "finish_reason": None}]}
            )
        yield event({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
        if usage:
            yield event(
                {
                    "choices": [],
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": n,
                        "total_tokens": prompt + n,
                    },
                }
            )
        yield b"data: [DONE]\n\n"
