"""Context strategies: make a prompt fit the model's window before it is sent.

A long agent session grows until the prompt passes the window of the model
serving it; a cloud API shrugs at 100k tokens, a local server with a 4k
window truncates silently or fails.  So the prompt is priced *before*
admission, and when prompt plus reserved output passes ``threshold`` of the
window, strategies shorten it until it is back under, each one recorded in
:class:`Fitted.applied` so the caller can see what was cut.  If even that
does not fit the window, :class:`~lmgate.ContextOverflow` is raised with the
numbers and nothing is sent.

Strategies are sans-IO: pure functions of the messages, a token budget and
a token counter (``_strategies.py``).  The one that needs a model
(:class:`ResetWithSummary`, ``_summary.py``) takes its summary from an
async callable, and only :func:`afit_messages` awaits it.  What was done is
reported by ``_context_report.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from lmgate._errors import ContextOverflow
from lmgate._validate import check_float, check_int
from lmgate.context._estimate import TokenCounter, estimate_tokens
from lmgate.context._messages import Message, to_messages
from lmgate.context._report import (
    ContextApplied,
    ContextCounters,
    ContextStatistics,
    context_events,
)
from lmgate.context._strategies import (
    Applied,
    Chain,
    Compress,
    ContextStrategy,
    Fitted,
    SlidingWindow,
    afit_one,
    default_strategy,
    reach,
)
from lmgate.context._summarize import SchedulerSummarizer
from lmgate.context._summary import ResetWithSummary, Summarizer

__all__ = [
    "Applied",
    "Chain",
    "Compress",
    "ContextApplied",
    "ContextCounters",
    "ContextStatistics",
    "ContextStrategy",
    "Fitted",
    "ResetWithSummary",
    "SchedulerSummarizer",
    "SlidingWindow",
    "Summarizer",
    "afit_messages",
    "context_events",
    "default_strategy",
    "fit_messages",
    "reachable_tokens",
]


def _setup(
    messages: Iterable[Message | Mapping[str, Any]],
    window: int,
    reserve: int,
    threshold: float,
    count_tokens: TokenCounter | None,
) -> tuple[tuple[Message, ...], TokenCounter, int, int, int]:
    check_int("window", window, low=1)
    check_int("reserve", reserve, low=0)
    check_float("threshold", threshold, low=0.0, high=1.0, low_open=True)
    msgs = to_messages(messages)
    count = count_tokens or estimate_tokens
    hard = window - reserve
    target = math.floor(window * threshold) - reserve
    return msgs, count, sum(count(m) for m in msgs), hard, target if target > 0 else hard


def _finish(
    msgs: tuple[Message, ...],
    count: TokenCounter,
    window: int,
    reserve: int,
    applied: tuple[Applied, ...],
) -> Fitted:
    tokens = sum(count(m) for m in msgs)
    if tokens + reserve > window:
        raise ContextOverflow(
            f"prompt of ~{tokens} tokens plus {reserve} reserved for output does not fit"
            f" the {window}-token window even after {[a.strategy for a in applied]}",
            tokens=tokens + reserve,
            window=window,
        )
    return Fitted(messages=msgs, tokens=tokens, window=window, reserve=reserve, applied=applied)


def fit_messages(
    messages: Iterable[Message | Mapping[str, Any]],
    *,
    window: int,
    reserve: int = 0,
    strategy: ContextStrategy | None = None,
    count_tokens: TokenCounter | None = None,
    threshold: float = 0.8,
    local: bool | None = None,
) -> Fitted:
    """Fit ``messages`` plus ``reserve`` output tokens into ``window``.

    Untouched while under ``threshold`` of the window; otherwise shortened by
    ``strategy`` (default: :func:`default_strategy` for ``local``) towards
    that threshold.  Raises ContextOverflow when the result still does not
    fit the window.  Synchronous, so strategies that need a model call
    (:class:`ResetWithSummary`) need :func:`afit_messages`.
    """
    msgs, count, total, hard, target = _setup(messages, window, reserve, threshold, count_tokens)
    applied: tuple[Applied, ...] = ()
    if total > target and hard > 0:
        msgs, applied = (strategy or default_strategy(local)).fit(msgs, target, count)
    return _finish(msgs, count, window, reserve, applied)


async def afit_messages(
    messages: Iterable[Message | Mapping[str, Any]],
    *,
    window: int,
    reserve: int = 0,
    strategy: ContextStrategy | None = None,
    count_tokens: TokenCounter | None = None,
    threshold: float = 0.8,
    local: bool | None = None,
    deadline: float = math.inf,
) -> Fitted:
    """:func:`fit_messages` for strategies that await a summary by ``deadline``."""
    msgs, count, total, hard, target = _setup(messages, window, reserve, threshold, count_tokens)
    applied: tuple[Applied, ...] = ()
    if total > target and hard > 0:
        s = strategy or default_strategy(local)
        msgs, applied = await afit_one(s, msgs, target, count, deadline)
    return _finish(msgs, count, window, reserve, applied)


def reachable_tokens(
    messages: Iterable[Message | Mapping[str, Any]],
    *,
    strategy: ContextStrategy | None = None,
    count_tokens: TokenCounter | None = None,
    local: bool | None = None,
) -> int:
    """The fewest tokens ``strategy`` can bring ``messages`` down to.

    A window smaller than this plus the reserved output can never serve the
    prompt, whatever is cut; the scheduler uses it to route a long
    conversation only to endpoints that can take it.  A summary is counted
    at its longest (``max_summary_chars``), since its length is not known
    before it is written.
    """
    msgs = to_messages(messages)
    count = count_tokens or estimate_tokens
    return sum(count(m) for m in reach(strategy or default_strategy(local), msgs, count))
