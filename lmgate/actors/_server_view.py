"""The server's own view of what it runs, read after a caller gives up.

A cancelled call may go on running on its server (``scheduler._occupancy``),
and lmgate keeps its place until the server has stopped.  Only the server
knows when that is, so after a cancellation the endpoint actor reads it:
llama.cpp's ``/slots`` names the task each busy slot runs, which tells
exactly when every task busy at the cancel has ended; where ``/slots`` is
off, its ``/metrics`` (or vLLM's) counts the requests running.  The reads
are opt-in (``Endpoint(server_view=True)``, on by ``probe=True``), at most
one every ``interval`` seconds, each under ``timeout`` with at most 1 MiB
read, and they stop once the server shows nothing busy or ``window``
seconds after the last cancellation.  A server that answers neither route
is asked nothing more.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncGenerator, Callable
from typing import Any, cast, final

import anyio
import httpx
import msgspec
from anyio.streams.memory import MemoryObjectSendStream

from lmgate.detect._engine_metrics import engine_reading
from lmgate.detect._probe import MAX_BODY, server_root

__all__ = [
    "ServerView",
    "ServerViewReader",
    "busy_from_metrics",
    "busy_from_slots",
    "get_capped",
]


@final
class ServerView(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """One reading, taken at ``at``: busy task ids, or only their count."""

    at: float
    busy: int | None = None
    tasks: frozenset[int] | None = None


def busy_from_slots(body: bytes) -> frozenset[int] | None:
    """The ids of the tasks llama.cpp's ``/slots`` shows processing (None: unreadable)."""
    try:
        slots = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    if not isinstance(slots, list):
        return None
    tasks: set[int] = set()
    for i, slot in enumerate(slots[:4096]):
        if not isinstance(slot, dict):
            return None
        if slot.get("is_processing") is True:
            task = slot.get("id_task")
            # A busy slot that names no task still counts, under its own id.
            tasks.add(task if type(task) is int else -1 - i)
    return frozenset(tasks)


def busy_from_metrics(text: str) -> int | None:
    """Requests running, from a Prometheus text body (None: not said)."""
    reading = engine_reading(text, 0.0)
    return None if reading is None else reading.running


@final
class ServerViewReader:
    """Reads the endpoint's ``/slots`` (or ``/metrics``) while a cancelled call may linger."""

    __slots__ = (
        "_headers",
        "_interval",
        "_route",
        "_send",
        "_timeout",
        "_transport",
        "_until",
        "_url",
        "_wake",
        "_window",
        "reads",
    )

    def __init__(
        self,
        url: Callable[[], str],
        send: MemoryObjectSendStream[Any],
        *,
        api_key: str | None = None,
        interval: float = 0.25,
        timeout: float = 2.0,
        window: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = url
        self._send = send
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._interval = interval
        self._timeout = timeout
        self._window = window
        self._until = -math.inf
        self._wake = anyio.Event()
        self._route: str | None = "/slots"
        self._transport = transport
        self.reads = 0

    def cancelled(self, now: float) -> None:
        """A call was given up at ``now``: read the server for a while."""
        self._until = now + self._window
        self._wake.set()

    async def run(self) -> None:
        client: httpx.AsyncClient | None = None
        try:
            async with self._send:
                while self._route is not None:
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    if client is None:  # made on first use: until then, no I/O at all
                        client = httpx.AsyncClient(timeout=self._timeout, transport=self._transport)
                    await self._follow(client)
        finally:
            if client is not None:
                with anyio.CancelScope(shield=True):
                    await client.aclose()

    async def _follow(self, client: httpx.AsyncClient) -> None:
        """Read until the server shows nothing busy or the window has passed."""
        while self._route is not None and anyio.current_time() < self._until:
            view = await self._read(client)
            if view is not None:
                with contextlib.suppress(anyio.WouldBlock):  # behind: the next one will do
                    self._send.send_nowait(view)
                if view.busy == 0:
                    return
            await anyio.sleep(self._interval)

    async def _read(self, client: httpx.AsyncClient) -> ServerView | None:
        route = self._route
        assert route is not None
        at = anyio.current_time()
        url = server_root(self._url()) + route
        status, body = await get_capped(client, url, self._headers, self._timeout)
        self.reads += 1
        if status is None:
            return None  # no answer now: ask again later
        if status != 200:
            # No such route here (``--no-slots``, or not llama.cpp): try the
            # metrics; a server that has neither is asked nothing more.
            self._route = "/metrics" if route == "/slots" else None
            return None
        if route == "/slots":
            tasks = busy_from_slots(body)
            return None if tasks is None else ServerView(at=at, busy=len(tasks), tasks=tasks)
        busy = busy_from_metrics(body.decode("utf-8", "replace"))
        if busy is None:
            self._route = None
            return None
        return ServerView(at=at, busy=busy)

    def __repr__(self) -> str:
        return f"<ServerViewReader route={self._route} reads={self.reads}>"


async def get_capped(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], limit: float
) -> tuple[int | None, bytes]:
    """GET ``url`` within ``limit`` seconds: the status and body (at most ``MAX_BODY``
    bytes); status None without an answer."""
    body = bytearray()
    status: int | None = None
    try:
        with anyio.move_on_after(limit):
            async with client.stream("GET", url, headers=headers, follow_redirects=False) as r:
                if r.status_code == 200:
                    async with contextlib.aclosing(
                        cast(AsyncGenerator[bytes, None], r.aiter_bytes())
                    ) as chunks:
                        async for chunk in chunks:
                            body += chunk
                            if len(body) > MAX_BODY:
                                return None, b""
                status = r.status_code
    except httpx.HTTPError:
        return None, b""
    return status, bytes(body)
