"""Helpers shared by the scheduler tests: task census, invariants, endpoints."""

from __future__ import annotations

import os
from typing import Any

import lmgate
from lmgate import Endpoint, Stats
from lmgate._backend import running_backend

_LMGATE_DIR = os.path.dirname(lmgate.__file__) + os.sep


def _is_lmgate(name: str, coro: Any) -> bool:
    code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
    filename = getattr(code, "co_filename", "")
    return name.startswith("lmgate.") or filename.startswith(_LMGATE_DIR)


def lmgate_tasks() -> list[str]:
    """Names of the live tasks running lmgate's own code, on either backend."""
    if running_backend() == "trio":
        import trio

        found: list[str] = []
        stack = [trio.lowlevel.current_root_task()]
        while stack:
            task = stack.pop()
            if task is None:
                continue
            if _is_lmgate(task.name, task.coro):
                found.append(task.name)
            for nursery in task.child_nurseries:
                stack.extend(nursery.child_tasks)
        return found
    import asyncio

    return [
        t.get_name()
        for t in asyncio.all_tasks()
        if not t.done() and _is_lmgate(t.get_name(), t.get_coro())
    ]


def check_identity(stats: Stats) -> None:
    """``submitted == sum(outcomes) + queued + in_flight``, and the bounds."""
    assert stats.submitted == sum(stats.outcomes.values()) + stats.queued + stats.in_flight, stats
    assert 0 <= stats.queued <= stats.queue_size
    assert stats.in_flight == sum(e.in_flight for e in stats.endpoints)
    for e in stats.endpoints:
        assert 0 <= e.in_flight <= e.limit, e


def endpoint(name: str, *models: str, **kwargs: Any) -> Endpoint:
    return Endpoint(name, url=f"http://127.0.0.1:9/{name}", models=list(models), **kwargs)
