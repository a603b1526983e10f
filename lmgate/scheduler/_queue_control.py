"""Admission's use of queue control: predicted completion, and who gets a freed slot.

The rules are in :mod:`lmgate.policies._queueing` (sans-IO); this module
feeds them what admission knows -- each endpoint's window of service
durations, its limit, the queue -- and carries out what they decide:
refusing at the door a request that would not finish in time, refusing
at the head one that can no longer make it while others wait, shedding the
oldest and serving the newest while a queue stands.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lmgate._errors import Rejected
from lmgate.policies._queueing import QueueControlState
from lmgate.scheduler._slot import fits

if TYPE_CHECKING:
    from lmgate.scheduler._lease import Waiter
    from lmgate.scheduler._queue import RequestQueue
    from lmgate.scheduler._slot import EndpointSlot

__all__ = ["Decision", "expected_service", "next_waiter", "predicted_done"]


def _routable(slots: Sequence[EndpointSlot]) -> list[EndpointSlot]:
    return [s for s in slots if s.routing != "down" and len(s.durations)]


def expected_service(
    slots: Sequence[EndpointSlot], quantile: float
) -> tuple[int, float | None, float | None]:
    """Capacity (summed limits), mean and ``quantile`` of service over ``slots``.

    Each endpoint's figures weigh by its limit, the share of the queue it drains.
    """
    capacity = 0
    mean = 0.0
    q = 0.0
    for s in _routable(slots):
        m, v = s.durations.mean(), s.durations.quantile(quantile)
        if m is None or v is None:
            continue
        limit = s.effective_limit
        capacity += limit
        mean += limit * m
        q += limit * v
    if capacity == 0:
        return 0, None, None
    return capacity, mean / capacity, q / capacity


def predicted_done(
    control: QueueControlState, slots: Sequence[EndpointSlot], ahead: int
) -> tuple[float, float]:
    """Seconds until a request with ``ahead`` waiters before it is done, and its queue wait."""
    capacity, mean, service = expected_service(slots, control.config.quantile)
    done = control.predict(ahead, capacity, mean, service)
    wait = 0.0 if service is None else max(0.0, done - service)
    return done, wait


class Decision:
    """What to do with a freed slot: give it to ``waiter``, or refuse ``refused`` first."""

    __slots__ = ("refused", "waiter")

    def __init__(self) -> None:
        self.waiter: Waiter | None = None
        self.refused: list[tuple[Waiter, BaseException]] = []


def next_waiter(
    control: QueueControlState,
    queue: RequestQueue,
    slot: EndpointSlot,
    slots: Sequence[EndpointSlot],
    now: float,
) -> Decision:
    """Choose the waiter for a free slot on ``slot``; refuse the hopeless on the way."""
    decision = Decision()
    models = slot.models
    head = None
    for m in models:
        entry = queue.peek(m)
        if entry is not None and (head is None or entry[2].enqueued_at < head.enqueued_at):
            head = entry[2]
    if head is None:
        return decision
    _, _, median = expected_service(slots, 0.5)
    control.observe_head(now - head.enqueued_at, now, median)
    _, _, service = expected_service(slots, control.config.quantile)
    if control.standing and control.config.shed and service is not None:
        # Served newest first, the oldest can only run out of time: tell them now.
        for doomed in queue.expiring(models, now + service):
            control.shed += 1
            decision.refused.append(
                (
                    doomed,
                    Rejected(
                        "the queue is standing and too little time is left to be served",
                        reason="deadline",
                    ),
                )
            )
    mode = control.order()
    while True:
        waiter = queue.newest(models) if mode == "lifo" else None
        # A request without a deadline gains nothing by going first.
        if waiter is not None and waiter.deadline != math.inf and fits(slot, waiter):
            queue.take(waiter)
            control.lifo_served += 1
        else:
            waiter = queue.best_fitting(models, lambda w: fits(slot, w))
        if waiter is None:
            return decision
        behind = sum(queue.waiting(m) for m in models)
        if waiter.deadline != math.inf and control.hopeless(now, waiter.deadline, service, behind):
            control.hopeless_dropped += 1
            decision.refused.append(
                (
                    waiter,
                    Rejected(
                        "not enough time left before the deadline to be served", reason="deadline"
                    ),
                )
            )
            continue
        decision.waiter = waiter
        return decision
