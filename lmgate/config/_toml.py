"""Writing the TOML a configuration holds, and writing files atomically.

The standard library reads TOML (``tomllib``); writing it is ``tomli-w``,
the writer that pairs with it.  Files are written the only crash-safe way:
a temporary file in the same directory, fsync, rename over the target,
fsync the directory.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from collections.abc import Mapping
from typing import Any

import tomli_w

from lmgate._errors import InvalidParameter
from lmgate.security._tempfiles import temp_path_for

__all__ = ["atomic_write", "dumps_toml", "toml_value"]


def dumps_toml(data: Mapping[str, Any]) -> str:
    """TOML for the nested dicts of str/int/float/bool/list a Config holds."""
    try:
        return tomli_w.dumps(data)
    except TypeError as exc:
        raise InvalidParameter(f"cannot write to TOML: {exc}", field="config") from exc


def toml_value(text: str) -> Any:
    """``text`` read as a TOML value (``8``, ``true``, ``["a"]``), else as a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: a reader sees the old file or the new, never half.

    The temporary file is created with ``mode`` from the start (never
    briefly world-readable) and named so a later start can clean it up if
    this process dies before the rename.
    """
    target = os.fspath(path)
    tmp = temp_path_for(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # the umask may have narrowed it
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(os.path.dirname(os.path.abspath(target)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
