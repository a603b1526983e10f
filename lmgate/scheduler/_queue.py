"""The admission queue: priority first, FIFO within a priority, with aging.

Each waiter gets a static rank ``enqueued_at + priority * aging`` when it
joins.  Ordering by that rank serves lower priority numbers first while
their head start lasts, keeps FIFO among equals, and lets a low-priority
request that has waited ``aging`` seconds per level overtake fresh arrivals,
so nothing starves.  Because the rank never changes, a plain binary heap per
model suffices; cancelled waiters are deleted lazily and the heap is
compacted when dead entries pile up, keeping memory bounded by the queue
size.  Arrival order per priority is kept too, for queue control: the
newest of the most urgent priority (adaptive LIFO) and the oldest of the
least urgent (what a standing queue sheds first).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from lmgate.scheduler._lease import Waiter

__all__ = ["RequestQueue"]


@final
class RequestQueue:
    """Per-model heaps of waiters ordered by (rank, arrival sequence)."""

    __slots__ = ("_arrivals", "_by_priority", "_heaps", "_live", "_seq")

    def __init__(self) -> None:
        self._heaps: dict[str, list[tuple[float, int, Waiter]]] = {}
        self._live: dict[str, int] = {}
        # model -> priority -> live count, to predict waits without a scan
        self._by_priority: dict[str, dict[int, int]] = {}
        # model -> priority -> waiters in arrival order (dead ones lazily)
        self._arrivals: dict[str, dict[int, deque[Waiter]]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return sum(self._live.values())

    def waiting(self, model: str) -> int:
        """Live waiters for ``model``."""
        return self._live.get(model, 0)

    def ahead_of(self, model: str, priority: int) -> int:
        """Live waiters for ``model`` at the same or a more urgent priority."""
        counts = self._by_priority.get(model)
        if not counts:
            return 0
        return sum(n for p, n in counts.items() if p <= priority)

    def push(self, waiter: Waiter, rank: float) -> None:
        model = waiter.model
        self._seq += 1
        heap = self._heaps.setdefault(model, [])
        heapq.heappush(heap, (rank, self._seq, waiter))
        self._live[model] = self._live.get(model, 0) + 1
        counts = self._by_priority.setdefault(model, {})
        counts[waiter.priority] = counts.get(waiter.priority, 0) + 1
        by_priority = self._arrivals.setdefault(model, {})
        line = by_priority.get(waiter.priority)
        if line is None:
            line = by_priority[waiter.priority] = deque()
        line.append(waiter)
        if len(line) > 2 * counts[waiter.priority] + 16:
            by_priority[waiter.priority] = deque(w for w in line if w.queued)

    def newest(self, models: Iterable[str]) -> Waiter | None:
        """The newest waiter of the most urgent priority across ``models`` (left queued:
        ``discard`` it to take it)."""
        best: Waiter | None = None
        for model in models:
            counts = self._by_priority.get(model)
            if not counts:
                continue
            line = self._arrivals[model][min(counts)]
            while line and not line[-1].queued:
                line.pop()
            if line and (
                best is None
                or (line[-1].priority, -line[-1].enqueued_at) < (best.priority, -best.enqueued_at)
            ):
                best = line[-1]
        return best

    def expiring(self, models: Iterable[str], cutoff: float) -> list[Waiter]:
        """Remove and return the waiters, oldest first per priority, whose deadline
        falls before ``cutoff``; the scan stops at the first that does not (exact
        when a client gives its requests one timeout)."""
        out: list[Waiter] = []
        for model in models:
            lines = self._arrivals.get(model)
            if not lines:
                continue
            for line in list(lines.values()):
                while line and (not line[0].queued or line[0].deadline < cutoff):
                    w = line.popleft()
                    if w.queued:
                        out.append(w)
        for w in out:
            self.take(w)
        return out

    def oldest_least_urgent(self, models: Iterable[str]) -> Waiter | None:
        """Remove and return the oldest waiter of the least urgent priority across ``models``."""
        best: Waiter | None = None
        for model in models:
            counts = self._by_priority.get(model)
            if not counts:
                continue
            line = self._arrivals[model][max(counts)]
            while line and not line[0].queued:
                line.popleft()
            if line and (
                best is None
                or (-line[0].priority, line[0].enqueued_at) < (-best.priority, best.enqueued_at)
            ):
                best = line[0]
        if best is not None:
            self.take(best)
        return best

    def take(self, waiter: Waiter) -> None:
        """Remove a live waiter the caller is about to grant or refuse."""
        waiter.queued = False
        self.discard(waiter)

    def discard(self, waiter: Waiter) -> None:
        """Forget a waiter that left; its heap entry is dropped lazily."""
        model = waiter.model
        self._live[model] -= 1
        self._uncount(model, waiter.priority)
        heap = self._heaps[model]
        if len(heap) > 2 * self._live[model] + 64:
            self._heaps[model] = [e for e in heap if e[2].queued]
            heapq.heapify(self._heaps[model])

    def _uncount(self, model: str, priority: int) -> None:
        counts = self._by_priority[model]
        n = counts[priority] - 1
        if n:
            counts[priority] = n
            # Dead waiters at either end go now: a finished waiter holds its lease
            # and its error, which must not outlive the request by long.
            line = self._arrivals[model][priority]
            while line and not line[0].queued:
                line.popleft()
            while line and not line[-1].queued:
                line.pop()
        else:
            del counts[priority]
            del self._arrivals[model][priority]

    def _head(self, model: str) -> tuple[float, int, Waiter] | None:
        heap = self._heaps.get(model)
        while heap:
            entry = heap[0]
            if entry[2].queued:
                return entry
            heapq.heappop(heap)
        return None

    def peek(self, model: str) -> tuple[float, int, Waiter] | None:
        """The most urgent live entry for ``model`` without removing it."""
        if not self._live.get(model):
            return None
        return self._head(model)

    def best_of(self, models: Iterable[str]) -> Waiter | None:
        """Pop the most urgent live waiter across ``models``."""
        best: tuple[float, int, Waiter] | None = None
        for model in models:
            if not self._live.get(model):
                continue
            head = self._head(model)
            if head is not None and (best is None or head[:2] < best[:2]):
                best = head
        if best is None:
            return None
        return self.pop(best[2].model)

    def pop(self, model: str) -> Waiter | None:
        """Remove and return the most urgent live waiter for ``model``."""
        head = self._head(model)
        if head is None:
            return None
        heapq.heappop(self._heaps[model])
        waiter = head[2]
        waiter.queued = False  # the caller grants or refuses it at once
        self._live[model] -= 1
        self._uncount(model, waiter.priority)
        return waiter

    def models_waiting(self) -> Iterator[str]:
        return (m for m, n in self._live.items() if n)

    def drain(self) -> list[Waiter]:
        """Remove every live waiter, most urgent first."""
        out: list[Waiter] = []
        for model in list(self._heaps):
            while (w := self.pop(model)) is not None:
                out.append(w)
        self._heaps.clear()
        self._arrivals.clear()
        return out

    def heap_entries(self) -> int:
        """Heap entries including lazily-deleted ones (for memory checks)."""
        return sum(len(h) for h in self._heaps.values())

    def waiters(self, model: str) -> list[Waiter]:
        """The live waiters for ``model``, in no particular order."""
        return [e[2] for e in self._heaps.get(model, ()) if e[2].queued]

    def best_fitting(self, models: Iterable[str], fits: Callable[[Waiter], bool]) -> Waiter | None:
        """Pop the most urgent live waiter across ``models`` that ``fits`` the slot.

        ``fits`` says whether the slot being filled can take a waiter now
        (its prompt fits the window, its tokens the budget).  A head that
        does not fit stays (another endpoint, or more room later, will take
        it) and the most urgent waiter behind it that fits goes instead, so
        a slot is not left idle behind a long prompt; the head's own wait
        is bounded by its deadline.  The scan is linear in the model's
        queue, and only happens when the head does not fit.
        """
        best: tuple[float, int, Waiter] | None = None
        for model in models:
            if not self._live.get(model):
                continue
            head = self._head(model)
            if head is None:
                continue
            if not fits(head[2]):
                head = min(
                    (e for e in self._heaps[model] if e[2].queued and fits(e[2])),
                    default=None,
                )
                if head is None:
                    continue
            if best is None or head[:2] < best[:2]:
                best = head
        if best is None:
            return None
        waiter = best[2]
        if self._heaps[waiter.model][0] is best:
            return self.pop(waiter.model)
        self.take(waiter)
        return waiter
