"""The ``/metrics`` text of the simulated servers, in each real server's names.

vLLM publishes running and waiting requests, KV cache usage (a share from
0 to 1) and a preemption counter; llama.cpp's server (``--metrics``)
publishes requests processing and deferred, and in older builds the KV
cache usage ratio; Ollama has no metrics route at all.  The simulated
servers render the same names from their own state, so lmgate reads them
exactly as it reads the real ones.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["metrics_text"]

Style = Literal["vllm", "llamacpp"]


def _series(name: str, kind: str, value: float, labels: str) -> str:
    return f"# HELP {name} {name}.\n# TYPE {name} {kind}\n{name}{labels} {value}\n"


def metrics_text(
    style: Style,
    *,
    model: str,
    running: int,
    waiting: int,
    kv_usage: float,
    preemptions: int,
) -> str:
    """Prometheus text for one server of ``style`` in the state given."""
    if style == "vllm":
        labels = f'{{model_name="{model}"}}'
        return "".join(
            (
                _series("vllm:num_requests_running", "gauge", float(running), labels),
                _series("vllm:num_requests_waiting", "gauge", float(waiting), labels),
                _series("vllm:kv_cache_usage_perc", "gauge", round(kv_usage, 4), labels),
                "# HELP vllm:num_preemptions Preemptions.\n# TYPE vllm:num_preemptions counter\n"
                f"vllm:num_preemptions_total{labels} {float(preemptions)}\n",
            )
        )
    return "".join(
        (
            _series("llamacpp:requests_processing", "gauge", running, ""),
            _series("llamacpp:requests_deferred", "gauge", waiting, ""),
            _series("llamacpp:kv_cache_usage_ratio", "gauge", round(kv_usage, 4), ""),
        )
    )
