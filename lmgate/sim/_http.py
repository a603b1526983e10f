"""Simulated model servers over HTTP on loopback, or as an httpx mock.

:class:`SimHTTPServer` is a minimal HTTP/1.1 server on
``anyio.create_tcp_listener`` (keep-alive, ``Content-Length`` and chunked
bodies) that answers in a server's dialect (see ``_dialects``); it can be
stopped abruptly mid-stream and started again on the same port, which is
what a crashing model server looks like to a client.  :func:`sim_transport`
gives the same answers through ``httpx.MockTransport`` for tests that need
no socket.  Timing comes from a deliberately simple engine: ``slots``
requests generate at once, each spends ``prompt_time`` per prompt token and
``token_time`` per output token on the anyio clock (so virtual time
works); the rest wait.  Tokens are one per four UTF-8 bytes plus four per
message.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, final

import anyio
import anyio.abc
import httpx
import msgspec
from anyio.abc import TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

from lmgate._errors import InvalidParameter

__all__ = [
    "HTTP_DIALECTS",
    "SimEngine",
    "SimHTTPConfig",
    "SimHTTPServer",
    "SimHTTPServerStatistics",
    "SimRequest",
    "SimResponse",
    "make_dialect",
    "sim_transport",
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


def _json(status: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> SimResponse:
    return SimResponse(
        status=status,
        headers=[("content-type", JSON), *(headers or [])],
        body=msgspec.json.encode(obj),
    )


def _text(status: int, text: str, ctype: str = "text/plain; charset=utf-8") -> SimResponse:
    return SimResponse(status=status, headers=[("content-type", ctype)], body=text.encode())


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
        return _json(404, {"error": {"message": "Not Found", "type": "not_found_error"}})

    def loading_response(self) -> SimResponse:
        return _json(
            503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
        )

    def bad_request(self, message: str) -> SimResponse:
        return _json(
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
        return _json(200, {"object": "list", "data": data})

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
        return _json(
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


def make_dialect(engine: SimEngine) -> Dialect:
    """The dialect object for ``engine.config.kind``."""
    from lmgate.sim._dialects import DIALECT_CLASSES

    return DIALECT_CLASSES[engine.config.kind](engine)


@final
class SimHTTPServerStatistics(msgspec.Struct, frozen=True, kw_only=True):
    requests: int
    completed: int
    in_flight: int
    max_in_flight: int
    waiting: int
    connections: int
    running: bool


@final
class SimHTTPServer:
    """A simulated model server listening on loopback.

    ``async with SimHTTPServer(SimHTTPConfig(kind="ollama")) as server:``
    then point a client at ``server.url``.  ``await server.stop()`` drops the
    listener and every open connection at once (a crash, mid-stream
    included); ``await server.start()`` listens again on the same port.
    """

    def __init__(
        self, config: SimHTTPConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config if config is not None else SimHTTPConfig()
        self.engine = SimEngine(self.config)
        self.dialect = make_dialect(self.engine)
        self._host = host
        self._port = port
        self._tg: TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopped: anyio.Event | None = None
        self._connections = 0

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The server's base URL (no ``/v1``)."""
        return f"http://{self._host}:{self._port}"

    async def __aenter__(self) -> SimHTTPServer:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self.start()
        except BaseException:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        return await self._tg.__aexit__(*exc)

    async def start(self) -> None:
        """Listen (again) on the configured or previously chosen port."""
        if self._tg is None:
            raise InvalidParameter("use the server as `async with`", field="server")
        if self._scope is not None:
            return
        listener = await anyio.create_tcp_listener(local_host=self._host, local_port=self._port)
        self._port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        self.engine.start()
        self._scope = anyio.CancelScope()
        self._stopped = anyio.Event()
        self._tg.start_soon(self._serve, listener, self._scope, self._stopped)

    async def stop(self) -> None:
        """Drop the listener and every connection, like a process that died."""
        if self._scope is None or self._stopped is None:
            return
        self._scope.cancel()
        await self._stopped.wait()
        self._scope = None

    async def _serve(
        self, listener: anyio.abc.Listener[Any], scope: anyio.CancelScope, done: anyio.Event
    ) -> None:
        try:
            with scope:
                async with listener:
                    await listener.serve(self._connection)
        finally:
            done.set()

    async def _connection(self, stream: anyio.abc.ByteStream) -> None:
        self._connections += 1
        async with stream:
            reader = BufferedByteReceiveStream(stream)
            try:
                while await self._one(reader, stream):
                    pass
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.DelimiterNotFound):
                pass
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass

    async def _one(self, reader: BufferedByteReceiveStream, stream: anyio.abc.ByteStream) -> bool:
        head = await reader.receive_until(b"\r\n\r\n", 65536)
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = [*lines[0].split(" "), "", ""][:3]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await _read_chunked(reader)
        else:
            length = int(headers.get("content-length", "0") or 0)
            if length > 64 << 20:
                return False
            body = await reader.receive_exactly(length) if length else b""
        response = await self.dialect.handle(
            SimRequest(method=method, path=target, headers=headers, body=body)
        )
        keep = headers.get("connection", "").lower() != "close"
        await _write(stream, response, keep)
        return keep

    def statistics(self) -> SimHTTPServerStatistics:
        e = self.engine
        return SimHTTPServerStatistics(
            requests=e.requests,
            completed=e.completed,
            in_flight=e.in_flight,
            max_in_flight=e.max_in_flight,
            waiting=e.waiting,
            connections=self._connections,
            running=self._scope is not None,
        )

    def __repr__(self) -> str:
        return f"<SimHTTPServer {self.config.kind} {self.url}>"


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


async def _read_chunked(reader: BufferedByteReceiveStream) -> bytes:
    out = bytearray()
    while True:
        size = int((await reader.receive_until(b"\r\n", 1024)).split(b";")[0], 16)
        if size == 0:
            await reader.receive_until(b"\r\n", 65536)
            return bytes(out)
        out += await reader.receive_exactly(size)
        await reader.receive_exactly(2)
        if len(out) > 64 << 20:
            raise anyio.IncompleteRead


async def _write(stream: anyio.abc.ByteStream, response: SimResponse, keep: bool) -> None:
    status = response.status
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    head += [f"{k}: {v}" for k, v in response.headers]
    head.append("connection: " + ("keep-alive" if keep else "close"))
    if response.stream is None:
        head.append(f"content-length: {len(response.body)}")
        await stream.send(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
        return
    head.append("transfer-encoding: chunked")
    await stream.send(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    async for chunk in response.stream:
        if chunk:
            await stream.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    await stream.send(b"0\r\n\r\n")


def sim_transport(config: SimHTTPConfig | None = None) -> httpx.MockTransport:
    """The same simulated server as an ``httpx.MockTransport`` (no socket)."""
    engine = SimEngine(config if config is not None else SimHTTPConfig())
    dialect = make_dialect(engine)

    async def handler(request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        target = request.url.raw_path.decode("ascii")
        headers = {k.lower(): v for k, v in request.headers.items()}
        resp = await dialect.handle(
            SimRequest(method=request.method, path=target, headers=headers, body=body)
        )
        if resp.stream is not None:
            return httpx.Response(resp.status, headers=resp.headers, content=resp.stream)
        return httpx.Response(resp.status, headers=resp.headers, content=resp.body)

    transport = httpx.MockTransport(handler)
    transport.engine = engine  # type: ignore[attr-defined]
    return transport
