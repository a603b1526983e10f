"""Reads a server's own metrics while it has traffic, for the limit policy.

The server knows whether it keeps requests waiting, how full its KV cache
is and how often it preempted (``lmgate.policies._engine``); the endpoint
actor hands each reading to its limit policy and to admission's token
budget.  Reads are opt-in (``Endpoint(engine_metrics=True)``, on by
``probe=True`` or by ``metrics=``), one every ``interval`` seconds at
most, each under ``timeout`` with at most 1 MiB read, and only while the
endpoint has had a finished request in the last ``idle`` seconds: an idle
server is asked nothing, and no client exists before the first read.  A
server that has no such route (404, 501 from a llama.cpp started without
``--metrics``) or whose metrics name none of the figures is asked nothing
more; one that does not answer is asked again at the next interval.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final, final

import anyio
import httpx
import msgspec
from anyio.streams.memory import MemoryObjectSendStream

from lmgate.actors._server_view import get_capped
from lmgate.detect._engine_metrics import engine_reading
from lmgate.detect._probe import server_root
from lmgate.policies._engine import EngineReading

__all__ = ["EngineWatch", "EngineWatchStatistics"]

#: Statuses that say the server answers but will not publish metrics.
_NO_METRICS: Final = frozenset({401, 403, 404, 405, 410, 501})


@final
class EngineWatchStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Reads of the server's metrics so far, and the latest one (None: none yet).

    ``state`` is ``idle`` (no traffic), ``reading`` or ``off`` (the server
    publishes no usable metrics).
    """

    state: str
    reads: int
    failures: int
    last: EngineReading | None


@final
class EngineWatch:
    """Polls one endpoint's metrics while it has traffic; sends each reading on."""

    __slots__ = (
        "_headers",
        "_idle",
        "_interval",
        "_off",
        "_reading",
        "_send",
        "_source",
        "_timeout",
        "_transport",
        "_until",
        "_url",
        "_wake",
        "failures",
        "last",
        "reads",
    )

    def __init__(
        self,
        url: Callable[[], str],
        send: MemoryObjectSendStream[Any],
        *,
        source: Callable[[], Awaitable[str]] | None = None,
        api_key: str | None = None,
        interval: float = 1.0,
        timeout: float = 2.0,
        idle: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = url
        self._send = send
        self._source = source
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._interval = interval
        self._timeout = timeout
        self._idle = idle
        self._transport = transport
        self._until = -math.inf
        self._wake = anyio.Event()
        self._off = False
        self._reading = False
        self.reads = 0
        self.failures = 0
        self.last: EngineReading | None = None

    def busy(self, now: float) -> None:
        """The endpoint has traffic at ``now``: keep reading for ``idle`` seconds."""
        self._until = now + self._idle
        if not self._wake.is_set():
            self._wake.set()

    async def run(self) -> None:
        client: httpx.AsyncClient | None = None
        try:
            async with self._send:
                # Read from the start: the first measurements of the limit
                # policy come before the first request has finished.
                self.busy(anyio.current_time())
                while not self._off:
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    if client is None and self._source is None:
                        # Made on first use: until then, no I/O at all.
                        client = httpx.AsyncClient(timeout=self._timeout, transport=self._transport)
                    self._reading = True
                    while not self._off and anyio.current_time() < self._until:
                        reading = await self._read(client)
                        if reading is not None:
                            self.last = reading
                            with contextlib.suppress(anyio.WouldBlock):  # behind: skip one
                                self._send.send_nowait(reading)
                        await anyio.sleep(self._interval)
                    self._reading = False
        finally:
            if client is not None:
                with anyio.CancelScope(shield=True):
                    await client.aclose()

    async def _read(self, client: httpx.AsyncClient | None) -> EngineReading | None:
        at = anyio.current_time()
        self.reads += 1
        text = await self._text(client)
        if text is None:
            self.failures += 1
            return None
        reading = engine_reading(text, at)
        if reading is None:
            self._off = True  # metrics, but none of the figures: nothing to follow
        return reading

    async def _text(self, client: httpx.AsyncClient | None) -> str | None:
        if self._source is not None:
            try:
                with anyio.move_on_after(self._timeout):
                    return str(await self._source())[: 1 << 20]
            except Exception:  # the user's reader failed: try again next time
                return None
            return None
        assert client is not None
        url = server_root(self._url()) + "/metrics"
        status, body = await get_capped(client, url, self._headers, self._timeout)
        if status in _NO_METRICS:
            self._off = True
        if status != 200:
            return None
        return body.decode("utf-8", "replace")

    def statistics(self) -> EngineWatchStatistics:
        state = "off" if self._off else "reading" if self._reading else "idle"
        return EngineWatchStatistics(
            state=state, reads=self.reads, failures=self.failures, last=self.last
        )

    def __repr__(self) -> str:
        return f"<EngineWatch reads={self.reads} failures={self.failures} off={self._off}>"
