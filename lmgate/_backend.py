"""Which event loop is running, asked through anyio's public API."""

from __future__ import annotations

import anyio

__all__ = ["running_backend"]


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
