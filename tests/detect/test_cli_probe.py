"""``lmgate probe``: the report and the JSON form."""

from __future__ import annotations

import io
import json

import pytest

from lmgate.cli._probe import probe_command
from lmgate.detect._probe import _CACHE
from lmgate.sim.http._app import SimHTTPConfig, SimHTTPServer


@pytest.mark.anyio
async def test_json_report() -> None:
    """--json prints the ServerInfo as JSON and exits 0."""
    _CACHE.clear()
    cfg = SimHTTPConfig(kind="llamacpp", models=("tiny",), slots=3, n_ctx=512)
    out = io.StringIO()
    async with SimHTTPServer(cfg) as server:
        code = await probe_command(server.url, True, out=out)
    data = json.loads(out.getvalue())
    assert code == 0
    assert (data["kind"], data["local"], data["slots"]) == ("llamacpp", True, 3)
    assert data["context_windows"] == {"tiny": 512}
    assert data["evidence"]


@pytest.mark.anyio
async def test_table_report() -> None:
    """The table names the server, the models and the evidence."""
    _CACHE.clear()
    out = io.StringIO()
    async with SimHTTPServer(SimHTTPConfig(kind="ollama", models=("llama3:8b",))) as server:
        code = await probe_command(server.url, False, out=out)
    text = out.getvalue()
    assert code == 0
    for needle in ("ollama", "self-hosted", "llama3:8b", "evidence", "GET /api/version"):
        assert needle in text


@pytest.mark.anyio
async def test_unreachable_exits_1() -> None:
    """A port nobody listens on is reported unreachable with status 1."""
    async with SimHTTPServer() as server:
        url = server.url
    out = io.StringIO()
    assert await probe_command(url, True, timeout=1.0, out=out) == 1
    assert json.loads(out.getvalue())["reachable"] is False


@pytest.mark.anyio
async def test_invalid_url_exits_2() -> None:
    """An unusable URL is refused with status 2."""
    out = io.StringIO()
    assert await probe_command("ftp://x", False, out=out) == 2
    assert "scheme" in out.getvalue()
