"""The pieces every simulated HTTP server shares: config, messages, engine.

``SimHTTPConfig`` describes one server; ``SimRequest``/``SimResponse`` are
what a dialect reads and answers, independent of the socket or mock that
carries them; ``SimEngine`` is the deliberately simple timing model:
``slots`` requests generate at once, each spends ``prompt_time`` per prompt
token and ``token_time`` per output token on the anyio clock (so virtual
time works); the rest wait.  Tokens are one per four UTF-8 bytes plus four
per message.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any, final

import anyio
import msgspec

from lmgate._errors import InvalidParameter

__all__ = [
    "HTTP_DIALECTS",
    "JSON",
    "SimEngine",
    "SimHTTPConfig",
    "SimRequest",
    "SimResponse",
    "json_response",
    "prompt_tokens",
    "text_response",
    "tokens_of",
]

HTTP_DIALECTS = ("llamacpp", "ollama", "vllm", "tgi", "lmstudio", "localai", "openai")
_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")
JSON = "application/json; charset=utf-8"


@final
class SimHTTPConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A simulated server.  ``n_ctx`` is the window it runs each model with
    (per slot for llama.cpp, ``max_model_len`` for vLLM, ``max_total_tokens``
    for TGI, the loaded context for Ollama and LM Studio); ``max_queue`` is
    Ollama's pending-request bound and TGI's ``max_concurrent_requests``;
    ``rate_limit`` is the concurrency above which the cloud dialect answers
    429; ``load_time`` how long after start it answers 503 loading."""

    kind: str = "llamacpp"
    models: tuple[str, ...] = ("sim-model",)
    slots: int = 4
    n_ctx: int = 4096
    trained_ctx: int = 32768
    prompt_time: float = 0.0
    token_time: float = 0.001
    max_tokens: int = 16
    max_queue: int = 512
    load_time: float = 0.0
    api_key: str | None = None
    rate_limit: int | None = None
    retry_after: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in HTTP_DIALECTS:
            raise InvalidParameter(f"kind must be one of {HTTP_DIALECTS}", field="kind")
        if not self.models or not all(isinstance(m, str) and m for m in self.models):
            raise InvalidParameter("models must be non-empty names", field="models")
        msgspec.structs.force_setattr(self, "models", tuple(self.models))
        for f in ("slots", "n_ctx", "trained_ctx", "max_tokens", "max_queue"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidParameter(f"{f} must be a positive int", field=f)
        for f in ("prompt_time", "token_time", "load_time", "retry_after"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf:
                raise InvalidParameter(f"{f} must be a finite number >= 0", field=f)


class SimRequest(msgspec.Struct, frozen=True, kw_only=True):
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> Any:
        try:
            return msgspec.json.decode(self.body) if self.body else {}
        except msgspec.DecodeError:
            return None


class SimResponse(msgspec.Struct, kw_only=True):
    status: int
    headers: list[tuple[str, str]] = msgspec.field(default_factory=list)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


def tokens_of(text: str) -> int:
    return math.ceil(len(text.encode()) / 4)


def prompt_tokens(messages: Any) -> int | None:
    if not isinstance(messages, list) or not messages:
        return None
    total = 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            return None
        total += tokens_of(content) + 4
    return total


@final
class SimEngine:
    """Slots, a queue and per-token timing shared by a server's routes."""

    def __init__(self, config: SimHTTPConfig) -> None:
        self.config = config
        self._slots: anyio.Semaphore | None = None
        self.started_at: float | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        self.waiting = 0
        self.requests = 0
        self.completed = 0

    def start(self) -> None:
        self.started_at = anyio.current_time()

    def loading(self) -> bool:
        if self.started_at is None:
            self.start()
        assert self.started_at is not None
        return anyio.current_time() - self.started_at < self.config.load_time

    def _sem(self) -> anyio.Semaphore:
        if self._slots is None:
            self._slots = anyio.Semaphore(self.config.slots)
        return self._slots

    async def generate(self, prompt: int, n: int) -> AsyncIterator[str]:
        """Wait for a slot, process the prompt, then yield ``n`` tokens."""
        self.waiting += 1
        try:
            await self._sem().acquire()
        finally:
            self.waiting -= 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await anyio.sleep(prompt * self.config.prompt_time)
            for i in range(n):
                await anyio.sleep(self.config.token_time)
                yield " " + _WORDS[i % len(_WORDS)]
            self.completed += 1
        finally:
            self.in_flight -= 1
            self._sem().release()


def json_response(
    status: int, obj: Any, headers: list[tuple[str, str]] | None = None
) -> SimResponse:
    return SimResponse(
        status=status,
        headers=[("content-type", JSON), *(headers or [])],
        body=msgspec.json.encode(obj),
    )


def text_response(status: int, text: str, ctype: str = "text/plain; charset=utf-8") -> SimResponse:
    return SimResponse(status=status, headers=[("content-type", ctype)], body=text.encode())
