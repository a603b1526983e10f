"""What the scheduler's helpers may see of it: one protocol, no back-import.

Discovery (``Endpoint(probe=True)`` at start), reconfiguration (config
drift applied whole) and retries work on the scheduler's own state: its
admission, endpoints, limit states, actors and the primitives of the
request path.  They name that state through :class:`SchedulerInternals`
instead of importing ``Scheduler``, so the graph stays one-way: the facade
imports its helpers, never the reverse.  ``largest_windows`` is the one
rule for where an overflowing prompt can still go.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import anyio.abc

from lmgate._endpoint import Endpoint
from lmgate.actors._endpoint import EndpointActor
from lmgate.actors._resilience import Resilience
from lmgate.context._messages import Message
from lmgate.observability._events import EventHub
from lmgate.policies._limit import LimitPolicy, LimitState
from lmgate.scheduler._admission import Admission
from lmgate.scheduler._context_gate import ContextGate
from lmgate.scheduler._coordinator import Coordinator
from lmgate.scheduler._lease import Lease, ScopeLike

__all__ = ["SchedulerInternals", "WindowRouting", "largest_windows"]


class WindowRouting(Protocol):
    """The retry layer's view of context windows, refreshed when endpoints change."""

    def refresh_windows(self, endpoints: Iterable[Endpoint]) -> None: ...


class SchedulerInternals(Protocol):
    """The state and request-path primitives of a ``Scheduler``.

    Plain attributes are the ones a helper assigns (reconfiguration swaps
    endpoints and settings in place); read-only ones are properties.
    """

    _admission: Admission
    _endpoints: tuple[Endpoint, ...]
    _limit_states: list[LimitState]
    _actors: list[EndpointActor]
    _queue_size: int
    _aging: float
    _grace: float
    events: EventHub

    @property
    def endpoints(self) -> tuple[Endpoint, ...]: ...
    @property
    def _limit_policy(self) -> LimitPolicy: ...
    @property
    def _coordinator(self) -> Coordinator | None: ...
    @property
    def _resilience(self) -> Resilience: ...
    @property
    def _rng(self) -> random.Random: ...
    @property
    def _retrying(self) -> WindowRouting | None: ...
    @property
    def _context(self) -> ContextGate: ...
    @property
    def _tg(self) -> anyio.abc.TaskGroup | None: ...
    @property
    def _running(self) -> bool: ...
    @property
    def _tick(self) -> float: ...
    @property
    def _mailbox(self) -> int: ...
    @property
    def _new_scope(self) -> Callable[..., ScopeLike]: ...

    def _deadline(self, model: object, priority: object, timeout: object) -> float: ...
    async def acquire(
        self,
        *,
        model: str,
        priority: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 -- the API's relative deadline
        messages: Iterable[Message | Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
        prompt_tokens: int | None = None,
    ) -> Lease: ...


def largest_windows(endpoints: Iterable[Endpoint]) -> dict[str, int]:
    """The largest known context window per model across ``endpoints``."""
    windows: dict[str, int] = {}
    for ep in endpoints:
        for m in ep.models:
            w = ep.window_for(m)
            if w is not None and w > windows.get(m, 0):
                windows[m] = w
    return windows
