"""Endpoints learn models, windows, kind and a real health check from a probe."""

from __future__ import annotations

import httpx
import pytest

from lmgate._endpoint import Endpoint
from lmgate._errors import InvalidParameter
from lmgate.detect import health_status, learn, probe
from lmgate.detect._probe import _CACHE
from lmgate.sim.http._app import SimHTTPConfig, SimHTTPServer


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    _CACHE.clear()


@pytest.mark.anyio
async def test_discover_builds_an_endpoint_from_the_server() -> None:
    """discover() fills kind, models, windows, locality and the health route."""
    cfg = SimHTTPConfig(kind="llamacpp", models=("tiny",), slots=2, n_ctx=300)
    async with SimHTTPServer(cfg) as server:
        ep = await Endpoint.discover(server.url + "/v1", name="box", read_timeout=30.0)
        assert ep.health is not None
        assert await ep.health(ep) is True
        await server.stop()
        assert await ep.health(ep) is False
    assert (ep.name, ep.kind, ep.local, ep.models) == ("box", "llamacpp", True, ("tiny",))
    assert ep.window_for("tiny") == 300
    assert ep.read_timeout == 30.0
    assert ep.probe is True


@pytest.mark.anyio
async def test_what_the_user_said_wins() -> None:
    """Configured models, kind, locality and window overrides are kept."""
    cfg = SimHTTPConfig(kind="vllm", models=("a", "b"), n_ctx=8000)

    async def mine(_: Endpoint) -> bool:
        return True

    user = Endpoint(
        "e",
        url="http://placeholder:1",
        models=["a"],
        kind="vllm",
        local=False,
        context_windows={"a": 1000},
        health=mine,
    )
    async with SimHTTPServer(cfg) as server:
        info = await probe(server.url)
    learned = learn(user, info)
    assert learned.models == ("a",)
    assert learned.local is False
    assert learned.window_for("a") == 1000
    assert learned.window_for("b") == 8000
    assert learned.health is mine


@pytest.mark.anyio
async def test_loading_server_is_not_healthy() -> None:
    """While the model loads, the server's own health route says not yet."""
    async with SimHTTPServer(SimHTTPConfig(models=("m",), load_time=3600)) as server:
        info = await probe(server.url)
        ep = learn(Endpoint("e", url=server.url), info)
        assert info.loading is True
        assert ep.health is not None
        assert await ep.health(ep) is False


@pytest.mark.anyio
async def test_unreachable_discover_is_refused() -> None:
    """Discovering a URL nobody answers is a typed error."""
    async with SimHTTPServer() as server:
        url = server.url
    with pytest.raises(InvalidParameter):
        await Endpoint.discover(url, timeout=0.5)


@pytest.mark.anyio
async def test_unreachable_probe_teaches_nothing() -> None:
    """learn() leaves the endpoint alone when the probe got no answer."""
    async with SimHTTPServer() as server:
        url = server.url
    info = await probe(url, timeout=0.5)
    ep = Endpoint("e", url=url)
    assert learn(ep, info) is ep


@pytest.mark.anyio
async def test_health_status_tells_loading_down_and_gone_apart() -> None:
    """Serving, loading and not answering are three different answers."""
    async with SimHTTPServer(SimHTTPConfig(models=("m",))) as up:
        ok = await health_status(up.url + "/v1", "/health")
        wrong = await health_status(up.url, "/no-such-route")
    async with SimHTTPServer(SimHTTPConfig(models=("m",), load_time=3600)) as slow:
        loading = await health_status(slow.url, "/health")
    assert (ok.ok, ok.loading, ok.status) == (True, False, 200)
    assert (wrong.ok, wrong.status) == (False, 404)
    assert (loading.ok, loading.loading, loading.status) == (False, True, 503)
    with pytest.raises(httpx.ConnectError):
        await health_status(up.url, "/health")


@pytest.mark.anyio
async def test_health_check_follows_the_endpoint_it_is_given() -> None:
    """The learned check asks the URL of the endpoint it is handed (a moved server)."""
    async with SimHTTPServer(SimHTTPConfig(models=("m",))) as first:
        info = await probe(first.url)
        check = learn(Endpoint("e", url=first.url), info).health
        assert check is not None
    async with SimHTTPServer(SimHTTPConfig(models=("m",))) as second:
        assert await check(Endpoint("e", url=second.url)) is True
    assert await check(Endpoint("e", url=second.url)) is False
