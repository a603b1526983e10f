"""Occupancy that follows the server: a cancelled call holds its place a while.

When a caller gives up, lmgate's part of the request ends at once (its
outcome is counted, its task goes on), but the server's may not: llama.cpp
runs a non-streaming request to the end however long nobody waits for it,
and a streaming one runs until the server next writes to the closed
socket.  Were the slot handed on at once, the server would hold more
requests than the limit exactly when the system is under stress.  So a
call that was sent and then cancelled or timed out *lingers*: it keeps its
place in the endpoint's limit and its tokens in the KV budget until

* a streaming call: ``STREAM_NOTICE`` seconds, the time a server takes to
  notice a closed connection (its next token write);
* a non-streaming call to a server that stops on disconnect (vLLM, Ollama):
  the same;
* a non-streaming call to a server that keeps generating (llama.cpp and the
  servers built on it, or an unknown local one): its expected completion --
  the endpoint's 90th-percentile service time after its grant -- and at most
  ``LINGER_MAX`` seconds;

or until the server's own view shows the work gone, whichever comes first.
With ``Endpoint(server_view=True)`` (on by ``probe=True``) the endpoint
actor reads llama.cpp's ``/slots`` after a cancellation: the task ids busy
at the first reading after the cancel are the ones the lingering call can
be, and once none of them is busy any more the call has surely stopped.  A
reading with only a count of busy requests caps the lingering calls at it.

A call cancelled before it was sent (a transport still waiting to connect,
or a grant its caller never took up) costs nothing, and cloud APIs never
linger: their capacity is not ours to protect.  A caller's own call
(``run(call)``) lingers on an endpoint whose kind says it is a model
server; on one of unknown kind only calls a transport sent do.  Simulated
servers stop the moment their caller leaves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from lmgate.detect._locality import classify_url
from lmgate.scheduler._lease import Lease
from lmgate.scheduler._slot import EndpointSlot, Lingering

__all__ = [
    "KEEPS_GENERATING",
    "LINGER_MAX",
    "STREAM_NOTICE",
    "expire",
    "linger",
    "linger_due",
    "linger_for",
    "seen_busy",
]

#: Seconds a server takes to notice that its client has gone.
STREAM_NOTICE = 1.0
#: The longest a cancelled call is assumed to go on running on its server.
LINGER_MAX = 60.0
#: Server kinds that finish a non-streaming request whether or not anyone waits.
KEEPS_GENERATING = frozenset({"llamacpp", "lmstudio", "localai", "tgi", "unknown"})
#: Server kinds that are model servers of our own (their capacity is ours to keep).
_LOCAL_KINDS = KEEPS_GENERATING | {"vllm", "ollama"}


def linger_for(slot: EndpointSlot, lease: Lease, now: float) -> float:
    """Seconds the server may still run ``lease``'s call after it was given up."""
    ep = slot.endpoint
    if lease._sent is False or ep.kind not in _LOCAL_KINDS:
        return 0.0
    if ep.kind == "unknown":
        if lease._sent is None:
            return 0.0  # a caller's own call to a server we know nothing of
        local = ep.local if ep.local is not None else classify_url(ep.url).locality.is_local
        if not local:
            return 0.0
    if lease._streaming or ep.kind not in KEEPS_GENERATING:
        return STREAM_NOTICE
    typical = slot.durations.quantile(0.9)
    if typical is None:
        return LINGER_MAX
    return min(LINGER_MAX, max(STREAM_NOTICE, lease.granted_at + typical - now))


def linger(
    slot: EndpointSlot, lease: Lease, now: float, release: Callable[[], None] | None = None
) -> bool:
    """Keep a given-up call's place if its server may still run it; True if kept.

    ``release`` gives back its cross-process slot when it ends: the other
    processes must not count on room the server has not given back either.
    """
    hold = linger_for(slot, lease, now)
    if hold <= 0.0:
        return False
    slot.held += 1
    slot.lingering.append(Lingering(now, now + hold, lease._charge, release))
    return True


def linger_due(lingering: Iterable[EndpointSlot]) -> float:
    """When the next lingering call's time is up (inf: none lingers)."""
    return min((e.until for s in lingering for e in s.lingering), default=math.inf)


def expire(lingering: set[EndpointSlot], now: float) -> list[EndpointSlot]:
    """End the lingering calls whose time is up; returns the endpoints that got room."""
    return [
        slot
        for slot in list(lingering)
        if _keep(lingering, slot, [e for e in slot.lingering if e.until > now])
    ]


def seen_busy(
    lingering: set[EndpointSlot],
    slot: EndpointSlot,
    busy: int | None,
    tasks: frozenset[int] | None,
    at: float,
) -> bool:
    """Apply a reading of the server's busy work taken at ``at``; True if room was freed.

    Only calls given up before the reading was taken can be judged by it.
    """
    if not slot.lingering:
        return False
    kept = slot.lingering
    if tasks is not None:
        for entry in kept:
            if entry.at < at:
                entry.tasks = tasks if entry.tasks is None else entry.tasks & tasks
        kept = [e for e in kept if e.at >= at or e.tasks]
    elif busy is not None:
        # More of ours lingering than the server runs at all: the first to
        # expire have stopped (a count cannot say which).
        judged = sorted((e for e in kept if e.at < at), key=lambda e: e.until)
        gone = {id(e) for e in judged[: max(0, len(judged) - busy)]}
        kept = [e for e in kept if id(e) not in gone]
    return _keep(lingering, slot, kept)


def _keep(lingering: set[EndpointSlot], slot: EndpointSlot, kept: list[Lingering]) -> bool:
    """Keep only ``kept`` of ``slot``'s lingering calls, ending the rest; True if any ended."""
    if len(kept) == len(slot.lingering):
        return False
    survivors = {id(e) for e in kept}
    for entry in slot.lingering:
        if id(entry) not in survivors:
            _end(slot, entry)
    slot.lingering = kept
    if not kept:
        lingering.discard(slot)
    return True


def _end(slot: EndpointSlot, entry: Lingering) -> None:
    slot.held -= 1
    if slot.kv is not None:
        slot.kv.give(entry.charge)
    if entry.release is not None:
        entry.release()
