"""The endpoint actor's clocks: its ticker, and the warm-up at start.

``WakeTimer`` posts a ``Tick`` into the actor's mailbox every
``interval`` seconds and, besides, at the instant the actor armed it for
-- the end of an open time or a hold -- so a ``Retry-After`` is honoured
to the instant rather than to the next tick.  Both run as children of the
actor's task group, so neither outlives it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import final

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectSendStream

from lmgate._endpoint import Endpoint
from lmgate.actors._health import ActorMessage, WarmedUp
from lmgate.actors._messages import Tick
from lmgate.actors._resilience import WarmUp

__all__ = ["WakeTimer", "warm_up"]


@final
class WakeTimer:
    """Ticks every ``interval``, and once at the earliest time it was armed for."""

    __slots__ = ("_interval", "_rearm", "_send", "_wake_at")

    def __init__(self, send: MemoryObjectSendStream[ActorMessage], interval: float) -> None:
        self._send = send
        self._interval = interval
        self._wake_at = math.inf
        self._rearm: anyio.Event | None = None

    def arm(self, until: float) -> None:
        """Tick at ``until`` too, unless an earlier wake-up is already due."""
        if until < self._wake_at:
            self._wake_at = until
            if self._rearm is not None:
                self._rearm.set()

    async def run(self) -> None:
        interval = self._interval
        next_tick = anyio.current_time() + interval
        while True:
            rearm = self._rearm = anyio.Event()
            with anyio.move_on_at(min(next_tick, self._wake_at)):
                await rearm.wait()
            now = anyio.current_time()
            fire = False
            if now >= next_tick:
                next_tick = now + interval
                fire = True
            if now >= self._wake_at:
                self._wake_at = math.inf
                fire = True
            if not fire:
                continue
            try:
                self._send.send_nowait(Tick())
            except anyio.WouldBlock:
                pass  # the actor is busy; its next message reports the change
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return

    def __repr__(self) -> str:
        return f"<WakeTimer interval={self._interval:g} wake_at={self._wake_at:g}>"


async def warm_up(
    endpoint: Endpoint,
    url: Callable[[], str],
    warmup: WarmUp,
    limit: float,
    send: MemoryObjectSendStream[ActorMessage],
) -> None:
    """Call ``warmup`` once per model of ``endpoint`` (at its current ``url()``).

    Each call runs under ``limit`` seconds; the actor hears how each went.
    """
    with send:
        for model in endpoint.models:
            ok, detail = False, ""
            target = endpoint
            if url() != target.url:
                target = msgspec.structs.replace(target, url=url())
            with anyio.move_on_after(limit) as scope:
                try:
                    await warmup(target, model)
                    ok = True
                except Exception as exc:
                    detail = type(exc).__name__
            if scope.cancelled_caught:
                detail = "warm-up timed out"
            try:
                await send.send(WarmedUp(model=model, ok=ok, detail=detail))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
