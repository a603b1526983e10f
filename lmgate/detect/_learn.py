"""What an endpoint takes from a probe, and the health check it gets.

The scheduler calls these for an ``Endpoint(probe=True)`` when it starts
and on its health schedule, and ``Endpoint.discover(url)`` builds a new
endpoint from them.  :func:`learn` is pure: what the user configured
always wins (an explicit ``kind``, ``models``, ``local``, a window
override), the probe fills in the rest.  :func:`health_check` checks the
route the server itself documents for health, so a server still loading
its model is told apart from one that is down.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import msgspec

from lmgate._endpoint import Endpoint, HealthCheck
from lmgate._errors import InvalidParameter
from lmgate.detect._probe import ServerInfo, probe, server_root

__all__ = ["discover", "endpoint_key", "health_check", "learn"]


def endpoint_key(endpoint: Endpoint) -> str | None:
    """The endpoint's API key (from its callable or environment variable), if any."""
    if endpoint.api_key is not None:
        key = endpoint.api_key()
        return key if isinstance(key, str) and key else None
    if endpoint.api_key_env:
        return os.environ.get(endpoint.api_key_env) or None
    return None


def learn(endpoint: Endpoint, info: ServerInfo) -> Endpoint:
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
    if endpoint.health is None and info.health_route is not None:
        changes["health"] = health_check(info, api_key=endpoint_key(endpoint))
    return msgspec.structs.replace(endpoint, **changes) if changes else endpoint


def health_check(
    info: ServerInfo,
    *,
    api_key: str | None = None,
    client: httpx.AsyncClient | None = None,
    timeout: float = 2.0,
) -> HealthCheck:
    """A health check that GETs the server's documented health route.

    Healthy means HTTP 200 and not loading; the key, if any, goes to that
    server only.
    """
    route = info.health_route or "/health"
    url = server_root(info.url) + route
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}

    async def check(_: Endpoint) -> bool:
        own = client is None
        c = client if client is not None else httpx.AsyncClient(timeout=timeout)
        try:
            r = await c.get(url, headers=headers, timeout=timeout, follow_redirects=False)
        except httpx.HTTPError:
            return False
        finally:
            if own:
                await c.aclose()
        return r.status_code == 200 and b'"error"' not in r.content[:4096]

    return check


async def discover(
    url: str,
    *,
    name: str | None = None,
    model: str | None = None,
    timeout: float = 2.0,  # noqa: ASYNC109 -- the probe's per-round bound
    client: httpx.AsyncClient | None = None,
    **fields: Any,
) -> Endpoint:
    """An ``Endpoint`` for ``url`` built from what the server says it is.

    ``fields`` are any other ``Endpoint`` settings (``api_key_env``,
    ``limit``, timeouts...); they win over what the probe found.  Raises
    ``InvalidParameter`` for a URL that cannot be probed.
    """
    base = Endpoint(name or _name_for(url), url=url, probe=True, **fields)
    info = await probe(url, model=model, client=client, timeout=timeout, api_key=endpoint_key(base))
    if not info.reachable:
        raise InvalidParameter(f"{url[:80]!r} did not answer: {info.error}", field="url")
    return learn(base, info)


def _name_for(url: str) -> str:
    u = httpx.URL(url) if "://" in url else None
    if u is None or not u.host:
        return "endpoint"
    return f"{u.host}:{u.port}" if u.port else u.host
