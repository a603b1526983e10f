"""Finding the process behind a loopback port, and flagging exposure and root."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import psutil  # type: ignore[import-untyped]
import pytest

from lmgate._exposure import (
    UNKNOWN,
    ListenerReport,
    ServerExposed,
    ServerRunsAsRoot,
    exposure_events,
    inspect_listener,
    is_loopback_url,
)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@contextmanager
def listener(host: str, family: socket.AddressFamily = socket.AF_INET) -> Iterator[int]:
    """A real listening TCP socket on ``host``; yields its port."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        sock.listen()
        yield sock.getsockname()[1]


def _ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_a_server_on_all_interfaces_is_flagged() -> None:
    """Bound to 0.0.0.0, our own listener is found and reported as exposed."""
    with listener("0.0.0.0") as port:
        report = inspect_listener(f"http://127.0.0.1:{port}/v1")
    assert report is not None
    assert report.found
    assert report.port == port
    assert report.pid == os.getpid()
    assert report.name == psutil.Process().name()
    assert report.user == psutil.Process().username()
    assert report.addresses == (f"0.0.0.0:{port}",)
    assert report.exposed_to_network is True
    assert report.runs_as_root is IS_ROOT


def test_a_server_on_loopback_only_is_not_flagged() -> None:
    """Bound to 127.0.0.1, the same listener is found and not exposed."""
    with listener("127.0.0.1") as port:
        report = inspect_listener(f"http://localhost:{port}")
    assert report is not None
    assert report.found
    assert report.pid == os.getpid()
    assert report.addresses == (f"127.0.0.1:{port}",)
    assert report.exposed_to_network is False


@pytest.mark.skipif(not _ipv6_available(), reason="no IPv6 loopback")
@pytest.mark.parametrize(("host", "exposed"), [("::", True), ("::1", False)])
def test_ipv6_listeners(host: str, exposed: bool) -> None:
    """'::' is all interfaces, '::1' is loopback."""
    with listener(host, socket.AF_INET6) as port:
        report = inspect_listener(f"http://[::1]:{port}")
    assert report is not None
    assert report.found
    assert report.addresses == (f"[{host}]:{port}",)
    assert report.exposed_to_network is exposed


def test_nothing_listening() -> None:
    """A free port gives found=False and unknowns, not an error."""
    with listener("127.0.0.1") as port:
        pass
    report = inspect_listener(f"http://127.0.0.1:{port}")
    assert report == ListenerReport(url=f"http://127.0.0.1:{port}", port=port, found=False)
    assert report.exposed_to_network is None
    assert report.name == UNKNOWN


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8080", True),
        ("http://127.3.2.1", True),
        ("http://localhost:11434", True),
        ("http://[::1]:8000", True),
        ("http://[::ffff:127.0.0.1]:8000", True),
        ("http://192.168.1.10:8080", False),
        ("https://api.openai.com/v1", False),
        ("http://[::1", False),
        ("not a url", False),
    ],
)
def test_only_loopback_urls_are_inspected(url: str, loopback: bool) -> None:
    """Remote URLs (and garbage) have nothing local to inspect."""
    assert is_loopback_url(url) is loopback
    if not loopback:
        assert inspect_listener(url) is None


def test_denied_socket_table_falls_back_to_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the system-wide table is denied, visible processes are searched instead."""

    def denied(*args: Any, **kwargs: Any) -> Any:
        raise psutil.AccessDenied()

    monkeypatch.setattr(psutil, "net_connections", denied)
    with listener("0.0.0.0") as port:
        report = inspect_listener(f"http://127.0.0.1:{port}")
    assert report is not None
    assert report.found
    assert report.pid == os.getpid()
    assert report.exposed_to_network is True


def test_denied_process_details_are_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without permission to see the process, name, user and root are unknown."""

    class Hidden:
        def __init__(self, pid: int) -> None:
            self.pid = pid

        def __getattr__(self, name: str) -> Any:
            def denied(*args: Any) -> Any:
                raise psutil.AccessDenied(self.pid)

            return denied

    monkeypatch.setattr(psutil, "Process", Hidden)
    with listener("127.0.0.1") as port:
        report = inspect_listener(f"http://127.0.0.1:{port}")
    assert report is not None
    assert report.found
    assert (report.name, report.user, report.runs_as_root) == (UNKNOWN, UNKNOWN, None)
    assert report.exposed_to_network is False


def _report(**kw: Any) -> ListenerReport:
    base: dict[str, Any] = {
        "url": "http://127.0.0.1:8080",
        "port": 8080,
        "found": True,
        "pid": 42,
        "name": "llama-server",
        "user": "me",
        "addresses": ("0.0.0.0:8080",),
        "exposed_to_network": True,
        "runs_as_root": False,
    }
    base.update(kw)
    return ListenerReport(**base)


def test_events_and_warnings_for_an_exposed_root_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Exposure and root each give one tagged event and one warning."""
    report = _report(runs_as_root=True, user="root", name="exposed-root-server")
    with caplog.at_level(logging.WARNING, logger="lmgate.exposure"):
        events = exposure_events(report, endpoint="gpu-box", now=3.0)
    assert events == [
        ServerExposed(
            at=3.0,
            endpoint="gpu-box",
            port=8080,
            pid=42,
            name="exposed-root-server",
            addresses=("0.0.0.0:8080",),
        ),
        ServerRunsAsRoot(at=3.0, endpoint="gpu-box", port=8080, pid=42, name="exposed-root-server"),
    ]
    tags = [msgspec.json.decode(msgspec.json.encode(e))["type"] for e in events]
    assert tags == ["ServerExposed", "ServerRunsAsRoot"]
    messages = [r.getMessage() for r in caplog.records if r.name == "lmgate.exposure"]
    assert len(messages) == 2
    assert "0.0.0.0:8080" in messages[0]
    assert "root" in messages[1]


@pytest.mark.parametrize(
    "report",
    [
        _report(exposed_to_network=False),
        _report(exposed_to_network=None, runs_as_root=None),
        ListenerReport(url="http://127.0.0.1:1", port=1, found=False),
    ],
)
def test_no_events_for_a_safe_or_unknown_server(report: ListenerReport) -> None:
    """Loopback-only, unknown or absent servers raise no alarm."""
    assert exposure_events(report, endpoint="e", now=0.0) == []
