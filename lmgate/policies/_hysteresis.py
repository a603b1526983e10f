"""Hysteresis around any limit policy: move rarely, fall fast, climb slowly.

An adaptive limit that twitches by one on every sample makes the scheduler
grant and withhold slots in a pattern the server sees as load oscillation.
Wrapping the policy keeps its estimate but publishes a change only when

- the proposal leaves a dead band around the published limit
  (``dead_band`` times the limit, and at least one slot);
- enough time has passed since the last change: ``dwell`` seconds before a
  rise, ``down_dwell`` before a fall (shorter, so overload is shed fast);
- and then moves at most ``max_step_up`` slots up, or down to no less than
  ``1 - max_step_down_ratio`` of the limit, within ``[min_limit,
  max_limit]``.

The inner state keeps learning from every sample; only what is published
is held back, so a proposal that stays outside the band is reached in a
few dwell periods.
"""

from __future__ import annotations

import math
from typing import Any, final

import msgspec

from lmgate._errors import InvalidParameter
from lmgate._validate import check_float, check_int
from lmgate.policies._limit import LimitPolicy, LimitState, LimitStatistics
from lmgate.policies._sample import Sample

__all__ = ["Hysteresis", "HysteresisState"]


@final
class Hysteresis(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Hysteresis settings around the ``inner`` policy config."""

    inner: LimitPolicy
    dead_band: float = 0.05
    dwell: float = 5.0
    down_dwell: float = 1.0
    max_step_up: int = 1
    max_step_down_ratio: float = 0.5
    min_limit: int = 1
    max_limit: int = 1_000_000

    def __post_init__(self) -> None:
        inner: Any = self.inner
        if not callable(getattr(inner, "build", None)):
            raise InvalidParameter("inner must be a limit policy config", field="inner")
        check_float("dead_band", self.dead_band, low=0.0, high=1.0)
        check_float("dwell", self.dwell, low=0.0, high=86_400.0)
        check_float("down_dwell", self.down_dwell, low=0.0, high=86_400.0)
        check_int("max_step_up", self.max_step_up, low=1, high=1_000_000)
        check_float("max_step_down_ratio", self.max_step_down_ratio, low=0.0, high=1.0)
        if self.max_step_down_ratio == 0.0:
            raise InvalidParameter("max_step_down_ratio must be > 0", field="max_step_down_ratio")
        check_int("min_limit", self.min_limit, low=1, high=1_000_000)
        check_int("max_limit", self.max_limit, low=self.min_limit, high=1_000_000)

    def build(self) -> HysteresisState:
        inner = self.inner.build()
        if not isinstance(inner, LimitState):
            raise InvalidParameter("inner.build() did not return a limit state", field="inner")
        return HysteresisState(self, inner)


@final
class HysteresisState:
    """The published limit of one endpoint, held back from its inner policy."""

    __slots__ = ("_changed_at", "_changes", "_config", "_inner", "_last", "_limit")

    def __init__(self, config: Hysteresis, inner: LimitState) -> None:
        self._config = config
        self._inner = inner
        self._limit = self._bound(inner.limit)
        self._changed_at = -math.inf
        self._last = -math.inf
        self._changes = 0

    def _bound(self, value: int) -> int:
        return max(self._config.min_limit, min(self._config.max_limit, value))

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def inner(self) -> LimitState:
        """The wrapped state, for inspection."""
        return self._inner

    def update(self, sample: Sample, now: float) -> int:
        return self._follow(self._inner.update(sample, now), now)

    def tick(self, now: float) -> int:
        return self._follow(self._inner.tick(now), now)

    def _follow(self, proposal: int, now: float) -> int:
        config = self._config
        if math.isfinite(now):
            self._last = max(self._last, now)
        now = self._last
        target = self._bound(proposal)
        current = self._limit
        band = max(1.0, config.dead_band * current)
        if abs(target - current) < band:
            return current
        since = now - self._changed_at
        if target > current:
            if since < config.dwell:
                return current
            moved = min(target, current + config.max_step_up)
        else:
            if since < config.down_dwell:
                return current
            floor = math.ceil(current * (1.0 - config.max_step_down_ratio))
            moved = max(target, floor, config.min_limit)
        if moved != current:
            self._limit = moved
            self._changed_at = now
            self._changes += 1
        return self._limit

    def statistics(self) -> LimitStatistics:
        inner = self._inner.statistics()
        detail = {f"inner.{key}": value for key, value in inner.detail.items()}
        detail["inner.limit"] = float(inner.limit)
        detail["changes"] = float(self._changes)
        return LimitStatistics(
            policy=f"Hysteresis({inner.policy})",
            limit=self._limit,
            samples=inner.samples,
            detail=detail,
        )

    def __repr__(self) -> str:
        return (
            f"<HysteresisState limit={self._limit} inner={self._inner.limit}"
            f" changes={self._changes}>"
        )
