"""The journal: torn or corrupt tails are dropped and reported, never half-read."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgate._errors import LmgateError
from lmgate.context._journal import Journal, read_journal

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, records: list[Any]) -> None:
    j, _, _ = Journal.open(path)
    with j:
        for r in records:
            j.append(r)


def test_round_trip_and_statistics(tmp_path: Path) -> None:
    """Records come back in order, and the journal counts what it wrote."""
    path = tmp_path / "j.jsonl"
    j, records, report = Journal.open(path)
    assert records == []
    assert report.clean
    with j:
        j.append({"a": 1})
        j.append([1, "two", None])
        stats = j.statistics()
    assert stats.records == 2
    assert stats.appended == 2
    assert stats.bytes == path.stat().st_size
    assert read_journal(path) == ([{"a": 1}, [1, "two", None]], read_journal(path)[1])
    assert read_journal(path)[1].clean
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_every_truncation_point_yields_a_clean_prefix(tmp_path: Path) -> None:
    """Cutting the file anywhere gives back exactly the records before the cut."""
    path = tmp_path / "j.jsonl"
    records = [{"i": i, "text": "é" * i} for i in range(4)]
    _write(path, records)
    data = path.read_bytes()
    ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        got, report = read_journal(path)
        whole = sum(1 for e in ends if e <= cut)
        assert got == records[:whole]
        assert report.valid_bytes == (ends[whole - 1] if whole else 0)
        assert report.dropped_bytes == cut - report.valid_bytes
        assert (report.reason is None) == (cut in [0, *ends])


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_corruption_is_never_read(data: st.DataObject) -> None:
    """A flipped byte anywhere stops the read at the record it hit, never after."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "j.jsonl"
        records = [{"i": i, "v": "abc" * i} for i in range(5)]
        _write(path, records)
        raw = bytearray(path.read_bytes())
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] ^= data.draw(st.integers(1, 255))
        path.write_bytes(bytes(raw))
        got, report = read_journal(path)
        hit = raw[:pos].count(b"\n")  # index of the record holding the flipped byte
        assert got == records[:hit]
        assert not report.clean
        assert report.reason


def test_duplicated_line_is_caught_by_the_sequence_number(tmp_path: Path) -> None:
    """A record repeated verbatim is out of sequence and ends the read."""
    path = tmp_path / "j.jsonl"
    _write(path, [{"i": 0}, {"i": 1}])
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[0] + lines[1])
    got, report = read_journal(path)
    assert got == [{"i": 0}]
    assert "sequence" in (report.reason or "")


def test_open_truncates_a_torn_tail_before_appending(tmp_path: Path) -> None:
    """New records never land after garbage: the torn tail is cut first."""
    path = tmp_path / "j.jsonl"
    _write(path, [{"i": 0}])
    with path.open("ab") as f:
        f.write(b'{"crc":"0000')
    j, records, report = Journal.open(path)
    assert records == [{"i": 0}]
    assert report.dropped_bytes == 12
    with j:
        j.append({"i": 1})
    assert read_journal(path) == ([{"i": 0}, {"i": 1}], read_journal(path)[1])
    assert read_journal(path)[1].clean


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    """Two writers would interleave records, so the second one is refused."""
    path = tmp_path / "j.jsonl"
    j, _, _ = Journal.open(path)
    with j, pytest.raises(LmgateError, match="already open"):
        Journal.open(path)


def test_failed_write_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails halfway is truncated away; later records stay readable."""
    path = tmp_path / "j.jsonl"
    j, _, _ = Journal.open(path)
    with j:
        j.append({"i": 0})
        real_write = os.write

        def half_then_fail(fd: int, data: Any) -> int:
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "write", half_then_fail)
        with pytest.raises(OSError, match="No space"):
            j.append({"i": 1, "pad": "x" * 100})
        monkeypatch.undo()
        j.append({"i": 1})
    got, report = read_journal(path)
    assert got == [{"i": 0}, {"i": 1}]
    assert report.clean


# The writer's os.write takes at most 64 KiB per call, as a pipe or a full disk
# may: the journal's write loop copes.  It says "w" after each call and the
# record count after each append, so the test can kill it between two calls
# of one record (a torn record) as well as between records -- no sleeps.
WRITER = """
import os, random, sys
from lmgate.context._journal import Journal
_write = os.write
def chunked(fd, data):
    n = _write(fd, bytes(data[:65536]))
    sys.stdout.write("w\\n")
    sys.stdout.flush()
    return n
os.write = chunked
path, seed = sys.argv[1], int(sys.argv[2])
j, records, report = Journal.open(path)
n = len(records)
rnd = random.Random(seed)
while True:
    j.append({"i": n, "pad": "x" * rnd.choice([1, 100, 10_000, 300_000, 3_000_000])})
    n += 1
    sys.stdout.write(f"{n}\\n")
    sys.stdout.flush()
"""


def test_sigkill_at_random_points_never_leaves_a_half_record(tmp_path: Path) -> None:
    """A writer killed with SIGKILL mid-stream reloads to every acknowledged record, whole."""
    path = tmp_path / "kill.jsonl"
    rnd = random.Random(20240611)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    acked = 0
    torn = 0
    kills = 8
    for round_ in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(round_)],
            stdout=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        assert proc.stdout is not None
        for _ in range(rnd.randint(1, 150)):
            line = proc.stdout.readline().strip()
            assert line, "writer died on its own"
            if line != b"w":
                acked = int(line)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
        records, report = read_journal(path)
        torn += not report.clean
        assert len(records) >= acked, "an fsync'd record was lost"
        for i, rec in enumerate(records):
            assert rec["i"] == i
            assert set(rec["pad"]) <= {"x"}
        acked = len(records)
    assert acked > kills
    print(f"kill test: {acked} records survived {kills} kills; {torn} kills tore a record")
