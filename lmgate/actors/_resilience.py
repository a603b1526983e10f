"""How an endpoint actor keeps its endpoint honest: the one config for it.

``Resilience`` gathers the sans-IO policies an endpoint actor drives (the
circuit breaker, the probe pacing, the model lifecycle) with the few
pluggable pieces that do I/O (name resolution, the warm-up call), so a
``Scheduler`` takes a single value for all of it.  ``ProbeReport`` is what a
health check may answer instead of a bare ``bool`` when it knows more: that
the server is loading a model, or which build of each model it serves.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import final

import anyio
import msgspec

from lmgate._endpoint import Endpoint
from lmgate._errors import InvalidParameter
from lmgate.policies._breaker import Breaker
from lmgate.policies._health import HealthSchedule
from lmgate.policies._lifecycle import Lifecycle
from lmgate.policies._limit import check_float

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
class ProbeReport(msgspec.Struct, frozen=True, kw_only=True):
    """A health check's richer answer than ``True``/``False``.

    ``loading`` says the server answers but is loading a model: traffic is
    held, no failure is counted.  ``identities`` maps model names to their
    build (digest, version, file): a change under the same name is a
    different model and is reported as such.
    """

    ok: bool
    loading: bool = False
    identities: Mapping[str, str] = msgspec.field(default_factory=dict)
    detail: str = ""


@final
class Resilience(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Breaker, probing and model-lifecycle settings for every endpoint actor.

    ``seed`` makes the jitter of open times, probe pacing and retry backoff
    reproducible (None draws from the system).  ``resolve`` re-resolves an
    endpoint's host name before each probe, under ``resolve_timeout``, so a
    container that came back under a new address is noticed (None: never).
    ``warmup``, when given, is called once per model at start for endpoints
    declared with ``warmup=True``, under ``warmup_timeout``.  A call still
    running at its request's deadline counts against the endpoint only if
    it ran at least ``timeout_evidence`` times the model's warm latency: a
    request that spent its time queueing and got a slot with a moment left
    says nothing about the server.
    """

    breaker: Breaker = msgspec.field(default_factory=Breaker)
    probes: HealthSchedule = msgspec.field(default_factory=HealthSchedule)
    lifecycle: Lifecycle = msgspec.field(default_factory=Lifecycle)
    seed: int | None = None
    resolve: Resolver | None = default_resolve
    resolve_timeout: float = 1.0
    warmup: WarmUp | None = None
    warmup_timeout: float = 300.0
    timeout_evidence: float = 2.0

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
