"""How failures are handled: the one config for breakers, probes, retries, throttling.

``Resilience`` gathers the sans-IO policies an endpoint actor drives (the
circuit breaker, the probe pacing, the model lifecycle), the request-level
ones (retries, model fallbacks, client-side throttling) and the few
pluggable pieces that do I/O (name resolution, the warm-up call), so a
``Scheduler`` takes a single value for all of it.  ``ProbeReport`` (defined
with ``Endpoint``) is what a health check may answer instead of a bare
``bool`` when it knows more.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import final

import anyio
import msgspec

from lmgate._endpoint import Endpoint, ProbeReport
from lmgate._errors import InvalidParameter
from lmgate._validate import check_float, check_int
from lmgate.policies._breaker import Breaker
from lmgate.policies._health import HealthSchedule
from lmgate.policies._lifecycle import Lifecycle
from lmgate.policies._retry import Retry, check_fallbacks
from lmgate.policies._throttle import Throttle

__all__ = ["ProbeReport", "Resilience", "Resolver", "WarmUp", "default_resolve", "needs_resolving"]

#: Resolves a host name to its addresses; raises (``OSError``) when it cannot.
Resolver = Callable[[str], Awaitable[Sequence[str]]]
#: Loads ``model`` on ``endpoint`` ahead of traffic (one short request).
WarmUp = Callable[[Endpoint, str], Awaitable[object]]


async def default_resolve(host: str) -> tuple[str, ...]:
    """The addresses ``host`` resolves to now, through the event loop's resolver."""
    infos = await anyio.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return tuple(sorted({str(info[4][0]) for info in infos}))


def needs_resolving(host: str | None) -> bool:
    """Whether ``host`` is a name (not an IP literal) worth resolving on each probe."""
    if not host:
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


@final
class Resilience(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the scheduler handles failing endpoints and failed calls.

    ``breaker``, ``probes`` and ``lifecycle`` drive each endpoint actor:
    when to stop sending, how often to check, how a cold or swapped model
    is treated.  ``retry`` (None: no retries) and ``fallbacks`` (model ->
    models to try next, within the same deadline) apply to calls that are
    idempotent or failed before anything was sent.  ``throttle`` refuses
    part of the traffic to an endpoint that is refusing most of it, as the
    SRE book's client-side throttling does (None: off).

    ``seed`` makes the jitter of open times, probe pacing and retry backoff
    reproducible (None draws from the system).  ``resolve`` re-resolves an
    endpoint's host name on each health probe, so a server or
    container that came back under a new address is noticed; it is off by
    default (no resolver, no thread) -- pass ``resolve=default_resolve`` to
    turn it on.  ``warmup``, when given, is called once per model at start
    for endpoints declared with ``warmup=True``, under ``warmup_timeout``.
    A call still running at its request's deadline counts against the
    endpoint only if it ran at least ``timeout_evidence`` times the model's
    warm latency: a request that spent its time queueing and got a slot
    with a moment left says nothing about the server.  ``tick_interval``
    is the actors' timer granularity (seconds) and ``mailbox_size`` the
    bound of every actor mailbox.
    """

    breaker: Breaker = msgspec.field(default_factory=Breaker)
    probes: HealthSchedule = msgspec.field(default_factory=HealthSchedule)
    lifecycle: Lifecycle = msgspec.field(default_factory=Lifecycle)
    seed: int | None = None
    resolve: Resolver | None = None
    resolve_timeout: float = 1.0
    warmup: WarmUp | None = None
    warmup_timeout: float = 300.0
    timeout_evidence: float = 2.0
    retry: Retry | None = None
    fallbacks: Mapping[str, tuple[str, ...]] = msgspec.field(default_factory=dict)
    throttle: Throttle | None = msgspec.field(default_factory=Throttle)
    tick_interval: float = 1.0
    mailbox_size: int = 4096

    def __post_init__(self) -> None:
        for field, kind in (("breaker", Breaker), ("probes", HealthSchedule)):
            if not isinstance(getattr(self, field), kind):
                raise InvalidParameter(f"{field} must be a {kind.__name__}", field=field)
        if not isinstance(self.lifecycle, Lifecycle):
            raise InvalidParameter("lifecycle must be a Lifecycle", field="lifecycle")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise InvalidParameter("seed must be an int or None", field="seed")
        for field in ("resolve", "warmup"):
            value = getattr(self, field)
            if value is not None and not callable(value):
                raise InvalidParameter(f"{field} must be an async callable", field=field)
        check_float("resolve_timeout", self.resolve_timeout, low=0.0, low_open=True, high=60.0)
        check_float("warmup_timeout", self.warmup_timeout, low=0.0, low_open=True, high=86_400.0)
        check_float("timeout_evidence", self.timeout_evidence, low=0.0, high=1000.0)
        if self.retry is not None and not isinstance(self.retry, Retry):
            raise InvalidParameter("retry must be a Retry or None", field="retry")
        msgspec.structs.force_setattr(self, "fallbacks", check_fallbacks(self.fallbacks))
        if self.throttle is not None and not isinstance(self.throttle, Throttle):
            raise InvalidParameter("throttle must be a Throttle or None", field="throttle")
        check_float("tick_interval", self.tick_interval, low=0.0, low_open=True, high=3600.0)
        check_int("mailbox_size", self.mailbox_size, low=1, high=10_000_000)
