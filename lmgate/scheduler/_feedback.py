"""What admission tells an endpoint actor when a lease ends.

The sample goes without waiting (a full mailbox drops it and counts the
drop).  Admission then anticipates the actor's answer where waiting for it
would let every queued request meet the same refusal first.
"""

from __future__ import annotations

import math

import anyio

from lmgate.policies._sample import OutcomeClass, Sample
from lmgate.scheduler._lease import Lease
from lmgate.scheduler._slot import EndpointSlot

__all__ = ["feed_back"]


def feed_back(
    slot: EndpointSlot,
    lease: Lease,
    duration: float,
    outcome: OutcomeClass,
    retry_after: float | None,
) -> None:
    """Send ``lease``'s sample to the endpoint actor (``slot.feedback`` is set)."""
    assert slot.feedback is not None
    sample = Sample(
        start=lease.granted_at,
        duration=duration,
        in_flight=lease.in_flight_at_grant,
        outcome=outcome,
        ttft=lease._ttft,
        prompt_tokens=lease._prompt_tokens,
        output_tokens=lease._output_tokens,
        retry_after=retry_after,
        model=lease.endpoint.model,
    )
    try:
        slot.feedback.send_nowait(sample)
    except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
        slot.dropped_samples += 1
    else:
        # Anticipate the endpoint actor, which has this sample and will
        # answer with the routing: until then, grant nothing more here,
        # or every queued request would meet the same refusal first.
        pause = retry_after is not None and 0 < retry_after < math.inf
        if slot.routing == "up" and (outcome == "loading" or (outcome == "overload" and pause)):
            slot.routing = "held"  # the server asked for a pause
        elif slot.trials is not None and (outcome == "error" or outcome == "timeout"):
            slot.trials = 0  # a half-open trial failed; the actor re-sends trials
