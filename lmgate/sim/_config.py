"""The configuration and the records of a simulated model server.

Kept apart from the server so scenario files can be validated into
``SimConfig`` without importing the engine, and so every number a run
depends on sits in one frozen, hashable value.
"""

from __future__ import annotations

from typing import Literal, final

import msgspec

from lmgate._errors import InvalidParameter
from lmgate._validate import check_float, check_int
from lmgate.sim._dist import Dist

__all__ = ["SimConfig", "SimKVOverflow", "SimResult", "SimStatistics"]

_MAX_STR = 256


@final
class SimConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How one simulated server behaves.

    The step time for a batch of ``n`` sequences is ``base_step +
    slope_below * (min(n, knee) - 1) + slope_above * max(n - knee, 0)``
    seconds: nearly flat up to the knee, where batching is free, and steep
    after it.  A prompt's prefill costs ``prefill_per_token`` seconds per
    token at batch 1 and shares the batch like decoding does.  The KV cache
    holds ``kv_budget`` tokens across the active sequences (prompt plus what
    they wrote); when it fills, ``kv_overflow`` says whether the youngest
    decoding sequence fails (llama.cpp) or is preempted and recomputed later
    (vLLM).  ``max_queue`` requests may wait past the slots; one more is
    refused with ``queue_full_status``.
    """

    name: str = "sim"
    model: str = "sim-model"
    digest: str = "sha256:0000"
    port: int = 8000
    slots: int = 16
    base_step: float = 0.02
    knee: int = 8
    slope_below: float = 0.0005
    slope_above: float = 0.004
    prefill_per_token: float = 0.0
    kv_budget: int = 1_000_000
    kv_overflow: Literal["fail", "preempt"] = "fail"
    max_queue: int = 64
    queue_full_status: Literal[429, 503] = 503
    queue_full_retry_after: float | None = None
    prompt_tokens: Dist = Dist.fixed(100)
    output_tokens: Dist = Dist.fixed(100)
    context_window: int = 8192
    seed: int = 0

    def __post_init__(self) -> None:
        for field in ("name", "model", "digest"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value or len(value) > _MAX_STR:
                raise InvalidParameter(f"{field} must be a short non-empty string", field=field)
            if "\x00" in value:
                raise InvalidParameter(f"{field} contains a null byte", field=field)
        check_int("port", self.port, low=1, high=65535)
        check_int("slots", self.slots, low=1, high=100_000)
        check_float("base_step", self.base_step, low=0.0, low_open=True)
        check_int("knee", self.knee, low=1)
        check_float("slope_below", self.slope_below)
        check_float("slope_above", self.slope_above)
        check_float("prefill_per_token", self.prefill_per_token)
        check_int("kv_budget", self.kv_budget, low=1)
        check_int("max_queue", self.max_queue, low=0)
        check_int("context_window", self.context_window, low=2)
        check_int("seed", self.seed, low=0)
        if self.kv_overflow not in ("fail", "preempt"):
            raise InvalidParameter("kv_overflow must be 'fail' or 'preempt'", field="kv_overflow")
        if self.queue_full_status not in (429, 503):
            raise InvalidParameter(
                "queue_full_status must be 429 or 503", field="queue_full_status"
            )
        if self.queue_full_retry_after is not None:
            check_float("queue_full_retry_after", self.queue_full_retry_after)
        for field in ("prompt_tokens", "output_tokens"):
            if not isinstance(getattr(self, field), Dist):
                raise InvalidParameter(f"{field} must be a Dist", field=field)


@final
class SimResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one served request got: sizes and the times a client would see.

    ``ttft`` and ``duration`` count from the call, queueing included;
    ``queued`` is the part spent waiting for a slot.  ``finish_reason`` is
    ``"length"`` when the context window cut the output short.
    """

    prompt_tokens: int
    output_tokens: int
    ttft: float
    duration: float
    queued: float
    preemptions: int
    finish_reason: Literal["stop", "length"]
    model: str
    digest: str


@final
class SimStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of a simulated server.

    ``peak_active`` is the largest batch ever formed (the true concurrency
    the server saw); ``failed`` counts ended requests by why, with keys
    ``refused``, ``reset``, ``queue_full``, ``rate_limited``, ``loading``,
    ``context_overflow``, ``kv_overflow`` and ``cancelled``.
    """

    name: str
    state: Literal["up", "crashed", "hung", "loading", "rate_limited"]
    port: int
    model: str
    digest: str
    active: int
    queued: int
    hung_waiting: int
    peak_active: int
    peak_queued: int
    served: int
    failed: dict[str, int]
    preempted: int
    kv_used: int
    kv_peak: int
    kv_budget: int
    step_time: float
    speed: float
    tokens_out: int
    restarts: int


@final
class SimKVOverflow(RuntimeError):
    """The simulated KV cache overflowed and the request failed.

    A real server answers this with HTTP 500 (llama.cpp: "failed to find
    free space in the KV cache"), so it is a server fault, not overload and
    not the caller's error; ``status`` is 500 to say so.
    """

    status = 500

    def __init__(self, message: str, *, tokens: int, budget: int) -> None:
        super().__init__(message)
        self.tokens = tokens
        self.budget = budget
