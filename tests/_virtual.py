"""Virtual time on both backends: trio's MockClock, and an asyncio loop that jumps.

``VirtualClockLoop`` is asyncio's selector loop with its own clock: whenever
it would sleep in ``select`` waiting for a timer -- every task blocked,
nothing ready -- it sets the clock to that timer instead, the same rule as
trio's ``MockClock(autojump_threshold=0)``.  Real I/O still works (the
selector is polled without waiting); a worker thread would be jumped over,
which is exactly what these tests guard against.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any

import trio.testing

__all__ = ["VirtualClockLoop", "virtual_backends"]


class _JumpingSelector(selectors.DefaultSelector):
    loop: VirtualClockLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0 or self.loop is None:
            return ready
        if timeout is None:
            # No timer at all: only real I/O or another thread can wake the loop.
            return super().select(None)
        self.loop.jump()
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose clock starts at 0 and jumps to the next timer when idle."""

    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self._virtual_now = 0.0

    def time(self) -> float:
        return self._virtual_now

    def jump(self) -> None:
        scheduled: list[Any] = self._scheduled  # type: ignore[attr-defined]
        live = [h.when() for h in scheduled if not h.cancelled()]
        if live:
            self._virtual_now = max(self._virtual_now, min(live))


def virtual_backends() -> list[tuple[str, dict[str, Any]]]:
    """``anyio_backend`` values that run a test in virtual time, one per backend."""
    return [
        ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}),
        ("asyncio", {"loop_factory": VirtualClockLoop}),
    ]
