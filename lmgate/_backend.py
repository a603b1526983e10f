"""Which event loop is running, asked through anyio's public API."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import anyio

__all__ = ["backend_clock", "current_task", "running_backend", "task_ended", "task_getter"]


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


def current_task() -> object:
    """The running task itself (asyncio's ``Task`` or trio's), to compare by identity."""
    return task_getter()()


def task_getter() -> Callable[[], object]:
    """The running backend's own current-task function, looked up once.

    For code that asks on every chunk of a stream: the lookup costs more
    than the question.
    """
    if running_backend() == "trio":
        import trio

        return trio.lowlevel.current_task
    import asyncio

    return asyncio.current_task


def task_ended(task: object) -> bool:
    """Whether ``task`` (from :func:`current_task`) has returned, failed or been cancelled."""
    done = getattr(task, "done", None)
    if done is not None:  # asyncio.Task
        return bool(done())
    coro = getattr(task, "coro", None)  # trio.lowlevel.Task: its coroutine is closed at the end
    return coro is not None and inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
