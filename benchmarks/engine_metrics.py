"""The default policy with and without the server's own metrics, on every overload scenario.

Each scenario of ``lmgate/sim/scenarios`` runs, in virtual time, under
lmgate's default policy twice per seed: once blind (latency and failures
only) and once reading the simulated servers' ``/metrics`` -- running and
waiting requests, KV usage, preemptions, in vLLM's and llama.cpp's names
(the Ollama-shaped server publishes none, as Ollama does not) -- as
``Endpoint(engine_metrics=True)`` does on a real server.  Reports goodput
(completions within deadline per second) both ways, their ratio per seed,
and the mean and worst ratio per scenario; preemptions per completion
both ways.

    python benchmarks/engine_metrics.py [--seeds 0 1 2 3] [--jobs 2]
                                        [--json benchmarks/results/engine_metrics.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import msgspec


def _one(job: tuple[str, int, bool]) -> tuple[str, int, bool, float, int, int]:
    """(scenario, seed, engine) -> (..., goodput, preemptions, completed)."""
    from lmgate.bench._metrics import measure
    from lmgate.bench._run import run_virtual
    from lmgate.policies import Adaptive
    from lmgate.sim import load_scenario

    name, seed, engine = job
    sc = load_scenario(name)
    sc = msgspec.structs.replace(sc, seed=sc.seed + 100 * seed)
    trace = run_virtual(sc, Adaptive(), name="lmgate", seed=sc.seed, engine=engine)
    completed = sum(1 for r in trace.records if r.kind == "completed")
    return name, seed, engine, measure(trace, sc).goodput, trace.preemptions, completed


def main() -> None:
    from lmgate.sim import list_scenarios

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3])
    parser.add_argument("--scenarios", nargs="*", default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/engine_metrics.json"))
    args = parser.parse_args()
    names = args.scenarios or list_scenarios()
    jobs = [(n, s, e) for n in names for s in args.seeds for e in (False, True)]
    # A fresh process per run: trio breaks ties between timers due in the same
    # instant by object identity, so a run's history in a worker would leak in.
    with ProcessPoolExecutor(args.jobs, max_tasks_per_child=1) as pool:
        runs = {(n, s, e): (g, p, c) for n, s, e, g, p, c in pool.map(_one, jobs)}
    rows: list[dict[str, Any]] = []
    for name in names:
        ratios = []
        for seed in args.seeds:
            blind, seen = runs[(name, seed, False)][0], runs[(name, seed, True)][0]
            ratios.append(seen / blind if blind else 1.0)
        off = [runs[(name, s, False)] for s in args.seeds]
        on = [runs[(name, s, True)] for s in args.seeds]
        rows.append(
            {
                "scenario": name,
                "goodput_blind": round(statistics.mean(g for g, _, _ in off), 3),
                "goodput_metrics": round(statistics.mean(g for g, _, _ in on), 3),
                "ratio_mean": round(statistics.mean(ratios), 3),
                "ratio_min": round(min(ratios), 3),
                "ratios": [round(r, 3) for r in ratios],
                "preemptions_per_completion_blind": _share(off),
                "preemptions_per_completion_metrics": _share(on),
            }
        )
    _print(rows)
    summary = {
        "seeds": args.seeds,
        "better_on": [r["scenario"] for r in rows if r["ratio_mean"] > 1.02],
        "worst_mean_ratio": min(r["ratio_mean"] for r in rows),
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")


def _share(runs: list[tuple[float, int, int]]) -> float | None:
    done = sum(c for _, _, c in runs)
    return round(sum(p for _, p, _ in runs) / done, 4) if done else None


def _print(rows: list[dict[str, Any]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for r in rows:
            print(r)
        return
    table = Table(title="Default policy: goodput per second without and with the server's metrics")
    cols = ("scenario", "blind", "metrics", "ratio mean", "ratio min", "per seed", "preempt b/m")
    for col in cols:
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for r in rows:
        pb, pm = r["preemptions_per_completion_blind"], r["preemptions_per_completion_metrics"]
        table.add_row(
            r["scenario"],
            f"{r['goodput_blind']:.3f}",
            f"{r['goodput_metrics']:.3f}",
            f"{r['ratio_mean']:.3f}",
            f"{r['ratio_min']:.3f}",
            " ".join(f"{x:.2f}" for x in r["ratios"]),
            f"{100 * (pb or 0):.1f} / {100 * (pm or 0):.1f} %",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
