"""What the server's own metrics say about congestion, as policies read it.

A model server knows what no client can measure: how many requests it runs
and how many it keeps waiting, how full its KV cache is, and how often it
threw a running request out of it (vLLM's recompute preemption).  Those
are the two ways a continuous-batching server goes past its knee: a batch
that is full (requests wait at the server, where they only add latency)
and a cache that is full (preemptions, each a prompt prefilled again).

``EngineReading`` is one scrape of those figures; ``EngineWindow`` folds
the readings taken while a policy measures one window into the three
facts a policy acts on:

* ``standing_queue`` -- the server kept requests waiting in every reading
  (a transient arrival between two engine steps shows up in one reading,
  never in all of them), and the least it kept waiting;
* ``preempted`` -- the server preempted requests during the window;
* ``cache_full`` -- some reading showed the KV cache at ``FULL_CACHE`` or
  more: a queue then waits for cache, which is the token budget's to
  answer, not for a place in the batch;
* ``room`` -- enough readings, fewer than half of them with a queue, and no
  preemption: more concurrency is batched, not queued.  A full cache alone
  is not the want of room: a server that runs its cache full without
  preempting is where admission by tokens means it to be, and it is the
  token budget (``TokenBudget.engine``), not the request limit, that reads
  the cache's usage;
* ``running`` -- the most requests the server ran at once: a queue at a
  server shared with other clients is ours only where our own requests
  outnumber what it runs.

Pure and synchronous, like every policy.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple, Protocol, final, runtime_checkable

import msgspec

__all__ = ["NO_FACTS", "EngineAware", "EngineFacts", "EngineReading", "EngineWindow"]

#: KV usage at or above which the cache counts as full.
FULL_CACHE: Final = 0.9
#: Readings a window needs before it may say the server has room.
MIN_READINGS: Final = 2


@final
class EngineReading(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """One scrape of a server's metrics, taken at ``at`` (None: not published).

    ``kv_usage`` is the share of the KV cache in use (0 to 1);
    ``preemptions`` the server's running total, as its counter says.
    """

    at: float
    running: int | None = None
    waiting: int | None = None
    kv_usage: float | None = None
    preemptions: int | None = None

    @property
    def empty(self) -> bool:
        """Whether the reading says nothing a policy can use."""
        return (
            self.running is None
            and self.waiting is None
            and self.kv_usage is None
            and self.preemptions is None
        )


class EngineFacts(NamedTuple):
    """What one window's readings say: see the module docstring."""

    standing_queue: int = 0
    preempted: bool = False
    room: bool = False
    cache_full: bool = False
    running: int = 0


NO_FACTS: Final = EngineFacts()


@runtime_checkable
class EngineAware(Protocol):
    """A limit state that also reads the server's own metrics."""

    def observe_engine(self, reading: EngineReading, now: float) -> int:
        """Take one reading of the server's metrics; return the limit to use next."""
        ...


@final
class EngineWindow:
    """The engine readings taken over one measurement window."""

    __slots__ = (
        "_last_preemptions",
        "kv_peak",
        "least_waiting",
        "most_running",
        "preempted",
        "queued",
        "readings",
    )

    def __init__(self) -> None:
        self._last_preemptions: int | None = None
        self.clear()

    def clear(self) -> None:
        """Start a new window (the preemption counter's last value is kept)."""
        self.readings = 0
        self.queued = 0  # readings that showed requests waiting at the server
        self.least_waiting = math.inf
        self.most_running = 0
        self.kv_peak = 0.0
        self.preempted = 0

    def add(self, reading: EngineReading, *, in_window: bool = True) -> None:
        """Fold ``reading`` in; one taken before the window only moves the counter on."""
        if reading.empty:
            return
        if not in_window:
            if reading.preemptions is not None:
                self._last_preemptions = reading.preemptions
            return
        self.readings += 1
        waiting = reading.waiting
        if waiting is not None:
            self.least_waiting = min(self.least_waiting, waiting)
            if waiting > 0:
                self.queued += 1
        else:
            self.least_waiting = 0
        if reading.running is not None:
            self.most_running = max(self.most_running, reading.running)
        if reading.kv_usage is not None:
            self.kv_peak = max(self.kv_peak, reading.kv_usage)
        total = reading.preemptions
        if total is not None:
            last = self._last_preemptions
            # A counter that went down means the server restarted: no news.
            if last is not None and total > last:
                self.preempted += total - last
            self._last_preemptions = total

    @property
    def standing_queue(self) -> int:
        """Requests the server kept waiting all window long (0: none)."""
        if self.readings < MIN_READINGS or self.queued < self.readings:
            return 0
        return int(self.least_waiting)

    @property
    def room(self) -> bool:
        """Whether the server showed no queue and no preemption."""
        # A request that arrived between two engine steps waits for the next
        # one: a reading catches such a moment now and then, a queue always.
        return self.readings >= MIN_READINGS and 2 * self.queued < self.readings

    def facts(self) -> EngineFacts:
        return EngineFacts(
            self.standing_queue,
            bool(self.preempted),
            self.room,
            self.kv_peak >= FULL_CACHE,
            self.most_running,
        )

    def __repr__(self) -> str:
        return (
            f"<EngineWindow readings={self.readings} queued={self.queued}"
            f" kv_peak={self.kv_peak:.2f} preempted={self.preempted}>"
        )
