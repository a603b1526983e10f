"""A model's life on a server: loaded cold, warm, swapped under its name.

A local server loads a model on the first request for it (and again after
an idle unload, a restart, or a swap), and that request waits seconds to
minutes for its first token.  Taken at face value it looks like a failing,
hopelessly slow endpoint: the breaker would open and the adaptive limit
would collapse.  So requests that started before the model was known warm
and took long are flagged *cold*: their latency feeds no baseline and no
limit, and a cold timeout is told to the breaker as ``loading`` (a hold,
not a failure).

A model whose identity (digest, version, file) changes under the same name
is a different model: it is reported once, and its latency baseline starts
again.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import final

import msgspec

from lmgate._errors import InvalidParameter
from lmgate._validate import check_float, check_int
from lmgate.policies._sample import OutcomeClass

__all__ = ["ColdVerdict", "Lifecycle", "LifecycleState", "LifecycleStatistics", "ModelChange"]

_MAX_IDENTITY = 512


@final
class Lifecycle(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """When a slow request counts as a cold load rather than a bad endpoint.

    A request is cold when it started while its model was fresh (just
    seen, reloaded, swapped, or idle longer than ``idle_unload`` -- Ollama
    unloads after five idle minutes) and its time to first token (or its
    duration, when no TTFT was reported) is at least ``cold_min`` seconds
    and at least ``cold_factor`` times the model's warm baseline.
    ``alpha`` weighs new samples in that baseline (an EWMA);
    ``max_models`` bounds the memory.
    """

    cold_factor: float = 3.0
    cold_min: float = 1.0
    idle_unload: float = 300.0
    alpha: float = 0.2
    max_models: int = 256

    def __post_init__(self) -> None:
        check_float("cold_factor", self.cold_factor, low=1.0, high=1e6)
        check_float("cold_min", self.cold_min, low=0.0, high=86_400.0)
        check_float("idle_unload", self.idle_unload, low=0.0, low_open=True, high=1e9)
        check_float("alpha", self.alpha, low=0.0, low_open=True, high=1.0)
        check_int("max_models", self.max_models, low=1, high=1_000_000)

    def build(self) -> LifecycleState:
        return LifecycleState(self)


@final
class ModelChange(msgspec.Struct, frozen=True, kw_only=True):
    """``model`` now answers with identity ``new`` where it had ``old``."""

    model: str
    old: str
    new: str
    at: float


@final
class ColdVerdict(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """How the actor should pass one finished request on.

    ``breaker_outcome`` is what the breaker should record (a cold timeout
    becomes ``loading``); ``feed_limit`` is False for a cold request, whose
    latency would otherwise collapse the adaptive limit.
    """

    cold: bool
    breaker_outcome: OutcomeClass
    feed_limit: bool


@final
class LifecycleStatistics(msgspec.Struct, frozen=True, kw_only=True):
    models: int
    fresh: int
    cold_requests: int
    changes: int


class _Model:
    __slots__ = ("dur", "fresh", "identity", "last_end", "ttft", "warm_at")

    def __init__(self) -> None:
        self.identity: str | None = None
        self.fresh = True
        self.warm_at: float | None = None
        self.last_end: float | None = None
        self.ttft: float | None = None
        self.dur: float | None = None

    def refresh(self) -> None:
        self.fresh = True
        self.warm_at = None


@final
class LifecycleState:
    """One endpoint's view of its models' lives."""

    __slots__ = ("_changes", "_cold", "_config", "_models")

    def __init__(self, config: Lifecycle) -> None:
        self._config = config
        self._models: OrderedDict[str, _Model] = OrderedDict()
        self._cold = 0
        self._changes = 0

    def identity(self, model: str, identity: str | None, now: float) -> ModelChange | None:
        """Note what a probe says ``model`` is; a change is returned once.

        The first identity seen is the baseline, not a change.  A changed
        model is fresh again and its latency baseline is forgotten.
        """
        _check_now(now)
        if identity is None:
            return None
        if not isinstance(identity, str) or "\x00" in identity:
            raise InvalidParameter("identity must be a string", field="identity")
        identity = identity[:_MAX_IDENTITY]
        m = self._get(model)
        old = m.identity
        m.identity = identity
        if old is None or old == identity:
            return None
        m.refresh()
        m.ttft = m.dur = None
        self._changes += 1
        return ModelChange(model=model, old=old, new=identity, at=float(now))

    def loading(self, model: str) -> None:
        """The server said ``model`` is loading: the next requests may be cold."""
        self._get(model).refresh()

    def loaded(self, model: str) -> None:
        """The server says ``model`` is resident (e.g. Ollama's ``/api/ps``)."""
        m = self._get(model)
        m.fresh = False
        m.warm_at = None

    def restarted(self) -> None:
        """The server restarted or moved: every model must load again."""
        for m in self._models.values():
            m.refresh()

    def finished(
        self,
        model: str,
        start: float,
        now: float,
        outcome: OutcomeClass,
        ttft: float | None = None,
    ) -> ColdVerdict:
        """Judge one finished request of ``model`` that ran from ``start`` to ``now``."""
        _check_now(now)
        _check_now(start)
        cfg = self._config
        m = self._get(model)
        if m.last_end is not None and start - m.last_end >= cfg.idle_unload:
            m.refresh()
        if ttft is not None and not (isinstance(ttft, int | float) and 0 <= ttft < math.inf):
            ttft = None
        duration = max(0.0, now - start)
        latency, base = (ttft, m.ttft) if ttft is not None else (duration, m.dur)
        eligible = m.fresh and (m.warm_at is None or start < m.warm_at)
        slow = latency >= cfg.cold_min and (base is None or latency >= cfg.cold_factor * base)
        cold = eligible and slow and (outcome == "success" or outcome == "timeout")
        if outcome == "success":
            if cold:
                if m.warm_at is None:
                    m.warm_at = now
            else:
                if m.fresh and (m.warm_at is None or start >= m.warm_at):
                    m.fresh = False
                a = cfg.alpha
                m.dur = duration if m.dur is None else m.dur + a * (duration - m.dur)
                if ttft is not None:
                    m.ttft = ttft if m.ttft is None else m.ttft + a * (ttft - m.ttft)
        m.last_end = max(now, m.last_end) if m.last_end is not None else now
        if cold:
            self._cold += 1
            return ColdVerdict(
                cold=True,
                breaker_outcome="loading" if outcome == "timeout" else outcome,
                feed_limit=False,
            )
        return ColdVerdict(cold=False, breaker_outcome=outcome, feed_limit=True)

    def baseline(self, model: str) -> float | None:
        """The warm time-to-first-token baseline of ``model`` (or duration)."""
        m = self._models.get(model)
        if m is None:
            return None
        return m.ttft if m.ttft is not None else m.dur

    def is_fresh(self, model: str) -> bool:
        m = self._models.get(model)
        return m is None or m.fresh

    def statistics(self) -> LifecycleStatistics:
        return LifecycleStatistics(
            models=len(self._models),
            fresh=sum(1 for m in self._models.values() if m.fresh),
            cold_requests=self._cold,
            changes=self._changes,
        )

    def __repr__(self) -> str:
        return f"<LifecycleState models={len(self._models)} cold={self._cold}>"

    def _get(self, model: str) -> _Model:
        m = self._models.get(model)
        if m is None:
            if not isinstance(model, str) or not model:
                raise InvalidParameter("model must be a non-empty string", field="model")
            m = self._models[model] = _Model()
            if len(self._models) > self._config.max_models:
                self._models.popitem(last=False)
        else:
            self._models.move_to_end(model)
        return m


def _check_now(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidParameter(f"time must be a finite number, got {value!r}", field="now")
