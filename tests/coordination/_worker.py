"""One worker process of the multi-process tests: a scheduler with a Redis coordinator.

Run as ``python _worker.py '<json config>'``.  It prints JSON lines: one
``ready`` line, one line per coordination event, and a ``done`` summary.
With ``calls`` > 0 every task makes that many calls once a first line
arrives on stdin (so all workers start together); with ``calls`` == 0
tasks call until a line arrives on stdin (or stdin closes), then finish
the call in hand and stop, so no request that started is abandoned.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import anyio
import anyio.to_thread
import msgspec

import lmgate
from lmgate.coordination import Redis
from lmgate.policies import Fixed


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def call_endpoint(port: int, hold: float) -> None:
    stream = await anyio.connect_tcp("127.0.0.1", port)
    async with stream:
        await stream.send(f"{hold}\n".encode())
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = await stream.receive()
            reply += chunk
        if reply != b"ok\n":
            raise RuntimeError(f"bad reply {reply!r}")


async def main(cfg: dict[str, Any]) -> None:
    coordinator = None
    if cfg.get("coordinated", True):
        coordinator = Redis(
            cfg["redis_url"],
            lease_ttl=cfg["ttl"],
            poll=cfg.get("poll"),
            op_timeout=cfg.get("op_timeout"),
            rejoin_delay=cfg.get("rejoin_delay"),
            fallback_share=cfg.get("fallback_share"),
            key_prefix=cfg.get("prefix", "lmgate"),
        )
    endpoints = [lmgate.Endpoint("gpu", url="http://127.0.0.1:9", models=["m"])]
    stats: dict[str, Any] = {
        "submitted": 0,
        "completed": 0,
        "failed": [],
        "peak": 0,
        "peak_fallback": 0,
        "peak_connected_after_restore": 0,
    }
    in_flight = 0
    restores = 0
    lost_at = float("inf")
    stop = anyio.Event()

    async with lmgate.Scheduler(
        endpoints, limit=Fixed(cfg["limit"]), coordinator=coordinator
    ) as sched:
        emit({"ready": coordinator.owner if coordinator else None})

        async def watch() -> None:
            nonlocal restores, lost_at
            with sched.events.subscribe() as sub:
                async for ev in sub:
                    tag = type(ev).__struct_config__.tag
                    if isinstance(tag, str) and tag.startswith("coordination_"):
                        emit({"event": tag, "t": time.time()})
                        if tag == "coordination_restored":
                            restores += 1
                        elif tag == "coordination_lost":
                            lost_at = time.monotonic()

        def mode() -> str:
            return coordinator.link.mode if coordinator else "local"

        async def call(lease: lmgate.Lease) -> None:
            nonlocal in_flight
            in_flight += 1
            m = mode()
            stats["peak"] = max(stats["peak"], in_flight)
            # Calls granted through Redis just before the loss have ended
            # two holds after it: from then on every call is a fallback one.
            if m == "fallback" and time.monotonic() >= lost_at + 2 * cfg["hold"]:
                stats["peak_fallback"] = max(stats["peak_fallback"], in_flight)
            elif m == "connected" and restores >= 2:  # back after the outage
                stats["peak_connected_after_restore"] = max(
                    stats["peak_connected_after_restore"], in_flight
                )
            try:
                await call_endpoint(cfg["port"], cfg["hold"])
            finally:
                in_flight -= 1

        async def task() -> None:
            n = 0
            while not stop.is_set() and (cfg["calls"] == 0 or n < cfg["calls"]):
                n += 1
                stats["submitted"] += 1
                try:
                    await sched.run(call, model="m")
                except Exception as exc:
                    stats["failed"].append(f"{type(exc).__name__}: {exc}")
                else:
                    stats["completed"] += 1

        async def wait_stop() -> None:
            await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            stop.set()

        async with anyio.create_task_group() as outer:
            outer.start_soon(watch)
            if cfg["calls"] > 0:
                # Counted runs start together: wait for the go line.
                await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            else:
                outer.start_soon(wait_stop)
            async with anyio.create_task_group() as tg:
                for _ in range(cfg["tasks"]):
                    tg.start_soon(task)
            if coordinator is not None:
                stats["coordinator"] = json.loads(msgspec.json.encode(coordinator.statistics()))
            emit({"done": stats})
            outer.cancel_scope.cancel()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
