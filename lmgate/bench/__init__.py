"""The overload benchmark: scenarios run in virtual time against every policy.

``run_bench`` drives each scenario of :mod:`lmgate.sim` through a real
``Scheduler`` under trio's ``MockClock`` once per limit policy (and the
fixed-limit sweep that finds the oracle), then writes a table, JSON, plots
and ``benchmarks/REPORT.md``.  It sits above the scheduler and the
simulators and nothing in lmgate imports it; ``lmgate bench`` is its
command line.
"""

from lmgate.bench._suite import POLICIES, main, run_bench

__all__ = ["POLICIES", "main", "run_bench"]
