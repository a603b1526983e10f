"""Simulated model servers over HTTP on loopback, or as an httpx mock.

:class:`SimHTTPServer` is a minimal HTTP/1.1 server on
``anyio.create_tcp_listener`` (keep-alive, ``Content-Length`` and chunked
bodies) that answers in a server's dialect (``_dialects`` and the
``_http_*`` modules); it can be stopped abruptly mid-stream and started
again on the same port, which is what a crashing model server looks like
to a client.  :func:`sim_transport` gives the same answers through
``httpx.MockTransport`` for tests that need no socket.  Timing comes from
``SimEngine`` (``_http_base``).
"""

from __future__ import annotations

from typing import Any, final

import anyio
import anyio.abc
import httpx
import msgspec
from anyio.abc import TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

from lmgate._errors import InvalidParameter
from lmgate.sim._dialects import DIALECT_CLASSES
from lmgate.sim.http._base import (
    HTTP_DIALECTS,
    SimEngine,
    SimHTTPConfig,
    SimRequest,
    SimResponse,
)
from lmgate.sim.http._dialect import Dialect
from lmgate.sim.http._wire import read_chunked, write_response

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


def make_dialect(engine: SimEngine) -> Dialect:
    """The dialect object for ``engine.config.kind``."""
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
            body = await read_chunked(reader)
        else:
            length = int(headers.get("content-length", "0") or 0)
            if length > 64 << 20:
                return False
            body = await reader.receive_exactly(length) if length else b""
        response = await self.dialect.handle(
            SimRequest(method=method, path=target, headers=headers, body=body)
        )
        keep = headers.get("connection", "").lower() != "close"
        await write_response(stream, response, keep)
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
