"""Per-request overhead of lmgate's ``run()`` and ``lease()``.

Measures microseconds per request for a zero-latency call (one checkpoint,
no I/O) pushed through ``Scheduler.run()``, ``Scheduler.lease()`` and,
as the floor, a bare ``anyio.CapacityLimiter`` with the same number of
tokens, on asyncio and on trio, at concurrency 1, 64 and 1024.  Every
variant runs in the same process, interleaved over several rounds; the
table shows the best round of each and its ratio to the floor.

    python benchmarks/overhead.py [--requests 20000] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.lowlevel

import lmgate
from lmgate.policies import Fixed

LIMIT = 16


async def _call(lease: object = None) -> None:
    await anyio.lowlevel.checkpoint()


async def _drive(worker: Callable[[], Awaitable[None]], concurrency: int, requests: int) -> float:
    per = requests // concurrency

    async def loop() -> None:
        for _ in range(per):
            await worker()

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(loop)
    return (time.perf_counter() - start) / (per * concurrency) * 1e6


async def floor(concurrency: int, requests: int) -> float:
    limiter = anyio.CapacityLimiter(LIMIT)

    async def one() -> None:
        async with limiter:
            await _call()

    return await _drive(one, concurrency, requests)


def _endpoints() -> list[lmgate.Endpoint]:
    return [lmgate.Endpoint("bench", url="http://127.0.0.1:9", models=["m"])]


async def run_variant(concurrency: int, requests: int) -> float:
    async with lmgate.Scheduler(
        _endpoints(), limit=Fixed(LIMIT), queue=lmgate.QueueOptions(size=4096)
    ) as sched:

        async def one() -> None:
            await sched.run(_call, model="m")

        return await _drive(one, concurrency, requests)


async def run_timeout_variant(concurrency: int, requests: int) -> float:
    async with lmgate.Scheduler(
        _endpoints(), limit=Fixed(LIMIT), queue=lmgate.QueueOptions(size=4096)
    ) as sched:

        async def one() -> None:
            await sched.run(_call, model="m", timeout=60.0)

        return await _drive(one, concurrency, requests)


async def lease_variant(concurrency: int, requests: int) -> float:
    async with lmgate.Scheduler(
        _endpoints(), limit=Fixed(LIMIT), queue=lmgate.QueueOptions(size=4096)
    ) as sched:

        async def one() -> None:
            async with sched.lease(model="m") as lease:
                await _call(lease)

        return await _drive(one, concurrency, requests)


VARIANTS: dict[str, Callable[[int, int], Awaitable[float]]] = {
    "CapacityLimiter (floor)": floor,
    "run()": run_variant,
    "run(timeout=60)": run_timeout_variant,
    "lease()": lease_variant,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 64, 1024])
    parser.add_argument("--backends", nargs="*", default=["asyncio", "trio"])
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/overhead.json"))
    args = parser.parse_args(argv)

    results: dict[tuple[str, int, str], float] = {}
    for backend in args.backends:
        for conc in args.concurrency:
            requests = max(args.requests, conc * 4)
            for _ in range(args.rounds):
                for name, fn in VARIANTS.items():
                    us = anyio.run(fn, conc, requests, backend=backend)
                    key = (backend, conc, name)
                    results[key] = min(results.get(key, float("inf")), us)

    rows = []
    header = f"{'backend':8} {'conc':>5}  {'variant':26} {'us/req':>8} {'x floor':>8}"
    print(header)
    print("-" * len(header))
    for backend in args.backends:
        for conc in args.concurrency:
            base = results[(backend, conc, "CapacityLimiter (floor)")]
            for name in VARIANTS:
                us = results[(backend, conc, name)]
                ratio = us / base
                rows.append(
                    {
                        "backend": backend,
                        "concurrency": conc,
                        "variant": name,
                        "us_per_request": round(us, 3),
                        "ratio_to_floor": round(ratio, 3),
                    }
                )
                print(f"{backend:8} {conc:5d}  {name:26} {us:8.2f} {ratio:8.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "python": sys.version.split()[0],
                "machine": platform.machine(),
                "limit": LIMIT,
                "requests": args.requests,
                "rounds": args.rounds,
                "results": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
