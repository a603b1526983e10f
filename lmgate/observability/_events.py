"""A bounded, non-blocking event stream that users can subscribe to.

The scheduler must never wait on an observer: publishing is synchronous and
O(subscribers), each subscriber has its own bounded buffer, and a slow one
loses its *oldest* events (counted in ``dropped``) instead of holding up
admission.  Events are frozen, tagged msgspec Structs so they encode to
JSON lines unchanged.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import final

import anyio
import msgspec

__all__ = ["Event", "EventHub", "EventHubStatistics", "Subscription"]

_log = logging.getLogger("lmgate.events")


class Event(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Base of every event: ``at`` is the scheduler clock time it happened."""

    at: float


@final
class EventHubStatistics(msgspec.Struct, frozen=True, kw_only=True):
    published: int
    subscribers: int
    dropped: int


@final
class Subscription:
    """One subscriber's bounded buffer; iterate it with ``async for``.

    Use it as an (async) context manager, or call :meth:`close`, so the hub
    stops buffering for it.
    """

    __slots__ = ("_buffer", "_closed", "_hub", "_wakeup", "dropped")

    def __init__(self, hub: EventHub, maxlen: int) -> None:
        self._hub = hub
        self._buffer: deque[Event] = deque(maxlen=maxlen)
        self._wakeup = anyio.Event()
        self._closed = False
        self.dropped = 0

    def _push(self, event: Event) -> None:
        if len(self._buffer) == self._buffer.maxlen:
            self.dropped += 1
            self._hub._dropped += 1
        self._buffer.append(event)
        self._wakeup.set()

    def get_nowait(self) -> Event | None:
        """The oldest buffered event, or None when there is none."""
        return self._buffer.popleft() if self._buffer else None

    def pending(self) -> int:
        return len(self._buffer)

    async def get(self) -> Event:
        """Wait for the next event; raises StopAsyncIteration once closed and empty."""
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._wakeup = anyio.Event()
            await self._wakeup.wait()
        return self._buffer.popleft()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        return await self.get()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._hub._subscribers.discard(self)
            self._wakeup.set()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Subscription pending={len(self._buffer)} dropped={self.dropped}>"


@final
class EventHub:
    """Fans events out to subscribers and to the ``lmgate.events`` logger."""

    __slots__ = ("_dropped", "_log_events", "_published", "_subscribers")

    def __init__(self, *, log_events: bool = True) -> None:
        self._subscribers: set[Subscription] = set()
        self._published = 0
        self._dropped = 0
        self._log_events = log_events

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to every subscriber without ever blocking."""
        self._published += 1
        for sub in self._subscribers:
            sub._push(event)
        if self._log_events and _log.isEnabledFor(logging.INFO):
            _log.info("%s", event)

    def subscribe(self, *, maxlen: int = 1024) -> Subscription:
        """A new subscription that buffers at most ``maxlen`` events."""
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1:
            from lmgate._errors import InvalidParameter

            raise InvalidParameter("maxlen must be a positive int", field="maxlen")
        sub = Subscription(self, maxlen)
        self._subscribers.add(sub)
        return sub

    def close(self) -> None:
        for sub in list(self._subscribers):
            sub.close()

    def statistics(self) -> EventHubStatistics:
        return EventHubStatistics(
            published=self._published, subscribers=len(self._subscribers), dropped=self._dropped
        )

    def __repr__(self) -> str:
        return f"<EventHub subscribers={len(self._subscribers)} published={self._published}>"
