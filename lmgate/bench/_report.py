"""Tables and the committed report of the overload benchmark.

``benchmarks/REPORT.md`` is generated whole from the results -- no date, no
wall time, no machine -- so regenerating it after a change in behaviour
gives a diff of exactly the figures that moved.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, final

import msgspec

from lmgate.bench._metrics import Metrics, change_times, percentile
from lmgate.bench._run import Trace
from lmgate.sim._scenarios import Scenario

__all__ = ["Result", "Timeline", "print_tables", "targets", "timeline_of", "write_report"]

#: Targets for lmgate's default against the oracle (the issue's "done when").
GOODPUT_SHARE: Final = 0.95
P99_FACTOR: Final = 1.2
MAX_CV: Final = 0.05
NA: Final = "n/a"
STEP: Final = 2.0  # seconds between timeline points
BIN: Final = 10.0  # seconds per latency bin


@final
class Timeline(msgspec.Struct, frozen=True, kw_only=True):
    """What the plots draw: the limit every ``STEP`` s, latency medians per ``BIN`` s."""

    times: tuple[float, ...]
    limits: tuple[int, ...]
    in_flight: tuple[int, ...]
    bins: tuple[float, ...]
    latency_p50: tuple[float | None, ...]
    service_p50: tuple[float | None, ...]


@final
class Result(msgspec.Struct, frozen=True, kw_only=True):
    metrics: Metrics
    timeline: Timeline


def timeline_of(trace: Trace) -> Timeline:
    """Thin the trace to what the plots and the JSON keep."""
    every = max(1, round(STEP / (trace.times[1] - trace.times[0]))) if len(trace.times) > 1 else 1
    n = math.ceil(trace.duration / BIN)
    latency: list[list[float]] = [[] for _ in range(n)]
    service: list[list[float]] = [[] for _ in range(n)]
    for r in trace.records:
        if (
            r.granted == r.granted
            and r.kind in ("completed", "deadline")
            and r.ended < trace.duration
        ):
            i = int(r.ended // BIN)
            latency[i].append(r.ended - r.issued)
            service[i].append(r.ended - r.granted)
    return Timeline(
        times=trace.times[every - 1 :: every],
        limits=trace.limits[every - 1 :: every],
        in_flight=trace.in_flight[every - 1 :: every],
        bins=tuple((i + 0.5) * BIN for i in range(n)),
        latency_p50=tuple(percentile(v, 0.5) for v in latency),
        service_p50=tuple(percentile(v, 0.5) for v in service),
    )


# -- formatting ----------------------------------------------------------------------


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:
        return NA
    return f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return NA if value is None or value != value else f"{100 * value:.1f}"


def _limit(m: Metrics) -> str:
    return "∞" if m.limit_mean >= 1e5 else _num(m.limit_mean, 1)


def _converge(m: Metrics) -> str:
    if m.limit_mean >= 1e5:
        return NA
    return "never" if m.converge is None else f"{m.converge:.0f}"


COLUMNS: Final = (
    "policy",
    "goodput/s",
    "p50 s",
    "p99 s",
    "svc p50 s",
    "svc p99 s",
    "missed %",
    "rejected %",
    "failed %",
    "limit",
    "CV %",
    "CV held %",
    "converge s",
)


def row(m: Metrics) -> list[str]:
    """One policy's figures in :data:`COLUMNS` order."""
    cv = NA if m.limit_mean >= 1e5 else _pct(m.limit_cv)
    held = NA if m.limit_mean >= 1e5 else _pct(m.limit_cv_hold)
    return [
        m.policy,
        _num(m.goodput, 3),
        _num(m.p50),
        _num(m.p99),
        _num(m.service_p50),
        _num(m.service_p99),
        _pct(m.deadline_miss_rate),
        _pct(m.rejection_rate),
        _pct(m.failure_rate),
        _limit(m),
        cv,
        held,
        _converge(m),
    ]


def targets(ours: Metrics, oracle: Metrics) -> dict[str, tuple[bool, str]]:
    """Each target: whether lmgate's default meets it, and the figure that says so."""
    share = ours.goodput / oracle.goodput if oracle.goodput > 0 else math.nan
    p99 = (ours.p99 / oracle.p99) if ours.p99 and oracle.p99 else math.nan
    return {
        "goodput": (share >= GOODPUT_SHARE, f"{100 * share:.1f} % of oracle"),
        "p99": (not p99 > P99_FACTOR, f"{p99:.2f}x oracle"),
        "cv": (not ours.limit_cv > MAX_CV, f"{100 * ours.limit_cv:.1f} %"),
    }


def print_tables(
    console: Any, scenarios: Sequence[Scenario], results: dict[str, dict[str, Any]]
) -> None:
    """One rich table per scenario on ``console``."""
    from rich.table import Table

    for scenario in scenarios:
        table = Table(title=f"{scenario.name} ({scenario.duration:.0f} s)", title_justify="left")
        for i, column in enumerate(COLUMNS):
            table.add_column(column, justify="left" if i == 0 else "right")
        for result in results[scenario.name].values():
            table.add_row(*row(result.metrics))
        console.print(table)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    aligns = ["---"] + ["--:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(aligns) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def write_report(
    path: Path,
    scenarios: Sequence[Scenario],
    results: dict[str, dict[str, Result]],
    *,
    images: Path,
    quick: bool,
) -> None:
    """Write the markdown report (atomically: write, fsync, rename)."""
    lines = [
        "# Overload benchmark",
        "",
        "Generated by `python benchmarks/overload.py` (also `lmgate bench`); do not edit.",
        "Each scenario of `lmgate/sim/scenarios/` runs through a real `Scheduler` over",
        "simulated continuous-batching servers, in virtual time, once per limit policy.",
        "The *oracle* is the best fixed limit of a sweep (most goodput, then lowest p99).",
        "",
        "- goodput: requests completed (hence within their deadline) per second;",
        "- p50 / p99: latency from issue to end of admitted requests that completed or",
        "  ran into their deadline; *svc*: the same from the grant (what the limit governs);",
        "- missed / rejected / failed: shares of ended requests that missed their deadline,",
        "  were refused by the scheduler, or failed (server errors, unavailable);",
        "- limit, CV: time-weighted mean and coefficient of variation of the enforced limit",
        "  from a minute after the last change (at least 120 s in) to the end; *CV held*",
        "  leaves out the seconds an adaptive policy spent measuring a probe step;",
        "- converge: seconds from the first change (or the start) until the limit stays",
        "  within 10 % (at least one slot) of that mean.",
        "",
    ]
    if quick:
        lines += ["**Quick run**: shortened scenarios and a coarse sweep.", ""]
    lines += [
        f"Targets for lmgate's default: goodput >= {GOODPUT_SHARE:.0%} of the oracle's, "
        f"p99 <= {P99_FACTOR}x the oracle's, limit CV <= {MAX_CV:.0%}.",
        "",
        "## lmgate's default against the oracle",
        "",
        "The oracle is the better, by goodput, of the best fixed limit through lmgate"
        " (found by sweep) and a bare `CapacityLimiter` at that limit that sheds"
        " arrivals past twice it waiting (`bare`); on the stepped engines, whose KV budget"
        " is known, also a bare token gate that admits FIFO while `prompt + max_tokens` of"
        " the running requests fit it (`token-gate`).  *With metrics* is the default"
        " reading the servers' own `/metrics` (`lmgate-metrics`), as a share of the oracle.",
        "",
    ]
    summary = []
    for scenario in scenarios:
        runs = results[scenario.name]
        if "lmgate" not in runs or "oracle" not in runs:
            continue
        ours, oracle = runs["lmgate"].metrics, runs["oracle"].metrics
        for simple in ("bare", "token-gate"):
            alt = runs[simple].metrics if simple in runs else None
            if alt is not None and alt.goodput > oracle.goodput:
                oracle = msgspec.structs.replace(alt, policy=f"oracle ({alt.policy})")
        seen = runs["lmgate-metrics"].metrics if "lmgate-metrics" in runs else None
        with_metrics = "n/a" if seen is None else _share(seen.goodput, oracle.goodput)
        met = targets(ours, oracle)
        mark = {k: ("✓ " if ok else "✗ ") + text for k, (ok, text) in met.items()}
        summary.append(
            [
                scenario.name,
                oracle.policy.removeprefix("oracle (").removesuffix(")"),
                f"{_num(ours.goodput, 3)} / {_num(oracle.goodput, 3)}",
                mark["goodput"],
                f"{_num(ours.p99)} / {_num(oracle.p99)}",
                mark["p99"],
                _limit(ours),
                mark["cv"],
                _pct(ours.limit_cv_hold),
                _converge(ours),
                with_metrics,
            ]
        )
    header = [
        "scenario",
        "oracle",
        "goodput (ours / oracle)",
        "goodput target",
        "p99 s (ours / oracle)",
        "p99 target",
        "limit",
        "CV target",
        "CV held %",
        "converge s",
        "goodput with metrics",
    ]
    lines += [*_md_table(header, summary), ""]
    for scenario in scenarios:
        runs = results[scenario.name]
        description = " ".join(scenario.description.split())
        changes = ", ".join(f"{t:g}" for t in change_times(scenario)) or "none"
        lines += [
            f"## {scenario.name}",
            "",
            description,
            "",
            f"{scenario.duration:.0f} s; changes at (s): {changes}.",
            "",
            *_md_table(COLUMNS, [row(r.metrics) for r in runs.values()]),
            "",
        ]
        over = {name: r.metrics.grants_over_limit for name, r in runs.items()}
        if any(over.values()):
            lines += [f"Grants past the enforced limit: {over}.", ""]
        image = images / f"overload_{scenario.name}.png"
        lines += [f"![{scenario.name}]({os.path.relpath(image, path.parent)})", ""]
    lines += _outside(images)
    text = "\n".join(lines)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _outside(results: Path) -> list[str]:
    """The figures measured outside virtual time, from their own scripts' JSON, if present."""
    lines: list[str] = []
    server = results / "llama_server.json"
    if server.exists():
        data = json.loads(server.read_text(encoding="utf-8"))
        best = data["median"][data["best_fixed"]]["goodput"]
        lines += [
            "## A real llama-server",
            "",
            "`python benchmarks/llama_server.py` (the `e2e` extra): llama-server on a tiny",
            f"random-weight model on CPU with `--parallel 4`, capacity"
            f" {data['capacity_per_second']:.1f}/s with four closed-loop workers, offered"
            f" {data['offered_per_second']:.1f}/s as Poisson arrivals through the openai SDK,"
            f" deadline {data['deadline']:.2f} s, {data['seconds']:.0f} s per run;"
            f" medians of {data['rounds']} interleaved rounds.",
            "",
            *_md_table(
                ["policy", "goodput/s", "p99 s", "vs best fixed"],
                [
                    [name, _num(m["goodput"]), _num(m["p99"]), f"{m['goodput'] / best:.3f}"]
                    for name, m in data["median"].items()
                ],
            ),
            "",
        ]
    zero = results / "zero_latency.json"
    if zero.exists():
        data = json.loads(zero.read_text(encoding="utf-8"))
        lines += [
            "## Zero-latency calls",
            "",
            "`python benchmarks/zero_latency.py`: calls with no I/O from 64 clients, the",
            "default limit against `Fixed(64)` (best of interleaved rounds).",
            "",
            *_md_table(
                ["backend", "Fixed(64) µs", "default µs", "x Fixed(64)", "default's limit"],
                [
                    [
                        r["backend"],
                        _num(r["fixed_64_us"]),
                        _num(r["default_us"]),
                        _num(r["ratio"]),
                        str(r["default_limit_min"]),
                    ]
                    for r in data["rows"]
                ],
            ),
            "",
        ]
    return lines


def _share(ours: float, oracle: float) -> str:
    return f"{100 * ours / oracle:.1f} % of oracle" if oracle else "n/a"
