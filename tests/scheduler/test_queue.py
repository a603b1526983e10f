"""The admission queue on its own: ordering, aging, lazy deletion, counts."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from lmgate.scheduler._lease import Waiter
from lmgate.scheduler._queue import RequestQueue

AGING = 10.0


class _Ev:
    def set(self) -> None:
        pass

    async def wait(self) -> None:  # pragma: no cover - never awaited here
        pass


def _waiter(model: str = "m", priority: int = 0, now: float = 0.0) -> Waiter:
    return Waiter(model, priority, math.inf, now, _Ev())


def _push(q: RequestQueue, w: Waiter) -> Waiter:
    q.push(w, w.enqueued_at + w.priority * AGING)
    return w


def _leave(q: RequestQueue, w: Waiter) -> None:
    """What admission does when a caller gives up."""
    w.queued = False
    q.discard(w)


def test_lower_priority_number_first() -> None:
    """A more urgent priority joining later is served before a less urgent one."""
    q = RequestQueue()
    low = _push(q, _waiter(priority=1, now=0.0))
    high = _push(q, _waiter(priority=0, now=1.0))
    assert q.pop("m") is high
    assert q.pop("m") is low
    assert q.pop("m") is None


def test_fifo_within_priority() -> None:
    """Equal priorities come out in arrival order, even at the same instant."""
    q = RequestQueue()
    ws = [_push(q, _waiter(priority=2, now=5.0)) for _ in range(20)]
    assert [q.pop("m") for _ in range(20)] == ws


def test_aging_overtakes() -> None:
    """A low priority that waited longer than ``aging`` per level beats a fresh urgent one."""
    q = RequestQueue()
    old_low = _push(q, _waiter(priority=1, now=0.0))
    fresh_high = _push(q, _waiter(priority=0, now=AGING + 0.5))
    assert q.pop("m") is old_low
    assert q.pop("m") is fresh_high
    # ...but not before it has waited that long.
    old_low = _push(q, _waiter(priority=1, now=100.0))
    fresh_high = _push(q, _waiter(priority=0, now=100.0 + AGING - 0.5))
    assert q.pop("m") is fresh_high


def test_models_are_separate() -> None:
    """Each model has its own heap; best_of picks the most urgent across models."""
    q = RequestQueue()
    a = _push(q, _waiter("a", priority=0, now=2.0))
    b = _push(q, _waiter("b", priority=0, now=1.0))
    assert q.waiting("a") == 1
    assert q.waiting("b") == 1
    assert q.waiting("c") == 0
    assert q.peek("a") is not None
    assert q.peek("a")[2] is a
    assert q.best_of(["a", "c"]) is a
    assert q.best_of(["a", "b", "c"]) is b
    assert q.best_of(["a", "b"]) is None
    assert len(q) == 0


def test_discarded_waiter_is_skipped() -> None:
    """A waiter that left is never returned, though its entry stays until popped past."""
    q = RequestQueue()
    first = _push(q, _waiter(now=0.0))
    second = _push(q, _waiter(now=1.0))
    _leave(q, first)
    assert q.waiting("m") == 1
    assert len(q) == 1
    assert q.heap_entries() == 2
    assert q.peek("m") is not None
    assert q.peek("m")[2] is second
    assert q.pop("m") is second
    assert q.pop("m") is None
    assert q.heap_entries() == 0


def test_compaction_keeps_heap_bounded() -> None:
    """Lazily deleted entries are compacted so the heap stays near the live count."""
    q = RequestQueue()
    keep = [_push(q, _waiter(now=float(i))) for i in range(5)]
    peak = 0
    for round_ in range(50):
        batch = [_push(q, _waiter(now=1000.0 + round_ * 1000 + i)) for i in range(1000)]
        for w in batch:
            _leave(q, w)
            peak = max(peak, q.heap_entries())
    assert q.waiting("m") == 5
    # Never more than the bound discard enforces (2 * live + 64), plus the
    # thousand live ones of a batch before they leave.
    assert peak <= 2 * 1005 + 65
    assert q.heap_entries() <= 2 * 5 + 65
    assert [q.pop("m") for _ in range(5)] == keep


def test_ahead_of_counts_same_or_more_urgent() -> None:
    """ahead_of counts live waiters of the model at the same or a lower priority number."""
    q = RequestQueue()
    ws = [_push(q, _waiter(priority=p, now=0.0)) for p in (-1, 0, 0, 1, 3)]
    _push(q, _waiter("other", priority=0))
    assert q.ahead_of("m", -2) == 0
    assert q.ahead_of("m", -1) == 1
    assert q.ahead_of("m", 0) == 3
    assert q.ahead_of("m", 2) == 4
    assert q.ahead_of("m", 3) == 5
    assert q.ahead_of("nobody", 3) == 0
    _leave(q, ws[1])
    assert q.ahead_of("m", 0) == 2
    assert q.pop("m") is ws[0]
    assert q.ahead_of("m", 0) == 1


def test_drain_empties_everything_most_urgent_first() -> None:
    """drain returns every live waiter once, each model's most urgent first."""
    q = RequestQueue()
    a2 = _push(q, _waiter("a", priority=2))
    a0 = _push(q, _waiter("a", priority=0))
    gone = _push(q, _waiter("a", priority=1))
    b = _push(q, _waiter("b"))
    _leave(q, gone)
    out = q.drain()
    assert out.index(a0) < out.index(a2)
    assert sorted(map(id, out)) == sorted(map(id, [a0, a2, b]))
    assert len(q) == 0
    assert q.heap_entries() == 0
    assert list(q.models_waiting()) == []


# -- a model-based comparison ---------------------------------------------------------------

_models = st.sampled_from(["a", "b", "c"])
_ops = st.one_of(
    st.tuples(st.just("push"), _models, st.integers(-3, 3), st.integers(0, 50)),
    st.tuples(st.just("leave"), st.integers(0, 10_000)),
    st.tuples(st.just("pop"), _models),
    st.tuples(st.just("best_of"), st.sets(_models, min_size=1)),
    st.tuples(st.just("ahead_of"), _models, st.integers(-4, 4)),
)


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(_ops, max_size=120))
def test_matches_sorted_list_model(ops: list[tuple[object, ...]]) -> None:
    """Every operation agrees with a plain sorted list of (rank, arrival, waiter)."""
    q = RequestQueue()
    model: list[tuple[float, int, Waiter]] = []
    seq = 0
    now = 0.0
    for op in ops:
        match op:
            case ("push", str(m), int(prio), int(dt)):
                now += dt / 10
                w = _waiter(m, prio, now)
                seq += 1
                rank = now + prio * AGING
                q.push(w, rank)
                model.append((rank, seq, w))
                model.sort(key=lambda e: e[:2])
            case ("leave", int(i)):
                if model:
                    _, _, w = model.pop(i % len(model))
                    _leave(q, w)
            case ("pop", str(m)):
                want = next((e for e in model if e[2].model == m), None)
                got = q.pop(m)
                if want is None:
                    assert got is None
                else:
                    assert got is want[2]
                    model.remove(want)
                    got.queued = False
            case ("best_of", set() as ms):
                want = next((e for e in model if e[2].model in ms), None)
                got = q.best_of(sorted(ms))  # type: ignore[arg-type]
                if want is None:
                    assert got is None
                else:
                    assert got is want[2]
                    model.remove(want)
                    got.queued = False
            case ("ahead_of", str(m), int(prio)):
                want_n = sum(1 for e in model if e[2].model == m and e[2].priority <= prio)
                assert q.ahead_of(m, prio) == want_n
        assert len(q) == len(model)
        for m in ("a", "b", "c"):
            mine = [e for e in model if e[2].model == m]
            assert q.waiting(m) == len(mine)
            head = q.peek(m)
            assert (head[2] if head else None) is (mine[0][2] if mine else None)
        # lazily deleted entries never exceed the compaction bound
        assert q.heap_entries() <= 2 * len(model) + 65 * 3
    drained = q.drain()
    assert len(drained) == len(model)
    for m in ("a", "b", "c"):
        assert [w for w in drained if w.model == m] == [e[2] for e in model if e[2].model == m]
