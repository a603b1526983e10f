"""Retries and fallbacks, all inside the request's one deadline.

A retry is only worth making if it can finish before the caller stops
waiting, and only safe if repeating the call cannot do the work twice: so a
call is retried when the caller marked it idempotent, or when it failed
before a byte reached the server.  The order of what to try next is: the
same model on another endpoint, then the models of the fallback chain.
Everything here is a pure function of its arguments; the jitter comes in
as a number the caller drew.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final, final, get_args

import msgspec

from lmgate._errors import InvalidParameter
from lmgate._validate import check_float, check_int
from lmgate.policies._classify import Classification
from lmgate.policies._sample import OutcomeClass

__all__ = [
    "Retry",
    "RetryDecision",
    "check_fallbacks",
    "choose_larger_window",
    "next_target",
    "plan_fallbacks",
]

_OUTCOMES: Final = frozenset(get_args(OutcomeClass))
_NEVER_RETRIED: Final = frozenset({"success", "cancelled"})
_DEFAULT_RETRY_ON: Final[frozenset[OutcomeClass]] = frozenset({"error", "timeout", "overload"})
_MAX_CHAIN = 64


@final
class RetryDecision(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Whether to try again, after how long (``at`` = now + delay), and why."""

    retry: bool
    delay: float = 0.0
    at: float | None = None
    reason: str


@final
class Retry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How many times, how far apart, and on which outcomes to try again.

    ``attempts`` counts the first call.  Backoff is ``base * multiplier**n``
    capped at ``max_backoff``, minus up to ``jitter`` of itself.  A
    ``Retry-After`` replaces the backoff exactly for the same endpoint; one
    longer than ``max_retry_after`` is not waited for.  A retry is refused
    when less than ``min_remaining`` seconds of the deadline would be left
    after the wait -- not enough to do anything useful.
    """

    attempts: int = 3
    base: float = 0.25
    max_backoff: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5
    retry_on: frozenset[OutcomeClass] = _DEFAULT_RETRY_ON
    min_remaining: float = 0.1
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        check_int("attempts", self.attempts, low=1, high=100)
        check_float("base", self.base, low=0.0, high=3600.0)
        check_float("max_backoff", self.max_backoff, low=self.base, high=86_400.0)
        check_float("multiplier", self.multiplier, low=1.0, high=100.0)
        check_float("jitter", self.jitter, low=0.0, high=1.0)
        check_float("min_remaining", self.min_remaining, low=0.0, high=3600.0)
        check_float("max_retry_after", self.max_retry_after, low=0.0, high=86_400.0)
        retry_on: Any = self.retry_on
        if isinstance(retry_on, str) or not isinstance(retry_on, Collection):
            raise InvalidParameter("retry_on must be a set of outcome classes", field="retry_on")
        for outcome in retry_on:
            if outcome not in _OUTCOMES or outcome in _NEVER_RETRIED:
                raise InvalidParameter(
                    f"retry_on: {outcome!r} is not a retryable outcome class", field="retry_on"
                )
        msgspec.structs.force_setattr(self, "retry_on", frozenset(retry_on))

    def backoff(self, attempt: int, draw: float) -> float:
        """The wait before attempt ``attempt + 1`` when no Retry-After says."""
        try:
            full = min(self.base * self.multiplier ** min(attempt - 1, 10_000), self.max_backoff)
        except OverflowError:
            full = self.max_backoff
        return full * (1.0 - self.jitter * draw)

    def next_attempt(
        self,
        attempt: int,
        classification: Classification,
        now: float,
        deadline: float,
        idempotent: bool,
        draw: float,
        *,
        same_endpoint: bool = True,
    ) -> RetryDecision:
        """Decide on another try after ``attempt`` calls ended as classified.

        ``deadline`` is absolute on the same clock as ``now`` (``math.inf``
        without one); ``draw`` is a uniform number in [0, 1] for the jitter.
        With ``same_endpoint=False`` the next try goes elsewhere, so neither
        the failed endpoint's Retry-After nor a backoff applies.
        """
        check_int("attempt", attempt, low=1, high=1_000_000)
        if not isinstance(now, int | float) or not math.isfinite(now):
            raise InvalidParameter("now must be finite", field="now")
        if not isinstance(deadline, int | float) or math.isnan(deadline):
            raise InvalidParameter("deadline must be a number", field="deadline")
        check_float("draw", draw, low=0.0, high=1.0)
        c = classification
        if c.outcome not in self.retry_on:
            return RetryDecision(retry=False, reason=f"not_retryable:{c.outcome}")
        if attempt >= self.attempts:
            return RetryDecision(retry=False, reason="attempts_exhausted")
        if not idempotent and not c.before_send:
            return RetryDecision(retry=False, reason="not_idempotent")
        if not same_endpoint:
            delay, why = 0.0, "elsewhere"
        elif c.retry_after is not None and math.isfinite(c.retry_after) and c.retry_after >= 0:
            if c.retry_after > self.max_retry_after:
                return RetryDecision(retry=False, reason="retry_after_too_long")
            delay, why = float(c.retry_after), "retry_after"
        else:
            delay, why = self.backoff(attempt, draw), "backoff"
        if now + delay + self.min_remaining > deadline:
            return RetryDecision(retry=False, reason="deadline")
        return RetryDecision(retry=True, delay=delay, at=now + delay, reason=why)


def check_fallbacks(fallbacks: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """Validate a fallback mapping once, at configuration time.

    A bare string as a value is refused: ``{"big": "small"}`` would
    otherwise fall back to the models ``"s"``, ``"m"``...
    """
    if not isinstance(fallbacks, Mapping):
        raise InvalidParameter("fallbacks must be a mapping of model -> models", field="fallbacks")
    out: dict[str, tuple[str, ...]] = {}
    for model, chain in fallbacks.items():
        _check_model("fallbacks", model)
        if isinstance(chain, str) or not isinstance(chain, Sequence):
            raise InvalidParameter(
                f"fallbacks[{model!r}] must be a list of model names", field="fallbacks"
            )
        for m in chain:
            _check_model("fallbacks", m)
        out[model] = tuple(chain)
    return out


def plan_fallbacks(
    model: str, fallbacks: Mapping[str, Sequence[str]], *, limit: int = 16
) -> tuple[str, ...]:
    """The ordered, duplicate-free chain of models to try, ``model`` first.

    Breadth-first: a model's own fallbacks, in the order given, come before
    the fallbacks of those fallbacks.  Each model appears once, so cycles
    (``{"a": ["b"], "b": ["a"]}`` is a fine symmetric config) end by
    themselves; ``limit`` bounds the chain however large the mapping.
    """
    _check_model("model", model)
    check_int("limit", limit, low=1, high=_MAX_CHAIN)
    chain = [model]
    seen = {model}
    i = 0
    while i < len(chain) and len(chain) < limit:
        nexts = fallbacks.get(chain[i], ())
        if isinstance(nexts, str) or not isinstance(nexts, Sequence):
            raise InvalidParameter(
                f"fallbacks[{chain[i]!r}] must be a list of model names", field="fallbacks"
            )
        for m in nexts:
            _check_model("fallbacks", m)
            if m not in seen:
                seen.add(m)
                chain.append(m)
                if len(chain) >= limit:
                    break
        i += 1
    return tuple(chain)


def choose_larger_window(
    model: str, needed_tokens: int, windows: Mapping[str, int], chain: Sequence[str]
) -> str | None:
    """The first model of ``chain`` whose known window fits ``needed_tokens``.

    Only a model with a strictly larger window than ``model``'s (when that
    is known) qualifies, and models of unknown window are skipped: sending
    an overflowing prompt to a guess just fails again.
    """
    _check_model("model", model)
    check_int("needed_tokens", needed_tokens, low=0, high=1 << 40)
    current = windows.get(model)
    for candidate in chain:
        if candidate == model:
            continue
        w = windows.get(candidate)
        if isinstance(w, bool) or not isinstance(w, int):
            continue
        if w >= needed_tokens and (current is None or w > current):
            return candidate
    return None


def next_target(
    chain: Sequence[str],
    serving: Mapping[str, Sequence[str]],
    tried: Collection[tuple[str, str]],
) -> tuple[str, str] | None:
    """The next ``(endpoint, model)`` to try, or None when all were tried.

    ``serving`` maps a model to the endpoints that serve it and can take
    traffic now, in routing preference order.  Every endpoint of a model is
    tried before the chain moves on to the next model.
    """
    for model in chain:
        for endpoint in serving.get(model, ()):
            if (endpoint, model) not in tried:
                return endpoint, model
    return None


def _check_model(field: str, value: object) -> None:
    if not isinstance(value, str) or not value or len(value) > 4096 or "\x00" in value:
        raise InvalidParameter(f"{field}: model names must be non-empty strings", field=field)
