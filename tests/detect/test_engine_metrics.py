"""Congestion figures read from each server's ``/metrics`` text."""

from __future__ import annotations

import pytest

from lmgate.detect._engine_metrics import engine_reading

VLLM_V1 = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="qwen"} 7.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="qwen"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="qwen"} 0.8125
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="qwen"} 12.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.001",model_name="qwen"} 0.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="qwen"} 40.0
vllm:time_to_first_token_seconds_count{model_name="qwen"} 40.0
vllm:time_to_first_token_seconds_sum{model_name="qwen"} 3.2
"""

VLLM_V0 = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="a"} 3.0
vllm:num_requests_running{model_name="b"} 4.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="a"} 0.5
vllm:gpu_cache_usage_perc{model_name="b"} 0.9
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{model_name="a"} 1.0
vllm:num_preemptions_total{model_name="b"} 2.0
"""

LLAMACPP = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 6886
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.25
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 4
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 1
"""


def test_vllm_v1_names() -> None:
    r = engine_reading(VLLM_V1, 5.0)
    assert r is not None
    assert (r.at, r.running, r.waiting, r.kv_usage, r.preemptions) == (5.0, 7, 2, 0.8125, 12)


def test_several_models_add_up_and_the_fullest_cache_counts() -> None:
    r = engine_reading(VLLM_V0, 0.0)
    assert r is not None
    assert (r.running, r.waiting, r.kv_usage, r.preemptions) == (7, None, 0.9, 3)


def test_llamacpp_names() -> None:
    r = engine_reading(LLAMACPP, 1.0)
    assert r is not None
    assert (r.running, r.waiting, r.kv_usage, r.preemptions) == (4, 1, 0.25, None)


def test_sglang_and_tgi_names() -> None:
    sglang = "sglang:num_running_reqs 3\nsglang:num_queue_reqs 0\nsglang:token_usage 0.4\n"
    tgi = "tgi_batch_current_size 6\ntgi_queue_size 2\n"
    a, b = engine_reading(sglang, 0.0), engine_reading(tgi, 0.0)
    assert a is not None
    assert (a.running, a.waiting, a.kv_usage) == (3, 0, 0.4)
    assert b is not None
    assert (b.running, b.waiting) == (6, 2)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not prometheus at all {{{",
        "process_cpu_seconds_total 12.5\n",  # metrics, but none of ours
        "<html><body>Not Found</body></html>",
    ],
)
def test_nothing_to_read(text: str) -> None:
    assert engine_reading(text, 0.0) is None


def test_values_from_the_network_are_checked() -> None:
    text = (
        "vllm:num_requests_running NaN\n"
        "vllm:num_requests_waiting -3\n"
        "vllm:kv_cache_usage_perc 7.5\n"
        "llamacpp:requests_processing +Inf\n"
    )
    r = engine_reading(text, 0.0)
    assert r is not None
    assert (r.running, r.waiting, r.kv_usage) == (None, None, 1.0)
