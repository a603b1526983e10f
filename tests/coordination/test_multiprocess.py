"""Several worker processes share one endpoint limit through a real Redis.

The endpoint is a loopback server that counts the calls it serves at once
(``_sim.py``), so what is asserted is the endpoint's true concurrency.
These tests run in real time: lease expiry and Redis faults cannot be
simulated inside Redis.  Timings are kept short (``lease_ttl`` 1.5 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ._server import RedisServer
from ._sim import ConcurrencyServer

pytestmark = pytest.mark.redis

WORKER = Path(__file__).with_name("_worker.py")
ROOT = Path(__file__).resolve().parents[2]
LIMIT = 8


class Worker:
    """A worker process and the JSON lines it prints."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        for obj in self.seen:
            if pred(obj):
                return obj
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"worker {self.proc.pid} did not report in time: {self.seen}")
            try:
                obj = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(obj)
            if pred(obj):
                return obj

    def events(self, tag: str) -> int:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                break
        return sum(1 for o in self.seen if o.get("event") == tag)

    def wait_event(self, tag: str, count: int = 1, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.events(tag) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {tag} #{count} from worker {self.proc.pid}: {self.seen}")
            time.sleep(0.02)

    @property
    def owner(self) -> str:
        return str(self.wait_for(lambda o: "ready" in o)["ready"])

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 60.0) -> dict[str, Any]:
        done = self.wait_for(lambda o: "done" in o, timeout)["done"]
        self.proc.wait(timeout=timeout)
        return dict(done)

    def go(self) -> None:
        self.owner  # noqa: B018 (waits for the ready line)
        self.stop()  # the same line starts a counted run

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.reader.join(timeout=10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(BrokenPipeError):
                    f.close()


def _cfg(redis_url: str, port: int, **kw: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "redis_url": redis_url,
        "port": port,
        "limit": LIMIT,
        "tasks": 6,
        "calls": 0,
        "hold": 0.05,
        "ttl": 1.5,
        "poll": 0.1,
        "op_timeout": 0.3,
    }
    cfg.update(kw)
    return cfg


def _holders(server: RedisServer) -> list[str]:
    return [m.decode() for m in server.command("ZRANGE", "lmgate:{gpu}:h", 0, -1)]  # type: ignore[union-attr]


def _check_clean(results: list[dict[str, Any]]) -> None:
    for r in results:
        assert r["failed"] == []
        assert r["completed"] == r["submitted"] > 0


def test_four_processes_never_exceed_the_shared_limit(
    redis_server: RedisServer, redis_url: str
) -> None:
    """4 processes x 6 tasks on a shared limit of 8: the endpoint never sees more than 8."""
    with ConcurrencyServer() as endpoint:
        workers = [Worker(_cfg(redis_url, endpoint.port, calls=12, hold=0.03)) for _ in range(4)]
        try:
            for w in workers:
                w.go()
            results = [w.result() for w in workers]
        finally:
            for w in workers:
                w.close()
    _check_clean(results)
    assert sum(r["completed"] for r in results) == 4 * 6 * 12
    assert endpoint.peak <= LIMIT
    assert endpoint.calls == 4 * 6 * 12
    print(f"\nshared limit {LIMIT}: peak endpoint concurrency {endpoint.peak}")


def test_without_coordination_the_same_load_exceeds_the_limit(redis_url: str) -> None:
    """The control: per-process limits of 8 let 4 processes send more than 8 at once."""
    with ConcurrencyServer() as endpoint:
        workers = [
            Worker(_cfg(redis_url, endpoint.port, calls=6, hold=0.05, coordinated=False))
            for _ in range(4)
        ]
        try:
            for w in workers:
                w.go()
            results = [w.result() for w in workers]
        finally:
            for w in workers:
                w.close()
    _check_clean(results)
    assert endpoint.peak > LIMIT


def test_sigkill_returns_slots_within_the_lease_ttl(
    redis_server: RedisServer, redis_url: str
) -> None:
    """A process killed mid-call frees its slots within lease_ttl; the others lose nothing."""
    ttl = 1.5
    with ConcurrencyServer() as endpoint:
        workers = [Worker(_cfg(redis_url, endpoint.port, hold=0.2, ttl=ttl)) for _ in range(4)]
        try:
            owners = [w.owner for w in workers]
            for w in workers:
                w.wait_event("coordination_restored")
            # Kill a process while it holds shared slots.
            deadline = time.monotonic() + 20
            victim = None
            while victim is None:
                assert time.monotonic() < deadline, "no process ever held a slot"
                held = _holders(redis_server)
                for w, o in zip(workers, owners, strict=True):
                    if sum(m.startswith(o + ":") for m in held) >= 2:
                        victim = (w, o)
                        break
                time.sleep(0.01)
            w_dead, o_dead = victim
            w_dead.kill()
            killed = time.monotonic()
            while any(m.startswith(o_dead + ":") for m in _holders(redis_server)):
                assert time.monotonic() - killed < ttl + 5.0, (
                    "the dead process's slots never expired"
                )
                time.sleep(0.01)
            recovery = time.monotonic() - killed
            # The survivors take the whole limit again.
            while len(_holders(redis_server)) < LIMIT:
                assert time.monotonic() - killed < ttl + 10.0, "the freed slots were not reused"
                time.sleep(0.01)
            time.sleep(0.5)
            survivors = [w for w in workers if w is not w_dead]
            for w in survivors:
                w.stop()
            results = [w.result() for w in survivors]
        finally:
            for w in workers:
                w.close()
    _check_clean(results)
    assert endpoint.peak <= LIMIT
    print(f"\nslot recovery after SIGKILL: {recovery:.3f}s (lease_ttl {ttl}s)")


def test_redis_outage_falls_back_to_shares_and_rejoins(
    redis_server: RedisServer, redis_url: str
) -> None:
    """Redis stops: each serves within its share; Redis returns: they rejoin within the limit."""
    hold = 0.05
    tasks = [12, 2, 2, 2]
    with ConcurrencyServer() as endpoint:
        workers = [Worker(_cfg(redis_url, endpoint.port, hold=hold, tasks=t)) for t in tasks]
        try:
            for w in workers:
                w.wait_event("coordination_restored")
            time.sleep(0.5)
            before = endpoint.mark()
            redis_server.stop()
            for w in workers:
                w.wait_event("coordination_lost")
            time.sleep(4 * hold)
            endpoint.mark()  # the switch itself: calls granted just before the loss end
            time.sleep(1.5)
            during = endpoint.mark()
            redis_server.start()
            for w in workers:
                w.wait_event("coordination_restored", count=2)
            time.sleep(1.5)
            after = endpoint.mark()
            for w in workers:
                w.stop()
            results = [w.result() for w in workers]
        finally:
            for w in workers:
                w.close()
    _check_clean(results)
    assert before <= LIMIT
    assert during <= LIMIT
    assert after <= LIMIT
    share = LIMIT // len(workers)
    for r in results:
        assert 0 < r["peak_fallback"] <= share
        assert r["coordinator"]["mode"] == "connected"
    # Back on the shared limit, the busy process uses more than its share.
    assert results[0]["peak_connected_after_restore"] > share
    print(f"\noutage: peak before {before}, during {during}, after rejoin {after} (limit {LIMIT})")
