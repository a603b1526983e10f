"""Admission by tokens on heavy-tailed prompts, against what a user could write instead.

The ``vllm_heavy_tail_3x`` scenario: a vLLM-shaped server whose KV cache
holds 20,000 tokens, Poisson arrivals at about three times its capacity,
prompts of median ~800 tokens up to 12,000, every request asking for
``max_tokens = 1024`` while most answers stop far short.  Each seed runs

* lmgate's default policy with the server's KV budget known (``kv``), with
  the server's own metrics read as well (``kv-engine``, what
  ``Endpoint(probe=True)`` does on a real vLLM), and without the budget
  (``count``: admission by request count alone);
* the best fixed request limit without the budget (a sweep), and a bare
  ``CapacityLimiter`` at that limit with shedding;
* a bare token gate: FIFO while ``prompt + max_tokens`` of the running
  requests fit the budget, with shedding;

and reports goodput (completed within the deadline, per second) and the
server's preemptions per completion.  The ratio is the default with the
budget (with and without the server's metrics) over the better of the
best fixed request limit and the token gate.

    python benchmarks/token_admission.py [--seeds 0 1 2 3] [--jobs 2]
                                         [--json benchmarks/results/token_admission.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

SCENARIO = "vllm_heavy_tail_3x"
SWEEP = (8, 12, 16, 20, 24, 32)


def _scenario(seed: int) -> Any:
    from lmgate.sim import load_scenario

    sc = load_scenario(SCENARIO)
    return msgspec.structs.replace(sc, seed=sc.seed + 100 * seed)


def _one(job: tuple[str, int, int]) -> tuple[str, int, int, float, int, int]:
    """(what, limit, seed) -> (what, limit, seed, goodput, preemptions, completed)."""
    import trio
    import trio.testing

    from lmgate.bench._bare import run_bare, run_token_gate
    from lmgate.bench._metrics import measure
    from lmgate.bench._run import run_virtual
    from lmgate.policies import Adaptive, Fixed

    what, limit, seed = job
    sc = _scenario(seed)
    clock = trio.testing.MockClock(autojump_threshold=0)
    if what == "token-gate":
        trace = trio.run(lambda: run_token_gate(sc), clock=clock)
    elif what == "bare":
        trace = trio.run(lambda: run_bare(sc, limit), clock=clock)
    else:
        policy = Adaptive() if what.startswith("default") else Fixed(limit)
        trace = run_virtual(
            sc,
            policy,
            name=what,
            seed=seed,
            tokens="-kv" in what,
            engine=what.endswith("engine"),
        )
    m = measure(trace, sc)
    completed = sum(1 for r in trace.records if r.kind == "completed")
    return what, limit, seed, m.goodput, trace.preemptions, completed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/token_admission.json")
    )
    args = parser.parse_args()
    ours = ("default-kv-engine", "default-kv", "default-count", "token-gate")
    jobs = [(w, 0, s) for s in args.seeds for w in ours]
    jobs += [("fixed-count", n, s) for s in args.seeds for n in SWEEP]
    with ProcessPoolExecutor(args.jobs, max_tasks_per_child=1) as pool:  # runs independent
        runs = list(pool.map(_one, jobs))
        fixed = {
            s: max((r for r in runs if r[0] == "fixed-count" and r[2] == s), key=lambda r: r[3])
            for s in args.seeds
        }
        runs += list(pool.map(_one, [("bare", fixed[s][1], s) for s in args.seeds]))

    def get(what: str, seed: int) -> tuple[str, int, int, float, int, int]:
        if what == "fixed-count":
            return fixed[seed]
        return next(r for r in runs if r[0] == what and r[2] == seed)

    rows: list[dict[str, Any]] = []
    names = (
        "default-kv-engine",
        "default-kv",
        "default-count",
        "fixed-count",
        "bare",
        "token-gate",
    )
    for seed in args.seeds:
        best = max(get("fixed-count", seed)[3], get("token-gate", seed)[3])
        for what in names:
            _, limit, _, goodput, pre, done = get(what, seed)
            rows.append(
                {
                    "seed": seed,
                    "run": what if not limit else f"{what} ({limit})",
                    "goodput": round(goodput, 3),
                    "vs_best_simple": round(goodput / best, 3) if best else None,
                    "preemptions_per_completion": round(pre / done, 4) if done else None,
                }
            )
    _print(rows)
    summary: dict[str, Any] = {"scenario": SCENARIO, "seeds": args.seeds}
    for what in ("default-kv-engine", "default-kv"):
        key = what.replace("-", "_")
        ratios = [r["vs_best_simple"] for r in rows if r["run"] == what]
        pre = [r["preemptions_per_completion"] for r in rows if r["run"] == what]
        summary[f"{key}_vs_best_simple_mean"] = round(statistics.mean(ratios), 3)
        summary[f"{key}_vs_best_simple_min"] = min(ratios)
        summary[f"{key}_preemptions_per_completion_max"] = max(pre)
    summary["rows"] = rows
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")


def _print(rows: list[dict[str, Any]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for r in rows:
            print(r)
        return
    table = Table(title=f"{SCENARIO}: goodput per second, and against the better simple gate")
    for col in ("seed", "run", "goodput", "vs best simple", "preemptions / completion"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in rows:
        pre = r["preemptions_per_completion"]
        table.add_row(
            str(r["seed"]),
            r["run"],
            f"{r['goodput']:.3f}",
            f"{r['vs_best_simple']:.3f}",
            "n/a" if pre is None else f"{100 * pre:.1f} %",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
