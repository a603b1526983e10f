"""Admission by tokens: what a request costs in the server's KV cache.

A model server's capacity is memory for tokens, not a count of requests:
the KV cache holds every running request's prompt and what it has
generated so far, and a server out of cache either preempts (vLLM
recomputes a running request from scratch) or refuses.  A gate that
admits while ``prompt + max_tokens`` of the running requests fit the
cache never overflows it, but ``max_tokens`` is an upper bound that most
answers stop far short of, so such a gate leaves the cache half empty.

``TokenBudget`` charges each request ``prompt + expected output``, where
the expected output is a high quantile (``quantile``) of the output
lengths this endpoint really produced, capped by the request's
``max_tokens``; until ``warmup`` answers have been seen it charges
``max_tokens`` in full.  The charge is still an overestimate most of the
time -- a request holds its whole prompt but only the tokens generated so
far -- so the cache is rarely full.  When the server says it is full
anyway (an overload answer, preemptions in its metrics), ``fill`` -- the
share of the budget admission may commit -- backs off multiplicatively and
creeps back with each answer that completes, as AIMD does for a limit.

Where the server publishes its metrics (``Endpoint(engine_metrics=True)``),
its own figures steer ``fill``: a preemption since the last reading backs
it off like an overload answer, and a cache the server shows under
``target_usage`` while admission's charges already fill the budget lets
``fill`` rise past 1 (to ``max_fill``) -- the charges overestimate, and
the server's figure says by how much.

One request always fits an empty budget if its own need does; a need
larger than the whole budget can never run and is refused at submit.
Pure and synchronous: admission calls it with no clock and no I/O.
"""

from __future__ import annotations

from collections import deque
from typing import final

import msgspec

from lmgate._validate import check_float, check_int
from lmgate.policies._engine import FULL_CACHE, EngineReading

__all__ = ["TokenBudget", "TokenBudgetStatistics", "TokenSettings"]


@final
class TokenSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How an endpoint's KV budget is shared out.

    ``quantile`` of observed output lengths is a request's expected output;
    ``warmup`` answers are needed before it is used; ``history`` answers are
    remembered.  ``backoff`` multiplies ``fill`` on each sign of a full
    cache, down to ``min_fill``; each completed answer adds ``recovery``
    (up to 1).  With the server's metrics, a reading of its cache under
    ``target_usage`` while the budget is committed raises ``fill`` by
    ``overcommit`` (up to ``max_fill``).
    """

    quantile: float = 0.9
    warmup: int = 16
    history: int = 256
    backoff: float = 0.85
    min_fill: float = 0.5
    recovery: float = 0.005
    preempt_backoff: float = 0.95
    target_usage: float = 0.8
    overcommit: float = 0.02
    max_fill: float = 1.5

    def __post_init__(self) -> None:
        check_float("quantile", self.quantile, low=0.0, high=1.0)
        check_int("warmup", self.warmup, low=0, high=1_000_000)
        check_int("history", self.history, low=1, high=1_000_000)
        check_float("backoff", self.backoff, low=0.0, low_open=True, high=1.0)
        check_float("min_fill", self.min_fill, low=0.0, low_open=True, high=1.0)
        check_float("recovery", self.recovery, low=0.0, high=1.0)
        check_float("preempt_backoff", self.preempt_backoff, low=0.0, low_open=True, high=1.0)
        check_float("target_usage", self.target_usage, low=0.0, high=1.0)
        check_float("overcommit", self.overcommit, low=0.0, high=1.0)
        check_float("max_fill", self.max_fill, low=1.0, high=10.0)


@final
class TokenBudgetStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one endpoint's token budget.

    ``budget`` is the most prompt + output tokens the server holds at once
    and ``source`` where that figure came from (``user``, ``props``,
    ``metrics``, ``api/ps``).  ``in_flight`` is what admission has charged
    to running (and lingering) requests; ``expected_output`` the charge for
    output, None while still learning; ``fill`` the share of the budget
    admission commits now; ``backoffs`` how often it had to back off.
    """

    budget: int
    source: str
    in_flight: int
    peak_in_flight: int
    expected_output: int | None
    fill: float
    backoffs: int
    observed: int


@final
class TokenBudget:
    """One endpoint's KV budget and what is charged against it (see the module doc)."""

    __slots__ = (
        "_dirty",
        "_expected",
        "_outputs",
        "_preemptions",
        "_prompt_sum",
        "_prompts",
        "backoffs",
        "budget",
        "fill",
        "in_flight",
        "observed",
        "peak_in_flight",
        "settings",
        "source",
    )

    def __init__(self, budget: int, source: str, settings: TokenSettings | None = None) -> None:
        self.settings = settings if settings is not None else TokenSettings()
        self.budget = budget
        self.source = source
        self.in_flight = 0
        self.peak_in_flight = 0
        self.fill = 1.0
        self.backoffs = 0
        self.observed = 0
        self._outputs: deque[int] = deque(maxlen=self.settings.history)
        self._prompts: deque[int] = deque(maxlen=self.settings.history)
        self._prompt_sum = 0
        self._expected: int | None = None
        self._dirty = 0
        self._preemptions: int | None = None

    # -- pricing -----------------------------------------------------------------------

    def expected_output(self) -> int | None:
        """The output charge learned so far, or None before ``warmup`` answers."""
        if len(self._outputs) < self.settings.warmup:
            return None
        if self._expected is None or self._dirty >= 8:
            ordered = sorted(self._outputs)
            k = min(len(ordered) - 1, int(self.settings.quantile * len(ordered)))
            self._expected = ordered[k]
            self._dirty = 0
        return self._expected

    def charge(self, prompt_tokens: int | None, max_tokens: int | None) -> int:
        """What a request is charged while it runs."""
        if prompt_tokens is None:
            prompt_tokens = self._typical_prompt()
        expected = self.expected_output()
        if expected is None:
            output = max_tokens if max_tokens is not None else 0
        else:
            output = expected if max_tokens is None else min(max_tokens, expected)
        return prompt_tokens + output

    def fits(self, charge: int) -> bool:
        """Whether a request charged ``charge`` may start now."""
        if self.in_flight == 0:
            return True  # one alone always runs: only a need above the budget cannot
        return self.in_flight + charge <= self.budget * self.fill

    # -- bookkeeping -------------------------------------------------------------------

    def take(self, charge: int) -> None:
        self.in_flight += charge
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight

    def give(self, charge: int) -> None:
        self.in_flight = max(0, self.in_flight - charge)

    def ended(
        self, outcome: str, charge: int, prompt_tokens: int | None, output_tokens: int | None
    ) -> None:
        """A request ended with ``outcome``; ``charge`` of its tokens comes back now."""
        self.give(charge)
        if outcome == "success":
            self.observe(prompt_tokens, output_tokens)
        elif outcome == "overload":
            self.full()

    def observe(self, prompt_tokens: int | None, output_tokens: int | None) -> None:
        """A request completed with these token counts (as reported)."""
        if output_tokens is not None and output_tokens >= 0:
            self._outputs.append(output_tokens)
            self._dirty += 1
            self.observed += 1
        if prompt_tokens is not None and prompt_tokens >= 0:
            prompts = self._prompts
            if len(prompts) == prompts.maxlen:
                self._prompt_sum -= prompts[0]
            prompts.append(prompt_tokens)
            self._prompt_sum += prompt_tokens
        if self.fill < 1.0:
            self.fill = min(1.0, self.fill + self.settings.recovery)

    def full(self, backoff: float | None = None) -> None:
        """The server said its cache is full: commit less of the budget for a while."""
        s = self.settings
        self.fill = max(s.min_fill, self.fill * (s.backoff if backoff is None else backoff))
        self.backoffs += 1

    def engine(self, reading: EngineReading) -> None:
        """The server's own metrics: preemptions back off, an emptier cache than
        charged lets admission commit more."""
        total, last = reading.preemptions, self._preemptions
        if total is not None:
            self._preemptions = total
            if last is not None and total > last:
                self.full(self.settings.preempt_backoff)
                return
        usage, s = reading.kv_usage, self.settings
        if usage is None:
            return
        waiting = reading.waiting or 0
        if usage >= FULL_CACHE and waiting:
            # The server holds requests back for want of cache: commit less.
            self.fill = max(s.min_fill, self.fill - s.overcommit)
        elif (
            usage < s.target_usage
            and not waiting
            and self.in_flight >= 0.9 * self.budget * self.fill
        ):
            self.fill = min(s.max_fill, self.fill + s.overcommit)

    def resize(self, budget: int, source: str) -> None:
        """The server's own figure arrived (or changed)."""
        self.budget = budget
        self.source = source

    def _typical_prompt(self) -> int:
        n = len(self._prompts)
        return self._prompt_sum // n if n else 0

    def statistics(self) -> TokenBudgetStatistics:
        return TokenBudgetStatistics(
            budget=self.budget,
            source=self.source,
            in_flight=self.in_flight,
            peak_in_flight=self.peak_in_flight,
            expected_output=self.expected_output(),
            fill=round(self.fill, 4),
            backoffs=self.backoffs,
            observed=self.observed,
        )

    def __repr__(self) -> str:
        return (
            f"<TokenBudget {self.in_flight}/{self.budget} tokens ({self.source})"
            f" fill={self.fill:.2f} expected_output={self.expected_output()}>"
        )
