"""The batching engine as a state machine: arrivals, departures, time, speed."""

from __future__ import annotations

import math

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from lmgate.sim._engine import ACTIVE, DONE, FAILED, GONE, QUEUED, Engine, Seq


class Waker:
    """Counts how often the engine woke a sequence's task."""

    def __init__(self) -> None:
        self.woken = 0

    def set(self) -> None:
        self.woken += 1


class EngineMachine(RuleBasedStateMachine):
    """Drives the engine the way the server's tasks do, checking its books at every step."""

    @initialize(
        slots=st.integers(1, 6),
        knee=st.integers(1, 4),
        budget=st.integers(20, 400),
        preempt=st.booleans(),
        max_queue=st.integers(0, 6),
        prefill=st.sampled_from([0.0, 0.0005, 0.005]),
    )
    def setup(
        self, slots: int, knee: int, budget: int, preempt: bool, max_queue: int, prefill: float
    ) -> None:
        self.engine = Engine(
            slots=slots,
            base_step=0.01,
            knee=knee,
            slope_below=0.001,
            slope_above=0.004,
            prefill_per_token=prefill,
            kv_budget=budget,
            preempt=preempt,
            max_queue=max_queue,
            now=0.0,
        )
        self.now = 0.0
        self.seqs: list[Seq] = []
        self.refused = 0

    @rule(prompt=st.integers(1, 120), output=st.integers(1, 60))
    def arrive(self, prompt: int, output: int) -> None:
        seq = Seq(prompt, output, Waker())
        answer = self.engine.arrive(seq, self.now)
        assert answer in ("ok", "full", "too_large")
        if answer == "ok":
            self.seqs.append(seq)
            assert seq.state in (QUEUED, ACTIVE)
        else:
            self.refused += 1
            assert seq.state == QUEUED
            assert seq not in self.engine.active
            assert seq not in self.engine.queue
            assert (answer == "too_large") == (prompt > self.engine.kv_budget)

    @precondition(lambda self: any(s.state in (QUEUED, ACTIVE) for s in self.seqs))
    @rule(pick=st.integers(0, 1000))
    def cancel(self, pick: int) -> None:
        live = [s for s in self.seqs if s.state in (QUEUED, ACTIVE)]
        seq = live[pick % len(live)]
        self.engine.remove(seq, self.now)
        # An event due this instant (the cache filling) may end it first.
        assert seq.state in (GONE, DONE, FAILED)
        assert seq not in self.engine.active
        assert seq not in self.engine.queue

    @rule(dt=st.floats(0.0, 2.0, allow_nan=False))
    def wait(self, dt: float) -> None:
        """Let time pass, waking at each moment the holder would."""
        target = self.now + dt
        for _ in range(100_000):
            t = self.engine.next_time()
            assert t >= self.now - 1e-9
            if t > target:
                break
            self.now = max(self.now, t)
            self.engine.advance(self.now)
        else:
            raise AssertionError("the engine never let time pass")
        self.now = target
        self.engine.advance(self.now)

    @rule(speed=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]))
    def set_speed(self, speed: float) -> None:
        self.engine.set_speed(speed, self.now)

    @invariant()
    def books_balance(self) -> None:
        engine = self.engine
        assert len(engine.active) <= engine.slots
        preempted = sum(1 for s in engine.queue if s.preemptions)
        assert len(engine.queue) - preempted <= engine.max_queue
        # A preempted sequence gave its slot back, and nothing newer overtakes it.
        assert preempted + len(engine.active) <= engine.slots
        assert engine.peak_active <= engine.slots
        v = engine._v_at(self.now)
        held = 0.0
        for seq in engine.active:
            assert seq.state == ACTIVE
            written = min(max(v - seq.decode_v, 0.0), seq.output - seq.generated)
            held += seq.kv_base + written
        assert math.isclose(engine.kv_used(self.now), held, rel_tol=1e-9, abs_tol=1e-6)
        assert held <= engine.kv_budget + 1e-6
        assert engine._decoding == sum(1 for s in engine.active if s.decoding)
        for seq in engine.queue:
            assert seq.state == QUEUED
        live = [s for s in self.seqs if s.state in (QUEUED, ACTIVE)]
        assert len(live) == len(engine.active) + len(engine.queue)
        if live:
            assert engine.holder in live
        for seq in self.seqs:
            if seq.state == DONE:
                assert seq.first_at is not None
                assert seq.generated <= seq.output
            if seq.state == FAILED:
                assert seq.error == "kv_overflow"

    def teardown(self) -> None:
        """Given time and full speed, everything still admitted ends."""
        self.engine.set_speed(1.0, self.now)
        for _ in range(200):
            self.wait(5.0)
        assert not self.engine.active
        assert not self.engine.queue
        assert self.engine.kv_used(self.now) == 0.0
        assert all(s.state in (DONE, FAILED, GONE) for s in self.seqs)


EngineMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_engine_state_machine = EngineMachine.TestCase
