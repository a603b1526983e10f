"""Leftover temporary files of atomic writes are recognised and cleaned, nothing else."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest

import lmgate
from lmgate._errors import InvalidParameter
from lmgate.scheduler._pressure import TempFilesCleaned
from lmgate.security._tempfiles import (
    TEMP_PREFIX,
    clean_stale_temp_files,
    state_dirs_of,
    temp_path_for,
)

NOW = 1_700_000_000.0
DEAD_PID = 99_999_999  # above any kernel's pid_max


def make(path: Path, age: float) -> Path:
    path.write_bytes(b"partial")
    os.utime(path, (NOW - age, NOW - age))
    return path


def test_temp_paths_sit_next_to_their_target(tmp_path: Path) -> None:
    """A temp path is in the target's directory, prefixed, with our pid, and unique."""
    target = tmp_path / "lmgate.toml"
    a, b = temp_path_for(target), temp_path_for(target)
    assert a.parent == tmp_path
    assert a.name.startswith(f"{TEMP_PREFIX}{os.getpid()}-")
    assert a.name.endswith("-lmgate.toml")
    assert a != b
    assert len(temp_path_for(tmp_path / ("x" * 250)).name) <= 255


def test_only_stale_leftovers_are_removed(tmp_path: Path) -> None:
    """Dead writers past min_age and anything past max_age go; the rest stays."""
    p = TEMP_PREFIX
    stale_dead = make(tmp_path / f"{p}{DEAD_PID}-ab12-cfg.toml", age=60)
    fresh_dead = make(tmp_path / f"{p}{DEAD_PID}-cd34-cfg.toml", age=5)
    ours = make(tmp_path / f"{p}{os.getpid()}-ef56-cfg.toml", age=60)
    live = make(tmp_path / f"{p}{os.getppid()}-0a0a-cfg.toml", age=600)
    ancient_live = make(tmp_path / f"{p}{os.getppid()}-1b1b-cfg.toml", age=7200)
    no_pid = make(tmp_path / f"{p}garbage", age=60)
    ancient_no_pid = make(tmp_path / f"{p}garbage2", age=3600)
    unrelated = make(tmp_path / "lmgate.toml", age=99_999)

    result = clean_stale_temp_files([tmp_path], now=NOW)

    gone = {stale_dead, ancient_live, ancient_no_pid}
    for path in (stale_dead, fresh_dead, ours, live, ancient_live, no_pid, ancient_no_pid):
        assert path.exists() is (path not in gone), path.name
    assert unrelated.exists()
    assert (result.removed, result.kept, result.errors) == (3, 4, 0)
    assert sorted(result.removed_paths) == sorted(str(p) for p in gone)


def test_links_directories_and_subdirectories_are_never_touched(tmp_path: Path) -> None:
    """Only regular files directly in the directory qualify; a link's target is safe."""
    outside = make(tmp_path / "precious.gguf", age=99_999)
    work = tmp_path / "work"
    work.mkdir()
    link = work / f"{TEMP_PREFIX}{DEAD_PID}-link"
    link.symlink_to(outside)
    os.utime(link, (NOW - 99_999, NOW - 99_999), follow_symlinks=False)
    folder = work / f"{TEMP_PREFIX}{DEAD_PID}-dir"
    folder.mkdir()
    nested = make(folder / f"{TEMP_PREFIX}{DEAD_PID}-nested", age=99_999)

    result = clean_stale_temp_files([work], now=NOW)

    assert result.removed == 0
    assert link.is_symlink()
    assert outside.read_bytes() == b"partial"
    assert nested.exists()


def test_missing_directories_and_unlink_errors_never_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start goes on: missing dirs are skipped, errors are counted."""
    make(tmp_path / f"{TEMP_PREFIX}{DEAD_PID}-x", age=99_999)

    def refuse(path: object) -> None:
        raise PermissionError(13, "denied")

    monkeypatch.setattr(os, "unlink", refuse)
    result = clean_stale_temp_files([tmp_path / "nope", tmp_path], now=NOW)
    assert (result.removed, result.errors) == (0, 1)


def test_the_listing_is_bounded_but_the_count_is_complete(tmp_path: Path) -> None:
    """Forty leftovers are all removed; at most 32 paths are listed."""
    for i in range(40):
        make(tmp_path / f"{TEMP_PREFIX}{DEAD_PID}-{i:04x}", age=99_999)
    result = clean_stale_temp_files([tmp_path], now=NOW)
    assert result.removed == 40
    assert len(result.removed_paths) == 32
    assert os.listdir(tmp_path) == []


def test_default_clock_is_wall_time(tmp_path: Path) -> None:
    """Without now=, file ages are measured against the wall clock."""
    old = tmp_path / f"{TEMP_PREFIX}{DEAD_PID}-old"
    old.write_bytes(b"x")
    os.utime(old, (0, 0))
    assert clean_stale_temp_files([tmp_path]).removed == 1


@pytest.mark.parametrize("kwargs", [{"min_age": -1.0}, {"max_age": float("inf")}, {"now": "x"}])
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict[str, object]) -> None:
    """Ages and now must be finite non-negative numbers."""
    with pytest.raises(InvalidParameter):
        clean_stale_temp_files([tmp_path], **kwargs)  # type: ignore[arg-type]


def test_state_dirs_are_the_directories_of_the_files(tmp_path: Path) -> None:
    """Each file's directory once, absolute; None is skipped."""
    cfg, journal = tmp_path / "lmgate.toml", tmp_path / "j" / "journal.log"
    assert state_dirs_of(cfg, None, journal, str(cfg)) == (str(tmp_path), str(tmp_path / "j"))
    assert state_dirs_of("lmgate.toml") == (os.getcwd(),)
    assert state_dirs_of() == ()


@pytest.mark.anyio
async def test_a_scheduler_cleans_its_state_dirs_at_start(tmp_path: Path) -> None:
    """Stale leftovers in state_dirs are gone after start; the cleanup is an event and a stat."""
    wall = time.time()
    stale = tmp_path / f"{TEMP_PREFIX}{DEAD_PID}-ab12-lmgate.toml"
    stale.write_bytes(b"partial")
    os.utime(stale, (wall - 600, wall - 600))
    keep = tmp_path / "lmgate.toml"
    keep.write_bytes(b"[queue]\n")
    ep = lmgate.Endpoint("gpu", url="http://10.0.0.1:1", models=["m"])
    async with lmgate.Scheduler(
        [ep], resources=lmgate.ResourceOptions(state_dirs=state_dirs_of(keep))
    ) as sched:
        with sched.events.subscribe() as sub, anyio.fail_after(30):
            event = await sub.get()
        stats = sched.stats()
    assert isinstance(event, TempFilesCleaned)
    assert (event.removed, event.errors) == (1, 0)
    assert not stale.exists()
    assert keep.exists()
    assert stats.resources is not None
    assert stats.resources.temp_files is not None
    assert stats.resources.temp_files.removed_paths == (str(stale),)


def test_bad_state_dirs_are_refused() -> None:
    """state_dirs must be a list of paths."""
    for bad in ("/tmp", [3], [""], ["a\x00b"]):
        with pytest.raises(InvalidParameter) as info:
            lmgate.ResourceOptions(state_dirs=bad)  # type: ignore[arg-type]
        assert info.value.field == "resources.state_dirs"
