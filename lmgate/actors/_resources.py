"""The resource sampler: reads the machine on an interval and feeds the guard.

Reading is the only part of resource guarding that costs anything (a
handful of ``/proc`` reads, one ``statvfs`` per directory, and on a GPU box
an ``nvidia-smi`` run), so it happens once per interval in a worker thread,
off the request path.  Everything between two reads uses the cached
snapshot the guard keeps.  The reader is injectable: tests feed scripted
readings in virtual time.
"""

from __future__ import annotations

import ipaddress
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, final
from urllib.parse import urlsplit

import anyio
import psutil  # type: ignore[import-untyped]
from anyio.abc import TaskStatus

from lmgate._errors import InvalidParameter
from lmgate._validate import check_float
from lmgate.observability._events import Event
from lmgate.observability._logging import RateLimitedLogger
from lmgate.policies.resources import (
    DiskReading,
    EndpointConnections,
    GpuReading,
    Recommendation,
    ResourceGuardState,
    ResourceReadings,
)

__all__ = [
    "NVIDIA_SMI_QUERY",
    "PsutilReader",
    "Reader",
    "ResourceRecommendationChanged",
    "parse_nvidia_smi",
    "run_resource_sampler",
]

_log = RateLimitedLogger("lmgate.resources")

#: An async callable returning one snapshot; tests pass a scripted one.
Reader = Callable[[], Awaitable[ResourceReadings]]

NVIDIA_SMI_QUERY: Final[tuple[str, ...]] = (
    "nvidia-smi",
    "--query-gpu=memory.used,memory.total",
    "--format=csv,noheader,nounits",
)
_MIB = 1 << 20
#: Consecutive GPU query failures after which GPU sampling is switched off.
_GPU_GIVE_UP = 3


@final
class ResourceRecommendationChanged(Event, frozen=True, kw_only=True):
    """The resource guard changed its recommendation (``reason`` names the signal)."""

    recommendation: Recommendation
    previous: Recommendation
    reason: str | None


async def run_resource_sampler(
    guard: ResourceGuardState,
    *,
    interval: float = 5.0,
    dirs: Sequence[str] = (),
    endpoints: Mapping[str, str] | None = None,
    on_recommendation: Callable[[ResourceRecommendationChanged], None],
    read: Reader | None = None,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Sample every ``interval`` seconds until cancelled.

    Reports ``started`` after the first reading, so the guard has a real
    state before the scheduler admits anything.  ``on_recommendation`` is
    called synchronously on every change and must not block (hand it to the
    admission controller with ``send_nowait``).  A reader that raises is
    logged and counted as an empty snapshot: resource sampling is advisory
    and must never take the scheduler down.
    """
    interval = check_float("interval", interval, low_open=True)
    if not callable(on_recommendation):
        raise InvalidParameter("on_recommendation must be callable", field="on_recommendation")
    reader: Reader = read if read is not None else PsutilReader(dirs=dirs, endpoints=endpoints)
    next_at = anyio.current_time()
    started = False
    while True:
        try:
            readings = await reader()
        except Exception as exc:
            _log.warning("read_failed", "resource read failed: %s", type(exc).__name__)
            readings = ResourceReadings()
        now = anyio.current_time()
        previous = guard.recommendation
        current = guard.update(readings, now)
        if current != previous:
            on_recommendation(
                ResourceRecommendationChanged(
                    at=now, recommendation=current, previous=previous, reason=guard.reason
                )
            )
        if not started:
            started = True
            task_status.started()
        next_at += interval
        if next_at <= now:  # a slow read: skip the missed ticks, keep the cadence
            next_at = now + interval
        await anyio.sleep_until(next_at)


@final
class PsutilReader:
    """Reads the real machine with psutil; one instance per sampler.

    Holds what is worth caching between reads: the ``psutil.Process`` of this
    process, the endpoints' socket addresses (IP literals and ``localhost``
    only, so a read never waits on DNS) and whether a GPU backend answers at
    all -- a box without one pays for the discovery once.
    """

    __slots__ = ("_addrs", "_dirs", "_gpu", "_gpu_failures", "_gpu_timeout", "_proc", "_smi")

    def __init__(
        self,
        *,
        dirs: Sequence[str] = (),
        endpoints: Mapping[str, str] | None = None,
        gpu: bool = True,
        gpu_timeout: float = 1.0,
        nvidia_smi: Sequence[str] = NVIDIA_SMI_QUERY,
    ) -> None:
        if isinstance(dirs, str):
            raise InvalidParameter("dirs must be a list of directories", field="dirs")
        self._dirs = tuple(os.fspath(d) for d in dirs)
        self._addrs = _endpoint_addresses(endpoints or {})
        self._gpu_timeout = check_float("gpu_timeout", gpu_timeout, low_open=True)
        self._smi = tuple(nvidia_smi)
        self._proc = psutil.Process()
        self._gpu_failures = 0
        self._gpu: str | None = _pick_gpu_backend(self._smi) if gpu else None

    @property
    def gpu_backend(self) -> str | None:
        """``"nvml"``, ``"nvidia-smi"`` or ``None`` when GPU memory is not sampled."""
        return self._gpu

    async def __call__(self) -> ResourceReadings:
        # Not abandoned on cancel: the read is bounded (the GPU query has its
        # own timeout), and no thread may outlive the scheduler.
        return await anyio.to_thread.run_sync(self.read_blocking, abandon_on_cancel=True)

    def read_blocking(self) -> ResourceReadings:
        """One snapshot, blocking; call it from a worker thread."""
        fields: dict[str, Any] = {}
        try:
            mem = psutil.virtual_memory()
            fields.update(memory_available=int(mem.available), memory_total=int(mem.total))
        except Exception:
            pass
        try:
            swap = psutil.swap_memory()
            fields.update(swap_in=int(swap.sin), swap_out=int(swap.sout))
        except Exception:
            pass
        disks = []
        for d in self._dirs:
            try:
                usage = shutil.disk_usage(d)
            except OSError:
                continue
            disks.append(DiskReading(path=d, free=usage.free, total=usage.total))
        fields["disks"] = tuple(disks)
        fields.update(self._process_fields())
        fields["gpus"] = self._read_gpus()
        return ResourceReadings(**fields)

    def _process_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        proc = self._proc
        try:
            with proc.oneshot():
                if sys.platform != "win32":
                    fields["open_fds"] = int(proc.num_fds())
                    soft = proc.rlimit(psutil.RLIMIT_NOFILE)[0]
                    if 0 < soft < (1 << 62):
                        fields["max_fds"] = int(soft)
                conns = proc.net_connections(kind="inet")
        except Exception:
            return fields
        fields["sockets"] = len(conns)
        if self._addrs:
            counts = dict.fromkeys(self._addrs, 0)
            for c in conns:
                if not c.raddr:
                    continue
                peer = (_norm_ip(c.raddr.ip), int(c.raddr.port))
                for name, addrs in self._addrs.items():
                    if peer in addrs:
                        counts[name] += 1
            fields["connections"] = tuple(
                EndpointConnections(endpoint=n, count=k) for n, k in counts.items()
            )
        return fields

    def _read_gpus(self) -> tuple[GpuReading, ...]:
        if self._gpu is None:
            return ()
        try:
            gpus = _read_nvml() if self._gpu == "nvml" else self._read_smi()
        except Exception as exc:
            self._gpu_failures += 1
            if self._gpu_failures >= _GPU_GIVE_UP:
                _log.warning(
                    "gpu_off",
                    "GPU memory query failed %d times (%s); no longer sampling it",
                    self._gpu_failures,
                    type(exc).__name__,
                )
                self._gpu = None
            return ()
        self._gpu_failures = 0
        return gpus

    def _read_smi(self) -> tuple[GpuReading, ...]:
        done = subprocess.run(
            self._smi,
            capture_output=True,
            text=True,
            timeout=self._gpu_timeout,
            check=True,
            stdin=subprocess.DEVNULL,
        )
        return parse_nvidia_smi(done.stdout)

    def __repr__(self) -> str:
        return f"<PsutilReader dirs={len(self._dirs)} gpu={self._gpu}>"


def parse_nvidia_smi(text: str) -> tuple[GpuReading, ...]:
    """Parse ``used, total`` lines in MiB; raises ValueError on anything else."""
    gpus = []
    for index, line in enumerate(ln for ln in text.splitlines() if ln.strip()):
        used_s, total_s = (part.strip() for part in line.split(","))
        used_mib, total_mib = float(used_s), float(total_s)
        if not (math.isfinite(used_mib) and math.isfinite(total_mib)):
            raise ValueError("bad nvidia-smi line")
        used, total = int(used_mib * _MIB), int(total_mib * _MIB)
        if used < 0 or total <= 0:
            raise ValueError("bad nvidia-smi line")
        gpus.append(GpuReading(index=index, used=used, total=total))
    if not gpus:
        raise ValueError("nvidia-smi listed no GPU")
    return tuple(gpus)


def _pick_gpu_backend(smi: Sequence[str]) -> str | None:
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        return "nvml"
    except Exception:
        pass
    if smi and shutil.which(smi[0]) is not None:
        return "nvidia-smi"
    return None


def _read_nvml() -> tuple[GpuReading, ...]:
    import pynvml

    out = []
    for i in range(int(pynvml.nvmlDeviceGetCount())):
        info: Any = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i))
        out.append(GpuReading(index=i, used=int(info.used), total=int(info.total)))
    return tuple(out)


def _norm_ip(ip: str) -> str:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _endpoint_addresses(endpoints: Mapping[str, str]) -> dict[str, frozenset[tuple[str, int]]]:
    out: dict[str, frozenset[tuple[str, int]]] = {}
    for name, url in endpoints.items():
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port
        except ValueError:
            continue
        if not host:
            continue
        port = port or (443 if parts.scheme == "https" else 80)
        if host == "localhost":
            ips = ["127.0.0.1", "::1"]
        else:
            try:
                ips = [str(ipaddress.ip_address(host))]
            except ValueError:
                continue  # a DNS name: its connections are the transport pool's to count
        out[name] = frozenset((_norm_ip(ip), port) for ip in ips)
    return out
