"""What an endpoint takes from a probe, and the health check it gets.

The scheduler calls these for an ``Endpoint(probe=True)`` when it starts
and on its health schedule, and ``Endpoint.discover(url)`` builds a new
endpoint from them (any type with the fields of :class:`Describable`).
:func:`learn` is pure: what the user configured
always wins (an explicit ``kind``, ``models``, ``local``, a window
override), the probe fills in the rest.  :func:`health_check` checks the
route the server itself documents for health, so a server still loading
its model is told apart from one that is down.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, cast, final

import anyio
import httpx
import msgspec

from lmgate.detect._evidence import Observation, read
from lmgate.detect._locality import classify_url
from lmgate.detect._probe import MAX_BODY, ServerInfo, server_root

__all__ = ["Describable", "HealthAnswer", "endpoint_key", "health_check", "health_status", "learn"]


class Describable(Protocol):
    """What learning reads of an endpoint (``lmgate.Endpoint`` is one).

    A protocol, so this layer knows servers without knowing the endpoint
    type that the layer above builds from them.
    """

    @property
    def url(self) -> str: ...
    @property
    def models(self) -> Sequence[str]: ...
    @property
    def kind(self) -> str: ...
    @property
    def local(self) -> bool | None: ...
    @property
    def context_windows(self) -> Mapping[str, int]: ...
    @property
    def kv_tokens(self) -> int | None: ...
    @property
    def health(self) -> object: ...
    @property
    def api_key(self) -> Callable[[], str] | None: ...
    @property
    def api_key_env(self) -> str | None: ...


class _HasUrl(Protocol):
    @property
    def url(self) -> str: ...


E = TypeVar("E", bound=Describable)


def endpoint_key(endpoint: Describable) -> str | None:
    """The endpoint's API key (from its callable or environment variable), if any."""
    if endpoint.api_key is not None:
        key = endpoint.api_key()
        return key if isinstance(key, str) and key else None
    if endpoint.api_key_env:
        return os.environ.get(endpoint.api_key_env) or None
    return None


def learn(endpoint: E, info: ServerInfo) -> E:
    """``endpoint`` with what ``info`` says filled in where the user said nothing.

    Models: the configured list, else the server's.  Windows: the server's
    figures under the user's overrides.  Kind and locality: the user's if
    set, else the probe's verdict.  The health check becomes the server's
    own health route unless the user gave one.
    """
    if not info.reachable:
        return endpoint
    changes: dict[str, Any] = {}
    if not endpoint.models and info.models:
        changes["models"] = info.models
    if endpoint.kind == "unknown" and info.kind != "unknown":
        changes["kind"] = info.kind
    if endpoint.local is None and info.local is not None:
        changes["local"] = info.local
    windows = {**info.context_windows, **endpoint.context_windows}
    if windows != dict(endpoint.context_windows):
        changes["context_windows"] = windows
    if endpoint.kv_tokens is None and info.kv_tokens is not None:
        changes["kv_tokens"] = info.kv_tokens
        changes["kv_source"] = info.kv_source
    if endpoint.health is None and info.health_route is not None:
        changes["health"] = health_check(info, api_key=endpoint_key(endpoint))
    if not changes:
        return endpoint
    replaced: E = msgspec.structs.replace(cast(Any, endpoint), **changes)
    return replaced


@final
class HealthAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """What a server's own health route said: serving, loading, or neither."""

    ok: bool
    loading: bool = False
    status: int | None = None
    detail: str = ""


async def health_status(
    url: str,
    route: str,
    *,
    api_key: str | None = None,
    client: httpx.AsyncClient | None = None,
    timeout: float = 2.0,  # noqa: ASYNC109 -- one request's bound
) -> HealthAnswer:
    """GET ``route`` under ``url``'s server root and read the answer.

    Healthy means HTTP 200 without an error body; a 503 that says the model
    is loading is ``loading`` (the server is up, traffic should wait).
    Raises ``httpx.TransportError`` when nothing answered, so a caller can
    tell a refused connection (the server is gone, or moved) from a server
    that answers and is unwell.  Redirects are not followed, the body is
    capped, and the key goes to this server only.
    """
    where = classify_url(url)
    root = "http://localhost" + where.path.rstrip("/") if where.socket_path else server_root(url)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    own = client is None
    if client is None:
        transport = httpx.AsyncHTTPTransport(uds=where.socket_path) if where.socket_path else None
        client = httpx.AsyncClient(transport=transport, timeout=timeout)
    try:
        # httpx's timeout bounds each read; the whole answer, a body that
        # trickles included, gets ``timeout`` in all.
        with anyio.move_on_after(timeout) as scope:
            async with client.stream(
                "GET", root + route, headers=headers, timeout=timeout, follow_redirects=False
            ) as r:
                body = bytearray()
                async for chunk in r.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY:
                        break
                status, rheaders = r.status_code, dict(r.headers)
    finally:
        if own:
            await client.aclose()
    if scope.cancelled_caught:
        raise httpx.ReadTimeout(f"{route} did not answer in full within {timeout} s")
    obs = Observation(
        method="GET",
        path=route,
        status=status,
        headers={k.lower(): v[:512] for k, v in rheaders.items()},
        body=bytes(body[:MAX_BODY]),
        truncated=len(body) > MAX_BODY,
    )
    reading = read(obs)
    if reading.loading:
        return HealthAnswer(ok=False, loading=True, status=status, detail="loading")
    ok = status == 200 and b'"error"' not in obs.body[:4096]
    return HealthAnswer(ok=ok, status=status, detail="" if ok else f"HTTP {status}")


def health_check(
    info: ServerInfo,
    *,
    api_key: str | None = None,
    client: httpx.AsyncClient | None = None,
    timeout: float = 2.0,
) -> Callable[[_HasUrl], Awaitable[bool]]:
    """A health check that GETs the server's documented health route.

    Healthy means HTTP 200 and not loading; the key, if any, goes to that
    server only.  The route is asked of the URL of the endpoint the check
    is given, so a server found on another port is checked where it is.
    """
    route = info.health_route or "/health"

    async def check(endpoint: _HasUrl) -> bool:
        try:
            answer = await health_status(
                endpoint.url, route, api_key=api_key, client=client, timeout=timeout
            )
        except httpx.HTTPError:
            return False
        return answer.ok

    return check
