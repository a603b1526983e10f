"""An append-only JSON-lines journal that survives being killed mid-write.

Each record is one line, ``{"crc":"<crc32>","len":<n>,"rec":<n bytes of JSON>}``,
written with a single ``write`` and made durable with ``fsync`` before
``append`` returns.  A process killed mid-write leaves at most one torn line
at the end; the length and checksum make any torn or corrupted line
detectable, and a sequence number inside each record catches lines that
were duplicated or reordered.  Reading stops at the first bad line: what is
after it cannot be trusted to follow what came before, so it is dropped and
reported, never half-read.  Opening for append truncates that tail first,
so new records never land after garbage.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path
from types import TracebackType
from typing import Any, final

import msgspec

from lmgate._errors import InvalidParameter, LmgateError

__all__ = ["Journal", "JournalReport", "JournalStatistics", "read_journal"]

MAX_RECORD = 64 * 1024 * 1024
_HEAD = re.compile(rb'\{"crc":"([0-9a-f]{8})","len":(\d{1,10}),"rec":')
_encoder = msgspec.json.Encoder()


class _Record(msgspec.Struct, frozen=True, array_like=True):
    seq: int
    data: Any


_decoder = msgspec.json.Decoder(_Record)


@final
class JournalReport(msgspec.Struct, frozen=True, kw_only=True):
    """What loading found: good records, and any tail dropped and why."""

    records: int
    valid_bytes: int
    dropped_bytes: int = 0
    reason: str | None = None

    @property
    def clean(self) -> bool:
        return self.dropped_bytes == 0


@final
class JournalStatistics(msgspec.Struct, frozen=True, kw_only=True):
    records: int
    bytes: int
    appended: int
    dropped_on_open: int


def _line(seq: int, data: Any) -> bytes:
    body = _encoder.encode(_Record(seq, data))
    if len(body) > MAX_RECORD:
        raise InvalidParameter(f"journal record larger than {MAX_RECORD} bytes", field="record")
    head = b'{"crc":"%08x","len":%d,"rec":' % (zlib.crc32(body), len(body))
    return head + body + b"}\n"


def _parse(line: bytes, seq: int) -> tuple[Any, str | None]:
    if not line.endswith(b"}\n"):
        return None, "torn record (no end of line)"
    m = _HEAD.match(line)
    if m is None:
        return None, "corrupt record header"
    start, n = m.end(), int(m[2])
    if start + n + 2 != len(line):
        return None, "record length mismatch"
    body = line[start : start + n]
    if b"%08x" % zlib.crc32(body) != m[1]:
        return None, "checksum mismatch"
    try:
        rec = _decoder.decode(body)
    except msgspec.DecodeError:
        return None, "undecodable record"
    if rec.seq != seq:
        return None, f"record {rec.seq} out of sequence (expected {seq})"
    return rec.data, None


def _scan(f: Any, size: int) -> tuple[list[Any], JournalReport]:
    records: list[Any] = []
    offset, reason = 0, None
    while offset < size:
        line = f.readline(MAX_RECORD + 256)
        if not line:
            break
        data, reason = _parse(line, len(records))
        if reason is not None:
            break
        records.append(data)
        offset += len(line)
    dropped = size - offset
    return records, JournalReport(
        records=len(records),
        valid_bytes=offset,
        dropped_bytes=dropped,
        reason=(reason or "trailing bytes") if dropped else None,
    )


def read_journal(path: str | os.PathLike[str]) -> tuple[list[Any], JournalReport]:
    """The records of a journal up to its first bad line, and a report."""
    p = Path(path)
    if not p.exists():
        return [], JournalReport(records=0, valid_bytes=0)
    with p.open("rb") as f:
        return _scan(f, os.fstat(f.fileno()).st_size)


@final
class Journal:
    """The writer.  One per file: a second writer, in any process, is refused.

    Use :meth:`open`, which returns the records already there and the load
    report alongside the journal.
    """

    __slots__ = ("_appended", "_broken", "_dropped", "_fd", "_seq", "_size", "path")

    def __init__(self, path: Path, fd: int, seq: int, size: int, dropped: int) -> None:
        self.path, self._fd, self._seq, self._size = path, fd, seq, size
        self._appended, self._dropped, self._broken = 0, dropped, False

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> tuple[Journal, list[Any], JournalReport]:
        p = Path(path)
        created = not p.exists()
        fd = os.open(p, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            _lock(fd)
            with os.fdopen(os.dup(fd), "rb") as f:
                records, report = _scan(f, os.fstat(fd).st_size)
            if report.dropped_bytes:
                os.ftruncate(fd, report.valid_bytes)
                os.fsync(fd)
            if created:
                _fsync_dir(p.parent)
        except BaseException:
            os.close(fd)
            raise
        return cls(p, fd, len(records), report.valid_bytes, report.dropped_bytes), records, report

    def append(self, data: Any) -> None:
        """Write one record and fsync it; when this returns, it survives a crash."""
        if self._fd < 0:
            raise LmgateError("journal is closed")
        if self._broken:
            raise LmgateError("journal is broken by an earlier write error")
        line = _line(self._seq, data)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except BaseException:
            try:  # take back a partial line so later records stay readable
                os.ftruncate(self._fd, self._size)
                os.fsync(self._fd)
            except OSError:
                self._broken = True
            raise
        self._seq += 1
        self._size += len(line)
        self._appended += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def statistics(self) -> JournalStatistics:
        return JournalStatistics(
            records=self._seq,
            bytes=self._size,
            appended=self._appended,
            dropped_on_open=self._dropped,
        )

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"records={self._seq}"
        return f"<Journal {self.path.name!r} {state}>"


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LmgateError("journal is already open for writing elsewhere") from None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
