"""The resource sampler in virtual time, and the psutil reader on this machine."""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import trio.testing

from lmgate._errors import InvalidParameter
from lmgate.actors._resources import (
    PsutilReader,
    ResourceRecommendationChanged,
    parse_nvidia_smi,
    run_resource_sampler,
)
from lmgate.policies.resources import ResourceGuard, ResourceReadings

TOTAL = 1000


def run_virtual(fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``fn`` on trio with a clock that jumps whenever all tasks block."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    return anyio.run(fn, backend="trio", backend_options={"clock": clock})


class Script:
    """A reader that replays memory fractions and records when it was called."""

    def __init__(self, fractions: list[float | None], *, takes: float = 0.0) -> None:
        self._fractions: Iterator[float | None] = iter(fractions)
        self.calls: list[float] = []
        self.takes = takes

    async def __call__(self) -> ResourceReadings:
        self.calls.append(anyio.current_time())
        if self.takes:
            await anyio.sleep(self.takes)
        value = next(self._fractions, 0.5)
        if value is None:
            raise OSError("cannot read /proc")
        return ResourceReadings(memory_available=round(value * TOTAL), memory_total=TOTAL)


async def sample_for(
    seconds: float, script: Script, *, interval: float = 1.0, hold: float = 2.0
) -> tuple[list[ResourceRecommendationChanged], int]:
    guard = ResourceGuard(min_hold=hold).build()
    events: list[ResourceRecommendationChanged] = []
    async with anyio.create_task_group() as tg:
        await tg.start(
            partial(
                run_resource_sampler,
                guard,
                interval=interval,
                on_recommendation=events.append,
                read=script,
            )
        )
        updates_at_start = guard.statistics().updates
        await anyio.sleep(seconds)
        tg.cancel_scope.cancel()
    return events, updates_at_start


def test_pressure_is_reported_at_once_and_calm_after_the_hold() -> None:
    """Changes are reported on the sample that shows them; lowering waits min_hold."""

    async def main() -> tuple[list[ResourceRecommendationChanged], int, list[float]]:
        script = Script([0.5, 0.5, 0.12, 0.04, 0.04, 0.5, 0.5, 0.5, 0.5])
        events, first = await sample_for(9.5, script)
        return events, first, script.calls

    events, updates_at_start, calls = run_virtual(main)
    assert updates_at_start == 1
    assert calls == [float(t) for t in range(10)]
    assert [(e.at, e.previous, e.recommendation, e.reason) for e in events] == [
        (2.0, "proceed", "reduce_context", "memory"),
        (3.0, "reduce_context", "pause_admission", "memory"),
        (5.0, "pause_admission", "proceed", None),
    ]


def test_a_slow_read_skips_ticks_instead_of_queueing_them() -> None:
    """A read longer than the interval delays the next one; reads never overlap."""

    async def main() -> list[float]:
        script = Script([], takes=2.5)
        await sample_for(7.5, script)
        return script.calls

    assert run_virtual(main) == [0.0, 3.5, 7.0]


def test_a_failing_reader_is_logged_and_sampling_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reader error counts as an unknown snapshot and is logged by type only."""

    async def main() -> tuple[list[ResourceRecommendationChanged], list[float]]:
        script = Script([0.04, None, None, 0.5, 0.5, 0.5])
        events, _ = await sample_for(5.5, script, hold=0.0)
        return events, script.calls

    with caplog.at_level(logging.WARNING, logger="lmgate.resources"):
        events, calls = run_virtual(main)
    assert len(calls) == 6
    assert [(e.at, e.recommendation) for e in events] == [
        (0.0, "pause_admission"),
        (3.0, "proceed"),
    ]
    messages = [r.getMessage() for r in caplog.records if r.name == "lmgate.resources"]
    assert messages
    assert all("OSError" in m and "/proc" not in m for m in messages)


def test_the_event_is_tagged_and_encodes() -> None:
    """The change event is a tagged Event that encodes to JSON."""
    event = ResourceRecommendationChanged(
        at=1.0, recommendation="shed_low_priority", previous="proceed", reason="swap"
    )
    assert msgspec.json.decode(msgspec.json.encode(event)) == {
        "type": "ResourceRecommendationChanged",
        "at": 1.0,
        "recommendation": "shed_low_priority",
        "previous": "proceed",
        "reason": "swap",
    }


@pytest.mark.anyio
async def test_bad_arguments_are_refused() -> None:
    """The interval must be positive and the callback callable."""
    guard = ResourceGuard().build()
    with pytest.raises(InvalidParameter):
        await run_resource_sampler(guard, interval=0.0, on_recommendation=print)
    with pytest.raises(InvalidParameter):
        await run_resource_sampler(guard, on_recommendation=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        PsutilReader(dirs="/tmp")


@pytest.mark.anyio
async def test_the_real_reader_starts_and_stops(tmp_path: Path) -> None:
    """With psutil in a worker thread the sampler starts after one read and cancels cleanly."""
    guard = ResourceGuard().build()
    async with anyio.create_task_group() as tg:
        await tg.start(
            partial(
                run_resource_sampler,
                guard,
                interval=3600.0,
                dirs=[str(tmp_path)],
                on_recommendation=lambda e: None,
            )
        )
        stats = guard.statistics()
        tg.cancel_scope.cancel()
    assert stats.updates == 1
    assert stats.readings is not None
    assert stats.readings.memory_total is not None
    assert stats.readings.memory_total > 0
    assert [d.path for d in stats.readings.disks] == [str(tmp_path)]


def test_reader_reads_this_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory, swap, disks, fds and per-endpoint connections come from psutil."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            conn, _ = server.accept()
            with conn:
                reader = PsutilReader(
                    dirs=[str(tmp_path), str(tmp_path / "missing")],
                    endpoints={
                        "ip": f"http://127.0.0.1:{port}/v1",
                        "name": f"http://localhost:{port}",
                        "other": "http://127.0.0.1:1",
                        "cloud": "https://api.example.com/v1",
                    },
                    nvidia_smi=("lmgate-test-no-such-nvidia-smi",),
                )
                r = reader.read_blocking()
                assert client.fileno() >= 0
    assert r.memory_available is not None
    assert r.memory_total is not None
    assert 0 < r.memory_available <= r.memory_total
    assert r.swap_in is not None
    assert r.swap_out is not None
    assert [d.path for d in r.disks] == [str(tmp_path)]
    assert r.disks[0].total > 0
    if sys.platform != "win32":
        assert r.open_fds is not None
        assert r.open_fds >= 3
        assert r.max_fds is None or r.max_fds >= r.open_fds
    assert r.sockets is not None
    assert r.sockets >= 3
    counts = {c.endpoint: c.count for c in r.connections}
    assert counts == {"ip": 1, "name": 1, "other": 0}
    assert r.gpus == ()
    assert reader.gpu_backend is None


@pytest.mark.skipif(sys.platform == "win32", reason="uses a POSIX shell script")
def test_gpu_memory_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nvidia-smi's CSV (MiB) becomes one reading per GPU, in bytes."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    smi = _script(tmp_path, "printf '1024, 8192\\n4096, 8192\\n'")
    reader = PsutilReader(nvidia_smi=(smi,))
    assert reader.gpu_backend == "nvidia-smi"
    gpus = reader.read_blocking().gpus
    assert [(g.index, g.used, g.total) for g in gpus] == [
        (0, 1024 << 20, 8192 << 20),
        (1, 4096 << 20, 8192 << 20),
    ]


@pytest.mark.skipif(sys.platform == "win32", reason="uses a POSIX shell script")
def test_a_failing_gpu_query_is_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A driver that keeps failing is asked three times, then no more."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    counter = tmp_path / "calls"
    smi = _script(tmp_path, f"echo x >> '{counter}'; echo 'NVIDIA-SMI has failed' >&2; exit 9")
    reader = PsutilReader(nvidia_smi=(smi,))
    with caplog.at_level(logging.WARNING, logger="lmgate.resources"):
        for _ in range(5):
            assert reader.read_blocking().gpus == ()
    assert counter.read_text().count("x") == 3
    assert reader.gpu_backend is None
    assert any("no longer sampling" in r.getMessage() for r in caplog.records)


def test_gpu_sampling_can_be_switched_off() -> None:
    """gpu=False never looks for a GPU."""
    assert PsutilReader(gpu=False).gpu_backend is None


@pytest.mark.parametrize(
    "text", ["", "[N/A], 8192", "1024", "1024, 0", "nan, 8192", "-1, 8192", "inf, 8192"]
)
def test_unparsable_nvidia_smi_output_is_refused(text: str) -> None:
    """Anything but 'used, total' numbers is an error, not a made-up reading."""
    with pytest.raises(ValueError):
        parse_nvidia_smi(text)


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-nvidia-smi"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return os.fspath(path)
