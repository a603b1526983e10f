"""One bounded httpx client per endpoint, all closed together.

Each endpoint gets its own connection pool (``max_connections``) and its
own connect/read/pool timeouts, so a slow or dead server can exhaust only
its own connections; the endpoint's API key is set on its client alone.
Close the pool with the scheduler (``async with ClientPool(...)``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import final

import httpx
import msgspec

from lmgate._endpoint import Endpoint, EndpointRef
from lmgate._errors import InvalidParameter, SchedulerClosed
from lmgate.detect._locality import classify_url

__all__ = ["ClientPool", "ClientPoolStatistics", "pooled_transport"]

_STALE = "without sending a response"


class _RetryStale(httpx.AsyncBaseTransport):
    """Resend once when a reused keep-alive connection turns out to be closed.

    Some servers (llama.cpp's HTTP layer among them) close a keep-alive
    connection after a chunked response without saying ``Connection:
    close``; the next request on it fails before a single response byte
    arrives.  No handler answered that request, so it is sent once more on
    a fresh connection -- what browsers do for the same race.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._inner.handle_async_request(request)
        except httpx.RemoteProtocolError as exc:
            if _STALE not in str(exc) or not isinstance(request.stream, httpx.ByteStream):
                raise
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def pooled_transport(max_connections: int, *, uds: str | None = None) -> httpx.AsyncBaseTransport:
    """The connection pool lmgate uses for one endpoint."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=min(max_connections, 20)
    )
    return _RetryStale(httpx.AsyncHTTPTransport(limits=limits, retries=0, uds=uds))


@final
class ClientPoolStatistics(msgspec.Struct, frozen=True, kw_only=True):
    endpoints: int
    open_clients: int
    closed: bool


@final
class ClientPool:
    """Lazily built ``httpx.AsyncClient`` per endpoint name.

    ``transport`` builds the transport for an endpoint (tests pass a mock);
    by default it is ``httpx.AsyncHTTPTransport`` with the endpoint's pool
    bound, over its Unix socket when the URL names one.  :meth:`transport`
    hands out the same connection pool for code that sends its own
    requests (``SchedulingTransport`` does), so an endpoint has one pool
    whichever way it is spoken to.  An endpoint given as an ``Endpoint``
    that the pool does not know yet (one added to a running scheduler) is
    taken in.
    """

    __slots__ = ("_clients", "_closed", "_endpoints", "_transport", "_transports")

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        transport: Callable[[Endpoint], httpx.AsyncBaseTransport] | None = None,
    ) -> None:
        self._endpoints = {ep.name: ep for ep in endpoints}
        if len(self._endpoints) != len(endpoints):
            raise InvalidParameter("duplicate endpoint names", field="endpoints")
        self._transport = transport
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._transports: dict[str, httpx.AsyncBaseTransport] = {}
        self._closed = False

    def client(self, endpoint: str | Endpoint | EndpointRef) -> httpx.AsyncClient:
        """The client for ``endpoint`` (a name, an Endpoint or a lease's ref)."""
        if self._closed:
            raise SchedulerClosed("the client pool is closed")
        name = endpoint if isinstance(endpoint, str) else endpoint.name
        c = self._clients.get(name)
        if c is not None:
            return c
        ep = self._endpoints.get(name)
        if ep is None and isinstance(endpoint, Endpoint):
            ep = self._endpoints[name] = endpoint
        if ep is None:
            raise InvalidParameter(f"unknown endpoint {name!r}", field="endpoint")
        self._clients[name] = c = self._build(ep)
        return c

    def transport(self, endpoint: str | Endpoint | EndpointRef) -> httpx.AsyncBaseTransport:
        """The connection pool under ``endpoint``'s client (closed with the pool)."""
        self.client(endpoint)
        return self._transports[endpoint if isinstance(endpoint, str) else endpoint.name]

    def _build(self, ep: Endpoint) -> httpx.AsyncClient:
        limits = httpx.Limits(
            max_connections=ep.max_connections,
            max_keepalive_connections=min(ep.max_connections, 20),
        )
        where = classify_url(ep.url)
        base = ep.url if where.socket_path is None else "http://localhost" + where.path
        transport = (
            self._transport(ep)
            if self._transport is not None
            else pooled_transport(ep.max_connections, uds=where.socket_path)
        )
        self._transports[ep.name] = transport
        timeout = httpx.Timeout(
            connect=ep.connect_timeout,
            read=ep.read_timeout,
            write=ep.read_timeout,
            pool=ep.connect_timeout,
        )
        headers: dict[str, str] = {}
        key = ep.api_key() if ep.api_key is not None else None
        if key is None and ep.api_key_env:
            key = os.environ.get(ep.api_key_env)
        if key:
            headers["authorization"] = f"Bearer {key}"
        return httpx.AsyncClient(
            base_url=base,
            transport=transport,
            timeout=timeout,
            limits=limits,
            headers=headers,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        self._closed = True
        clients, self._clients = list(self._clients.values()), {}
        self._transports = {}
        for c in clients:
            await c.aclose()

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def statistics(self) -> ClientPoolStatistics:
        return ClientPoolStatistics(
            endpoints=len(self._endpoints), open_clients=len(self._clients), closed=self._closed
        )

    def __repr__(self) -> str:
        return f"<ClientPool endpoints={sorted(self._endpoints)} open={len(self._clients)}>"
