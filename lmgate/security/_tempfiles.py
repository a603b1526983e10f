"""Temporary files of atomic writes: how they are named, and cleaned on start.

An atomic write goes to a temporary file next to its target, is fsynced and
renamed over it.  A crash between the two leaves the temporary behind; done
on every crash, that is a slow leak of disk.  Every such file lmgate makes
is named ``.lmgate-tmp-<pid>-<token>-<target>`` so that a later start can
recognise its own leftovers and remove them -- and nothing else.

A leftover is removed when it is older than ``min_age`` and the process that
wrote it is gone, or when it is older than ``max_age`` whoever wrote it.
``min_age`` protects a write in progress in another process (which may live
in another PID namespace sharing the directory); ``max_age`` bounds what a
reused PID could keep alive.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final, final

import msgspec
import psutil  # type: ignore[import-untyped]

from lmgate._validate import check_float

__all__ = [
    "TEMP_PREFIX",
    "TempCleanup",
    "clean_stale_temp_files",
    "state_dirs_of",
    "temp_path_for",
]

TEMP_PREFIX: Final = ".lmgate-tmp-"
#: Paths listed in a cleanup result; the counts are always complete.
_MAX_LISTED = 32
_MAX_NAME = 255


@final
class TempCleanup(msgspec.Struct, frozen=True, kw_only=True):
    """What a cleanup did; ``removed_paths`` lists at most the first 32."""

    removed: int
    kept: int
    errors: int
    removed_paths: tuple[str, ...]


def temp_path_for(target: str | os.PathLike[str]) -> Path:
    """A fresh temporary path in ``target``'s directory, for an atomic write of it.

    Open it with ``O_CREAT | O_EXCL`` (``open(path, "xb")``): the random token
    makes a collision unlikely, exclusive creation makes it harmless.
    """
    path = Path(target)
    stem = f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}-"
    name = (stem + path.name)[:_MAX_NAME]
    return path.with_name(name)


def state_dirs_of(*files: str | os.PathLike[str] | None) -> tuple[str, ...]:
    """The directories holding ``files`` (a config file, a journal), once each.

    What a config loader passes as ``Scheduler(state_dirs=...)``: the places
    lmgate writes atomically, whose leftovers are cleaned at start and whose
    free space the resource guard watches.  ``None`` entries are skipped.
    """
    out: dict[str, None] = {}
    for f in files:
        if f is None:
            continue
        out[os.path.abspath(os.path.dirname(os.fspath(f)) or ".")] = None
    return tuple(out)


def clean_stale_temp_files(
    dirs: Iterable[str | os.PathLike[str]],
    *,
    min_age: float = 30.0,
    max_age: float = 3600.0,
    now: float | None = None,
) -> TempCleanup:
    """Remove leftover ``.lmgate-tmp-*`` files directly inside ``dirs``.

    Only regular files are touched (never symlinks or directories, never
    files without the prefix, never anything in subdirectories).  Missing
    directories are skipped and per-file errors counted, so a start never
    fails here.  ``now`` is wall-clock seconds, compared with file mtimes.
    """
    min_age = check_float("min_age", min_age)
    max_age = check_float("max_age", max_age)
    wall = time.time() if now is None else check_float("now", now)
    removed = kept = errors = 0
    listed: list[str] = []
    for d in dirs:
        try:
            entries = os.scandir(d)
        except OSError:
            continue
        with entries:
            for entry in entries:
                if not entry.name.startswith(TEMP_PREFIX):
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    age = wall - entry.stat(follow_symlinks=False).st_mtime
                except OSError:
                    errors += 1
                    continue
                if not _stale(entry.name, age, min_age, max_age):
                    kept += 1
                    continue
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue  # someone else cleaned it, or its writer renamed it
                except OSError:
                    errors += 1
                    continue
                removed += 1
                if len(listed) < _MAX_LISTED:
                    listed.append(entry.path)
    return TempCleanup(removed=removed, kept=kept, errors=errors, removed_paths=tuple(listed))


def _stale(name: str, age: float, min_age: float, max_age: float) -> bool:
    if age >= max_age:
        return True
    if age < min_age:
        return False
    pid = _writer_pid(name)
    if pid is None or pid == os.getpid():
        # No recorded writer, or one of ours that may still be writing:
        # only age may condemn it.
        return False
    try:
        return not psutil.pid_exists(pid)
    except Exception:
        return False


def _writer_pid(name: str) -> int | None:
    head = name[len(TEMP_PREFIX) :].split("-", 1)[0]
    if not (head.isascii() and head.isdigit()) or len(head) > 10:
        return None
    pid = int(head)
    return pid if pid > 0 else None
