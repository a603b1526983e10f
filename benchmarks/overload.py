"""Overload and goodput of every limit policy, per scenario, in virtual time.

Runs each scenario of ``lmgate/sim/scenarios`` through a real ``Scheduler``
over simulated continuous-batching servers under no limit, fixed limits,
the oracle (the best fixed limit of a sweep), AIMD, Vegas, Gradient2 and
lmgate's default, and reports goodput (completions within deadline per
second), p50/p99 latency of admitted requests, deadline-miss, rejection and
failure rates, the limit's mean and coefficient of variation in steady
state, and the time to re-converge after a change.  Writes
``benchmarks/results/overload.json``, a PNG per scenario next to it, and
``benchmarks/REPORT.md``.  Same as ``lmgate bench``.

    nice python benchmarks/overload.py [--quick] [--scenarios overload_3x] [--jobs 2]
"""

from __future__ import annotations

import sys

from lmgate.bench._suite import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
