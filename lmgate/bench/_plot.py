"""One PNG per scenario: the limit and the latency over time, one line per policy.

Drawn with matplotlib's Agg backend, so it needs no display.  "No limit"
has no limit to draw; its line is the concurrency it let through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from lmgate.bench._metrics import change_times
from lmgate.bench._report import Result
from lmgate.sim._scenarios import Scenario

__all__ = ["plot_scenario"]


def plot_scenario(
    scenario: Scenario, results: Mapping[str, Result], path: Path, names: Sequence[str]
) -> None:
    """Write ``path``: the ``names`` present in ``results``, limit above, latency below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    for name in names:
        result = results.get(name)
        if result is None:
            continue
        t = result.timeline
        label = result.metrics.policy
        if result.metrics.limit_mean >= 1e5:
            top.plot(t.times, t.in_flight, label=f"{label} (in flight)", linestyle=":")
        else:
            top.step(t.times, t.limits, where="post", label=label, linewidth=1.2)
        points = [(b, v) for b, v in zip(t.bins, t.service_p50, strict=True) if v is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            bottom.plot(xs, ys, label=label, linewidth=1.2)
    for ax in (top, bottom):
        for at in change_times(scenario):
            ax.axvline(at, color="grey", linewidth=0.8, linestyle="--")
        ax.grid(True, alpha=0.3)
    top.set_ylabel("limit (requests)")
    top.set_yscale("log", base=2)
    top.set_title(f"{scenario.name}: enforced limit and service latency")
    top.legend(loc="upper right", fontsize=8, ncol=2)
    bottom.set_ylabel("service latency p50 (s), 10 s bins")
    bottom.set_xlabel("virtual time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
