"""The continuous-batching engine behind :class:`~lmgate.sim.SimServer`.

Every sequence in the batch advances one token per decode step, and a step
lasts ``step(n)`` for a batch of ``n``, so all of them progress at the same
rate.  The engine therefore keeps one *batch clock* ``V``: the number of
steps taken since it started, a piecewise-linear function of time that only
changes slope when the batch size or the server's speed changes.  A
sequence admitted at ``V0`` with ``P`` steps of prefill and ``k`` tokens to
write finishes at ``V0 + P + k`` whatever happens in between, so its marks
go into one heap once and never need re-timing; only the *time* at which
``V`` reaches the heap's top moves, and exactly one waiting task (the
holder) sleeps until then.  A request costs a handful of heap operations and
task wake-ups, however many tokens it writes.

The KV cache is the prompt of every admitted sequence plus what it has
written; it grows by one token per step per decoding sequence, so the point
where it reaches the budget is just another event on the same clock.

Nothing here awaits or reads a clock: callers pass ``now`` and the engine
calls ``set()`` on the waiters it finishes, which keeps it testable without
an event loop.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Protocol, final

__all__ = ["ACTIVE", "DONE", "FAILED", "GONE", "QUEUED", "Engine", "Seq"]

QUEUED, ACTIVE, DONE, FAILED, GONE = range(5)
_DECODE, _FIRST, _FINISH = range(3)
#: Tolerance on the batch clock, in steps: far below one token.
_EPS = 1e-6
#: Share of the KV budget kept free when admitting, as vLLM's watermark does,
#: so a preempted sequence is not readmitted into the gap it just left.
_WATERMARK = 0.01


class _Waker(Protocol):
    def set(self) -> None: ...


@final
class Seq:
    """One request's sequence: sizes, progress, and what woke it last."""

    __slots__ = (
        "admitted_at",
        "decode_v",
        "decoding",
        "epoch",
        "error",
        "first_at",
        "generated",
        "kv_base",
        "output",
        "preemptions",
        "prompt",
        "state",
        "wake",
    )

    def __init__(self, prompt: int, output: int, wake: _Waker) -> None:
        self.prompt = prompt
        self.output = output
        self.wake = wake
        self.state = QUEUED
        self.error = ""
        self.epoch = 0
        self.generated = 0
        self.kv_base = prompt
        self.decode_v = 0.0
        self.decoding = False
        self.first_at: float | None = None
        self.admitted_at: float | None = None
        self.preemptions = 0

    @property
    def need(self) -> int:
        """KV tokens this sequence occupies when (re)admitted."""
        return self.prompt + self.generated

    def __repr__(self) -> str:
        return f"<Seq prompt={self.prompt} output={self.output} state={self.state}>"


@final
class Engine:
    """Slots, a FIFO queue, the batch clock and the KV budget of one server."""

    def __init__(
        self,
        *,
        slots: int,
        base_step: float,
        knee: int,
        slope_below: float,
        slope_above: float,
        prefill_per_token: float,
        kv_budget: int,
        preempt: bool,
        max_queue: int,
        now: float,
        speed: float = 1.0,
    ) -> None:
        self.slots = slots
        self._base = base_step
        self._knee = knee
        self._below = slope_below
        self._above = slope_above
        self._prefill = prefill_per_token / base_step
        self.kv_budget = kv_budget
        self._admit_limit = kv_budget - max(1.0, kv_budget * _WATERMARK)
        self._preempt = preempt
        self.max_queue = max_queue
        self.active: dict[Seq, None] = {}
        self.queue: deque[Seq] = deque()
        self._heap: list[tuple[float, int, int, int, Seq]] = []
        self._pushes = 0
        self._t0 = now
        self._v0 = 0.0
        self._speed = speed
        self._kv = 0.0
        self._kv_v = 0.0
        self._decoding = 0
        self.holder: Seq | None = None
        self.peak_active = 0
        self.peak_queued = 0
        self.kv_peak = 0.0
        self.preempted = 0
        self.tokens_out = 0

    # -- timing ------------------------------------------------------------

    def step(self, n: int) -> float:
        """Seconds per decode step for a batch of ``n`` at full speed."""
        n = max(n, 1)
        below = min(n, self._knee) - 1
        above = max(n - self._knee, 0)
        return self._base + self._below * below + self._above * above

    def step_time(self) -> float:
        """Seconds the current batch takes per step (inf while stopped)."""
        if self._speed <= 0.0:
            return math.inf
        return self.step(len(self.active)) / self._speed

    def _rate(self) -> float:
        if not self.active or self._speed <= 0.0:
            return 0.0
        return self._speed / self.step(len(self.active))

    def _v_at(self, now: float) -> float:
        return self._v0 + (now - self._t0) * self._rate()

    def _reanchor(self, t: float, v: float) -> None:
        self._t0 = t
        self._v0 = v

    def _here(self, now: float) -> float:
        """Anchor the clock at ``now`` and bring the KV count up to it."""
        v = self._v_at(now)
        self._reanchor(now, v)
        self._sync_kv(v)
        return v

    def _sync_kv(self, v: float) -> None:
        self._kv += self._decoding * (v - self._kv_v)
        self._kv_v = v
        self.kv_peak = max(self.kv_peak, self._kv)

    def kv_used(self, now: float) -> float:
        """KV tokens held at ``now`` (as of the last event when ``now`` is unknown)."""
        if not self.active:
            return 0.0
        if not math.isfinite(now):
            return self._kv
        v = self._v_at(now)
        return self._kv + self._decoding * (v - self._kv_v)

    def _top(self) -> float:
        heap = self._heap
        while heap:
            _, _, epoch, _, seq = heap[0]
            if seq.state == ACTIVE and seq.epoch == epoch:
                return heap[0][0]
            heapq.heappop(heap)
        return math.inf

    def _kv_cross(self) -> float:
        if self._decoding == 0:
            return math.inf
        return self._kv_v + (self.kv_budget - self._kv) / self._decoding

    def next_time(self) -> float:
        """When the holder must next call :meth:`advance`."""
        rate = self._rate()
        if rate == 0.0:
            return math.inf
        v = min(self._top(), self._kv_cross())
        if v == math.inf:
            return math.inf
        return max(self._t0 + (v - self._v0) / rate, self._t0)

    # -- the public mutations -----------------------------------------------

    def arrive(self, seq: Seq, now: float) -> str:
        """Admit or queue ``seq``: ``"ok"``, ``"full"`` or ``"too_large"``."""
        self.advance(now)
        if seq.need > self.kv_budget:
            return "too_large"
        v = self._here(now)
        if not self.queue and self._fits(seq):
            self._activate(seq, now, v)
        elif len(self.queue) >= self.max_queue:
            return "full"
        else:
            self.queue.append(seq)
            self.peak_queued = max(self.peak_queued, len(self.queue))
        self._settle()
        return "ok"

    def remove(self, seq: Seq, now: float) -> None:
        """Take out a sequence whose caller gave up, freeing what it held."""
        self.advance(now)
        if seq.state not in (QUEUED, ACTIVE):
            return  # it ended on its own, possibly in this very advance
        v = self._here(now)
        if seq.state == QUEUED:
            self.queue.remove(seq)
        else:
            self._drop(seq, v)
        seq.state = GONE
        self._admit(now, v)
        self._settle()

    def set_speed(self, speed: float, now: float) -> None:
        """Change the throughput factor; 0 stops every sequence where it is."""
        self.advance(now)
        self._here(now)
        self._speed = speed
        self._settle()

    def fail_all(self, error: str) -> None:
        """End every sequence at once (a crash), waking their callers."""
        for seq in [*self.active, *self.queue]:
            seq.state = FAILED
            seq.error = error
            seq.wake.set()
        self.active.clear()
        self.queue.clear()
        self._heap.clear()
        self._kv = 0.0
        self._decoding = 0
        self.holder = None

    def advance(self, now: float) -> None:
        """Process every event due by ``now``, in batch-clock order."""
        holder = self.holder
        while True:
            rate = self._rate()
            if rate == 0.0:
                break
            top, cross = self._top(), self._kv_cross()
            v = min(top, cross)
            if v == math.inf:
                break
            v = max(v, self._v0)
            t = self._t0 + (v - self._v0) / rate
            if t > now:
                if v > self._v_at(now) + _EPS:
                    break
                t = now
            if cross < top:
                self._overflow(t, cross)
            else:
                _, _, _, kind, seq = heapq.heappop(self._heap)
                self._fire(t, v, kind, seq)
        if holder is not None and holder.state not in (QUEUED, ACTIVE):
            self._settle()

    # -- internals ----------------------------------------------------------

    def _fits(self, seq: Seq) -> bool:
        if len(self.active) >= self.slots:
            return False
        return not self.active or self._kv + seq.need <= self._admit_limit

    def _push(self, v: float, kind: int, seq: Seq) -> None:
        self._pushes += 1
        heapq.heappush(self._heap, (v, self._pushes, seq.epoch, kind, seq))

    def _activate(self, seq: Seq, t: float, v: float) -> None:
        seq.state = ACTIVE
        seq.epoch += 1
        if seq.admitted_at is None:
            seq.admitted_at = t
        seq.kv_base = seq.need
        prefill = seq.kv_base * self._prefill
        seq.decode_v = v + prefill
        self._sync_kv(v)
        self._kv += seq.kv_base
        self.kv_peak = max(self.kv_peak, self._kv)
        if prefill > 0.0:
            seq.decoding = False
            self._push(seq.decode_v, _DECODE, seq)
        else:
            seq.decoding = True
            self._decoding += 1
        if seq.first_at is None:
            self._push(seq.decode_v + 1.0, _FIRST, seq)
        self._push(seq.decode_v + (seq.output - seq.generated), _FINISH, seq)
        self.active[seq] = None
        self.peak_active = max(self.peak_active, len(self.active))

    def _admit(self, t: float, v: float) -> None:
        queue = self.queue
        while queue and self._fits(queue[0]):
            self._activate(queue.popleft(), t, v)

    def _drop(self, seq: Seq, v: float) -> None:
        """Remove an active sequence at batch clock ``v``, freeing its KV."""
        self._sync_kv(v)
        written = min(max(v - seq.decode_v, 0.0), seq.output - seq.generated)
        self._kv -= seq.kv_base + written
        if seq.decoding:
            self._decoding -= 1
        del self.active[seq]
        if not self.active:
            self._kv = 0.0
            self._decoding = 0

    def _fire(self, t: float, v: float, kind: int, seq: Seq) -> None:
        if kind == _DECODE:
            self._sync_kv(v)
            seq.decoding = True
            self._decoding += 1
        elif kind == _FIRST:
            seq.first_at = t
        else:
            self._reanchor(t, v)
            self._drop(seq, v)
            self.tokens_out += seq.output
            seq.state = DONE
            seq.wake.set()
            self._admit(t, v)

    def _overflow(self, t: float, v: float) -> None:
        """The cache is full: preempt or fail the youngest decoding sequence."""
        self._reanchor(t, v)
        self._sync_kv(v)
        victim = next(s for s in reversed(self.active) if s.decoding)
        if self._preempt and len(self.active) > 1:
            done = min(math.floor(v - victim.decode_v + _EPS), victim.output - victim.generated)
            self._drop(victim, v)
            victim.generated += max(done, 0)
            victim.state = QUEUED
            victim.preemptions += 1
            self.preempted += 1
            self.queue.appendleft(victim)
        else:
            self._drop(victim, v)
            victim.state = FAILED
            victim.error = "kv_overflow"
            victim.wake.set()
        self._admit(t, v)

    def _settle(self) -> None:
        """Make sure a live sequence holds the timer, and wake it to re-time."""
        if not self.active and not self.queue:
            # Idle: restart the batch clock at zero so it never loses precision.
            self._heap.clear()
            self._v0 = self._kv_v = self._kv = 0.0
            self._decoding = 0
        holder = self.holder
        if holder is None or holder.state not in (QUEUED, ACTIVE):
            holder = next(iter(self.active), None)
            if holder is None and self.queue:
                holder = self.queue[0]
            self.holder = holder
        if holder is not None:
            holder.wake.set()

    def __repr__(self) -> str:
        return (
            f"<Engine active={len(self.active)} queued={len(self.queue)}"
            f" kv={self._kv:.0f}/{self.kv_budget}>"
        )
