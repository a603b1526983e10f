"""A private ``redis-server`` per test module, which fault tests stop and restart."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from ._server import RedisServer


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A running ``redis-server``; skips the module when none is installed."""
    binary = shutil.which("redis-server")
    if binary is None and os.path.exists("/usr/sbin/redis-server"):
        binary = "/usr/sbin/redis-server"
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The server's URL, on a flushed database, restarted if a test stopped it."""
    if redis_server.proc is None:
        redis_server.start()
    redis_server.flush()
    yield redis_server.url
    if redis_server.proc is None:
        redis_server.start()
