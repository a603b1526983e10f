"""What sharing one limit through Redis costs, and what it delivers.

1. Overhead per lease: a zero-latency call through ``Scheduler.run()``
   in one process, with the in-process limit only and with
   ``lmgate.coordination.Redis`` (every lease takes, and gives back, a
   shared slot), at concurrency 1 and 16 (limit 8).
2. Aggregate throughput with 1, 2, 4 and 8 processes sharing a limit of 8
   on a simulated endpoint: a loopback server that holds each call for
   ``--hold`` seconds and counts how many it serves at once.  The ideal is
   ``limit / hold`` calls per second; the table shows how close the
   processes get together, and the endpoint's peak concurrency (it must
   never exceed the limit).  Each row with Redis is paired with the
   alternative without it: a static split, ``limit / N`` per process,
   which also never exceeds the limit but strands the slots of an idle
   process -- and which measures what N processes cost this machine.

It starts its own ``redis-server`` on a free port unless ``--redis`` names
one.  Prints a table; writes JSON to ``benchmarks/results/distributed.json``.

    python benchmarks/distributed.py [--seconds 3] [--hold 0.01,0.1] [--rounds 2] [--redis URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

import lmgate
from lmgate.coordination import Redis
from lmgate.policies import Fixed

LIMIT = 8
RESULTS = Path(__file__).with_name("results") / "distributed.json"


# -- the simulated endpoint -----------------------------------------------------------


class Endpoint:
    """Holds each call (one TCP connection) ``hold`` seconds; counts calls at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current = self.peak = self.calls = 0
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    hold = float(self.rfile.readline())
                except ValueError:
                    return
                with outer.lock:
                    outer.current += 1
                    outer.calls += 1
                    outer.peak = max(outer.peak, outer.current)
                try:
                    time.sleep(hold)
                finally:
                    with outer.lock:
                        outer.current -= 1
                try:
                    self.wfile.write(b"ok\n")
                except OSError:
                    return

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 512

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self) -> None:
        with self.lock:
            self.peak = self.current
            self.calls = 0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def call_endpoint(port: int, hold: float) -> None:
    stream = await anyio.connect_tcp("127.0.0.1", port)
    async with stream:
        await stream.send(f"{hold}\n".encode())
        reply = b""
        while not reply.endswith(b"\n"):
            reply += await stream.receive()


# -- a worker process -------------------------------------------------------------------


def _endpoints() -> list[lmgate.Endpoint]:
    return [lmgate.Endpoint("gpu", url="http://127.0.0.1:9", models=["m"])]


async def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """Once joined, say so; then call from ``tasks`` tasks in the window the parent sends."""
    coord = None
    if cfg["redis"]:
        coord = Redis(cfg["redis"], lease_ttl=5.0, key_prefix=cfg["prefix"], rejoin_delay=0.0)
    done = 0
    limit = Fixed(cfg["limit"])
    async with lmgate.Scheduler(_endpoints(), limit=limit, coordinator=coord) as sched:
        while coord is not None and coord.link.mode != "connected":  # noqa: ASYNC110
            await anyio.sleep(0.01)
        print("ready", flush=True)
        start, end = map(float, (await anyio.to_thread.run_sync(sys.stdin.readline)).split())

        async def call(lease: lmgate.Lease) -> None:
            await call_endpoint(cfg["port"], cfg["hold"])

        async def task() -> None:
            nonlocal done
            while time.time() < end:
                await sched.run(call, model="m")
                if start <= time.time() <= end:
                    done += 1

        await anyio.sleep(max(0.0, start - 0.5 - time.time()))
        async with anyio.create_task_group() as tg:
            for _ in range(cfg["tasks"]):
                tg.start_soon(task)
    return {"completed": done}


# -- the two measurements -----------------------------------------------------------------


async def _noop(lease: lmgate.Lease) -> None:
    await anyio.lowlevel.checkpoint()


async def overhead(redis_url: str | None, concurrency: int, requests: int) -> float:
    """Microseconds per lease for a call that does nothing."""
    coord = (
        Redis(redis_url, lease_ttl=5.0, key_prefix="bench-o", rejoin_delay=0.0)
        if redis_url
        else None
    )
    async with lmgate.Scheduler(
        _endpoints(),
        limit=Fixed(LIMIT),
        coordinator=coord,
        queue=lmgate.QueueOptions(size=4096),
    ) as sched:
        if coord is not None:
            while coord.link.mode != "connected":  # noqa: ASYNC110 (no event says so)
                await anyio.sleep(0.01)
        per = requests // concurrency

        async def loop() -> None:
            for _ in range(per):
                await sched.run(_noop, model="m")

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(loop)
        return (time.perf_counter() - start) / (per * concurrency) * 1e6


async def ping(redis_url: str, n: int = 2000) -> float:
    """Microseconds per PING round trip: the floor under any Redis coordination."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.ping()
        start = time.perf_counter()
        for _ in range(n):
            await client.ping()
        return (time.perf_counter() - start) / n * 1e6
    finally:
        await client.aclose()


def throughput(
    redis_url: str | None, processes: int, endpoint: Endpoint, seconds: float, hold: float
) -> dict[str, Any]:
    """Calls per second of ``processes`` workers; without Redis each gets limit / N."""
    per_process = LIMIT if redis_url else LIMIT // processes
    cfg = {
        "redis": redis_url,
        "prefix": f"bench-t{processes}-{time.time_ns()}",
        "port": endpoint.port,
        "hold": hold,
        "limit": per_process,
        "tasks": 2 * LIMIT,
    }
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(processes)
    ]
    for proc in procs:  # every process started and joined before the clock runs
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("a worker failed to start")
    start = time.time() + 1.0
    window = f"{start} {start + seconds}\n"
    outs = []
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(window)
        proc.stdin.flush()
    time.sleep(max(0.0, start - time.time()))
    endpoint.reset()
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        outs.append(json.loads(out.strip().splitlines()[-1]))
    total = sum(o["completed"] for o in outs)
    ideal = LIMIT / hold
    return {
        "hold": hold,
        "processes": processes,
        "sharing": "Redis" if redis_url else f"static {per_process} each",
        "calls_per_s": round(total / seconds, 1),
        "ideal_calls_per_s": round(ideal, 1),
        "efficiency": round(total / seconds / ideal, 3),
        "peak_concurrency": endpoint.peak,
        "limit": LIMIT,
    }


# -- plumbing -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per row")
    ap.add_argument("--hold", default="0.01,0.1", help="seconds the endpoint holds a call")
    ap.add_argument("--rounds", type=int, default=2, help="best of this many runs per row")
    ap.add_argument("--requests", type=int, default=4000, help="leases per overhead row")
    ap.add_argument("--processes", default="1,2,4,8")
    ap.add_argument("--redis", help="use this Redis instead of starting one")
    ap.add_argument("--json", type=Path, default=RESULTS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(asyncio.run(worker(json.loads(args.worker)))))
        return

    server = None
    url = args.redis
    if url is None:
        server, url = _start_redis()
    try:
        rtt = asyncio.run(ping(url))
        rows_o = []
        for concurrency in (1, 16):
            local = asyncio.run(overhead(None, concurrency, args.requests))
            shared = asyncio.run(overhead(url, concurrency, args.requests))
            rows_o.append(
                {
                    "concurrency": concurrency,
                    "in_process_us": round(local, 1),
                    "redis_us": round(shared, 1),
                    "added_us": round(shared - local, 1),
                }
            )
        endpoint = Endpoint()
        rows_t = []
        for hold in (float(x) for x in args.hold.split(",")):
            for n in (int(x) for x in args.processes.split(",")):
                for redis_url in (None, url):
                    runs = [
                        throughput(redis_url, n, endpoint, args.seconds, hold)
                        for _ in range(args.rounds)
                    ]
                    rows_t.append(max(runs, key=lambda r: r["calls_per_s"]))
        endpoint.close()
    finally:
        if server is not None:
            server.kill()
            server.wait()

    print(f"\nOverhead per lease (zero-latency call, limit {LIMIT}, asyncio)")
    print(f"Redis PING round trip from asyncio: {rtt:.1f} us")
    print(f"{'concurrency':>11} {'in-process us':>14} {'Redis us':>9} {'added us':>9}")
    for r in rows_o:
        print(
            f"{r['concurrency']:>11} {r['in_process_us']:>14} {r['redis_us']:>9} {r['added_us']:>9}"
        )
    print(
        f"\nAggregate throughput, shared limit {LIMIT}, {2 * LIMIT} tasks per process,"
        f" best of {args.rounds} x {args.seconds}s"
    )
    print(
        f"{'hold s':>6} {'processes':>9} {'limit sharing':>16} {'calls/s':>8} {'ideal':>6}"
        f" {'of ideal':>8} {'peak':>5}"
    )
    for r in rows_t:
        print(
            f"{r['hold']:>6} {r['processes']:>9} {r['sharing']:>16} {r['calls_per_s']:>8}"
            f" {r['ideal_calls_per_s']:>6.0f} {r['efficiency']:>8.0%} {r['peak_concurrency']:>5}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "limit": LIMIT,
                "seconds": args.seconds,
                "rounds": args.rounds,
                "redis_ping_us": round(rtt, 1),
                "overhead": rows_o,
                "throughput": rows_t,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
