"""The limit state endpoint actors get when processes share a limit."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lmgate.coordination._limit import SharedLimit, decode_sample, encode_sample
from lmgate.policies import LimitState, Sample

outcomes = st.sampled_from(["success", "overload", "timeout", "error", "loading", "client_error"])


def test_shared_limit_is_a_limit_state() -> None:
    """It plugs in where a policy state goes, and answers what it is told to follow."""
    state = SharedLimit(8, policy="Fixed", ship=False)
    assert isinstance(state, LimitState)
    state.follow(3)
    assert state.limit == 3
    assert state.tick(0.0) == 3
    state.follow(0)
    assert state.limit == 1


def test_samples_are_rebased_on_the_shared_count() -> None:
    """The in-flight of a shipped sample is the shared holder count at its grant."""
    state = SharedLimit(8, policy="Aimd", ship=True)
    state.note(5.0, 7)
    state.update(Sample(start=5.0, duration=1.0, in_flight=2, outcome="success"), 6.0)
    (raw,) = state.take()
    sample = decode_sample(raw, 100.0)
    assert sample is not None
    assert sample.in_flight == 7
    assert sample.start == 99.0


def test_a_fixed_limit_ships_nothing() -> None:
    """A fixed limit learns nothing, so its samples stay home."""
    state = SharedLimit(8, policy="Fixed", ship=False)
    state.update(Sample(start=0.0, duration=1.0, in_flight=1, outcome="success"), 1.0)
    assert state.take() == []
    assert state.statistics().samples == 1


def test_the_outbox_is_bounded() -> None:
    """Samples pile up only to a bound while Redis is away; the overflow is counted."""
    state = SharedLimit(8, policy="Aimd", ship=True)
    for i in range(3000):
        state.update(Sample(start=float(i), duration=1.0, in_flight=1, outcome="success"), 0.0)
        state.note(float(i), 1)
    assert len(state.take()) == 1024
    assert state.statistics().detail["dropped_samples"] == 3000 - 1024


@settings(deadline=None)
@given(
    duration=st.floats(0, 1e6),
    in_flight=st.integers(0, 10_000),
    outcome=outcomes,
    ttft=st.none() | st.floats(0, 1e3),
    tokens=st.none() | st.integers(0, 2**31),
)
def test_samples_round_trip(
    duration: float, in_flight: int, outcome: str, ttft: float | None, tokens: int | None
) -> None:
    """What one process ships, the leader reads back unchanged (re-timed to its clock)."""
    s = Sample(
        start=0.0,
        duration=duration,
        in_flight=1,
        outcome=outcome,  # type: ignore[arg-type]
        ttft=ttft,
        prompt_tokens=tokens,
        output_tokens=tokens,
    )
    back = decode_sample(encode_sample(s, in_flight), 1e7)
    assert back is not None
    assert (back.duration, back.in_flight, back.outcome, back.ttft) == (
        duration,
        in_flight,
        outcome,
        ttft,
    )
    assert back.prompt_tokens == tokens


def test_malformed_samples_are_dropped() -> None:
    """Junk in the stream (or another program's) never reaches the policy."""
    bad = [
        b"",
        b"\x93\x01\x02\x03",
        encode_sample(Sample(start=0, duration=1.0, in_flight=1, outcome="success"), -1),
    ]
    for raw in bad:
        assert decode_sample(raw, 0.0) is None
