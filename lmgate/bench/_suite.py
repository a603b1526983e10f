"""The overload benchmark: every scenario under every limit policy, in virtual time.

For each scenario shipped in ``lmgate/sim/scenarios`` (or the ones named)
it runs a real :class:`~lmgate.Scheduler` over the simulated servers under
no limit, fixed limits, AIMD, Vegas, Gradient2 and lmgate's default
(:class:`~lmgate.policies.Adaptive`), plus a sweep of fixed limits whose
best (by goodput, then p99) is the *oracle* -- what a limit set by hand
with hindsight achieves.  It prints a table per scenario, writes the
figures to ``benchmarks/results/overload.json``, a PNG per scenario (limit
and latency over time) and ``benchmarks/REPORT.md``, which is committed
and regenerated when behaviour changes so its diff shows what moved.
Every run is seeded and in virtual time, so the same code gives nearly the
same report: trio breaks ties between timers due in the same instant by
object identity, which varies between processes, so a rerun may move a
figure in its last digit -- more for a policy as chaotic as Vegas.

    lmgate bench [--quick] [--scenarios a,b] [--policies lmgate,oracle] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Final

import msgspec

from lmgate._errors import InvalidParameter
from lmgate.bench._metrics import measure
from lmgate.bench._report import Result, print_tables, timeline_of, write_report
from lmgate.bench._run import run_virtual
from lmgate.policies._adaptive import Adaptive
from lmgate.policies._aimd import AIMD
from lmgate.policies._gradient2 import Gradient2
from lmgate.policies._limit import Fixed, LimitPolicy
from lmgate.policies._vegas import Vegas
from lmgate.sim._faults import FaultStep
from lmgate.sim._scenarios import ClientSpec, Scenario, list_scenarios, load_scenario

__all__ = ["POLICIES", "main", "run_bench"]

#: The policies compared, by the name the report uses.  "oracle" is the
#: best of the fixed-limit sweep; "fixed-N" are shown as they are.
POLICIES: Final[dict[str, LimitPolicy]] = {
    "none": Fixed(1_000_000),
    "aimd": AIMD(),
    "vegas": Vegas(),
    "gradient2": Gradient2(),
    "lmgate": Adaptive(),
    # The same, reading the simulated servers' /metrics as engine_metrics=True does.
    "lmgate-metrics": Adaptive(),
}
SHOWN_FIXED: Final = (4, 8, 16, 32)
COARSE: Final = (2, 4, 8, 12, 16, 20, 24, 32, 48)
QUICK_COARSE: Final = (4, 8, 12, 16, 24, 32)
QUICK_FACTOR: Final = 0.5  # --quick runs every scenario at half its length
#: Policies whose limit and latency over time are drawn.
PLOTTED: Final = ("none", "oracle", "aimd", "vegas", "gradient2", "lmgate")


def _one(scenario: Scenario, policy: str, config: LimitPolicy, seed: int) -> Result:
    engine = policy.endswith("-metrics")
    trace = run_virtual(scenario, config, name=policy, seed=seed, engine=engine)
    return Result(metrics=measure(trace, scenario), timeline=timeline_of(trace))


def _bare(scenario: Scenario, limit: int) -> Result:
    """The ten-line alternative at the oracle's limit: a bare limiter that sheds."""
    import trio
    import trio.testing

    from lmgate.bench._bare import run_bare

    clock = trio.testing.MockClock(autojump_threshold=0)
    trace = trio.run(lambda: run_bare(scenario, limit), clock=clock)
    metrics = msgspec.structs.replace(measure(trace, scenario), policy=f"bare-{limit}")
    return Result(metrics=metrics, timeline=timeline_of(trace))


def _token_gate(scenario: Scenario) -> Result | None:
    """The twenty-line alternative for servers whose KV budget is known: a bare token gate."""
    import trio
    import trio.testing

    from lmgate.bench._bare import run_token_gate

    if not scenario.engines:
        return None  # only the stepped engines say what their KV cache holds
    clock = trio.testing.MockClock(autojump_threshold=0)
    trace = trio.run(lambda: run_token_gate(scenario), clock=clock)
    return Result(metrics=measure(trace, scenario), timeline=timeline_of(trace))


class _Runner:
    """Runs (scenario, policy) pairs inline or in worker processes, with a progress bar."""

    def __init__(self, jobs: int, progress: Any) -> None:
        self._pool = ProcessPoolExecutor(jobs) if jobs > 1 else None
        self._progress = progress
        self._total = 0
        self._task = progress.add_task("runs", total=0)

    def map(
        self, scenario: Scenario, runs: Sequence[tuple[str, LimitPolicy]], seed: int
    ) -> list[Result]:
        progress, task = self._progress, self._task
        self._total += len(runs)
        progress.update(task, total=self._total)
        if self._pool is None:
            out = []
            for name, config in runs:
                progress.update(task, description=f"{scenario.name}: {name}")
                out.append(_one(scenario, name, config, seed))
                progress.advance(task)
            return out
        futures: list[Future[Result]] = [
            self._pool.submit(_one, scenario, name, config, seed) for name, config in runs
        ]
        for future in futures:
            future.add_done_callback(lambda _: progress.advance(task))
        progress.update(task, description=scenario.name)
        return [f.result() for f in futures]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


def _best(results: dict[int, Result]) -> int:
    """The oracle's limit: most goodput; among equals (within 0.5 %) lower p99, then limit."""
    top = max(r.metrics.goodput for r in results.values())
    close = [n for n, r in results.items() if r.metrics.goodput >= 0.995 * top]
    return min(close, key=lambda n: (results[n].metrics.p99 or float("inf"), n))


def _sweep(
    runner: _Runner, scenario: Scenario, coarse: Sequence[int], seed: int, *, reach: int = 1000
) -> dict[int, Result]:
    """Fixed limits: a coarse pass, then every limit between the best one's neighbours.

    ``reach`` bounds how far from the best coarse limit the fine pass goes.
    """

    def run(limits: Sequence[int]) -> dict[int, Result]:
        runs = [(f"fixed-{n}", Fixed(n)) for n in limits]
        return dict(zip(limits, runner.map(scenario, runs, seed), strict=True))

    done = run(coarse)
    ordered = sorted(done)
    i = ordered.index(_best(done))
    low = ordered[i - 1] if i else max(0, ordered[0] - 2)
    high = ordered[i + 1] if i + 1 < len(ordered) else ordered[-1] + 8
    best = ordered[i]
    low, high = max(low, best - reach - 1), min(high, best + reach + 1)
    done.update(run([n for n in range(low + 1, high) if n not in done]))
    return dict(sorted(done.items()))


def run_bench(
    scenarios: Sequence[Scenario],
    policies: Sequence[str],
    *,
    quick: bool = False,
    jobs: int = 1,
    seed: int = 0,
    progress: Any,
) -> dict[str, dict[str, Result]]:
    """Every policy on every scenario; results by scenario, then policy name."""
    runner = _Runner(jobs, progress)
    out: dict[str, dict[str, Result]] = {}
    try:
        for scenario in scenarios:
            results: dict[str, Result] = {}
            fixed: dict[int, Result] = {}
            if {"oracle", "sweep"} & set(policies):
                coarse, reach = (QUICK_COARSE, 2) if quick else (COARSE, 1000)
                fixed = _sweep(runner, scenario, coarse, seed, reach=reach)
            elif "fixed" in policies:
                runs = runner.map(scenario, [(f"fixed-{n}", Fixed(n)) for n in SHOWN_FIXED], seed)
                fixed = dict(zip(SHOWN_FIXED, runs, strict=True))
            if "oracle" in policies:
                best = fixed[_best(fixed)]
                oracle = f"oracle ({best.metrics.policy})"
                metrics = msgspec.structs.replace(best.metrics, policy=oracle)
                results["oracle"] = Result(metrics=metrics, timeline=best.timeline)
                if "bare" in policies:
                    results["bare"] = _bare(scenario, _best(fixed))
                    gate = _token_gate(scenario)
                    if gate is not None:
                        results["token-gate"] = gate
            named = [p for p in policies if p in POLICIES]
            runs = runner.map(scenario, [(p, POLICIES[p]) for p in named], seed)
            results.update(zip(named, runs, strict=True))
            shown = fixed if "sweep" in policies else {}
            if "fixed" in policies:
                shown = {**{n: fixed[n] for n in SHOWN_FIXED if n in fixed}, **shown}
            results.update({f"fixed-{n}": r for n, r in sorted(shown.items())})
            out[scenario.name] = results
    finally:
        runner.close()
    return out


def _scenarios(names: str | None, quick: bool) -> list[Scenario]:
    chosen = list_scenarios() if not names else [n.strip() for n in names.split(",") if n.strip()]
    scenarios = [load_scenario(n) for n in chosen]
    return [_compressed(s, QUICK_FACTOR) for s in scenarios] if quick else scenarios


def _compressed(scenario: Scenario, factor: float) -> Scenario:
    """The scenario with every time (not deadlines or sizes) scaled by ``factor``."""
    replace = msgspec.structs.replace

    def step(e: FaultStep) -> FaultStep:
        args = dict(e.args)
        seconds = args.get("seconds")
        if isinstance(seconds, int | float) and e.action in ("start_loading", "rate_limit"):
            args["seconds"] = float(seconds) * factor
        return replace(e, at=e.at * factor, args=args)

    def client(c: ClientSpec) -> ClientSpec:
        phases = tuple(replace(p, at=p.at * factor) for p in c.phases)
        stop = None if c.stop is None else c.stop * factor
        return replace(c, phases=phases, start=c.start * factor, stop=stop)

    return replace(
        scenario,
        duration=scenario.duration * factor,
        events=tuple(step(e) for e in scenario.events),
        clients=tuple(client(c) for c in scenario.clients),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmgate bench", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs, a coarser sweep")
    parser.add_argument(
        "--scenarios", help="comma-separated scenario names or paths (default: all)"
    )
    parser.add_argument(
        "--policies",
        default="none,fixed,oracle,bare,aimd,vegas,gradient2,lmgate,lmgate-metrics",
        help="comma-separated: none, fixed, oracle, bare (a CapacityLimiter at the oracle's"
        " limit that sheds past twice it waiting), aimd, vegas, gradient2, lmgate,"
        " lmgate-metrics (reading the servers' own metrics), sweep",
    )
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the event-loop shuffle")
    parser.add_argument("--results", default="benchmarks/results", help="JSON and PNG folder")
    parser.add_argument("--report", default="benchmarks/REPORT.md", help="markdown report path")
    parser.add_argument("--no-report", action="store_true", help="write no REPORT.md")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``lmgate bench``; returns the exit status."""
    argv = list(argv) if argv is not None else sys.argv[1:]
    if argv[:1] == ["--"]:  # ``lmgate bench -- --quick``: the separator is passed on
        argv = argv[1:]
    args = _parser().parse_args(argv)
    known = {"none", "fixed", "oracle", "sweep", "bare", *POLICIES}
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in known]
    if unknown or not policies:
        print(f"lmgate bench: unknown policies {unknown}; known: {sorted(known)}", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print("lmgate bench: --jobs must be >= 1", file=sys.stderr)
        return 2
    try:
        scenarios = _scenarios(args.scenarios, args.quick)
    except InvalidParameter as exc:
        print(f"lmgate bench: {exc}", file=sys.stderr)
        return 2
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        results = run_bench(
            scenarios, policies, quick=args.quick, jobs=args.jobs, seed=args.seed, progress=progress
        )
    folder = Path(args.results)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "overload.json", scenarios, results, quick=args.quick, seed=args.seed)
    print_tables(Console(width=max(Console().width, 150)), scenarios, results)
    if not args.no_plots:
        from lmgate.bench._plot import plot_scenario

        for scenario in scenarios:
            plot_scenario(
                scenario, results[scenario.name], folder / f"overload_{scenario.name}.png", PLOTTED
            )
    if not args.no_report:
        report = Path(args.report)
        report.parent.mkdir(parents=True, exist_ok=True)
        write_report(report, scenarios, results, images=folder, quick=args.quick)
    return 0


def _write_json(
    path: Path,
    scenarios: Sequence[Scenario],
    results: dict[str, dict[str, Result]],
    *,
    quick: bool,
    seed: int,
) -> None:
    doc: dict[str, Any] = {"quick": quick, "seed": seed, "scenarios": {}}
    for scenario in scenarios:
        runs = results[scenario.name]
        doc["scenarios"][scenario.name] = {
            "duration": scenario.duration,
            "policies": {
                name: _rounded(msgspec.to_builtins(r.metrics)) for name, r in runs.items()
            },
        }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)


def _rounded(value: Any) -> Any:
    """Floats to 4 significant digits, so the committed JSON diffs by what moved."""
    if isinstance(value, float):
        return float(f"{value:.4g}") if value == value else None
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value
