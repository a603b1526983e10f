"""Admission's record of one endpoint: in flight, limit, routing, window.

Only ``Admission`` mutates a slot (on the event loop, with no await between
check and update); the endpoint actor's news reaches it as messages the
controller applies.  ``window_fits`` is the one rule for whether a prompt
of a given size may go to a slot, ``tokens_fit`` for whether a request's
tokens fit its KV budget now, and ``fits`` both for a queued request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, final

from anyio.streams.memory import MemoryObjectSendStream

from lmgate._endpoint import Endpoint, EndpointRef
from lmgate._errors import ContextOverflow
from lmgate.actors._messages import EndpointMessage, Routing
from lmgate.policies._queueing import ServiceWindow
from lmgate.policies._token_budget import TokenBudget

__all__ = ["EndpointSlot", "Lingering", "Size", "fits", "tokens_fit", "too_large", "window_fits"]

#: A request's size in tokens as far as it is known: (prompt, max_tokens).
Size = tuple[int | None, int | None]


class Queued(Protocol):
    """What the fit rules read of a queued request (``_lease.Waiter``)."""

    @property
    def model(self) -> str: ...
    @property
    def min_window(self) -> int | None: ...
    @property
    def size(self) -> Size | None: ...


@final
class Lingering:
    """A released call the server may still be running."""

    __slots__ = ("at", "charge", "release", "tasks", "until")

    def __init__(
        self, at: float, until: float, charge: int, release: Callable[[], None] | None = None
    ) -> None:
        self.at = at
        self.until = until
        self.charge = charge
        #: Gives its cross-process slot back when it ends (None: not coordinated).
        self.release = release
        #: The server's busy task ids this call can be (None: not read yet).
        self.tasks: frozenset[int] | None = None

    def __repr__(self) -> str:
        return f"<Lingering until={self.until:.3f} charge={self.charge}>"


@final
class EndpointSlot:
    """Admission's record of one endpoint (mutated only by ``Admission``)."""

    __slots__ = (
        "_limit",
        "dropped_samples",
        "durations",
        "endpoint",
        "feedback",
        "held",
        "in_flight",
        "index",
        "kv",
        "lingering",
        "models",
        "peak_in_flight",
        "peak_limit",
        "refs",
        "routing",
        "service_time",
        "state",
        "throttle",
        "trials",
    )

    def __init__(
        self,
        index: int,
        endpoint: Endpoint,
        limit: int,
        feedback: MemoryObjectSendStream[EndpointMessage] | None,
    ) -> None:
        self.index = index
        self.endpoint = endpoint
        self._limit = limit
        self.peak_limit = limit  # the highest limit in force so far
        self.in_flight = 0
        self.peak_in_flight = 0
        #: Released calls the server may still run (``_occupancy``): they keep
        #: their place in the limit and their tokens until it has stopped.
        self.held = 0
        self.lingering: list[Lingering] = []
        self.models = endpoint.models
        self.refs = {
            m: EndpointRef(
                name=endpoint.name,
                url=endpoint.url,
                model=m,
                kind=endpoint.kind,
                local=endpoint.local,
            )
            for m in endpoint.models
        }
        self.routing: Routing = "up"
        self.state = "healthy"
        self.trials: int | None = None
        self.service_time: float | None = None
        #: Recent service durations (completed, or cut by their deadline).
        self.durations = ServiceWindow()
        self.feedback = feedback
        self.dropped_samples = 0
        # Optional client-side throttle: returns True to refuse a request now.
        self.throttle: Callable[[float], bool] | None = None
        #: The server's KV budget and what is charged to it, when known.
        self.kv: TokenBudget | None = (
            None
            if endpoint.kv_tokens is None
            else TokenBudget(endpoint.kv_tokens, endpoint.kv_source or "user")
        )

    @property
    def limit(self) -> int:
        """The endpoint's limit in force, as its policy last set it."""
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        self._limit = value
        self.peak_limit = max(self.peak_limit, value)

    @property
    def effective_limit(self) -> int:
        return self.limit if self.trials is None else min(self.limit, self.trials)

    def has_room(self) -> bool:
        return self.routing == "up" and self.in_flight + self.held < self.effective_limit


def window_fits(slot: EndpointSlot, model: str, need: int | None) -> bool:
    """Whether ``slot``'s window for ``model`` can take a request needing ``need``."""
    if need is None:
        return True
    window = slot.endpoint.window_for(model)
    return window is None or window >= need


def tokens_fit(slot: EndpointSlot, size: Size | None) -> bool:
    """Whether a request of ``size`` fits ``slot``'s KV budget now (True without one)."""
    kv = slot.kv
    if kv is None:
        return True
    if size is None:
        return kv.fits(kv.charge(None, None))
    prompt, max_tokens = size
    if prompt is not None and prompt + (max_tokens or 0) > kv.budget:
        return False  # never here: another endpoint's budget can take it
    return kv.fits(kv.charge(prompt, max_tokens))


def fits(slot: EndpointSlot, waiter: Queued) -> bool:
    """Whether ``slot`` can take the queued ``waiter`` now: window and tokens."""
    return window_fits(slot, waiter.model, waiter.min_window) and tokens_fit(slot, waiter.size)


def too_large(slots: tuple[EndpointSlot, ...], model: str, size: Size) -> ContextOverflow | None:
    """The refusal of a request larger than every KV budget serving ``model``.

    Its need is ``prompt + max_tokens`` (the most it can hold); an endpoint
    without a budget could take anything, so then nothing is refused.
    """
    prompt, max_tokens = size
    if prompt is None:
        return None
    need = prompt + (max_tokens or 0)
    largest = 0
    for s in slots:
        if s.kv is None:
            return None
        largest = max(largest, s.kv.budget)
    if need <= largest:
        return None
    return ContextOverflow(
        f"request needs {need} tokens of KV cache ({prompt} prompt + {max_tokens or 0}"
        f" max_tokens); the largest budget serving {model!r} is {largest}",
        tokens=need,
        window=largest,
        before_send=True,
    )
