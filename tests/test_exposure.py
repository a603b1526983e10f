"""Finding the process behind a loopback port, and flagging exposure and root."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import psutil  # type: ignore[import-untyped]
import pytest

import lmgate
from lmgate.security import _exposure
from lmgate.security._exposure import (
    LISTENERS,
    UNKNOWN,
    ListenerCache,
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


@pytest.mark.anyio
async def test_a_scheduler_checks_its_loopback_endpoints_at_start() -> None:
    """An exposed server gets an event; a loopback-only one a report; neither blocks."""
    LISTENERS.clear()
    with listener("0.0.0.0") as open_port, listener("127.0.0.1") as safe_port:
        endpoints = [
            lmgate.Endpoint("open", url=f"http://127.0.0.1:{open_port}/v1", models=["m"]),
            lmgate.Endpoint("safe", url=f"http://localhost:{safe_port}", models=["m"]),
            lmgate.Endpoint("remote", url="http://10.0.0.1:8080", models=["m"]),
        ]
        async with lmgate.Scheduler(
            endpoints, resources=lmgate.ResourceOptions(check_exposure=True)
        ) as sched:
            with sched.events.subscribe() as sub, anyio.fail_after(30):
                event = await sub.get()
            stats = sched.stats()
    assert isinstance(event, ServerExposed)
    assert (event.endpoint, event.port, event.pid) == ("open", open_port, os.getpid())
    assert stats.resources is not None
    listeners = stats.resources.listeners
    assert set(listeners) == {"open", "safe"}
    assert listeners["open"].exposed_to_network is True
    assert listeners["safe"].exposed_to_network is False
    assert listeners["safe"].addresses == (f"127.0.0.1:{safe_port}",)


@pytest.mark.anyio
async def test_a_failing_check_never_stops_the_scheduler(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Permission trouble in the check is logged; requests are served as usual."""

    def denied(urls: Any) -> Any:
        raise PermissionError("no access to /proc")

    LISTENERS.clear()
    monkeypatch.setattr(_exposure, "inspect_listener", denied)

    async def call(lease: lmgate.Lease) -> str:
        return lease.endpoint.name

    caplog.set_level(logging.INFO, logger="lmgate.resources")
    ep = lmgate.Endpoint("gpu", url="http://127.0.0.1:9", models=["m"])
    async with lmgate.Scheduler(
        [ep], resources=lmgate.ResourceOptions(check_exposure=True)
    ) as sched:
        assert await sched.run(call, model="m") == "gpu"
        # The check runs in a worker thread (which close would abandon, not
        # wait for): wait here, in real time, for its outcome.
        with anyio.fail_after(10):
            while not any("PermissionError" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110 -- a worker thread, not a task, sets it
                await anyio.sleep(0.01)
    assert sched.stats().resources.listeners == {}  # type: ignore[union-attr]


def test_the_listener_cache_is_bounded_and_expires() -> None:
    """Fresh answers come from the cache; old ones are asked again; size stays bounded."""
    now = [0.0]
    cache = ListenerCache(size=2, max_age=10.0, clock=lambda: now[0])
    urls = ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"]
    first = cache.inspect(urls)
    assert all(r is not None and not r.found for r in first)
    assert (cache.misses, cache.hits, len(cache)) == (3, 0, 2)
    cache.inspect(urls[1:])
    assert (cache.misses, cache.hits) == (3, 2)
    now[0] = 11.0
    cache.inspect(urls[2:])
    assert (cache.misses, cache.hits) == (4, 2)
    assert cache.inspect(["https://example.com"]) == [None]


def test_a_report_never_carries_credentials_from_the_url() -> None:
    """User info, query and fragment are dropped: the report is shown in stats and events."""
    report = inspect_listener("http://user:sk-pw@127.0.0.1:1/v1?key=sk-q#frag")
    assert report is not None
    assert report.url == "http://127.0.0.1:1/v1"
    assert "sk-" not in msgspec.json.encode(report).decode()
