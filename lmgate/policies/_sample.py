"""What one finished lease tells the policies.

A sample is the only observation limit algorithms, breakers and health
logic get about a request; the actors build one per lease and never let a
policy see a lease, a clock or a socket.
"""

from __future__ import annotations

from typing import Literal, final

import msgspec

__all__ = ["OUTCOME_CLASSES", "OutcomeClass", "Sample"]

#: How a lease ended, as far as the endpoint's health is concerned.
#:
#: ``success``       the call returned.
#: ``overload``      the server said it is overloaded (429/503, queue full).
#: ``loading``       the server is loading a model (503 while loading): hold
#:                   traffic, count no failure.
#: ``timeout``       the call was still running at its deadline, or a connect
#:                   or read timed out: counts against the endpoint.
#: ``error``         an endpoint fault: connection refused or reset, 5xx.
#: ``client_error``  the caller's fault (bad request, context overflow): says
#:                   nothing about the endpoint.
#: ``cancelled``     the caller gave up: no sample for latency or health.
OutcomeClass = Literal[
    "success", "overload", "loading", "timeout", "error", "client_error", "cancelled"
]

OUTCOME_CLASSES: tuple[OutcomeClass, ...] = (
    "success",
    "overload",
    "loading",
    "timeout",
    "error",
    "client_error",
    "cancelled",
)


@final
class Sample(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One lease's observation: when it started, how long, how it ended.

    ``in_flight`` counts the endpoint's leases at grant time, this one
    included, so delay-based algorithms can relate latency to load.  The
    token fields come from :meth:`lmgate.Lease.report` when the caller knows
    them; ``retry_after`` from :class:`lmgate.Overloaded`.
    """

    start: float
    duration: float
    in_flight: int
    outcome: OutcomeClass
    ttft: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    retry_after: float | None = None
    #: Which model served it, for endpoints that serve several.
    model: str | None = None
