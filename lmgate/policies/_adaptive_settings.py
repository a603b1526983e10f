"""The settings of :class:`~lmgate.policies.Adaptive` and their bounds.

Kept apart from the policy's state so each module holds one idea; the
policy's module docstring says what every setting does to the limit.
"""

from __future__ import annotations

import msgspec

from lmgate._errors import InvalidParameter
from lmgate._validate import check_float, check_int

__all__ = ["AdaptiveSettings"]


class AdaptiveSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every setting of :class:`~lmgate.policies.Adaptive`, checked on construction.

    ``window`` and ``window_samples`` are the least time and fresh samples a
    measurement takes; ``probe_timeout`` abandons a probe that gets no
    samples (the client went quiet).  ``down_elasticity`` (None: 0.15 over
    ``elasticity``) is what a down-step must show to be kept.
    """

    initial_limit: int = 4
    min_limit: int = 1
    max_limit: int = 256
    elasticity: float = 0.7
    down_elasticity: float | None = None
    probe_step: float = 0.0625
    probe_interval: float = 60.0
    probe_jitter: float = 0.25
    probe_cv: float = 0.04
    probe_timeout: float = 120.0
    startup_factor: float = 2.0
    settle: float = 1.0
    jump: float = 0.25
    backoff: float = 0.9
    timeout_share: float = 0.5
    smoothing: float = 0.2
    window: float = 1.0
    window_samples: int = 8
    max_window_samples: int = 256
    prompt_scale: float = 1024.0
    min_latency: float = 0.01
    precision: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("min_limit", self.min_limit, low=1, high=1_000_000)
        check_int("max_limit", self.max_limit, low=self.min_limit, high=1_000_000)
        check_int("initial_limit", self.initial_limit, low=self.min_limit, high=self.max_limit)
        check_float("elasticity", self.elasticity, low=0.0, low_open=True, high=1.0)
        if self.down_elasticity is not None:
            check_float("down_elasticity", self.down_elasticity, low=self.elasticity, high=2.0)
        check_float("probe_step", self.probe_step, low=0.0, low_open=True, high=1.0)
        check_float("probe_interval", self.probe_interval, low=0.0, high=86_400.0)
        check_float("probe_jitter", self.probe_jitter, low=0.0, high=0.99)
        check_float("probe_cv", self.probe_cv, low=0.0, low_open=True, high=1.0)
        check_float("probe_timeout", self.probe_timeout, low=0.0, low_open=True, high=86_400.0)
        check_float("startup_factor", self.startup_factor, low=1.0, high=100.0)
        check_float("settle", self.settle, low=0.0, high=100.0)
        check_float("jump", self.jump, low=0.0, low_open=True, high=100.0)
        check_float("backoff", self.backoff, low=0.1)
        if self.backoff >= 1.0:
            raise InvalidParameter("backoff must be < 1", field="backoff")
        check_float("timeout_share", self.timeout_share, low=0.0, high=1.0)
        check_float("smoothing", self.smoothing, low=0.0, high=1.0)
        check_float("window", self.window, low=0.0, high=3600.0)
        check_int("window_samples", self.window_samples, low=1, high=100_000)
        check_int(
            "max_window_samples", self.max_window_samples, low=self.window_samples, high=100_000
        )
        check_float("prompt_scale", self.prompt_scale, low=0.0, high=1e9)
        check_float("min_latency", self.min_latency, low=0.0, high=60.0)
        check_float("precision", self.precision, low=0.0, low_open=True, high=100.0)
        check_int("seed", self.seed, low=0)
