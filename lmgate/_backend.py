"""Which event loop is running, asked through anyio's public API."""

from __future__ import annotations

from collections.abc import Callable

import anyio

__all__ = ["backend_clock", "running_backend"]


def running_backend() -> str | None:
    """``"trio"``, ``"asyncio"``, or None outside any event loop.

    anyio's cancellation exception is the backend's own, so its module names
    the backend without another dependency.
    """
    try:
        module = anyio.get_cancelled_exc_class().__module__
    except RuntimeError:  # anyio's NoEventLoopError
        return None
    return "trio" if module.partition(".")[0] == "trio" else "asyncio"


def backend_clock() -> Callable[[], float]:
    """The running loop's own clock function (what ``anyio.current_time`` reads).

    Bound once by a task that reads the time on every message: anyio's
    portable call looks the backend up each time, which costs more than
    the work it times.
    """
    if running_backend() == "trio":
        import trio

        return trio.current_time
    import asyncio

    return asyncio.get_running_loop().time
