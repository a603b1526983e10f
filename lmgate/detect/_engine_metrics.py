"""Congestion figures from a server's Prometheus ``/metrics`` text.

Each server names the same few facts its own way; the names here are the
ones their documentation and source publish:

* vLLM: ``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
  ``vllm:kv_cache_usage_perc`` (``vllm:gpu_cache_usage_perc`` before V1;
  both a share from 0 to 1, despite the name), ``vllm:num_preemptions``
  (a counter, ``_total`` on the wire; ``vllm:num_preemptions_total`` in
  older releases);
* llama.cpp's server (``--metrics``): ``llamacpp:requests_processing``,
  ``llamacpp:requests_deferred``, ``llamacpp:kv_cache_usage_ratio`` where
  the build still has it;
* SGLang: ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``,
  ``sglang:token_usage``;
* TGI: ``tgi_batch_current_size``, ``tgi_queue_size``.

A server running several models (or data-parallel engines) labels each
series; the requests add up and the cache usage is the fullest one's.
Parsing is ``prometheus_client``'s, the field's standard; the body comes
from the network, so a value that is not a finite number is ignored.
"""

from __future__ import annotations

import math
from typing import Final

from lmgate.policies._engine import EngineReading

__all__ = ["engine_reading"]

_RUNNING: Final = frozenset(
    {
        "vllm:num_requests_running",
        "llamacpp:requests_processing",
        "sglang:num_running_reqs",
        "tgi_batch_current_size",
    }
)
_WAITING: Final = frozenset(
    {
        "vllm:num_requests_waiting",
        "llamacpp:requests_deferred",
        "sglang:num_queue_reqs",
        "tgi_queue_size",
    }
)
_KV_USAGE: Final = frozenset(
    {
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "llamacpp:kv_cache_usage_ratio",
        "sglang:token_usage",
    }
)
_PREEMPTIONS: Final = frozenset({"vllm:num_preemptions_total"})


def engine_reading(text: str, at: float) -> EngineReading | None:
    """The figures ``text`` publishes, read at ``at`` (None: none of them, or not Prometheus)."""
    # Imported here: ``import lmgate`` stays free of it until metrics are read.
    from prometheus_client.parser import text_string_to_metric_families

    running = waiting = preemptions = None
    kv: float | None = None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name, value = sample.name, sample.value
                if not math.isfinite(value) or value < 0:
                    continue
                if name in _RUNNING:
                    running = (running or 0) + int(value)
                elif name in _WAITING:
                    waiting = (waiting or 0) + int(value)
                elif name in _KV_USAGE:
                    share = min(1.0, value)
                    kv = share if kv is None else max(kv, share)
                elif name in _PREEMPTIONS:
                    preemptions = (preemptions or 0) + int(value)
    except (ValueError, IndexError, TypeError):  # not Prometheus text after all
        return None
    reading = EngineReading(
        at=at, running=running, waiting=waiting, kv_usage=kv, preemptions=preemptions
    )
    return None if reading.empty else reading
