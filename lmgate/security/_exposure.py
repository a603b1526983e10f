"""Who is listening behind a loopback endpoint, and is it safe?

Local model servers are often started with ``--host 0.0.0.0`` copied from a
tutorial or published by a container runtime, which puts an unauthenticated
model API on the network; and they are often run as root.  lmgate talks to
them over loopback, so it is in a position to notice.  The check is
best-effort by design: without the permission to see another user's
process, the answer is "unknown", never an error.

The lookup walks the machine's socket table, so it is not cheap on a busy
host: run it once per endpoint (at start, or when a port moves) from a
worker thread.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, final
from urllib.parse import urlsplit, urlunsplit

import msgspec
import psutil  # type: ignore[import-untyped]

from lmgate.observability._events import Event
from lmgate.observability._logging import RateLimitedLogger

__all__ = [
    "UNKNOWN",
    "ListenerCache",
    "ListenerReport",
    "ServerExposed",
    "ServerRunsAsRoot",
    "exposure_events",
    "inspect_listener",
    "is_loopback_url",
]

UNKNOWN: Final = "unknown"
_log = RateLimitedLogger("lmgate.exposure")


@final
class ListenerReport(msgspec.Struct, frozen=True, kw_only=True):
    """What listens on a loopback endpoint's port.

    ``name`` and ``user`` are ``"unknown"`` (and ``pid``, ``runs_as_root``
    ``None``) when the operating system would not tell; ``found`` is False
    when nothing visible listens on the port.  ``exposed_to_network`` is
    True when any bound address is reachable from off the machine -- an
    unspecified address (``0.0.0.0``, ``::``) or a non-loopback one.
    """

    url: str
    port: int
    found: bool
    pid: int | None = None
    name: str = UNKNOWN
    user: str = UNKNOWN
    addresses: tuple[str, ...] = ()
    exposed_to_network: bool | None = None
    runs_as_root: bool | None = None


@final
class ServerExposed(Event, frozen=True, kw_only=True):
    """A local model server listens on a network-reachable address."""

    endpoint: str
    port: int
    pid: int | None
    name: str
    addresses: tuple[str, ...]


@final
class ServerRunsAsRoot(Event, frozen=True, kw_only=True):
    """A local model server runs with root (administrator) privileges."""

    endpoint: str
    port: int
    pid: int | None
    name: str


def is_loopback_url(url: str) -> bool:
    """True when ``url``'s host is ``localhost`` or a loopback IP literal."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    if host is None:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    return _is_loopback(host)


def inspect_listener(url: str) -> ListenerReport | None:
    """Find and describe the process listening behind a loopback ``url``.

    Returns ``None`` for a URL that is not on loopback (there is nothing
    local to inspect).  Blocking; call it from a worker thread.
    """
    if not is_loopback_url(url):
        return None
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    # The report is shown (stats, events): no user info, query or fragment.
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    url = urlunsplit(
        (parts.scheme, f"{host}:{port}" if parts.port else str(host), parts.path, "", "")
    )
    listeners = _listeners_on(port)
    if not listeners:
        return ListenerReport(url=url, port=port, found=False)
    addresses = tuple(sorted({f"{_fmt(ip)}:{port}" for ip, _ in listeners}))
    exposed = any(not _is_loopback(ip) for ip, _ in listeners)
    pids = sorted({pid for _, pid in listeners if pid is not None})
    pid = pids[0] if pids else None
    name, user, root = _describe(pid)
    return ListenerReport(
        url=url,
        port=port,
        found=True,
        pid=pid,
        name=name,
        user=user,
        addresses=addresses,
        exposed_to_network=exposed,
        runs_as_root=root,
    )


@final
class ListenerCache:
    """Recent reports per URL, so schedulers started one after another in a
    process (tests, short scripts, a pool of workers) scan the socket table
    once, not once each.  Bounded in entries and age; thread-safe, since the
    lookups run in worker threads.
    """

    __slots__ = ("_clock", "_entries", "_lock", "_max_age", "_size", "hits", "misses")

    def __init__(
        self,
        *,
        size: int = 64,
        max_age: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._size = size
        self._max_age = max_age
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, ListenerReport | None]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def inspect(self, urls: Sequence[str]) -> list[ListenerReport | None]:
        """``inspect_listener`` for each URL, from the cache when fresh.  Blocking."""
        out: list[ListenerReport | None] = []
        for url in urls:
            now = self._clock()
            with self._lock:
                entry = self._entries.get(url)
                if entry is not None and now - entry[0] < self._max_age:
                    self._entries.move_to_end(url)
                    self.hits += 1
                    out.append(entry[1])
                    continue
                self.misses += 1
            report = inspect_listener(url)
            with self._lock:
                self._entries[url] = (self._clock(), report)
                self._entries.move_to_end(url)
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
            out.append(report)
        return out

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<ListenerCache entries={len(self._entries)} hits={self.hits} misses={self.misses}>"


#: The process-wide cache the scheduler's start-up check uses.
LISTENERS: Final = ListenerCache()


def exposure_events(report: ListenerReport, *, endpoint: str, now: float) -> list[Event]:
    """The warnings a report calls for, logged once each and returned to publish."""
    events: list[Event] = []
    if report.exposed_to_network:
        events.append(
            ServerExposed(
                at=now,
                endpoint=endpoint,
                port=report.port,
                pid=report.pid,
                name=report.name,
                addresses=report.addresses,
            )
        )
        _log.warning(
            f"exposed:{endpoint}",
            "endpoint %r: %s (pid %s) listens on %s, reachable from the network;"
            " bind it to 127.0.0.1 unless that is intended",
            endpoint,
            report.name,
            report.pid if report.pid is not None else UNKNOWN,
            ", ".join(report.addresses),
            endpoint=endpoint,
            port=report.port,
        )
    if report.runs_as_root:
        events.append(
            ServerRunsAsRoot(
                at=now, endpoint=endpoint, port=report.port, pid=report.pid, name=report.name
            )
        )
        _log.warning(
            f"root:{endpoint}",
            "endpoint %r: %s (pid %s) runs as root; run model servers as an unprivileged user",
            endpoint,
            report.name,
            report.pid if report.pid is not None else UNKNOWN,
            endpoint=endpoint,
            port=report.port,
        )
    return events


def _listeners_on(port: int) -> list[tuple[str, int | None]]:
    """``(bound ip, pid or None)`` of every listening inet socket on ``port``."""
    try:
        return _matching(psutil.net_connections(kind="inet"), port)
    except (psutil.AccessDenied, PermissionError):
        pass  # macOS and hardened hosts: fall back to the processes we may see
    except (psutil.Error, OSError):
        return []
    found: list[tuple[str, int | None]] = []
    for proc in psutil.process_iter():
        try:
            conns = proc.net_connections(kind="inet")
        except (psutil.Error, OSError):
            continue
        found.extend((ip, proc.pid) for ip, _ in _matching(conns, port))
    return found


def _matching(conns: Iterable[Any], port: int) -> list[tuple[str, int | None]]:
    out: list[tuple[str, int | None]] = []
    for c in conns:
        if c.status != psutil.CONN_LISTEN or not c.laddr or c.laddr.port != port:
            continue
        out.append((str(c.laddr.ip), getattr(c, "pid", None)))
    return out


def _describe(pid: int | None) -> tuple[str, str, bool | None]:
    if pid is None:
        return UNKNOWN, UNKNOWN, None
    try:
        proc = psutil.Process(pid)
    except (psutil.Error, OSError):
        return UNKNOWN, UNKNOWN, None
    name = user = UNKNOWN
    root: bool | None = None
    with contextlib.suppress(psutil.Error, OSError):
        name = str(proc.name())
    with contextlib.suppress(psutil.Error, OSError, KeyError):
        user = str(proc.username())
    if os.name == "posix":
        try:
            root = int(proc.uids().effective) == 0
        except (psutil.Error, OSError, AttributeError):
            root = True if user == "root" else None
    elif user != UNKNOWN:
        root = user.rsplit("\\", 1)[-1].upper() in ("SYSTEM", "ADMINISTRATOR")
    return name, user, root


def _is_loopback(ip: str) -> bool:
    """True for a loopback address; an address that does not parse counts as exposed."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _fmt(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip
