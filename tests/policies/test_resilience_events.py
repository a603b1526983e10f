"""Resilience events: mapping breaker transitions, encoding, URL redaction."""

from __future__ import annotations

from typing import Any, Union

import msgspec
import pytest

from lmgate.observability._events import Event, EventHub
from lmgate.policies._breaker import Breaker
from lmgate.policies._resilience_events import (
    BreakerClosed,
    BreakerHalfOpen,
    BreakerOpened,
    EndpointMoved,
    EndpointStateChanged,
    LimitChanged,
    ModelChanged,
    breaker_event,
    moved_event,
    redact_url,
)

ALL = (
    BreakerOpened,
    BreakerHalfOpen,
    BreakerClosed,
    EndpointStateChanged,
    EndpointMoved,
    ModelChanged,
    LimitChanged,
)


def test_a_breaker_life_as_events() -> None:
    """Open, half-open, close and a hold map to their events with the numbers."""
    b = Breaker(minimum_volume=2, open_base=1.0, jitter=0.0).build()
    b.record("error", 0.0)
    opened = breaker_event("gpu", b.record("error", 0.0) or pytest.fail("no transition"))
    assert isinstance(opened, BreakerOpened)
    assert (opened.endpoint, opened.until, opened.failures, opened.total) == ("gpu", 1.0, 2, 2)
    half = breaker_event("gpu", b.tick(1.0) or pytest.fail("no transition"), half_open_trials=1)
    assert isinstance(half, BreakerHalfOpen)
    closed = breaker_event(
        "gpu", b.record("success", 1.5, permit=b.acquire(1.0)) or pytest.fail("no transition")
    )
    assert isinstance(closed, BreakerClosed)
    held = breaker_event("gpu", b.record("overload", 2.0, 5.0) or pytest.fail("no transition"))
    assert isinstance(held, EndpointStateChanged)
    assert (held.old, held.new, held.reason, held.until) == ("closed", "held", "retry_after", 7.0)
    released = breaker_event("gpu", b.tick(7.0) or pytest.fail("no transition"))
    assert isinstance(released, EndpointStateChanged)
    assert (released.old, released.new) == ("held", "closed")


def test_events_encode_tagged_and_round_trip() -> None:
    """Every event is a tagged Event that survives JSON both ways."""
    samples = [
        BreakerOpened(
            at=1.0,
            endpoint="e",
            reason="failure_rate",
            until=2.0,
            failure_rate=0.5,
            failures=5,
            total=10,
            consecutive_opens=1,
        ),
        BreakerHalfOpen(at=1.0, endpoint="e", trials=1),
        BreakerClosed(at=1.0, endpoint="e", reason="recovered"),
        EndpointStateChanged(at=1.0, endpoint="e", old="closed", new="held", reason="loading"),
        EndpointMoved(at=1.0, endpoint="e", old_url="http://h:1", new_url="http://h:2"),
        ModelChanged(at=1.0, endpoint="e", model="m", old="a", new="b"),
        LimitChanged(at=1.0, endpoint="e", old=8, new=4, policy="Gradient2"),
    ]
    assert {type(s) for s in samples} == set(ALL)
    union: Any = Union[ALL]  # noqa: UP007
    decoder = msgspec.json.Decoder(union)
    for s in samples:
        assert isinstance(s, Event)
        data = msgspec.json.encode(s)
        assert b'"type":' in data
        assert decoder.decode(data) == s


def test_events_flow_through_the_hub() -> None:
    """The hub delivers resilience events to a subscriber unchanged."""
    hub = EventHub(log_events=False)
    with hub.subscribe(maxlen=4) as sub:
        ev = ModelChanged(at=0.0, endpoint="e", model="m", old="a", new="b")
        hub.publish(ev)
        assert sub.get_nowait() is ev


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://user:secret@host:8080/v1?key=abc#f", "http://host:8080/v1"),
        ("http://127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("http://[::1]:8080/", "http://[::1]:8080/"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    """User info, query and fragment never reach an event."""
    assert redact_url(url) == expected


def test_moved_event_is_redacted() -> None:
    """moved_event strips secrets from both URLs."""
    ev = moved_event("e", "http://u:p@h:1/v1", "http://u:p@h:2/v1?token=x", at=3.0)
    assert (ev.old_url, ev.new_url, ev.at) == ("http://h:1/v1", "http://h:2/v1", 3.0)
    assert "p@" not in repr(ev)
