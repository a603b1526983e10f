"""Probe pacing, default ports, port search and URL rewriting."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmgate._errors import InvalidParameter
from lmgate.policies._health import (
    HealthSchedule,
    PortSearch,
    default_ports,
    replace_port,
    url_port,
)

STATES = st.sampled_from(["closed", "open", "half_open", "held"])


def test_pace_by_state() -> None:
    """Healthy probes are steady, down ones back off to a cap, recovering ones are fast."""
    h = HealthSchedule(interval=10.0, jitter=0.0, down_multiplier=2.0, down_max=60.0)
    assert h.next_probe_delay("closed", 0, 0.5) == 10.0
    assert [h.next_probe_delay("open", k, 0.5) for k in range(5)] == [10.0, 20.0, 40.0, 60.0, 60.0]
    assert h.next_probe_delay("open", 10**9, 0.5) == 60.0
    assert h.next_probe_delay("half_open", 3, 0.5) == 1.0
    assert h.next_probe_delay("held", 0, 0.5) == 1.0
    assert h.next_probe_delay("closed", 1, 0.5) == 1.0  # confirm a first failure quickly


def test_probe_comes_when_the_open_time_ends() -> None:
    """A backed-off probe is brought forward to when the breaker may recover."""
    h = HealthSchedule(interval=10.0, jitter=0.0, down_max=60.0)
    assert h.next_probe_delay("open", 5, 0.5, state_ends_in=3.0) == 3.0
    assert h.next_probe_delay("open", 5, 0.5, state_ends_in=600.0) == 60.0
    with pytest.raises(InvalidParameter):
        h.next_probe_delay("open", 5, 0.5, state_ends_in=-1.0)


@given(state=STATES, failures=st.integers(0, 10**6), draw=st.floats(0.0, 1.0))
def test_delay_bounds(state: Any, failures: int, draw: float) -> None:
    """Every delay is positive, finite, and within the jitter of its base."""
    h = HealthSchedule(interval=5.0, jitter=0.2, down_max=30.0, recovering_interval=0.5)
    d = h.next_probe_delay(state, failures, draw)
    assert math.isfinite(d)
    assert 0.5 * 0.8 <= d <= 30.0 * 1.2
    if state in ("half_open", "held"):
        assert d <= h.next_probe_delay("closed", 0, 0.0)


def test_bad_probe_inputs() -> None:
    """Unknown states, negative counts and draws out of range are refused."""
    h = HealthSchedule()
    with pytest.raises(InvalidParameter):
        h.next_probe_delay("down", 0, 0.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        h.next_probe_delay("closed", -1, 0.5)
    with pytest.raises(InvalidParameter):
        h.next_probe_delay("closed", 0, math.nan)
    with pytest.raises(InvalidParameter) as info:
        HealthSchedule(probe_timeout=0)
    assert info.value.field == "probe_timeout"


def test_should_search() -> None:
    """A port search starts after search_after refused connections in a row."""
    h = HealthSchedule(search_after=2)
    assert not h.should_search(1)
    assert h.should_search(2)


@pytest.mark.parametrize(
    ("kind", "ports"),
    [
        ("ollama", (11434,)),
        ("llamacpp", (8080,)),
        ("vllm", (8000,)),
        ("lmstudio", (1234,)),
        ("unknown", (11434, 8080, 8000, 1234)),
        ("sim", (11434, 8080, 8000, 1234)),
        ("openai", ()),
    ],
)
def test_default_ports(kind: str, ports: tuple[int, ...]) -> None:
    """Each server kind has its usual port; an unknown kind gets all four."""
    assert default_ports(kind) == ports


def test_port_search_finds_moved_server() -> None:
    """The known port is tried first, then each candidate once, until one answers."""
    s = PortSearch(8080, [11434, 8080, 8000, 1234])
    answers = {8080: False, 11434: False, 8000: True}
    probed = []
    while (port := s.next_port()) is not None:
        probed.append(port)
        s.report(port, answers[port])
    assert probed == [8080, 11434, 8000]
    assert (s.found, s.moved, s.done) == (8000, True, True)
    assert s.statistics().tried == (8080, 11434, 8000)


def test_port_search_back_in_place_or_gone() -> None:
    """A server back on its port is not 'moved'; one found nowhere ends the round."""
    s = PortSearch(8080, [8000])
    s.report(8080, True)
    assert (s.found, s.moved) == (8080, False)
    gone = PortSearch(8080, [8000])
    gone.report(8080, False)
    gone.report(8000, False)
    assert (gone.next_port(), gone.found, gone.done) == (None, None, True)
    assert "found=None" in repr(gone)


def test_port_search_refuses_out_of_order_reports() -> None:
    """Reporting a port other than the one planned is a driver bug and refused."""
    s = PortSearch(8080, [8000])
    with pytest.raises(InvalidParameter):
        s.report(8000, True)
    with pytest.raises(InvalidParameter):
        PortSearch(0, [])
    with pytest.raises(InvalidParameter):
        PortSearch(8080, [70000])


@given(
    current=st.integers(1, 65535),
    candidates=st.lists(st.integers(1, 65535), max_size=10),
    answers=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_port_search_terminates_and_probes_each_once(
    current: int, candidates: list[int], answers: list[bool]
) -> None:
    """A round probes each distinct port at most once and stops at the first answer."""
    s = PortSearch(current, candidates)
    probed: list[int] = []
    while (port := s.next_port()) is not None:
        ok = answers[len(probed)]
        probed.append(port)
        s.report(port, ok)
        if ok:
            assert s.found == port
    assert probed[0] == current
    assert len(probed) == len(set(probed)) <= len({current, *candidates})
    assert set(probed) <= {current, *candidates}
    assert s.found is None or s.found == probed[-1]


@pytest.mark.parametrize(
    ("url", "port", "expected"),
    [
        ("http://127.0.0.1:8080/v1", 8000, "http://127.0.0.1:8000/v1"),
        ("http://gpu-box/v1?x=1", 11434, "http://gpu-box:11434/v1?x=1"),
        ("http://[::1]:8080/", 1234, "http://[::1]:1234/"),
        ("https://user:pw@host:1/a", 2, "https://user:pw@host:2/a"),
    ],
)
def test_replace_port(url: str, port: int, expected: str) -> None:
    """The port is swapped; scheme, host, user info, path and query are kept."""
    assert replace_port(url, port) == expected
    assert url_port(expected) == port


def test_url_port_defaults_and_garbage() -> None:
    """Scheme defaults apply and an invalid port gives None."""
    assert url_port("http://host/x") == 80
    assert url_port("https://host") == 443
    assert url_port("http://host:99999") is None
    with pytest.raises(InvalidParameter):
        replace_port("http:///nohost", 80)
