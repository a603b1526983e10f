"""Zero-latency calls at 64 clients: the default limit against ``Fixed(64)``.

A call that does no I/O (one checkpoint) has no latency for a limit to read,
only the event loop's own turn-around, which grows with concurrency.  A
limit that read that as a queue would collapse to 1 and serialise the
callers.  Each round runs the same number of requests through a scheduler
with ``Adaptive()`` and one with ``Fixed(64)``, interleaved; the table
shows the best round of each, the ratio, and the limit the default held.

    python benchmarks/zero_latency.py [--requests 100000] [--rounds 3]
                                      [--json benchmarks/results/zero_latency.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import anyio
import anyio.lowlevel

import lmgate
from lmgate.policies import Adaptive, Fixed, LimitPolicy

CLIENTS = 64


async def _call(lease: object = None) -> None:
    await anyio.lowlevel.checkpoint()


async def _run(policy: LimitPolicy, requests: int) -> tuple[float, int]:
    """Microseconds per request, and the limit in force at the end."""
    endpoint = lmgate.Endpoint("zero", url="http://127.0.0.1:9", models=["m"])
    async with lmgate.Scheduler(
        [endpoint], limit=policy, queue=lmgate.QueueOptions(size=4096)
    ) as sched:
        per = requests // CLIENTS

        async def client() -> None:
            for _ in range(per):
                await sched.run(_call, model="m")

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(CLIENTS):
                tg.start_soon(client)
        elapsed = time.perf_counter() - start
        (ep,) = sched.stats().endpoints
    return elapsed / (per * CLIENTS) * 1e6, ep.limit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", nargs="*", default=["asyncio", "trio"])
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/zero_latency.json"))
    args = parser.parse_args()
    rows = []
    print(f"{'backend':8} {'Fixed(64) us':>13} {'default us':>11} {'x Fixed':>8} {'limit':>6}")
    for backend in args.backends:
        fixed = default = float("inf")
        limits = []
        for _ in range(args.rounds):
            us, _ = anyio.run(_run, Fixed(CLIENTS), args.requests, backend=backend)
            fixed = min(fixed, us)
            us, limit = anyio.run(_run, Adaptive(), args.requests, backend=backend)
            default = min(default, us)
            limits.append(limit)
        row = {
            "backend": backend,
            "fixed_64_us": round(fixed, 3),
            "default_us": round(default, 3),
            "ratio": round(default / fixed, 3),
            "default_limit_min": min(limits),
        }
        rows.append(row)
        print(f"{backend:8} {fixed:13.2f} {default:11.2f} {default / fixed:8.2f} {min(limits):6d}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    machine = {"python": platform.python_version(), "platform": platform.platform()}
    args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
