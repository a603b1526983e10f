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
a token counter.  The one that needs a model (:class:`ResetWithSummary`)
takes its summary from an async callable, and only :func:`afit_messages`
awaits it.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, final, runtime_checkable

import msgspec

from lmgate._chat import (
    Message,
    SystemMessage,
    UserMessage,
    message_spans,
    text_of,
    to_dicts,
    to_messages,
)
from lmgate._errors import ContextOverflow, InvalidParameter
from lmgate._events import Event
from lmgate._tokens_estimate import TokenCounter, estimate_tokens
from lmgate.policies._limit import check_float, check_int

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
]

#: ``await summarizer(messages, deadline=...)`` returns a summary of ``messages``;
#: ``deadline`` is absolute on the ``anyio.current_time()`` clock (may be inf).
Summarizer = Callable[..., Awaitable[str]]
_ELISION = "\n[... {n} characters elided to fit the context window ...]\n"


@final
class Applied(msgspec.Struct, frozen=True, kw_only=True):
    """What one strategy did: tokens before and after, and what it cut."""

    strategy: str
    tokens_before: int
    tokens_after: int
    dropped: int = 0
    compressed: int = 0
    elided_chars: int = 0
    summarized: int = 0
    error: str | None = None


@final
class Fitted(msgspec.Struct, frozen=True, kw_only=True):
    """A prompt that fits: the messages, their estimated tokens, what was done."""

    messages: tuple[Message, ...]
    tokens: int
    window: int
    reserve: int = 0
    applied: tuple[Applied, ...] = ()

    def to_dicts(self) -> list[dict[str, Any]]:
        """The messages as OpenAI-shaped dicts, ready to send."""
        return to_dicts(self.messages)


Step = tuple[tuple[Message, ...], tuple[Applied, ...]]


@runtime_checkable
class ContextStrategy(Protocol):
    """Shortens ``messages`` towards ``budget`` tokens; may stop short of it."""

    def fit(self, messages: tuple[Message, ...], budget: int, count: TokenCounter) -> Step: ...


def _lead(messages: Sequence[Message]) -> int:
    """How many leading system messages (the pinned system prompt) there are."""
    n = 0
    while n < len(messages) and isinstance(messages[n], SystemMessage):
        n += 1
    return n


def _last_user(messages: Sequence[Message], lead: int) -> int | None:
    for i in range(len(messages) - 1, lead - 1, -1):
        if isinstance(messages[i], UserMessage):
            return i
    return None


def _groups(messages: Sequence[Message], lead: int) -> list[range]:
    """Droppable groups, oldest first; everything else is pinned.

    Pinned: the system prompt, the last user message and the newest unit.
    Before the last user message whole turns go together, so what is left
    still opens with a user message (chat templates insist on it); after it,
    each assistant step with its tool results goes alone.
    """
    spans = message_spans(messages, lead)
    last_user = _last_user(messages, lead)
    groups: list[range] = []
    turn: range | None = None
    for sp in spans:
        if sp is spans[-1] or sp.start == last_user:
            pass
        elif last_user is not None and sp.start < last_user:
            if turn is not None and not isinstance(messages[sp.start], UserMessage):
                turn = range(turn.start, sp.stop)
                continue
            if turn is not None:
                groups.append(turn)
            turn = sp
            continue
        else:
            groups.append(sp)
            continue
        if turn is not None:
            groups.append(turn)
            turn = None
    if turn is not None:
        groups.append(turn)
    return sorted(groups, key=lambda g: g.start)


@final
class SlidingWindow(msgspec.Struct, frozen=True):
    """Keep the system prompt and the newest turns; drop the oldest whole.

    Never splits a tool call from its result and never drops the last user
    message or the newest step.  The default for local servers, whose small
    windows suit recent context better than mangled old context.
    """

    def fit(self, messages: tuple[Message, ...], budget: int, count: TokenCounter) -> Step:
        sizes = [count(m) for m in messages]
        before = total = sum(sizes)
        if total <= budget:
            return messages, ()
        drop: set[int] = set()
        for group in _groups(messages, _lead(messages)):
            if total <= budget:
                break
            drop.update(group)
            total -= sum(sizes[i] for i in group)
        if not drop:
            return messages, ()
        kept = tuple(m for i, m in enumerate(messages) if i not in drop)
        return kept, (
            Applied(
                strategy="SlidingWindow",
                tokens_before=before,
                tokens_after=total,
                dropped=len(drop),
            ),
        )


@final
class Compress(msgspec.Struct, frozen=True, kw_only=True):
    """Shorten the largest messages, keeping their head and tail.

    The largest message goes first (usually a tool result: a file, a log),
    and so on down; the last user message and the newest message only when
    nothing else is left to shorten.  The system prompt is never touched.  The cut is marked in
    the text so the model knows something is missing.  The default for cloud
    endpoints, whose windows are large enough that old turns still help.
    """

    min_chars: int = 256
    head_share: float = 0.6

    def __post_init__(self) -> None:
        check_int("min_chars", self.min_chars, low=0, high=10_000_000)
        check_float("head_share", self.head_share, low=0.0, high=1.0)

    def fit(self, messages: tuple[Message, ...], budget: int, count: TokenCounter) -> Step:
        msgs = list(messages)
        sizes = [count(m) for m in msgs]
        before = total = sum(sizes)
        lead, originals, done = _lead(msgs), dict[int, str](), set[int]()
        kept_chars: dict[int, int] = {}
        pinned = {len(msgs) - 1, _last_user(msgs, lead)}
        for allow_pinned in (False, True):
            while total > budget:
                best = -1
                for i in range(lead, len(msgs)):
                    if i in done or (i in pinned and not allow_pinned):
                        continue
                    if isinstance(msgs[i].content, str) and (best < 0 or sizes[i] > sizes[best]):
                        best = i
                if best < 0:
                    break
                text = msgs[best].content
                assert isinstance(text, str)
                original = originals.get(best, text)
                goal = max(1, sizes[best] - (total - budget))
                keep = min(len(text) * goal // sizes[best], len(text) * 9 // 10)
                keep = max(keep, self.min_chars)
                if keep + len(_ELISION) >= len(original) or keep >= len(text):
                    done.add(best)
                    continue
                head = int(keep * self.head_share)
                cut = original[:head] + _ELISION.format(n=len(original) - keep)
                cut += original[len(original) - (keep - head) :]
                new = msgspec.structs.replace(msgs[best], content=cut)
                n = count(new)
                if n >= sizes[best]:
                    done.add(best)
                    continue
                originals.setdefault(best, text)
                kept_chars[best] = keep
                msgs[best], total, sizes[best] = new, total + n - sizes[best], n
                if keep <= self.min_chars:
                    done.add(best)
        if not originals:
            return messages, ()
        elided = sum(len(o) - kept_chars[i] for i, o in originals.items())
        applied = Applied(
            strategy="Compress",
            tokens_before=before,
            tokens_after=total,
            compressed=len(originals),
            elided_chars=elided,
        )
        return tuple(msgs), (applied,)


@final
class ResetWithSummary:
    """Replace the older turns by a summary of them.

    The newest turns (at most ``keep_share`` of the budget, and always the
    pinned last user message and newest step) stay verbatim; everything
    older goes to ``summarizer`` and comes back as a block appended to the
    system prompt, where every chat template accepts it.  If the summarizer
    fails, the failure is recorded and the prompt is left for the next
    strategy in a :class:`Chain`.
    """

    __slots__ = ("keep_share", "max_summary_chars", "summarizer")

    def __init__(
        self, summarizer: Summarizer, *, keep_share: float = 0.5, max_summary_chars: int = 4000
    ) -> None:
        if not callable(summarizer):
            raise InvalidParameter("summarizer must be an async callable", field="summarizer")
        self.summarizer = summarizer
        self.keep_share = check_float("keep_share", keep_share, low=0.0, high=1.0)
        self.max_summary_chars = check_int("max_summary_chars", max_summary_chars, low=64)

    def plan(
        self, messages: Sequence[Message], budget: int, count: TokenCounter
    ) -> tuple[list[int], list[int]] | None:
        """Indices to summarize and to keep (after the system prompt), or None."""
        lead = _lead(messages)
        sizes = [count(m) for m in messages]
        groups = _groups(messages, lead)
        grouped = {i for g in groups for i in g}
        room = budget * self.keep_share - sum(
            sizes[i] for i in range(len(messages)) if i >= lead and i not in grouped
        )
        older: list[int] = []
        for g in reversed(groups):
            cost = sum(sizes[i] for i in g)
            if older or cost > room:
                older[:0] = g
            else:
                room -= cost
        if not older:
            return None
        old = set(older)
        return older, [i for i in range(lead, len(messages)) if i not in old]

    def fit(self, messages: tuple[Message, ...], budget: int, count: TokenCounter) -> Step:
        raise TypeError("ResetWithSummary awaits its summarizer: use afit_messages")

    async def afit(
        self, messages: tuple[Message, ...], budget: int, count: TokenCounter, deadline: float
    ) -> Step:
        before = sum(count(m) for m in messages)
        plan = self.plan(messages, budget, count)
        if before <= budget or plan is None:
            return messages, ()
        older, kept = plan
        try:
            summary = await self.summarizer([messages[i] for i in older], deadline=deadline)
            if not isinstance(summary, str):
                raise TypeError(f"summarizer returned {type(summary).__name__}, not str")
        except Exception as exc:  # a failed summary must not fail the request
            failed = Applied(
                strategy="ResetWithSummary",
                tokens_before=before,
                tokens_after=before,
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
            return messages, (failed,)
        if len(summary) > self.max_summary_chars:
            half = self.max_summary_chars // 2
            summary = summary[:half] + _ELISION.format(n=len(summary) - 2 * half) + summary[-half:]
        block = f"[Summary of {len(older)} earlier messages, replaced to fit the context window]\n"
        lead = _lead(messages)
        head: tuple[Message, ...]
        if lead:
            first = messages[0]
            assert isinstance(first, SystemMessage)
            content = first.content
            text = block + summary
            new_content = (
                content + "\n\n" + text
                if isinstance(content, str)
                else (*content, {"type": "text", "text": text})
            )
            head = (msgspec.structs.replace(first, content=new_content), *messages[1:lead])
        else:
            head = (SystemMessage(block + summary),)
        out = head + tuple(messages[i] for i in kept)
        after = sum(count(m) for m in out)
        return out, (
            Applied(
                strategy="ResetWithSummary",
                tokens_before=before,
                tokens_after=after,
                summarized=len(older),
            ),
        )

    def __repr__(self) -> str:
        return f"ResetWithSummary(keep_share={self.keep_share})"


@final
class Chain:
    """Apply strategies in order, stopping as soon as the prompt is in budget."""

    __slots__ = ("strategies",)

    def __init__(self, *strategies: ContextStrategy) -> None:
        if not strategies or not all(hasattr(s, "fit") for s in strategies):
            raise InvalidParameter("Chain takes one or more strategies", field="strategy")
        self.strategies = strategies

    def fit(self, messages: tuple[Message, ...], budget: int, count: TokenCounter) -> Step:
        applied: list[Applied] = []
        for s in self.strategies:
            if sum(count(m) for m in messages) <= budget:
                break
            messages, done = s.fit(messages, budget, count)
            applied.extend(done)
        return messages, tuple(applied)

    async def afit(
        self, messages: tuple[Message, ...], budget: int, count: TokenCounter, deadline: float
    ) -> Step:
        applied: list[Applied] = []
        for s in self.strategies:
            if sum(count(m) for m in messages) <= budget:
                break
            messages, done = await _afit_one(s, messages, budget, count, deadline)
            applied.extend(done)
        return messages, tuple(applied)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Chain) and self.strategies == other.strategies

    def __hash__(self) -> int:
        return hash(self.strategies)

    def __repr__(self) -> str:
        return f"Chain({', '.join(map(repr, self.strategies))})"


async def _afit_one(
    s: ContextStrategy, msgs: tuple[Message, ...], budget: int, count: TokenCounter, dl: float
) -> Step:
    afit = getattr(s, "afit", None)
    if afit is not None:
        step: Step = await afit(msgs, budget, count, dl)
        return step
    return s.fit(msgs, budget, count)


def default_strategy(local: bool | None) -> ContextStrategy:
    """Local (or unknown) endpoints slide, then compress; cloud ones the reverse.

    An endpoint of unknown locality is treated as local: assuming a small
    window costs a little context, assuming a large one overflows.
    """
    if local is False:
        return Chain(Compress(), SlidingWindow())
    return Chain(SlidingWindow(), Compress())


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
        msgs, applied = await _afit_one(s, msgs, target, count, deadline)
    return _finish(msgs, count, window, reserve, applied)


class ContextApplied(Event, frozen=True, kw_only=True):
    """A strategy shortened a request's prompt before it was admitted."""

    endpoint: str | None
    model: str | None
    window: int
    strategy: str
    tokens_before: int
    tokens_after: int
    dropped: int
    compressed: int
    summarized: int
    elided_chars: int
    error: str | None = None


def context_events(
    fitted: Fitted, *, at: float, endpoint: str | None = None, model: str | None = None
) -> list[ContextApplied]:
    """One event per strategy that ran, for the scheduler's event hub."""
    return [
        ContextApplied(
            at=at,
            endpoint=endpoint,
            model=model,
            window=fitted.window,
            strategy=a.strategy,
            tokens_before=a.tokens_before,
            tokens_after=a.tokens_after,
            dropped=a.dropped,
            compressed=a.compressed,
            summarized=a.summarized,
            elided_chars=a.elided_chars,
            error=a.error,
        )
        for a in fitted.applied
    ]


@final
class ContextStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Totals over every prompt fitted: how often each strategy ran, what it cut."""

    fitted: int
    shortened: int
    overflows: int
    applied: dict[str, int]
    dropped: int
    compressed: int
    summarized: int
    elided_chars: int
    peak_tokens: int


@final
class ContextCounters:
    """Running totals for ``stats()``; fixed size whatever the traffic."""

    __slots__ = ("_applied", "_n", "_overflows", "_peak", "_shortened", "_sums")

    def __init__(self) -> None:
        self._n = self._shortened = self._overflows = self._peak = 0
        self._applied: dict[str, int] = {}
        self._sums = [0, 0, 0, 0]

    def record(self, fitted: Fitted) -> None:
        self._n += 1
        self._peak = max(self._peak, fitted.tokens + fitted.reserve)
        if any(a.error is None for a in fitted.applied):
            self._shortened += 1
        for a in fitted.applied:
            key = a.strategy if a.error is None else f"{a.strategy}!failed"
            self._applied[key] = self._applied.get(key, 0) + 1
            for k, v in enumerate((a.dropped, a.compressed, a.summarized, a.elided_chars)):
                self._sums[k] += v

    def record_overflow(self) -> None:
        self._overflows += 1

    def statistics(self) -> ContextStatistics:
        d, c, s, e = self._sums
        return ContextStatistics(
            fitted=self._n,
            shortened=self._shortened,
            overflows=self._overflows,
            applied=dict(self._applied),
            dropped=d,
            compressed=c,
            summarized=s,
            elided_chars=e,
            peak_tokens=self._peak,
        )

    def __repr__(self) -> str:
        return f"<ContextCounters fitted={self._n} shortened={self._shortened}>"


class _Scheduler(Protocol):
    async def run(
        self,
        call: Callable[[Any], Awaitable[str]],
        *,
        model: str,
        priority: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> str: ...


@final
class SchedulerSummarizer:
    """The built-in summarizer: asks ``model`` through the same scheduler.

    It runs at a less urgent ``priority`` than user traffic (higher numbers
    wait longer) and within ``share`` of the time the request has left, so a
    summary can never make the request miss its own deadline.  ``complete``
    does the HTTP call; the default speaks the OpenAI chat completions API.
    """

    __slots__ = (
        "_api_key",
        "_client",
        "_complete",
        "max_tokens",
        "model",
        "priority",
        "sched",
        "share",
        "timeout",
    )

    def __init__(
        self,
        sched: _Scheduler,
        *,
        model: str,
        priority: int = 100,
        share: float = 0.5,
        timeout: float = 60.0,
        max_tokens: int = 512,
        complete: Callable[[Any, list[dict[str, Any]], int], Awaitable[str]] | None = None,
        api_key: Callable[[], str] | None = None,
        client: Any = None,
    ) -> None:
        self.sched, self.model, self.priority = sched, model, priority
        self.share = check_float("share", share, low=0.0, high=1.0, low_open=True)
        self.timeout = check_float("timeout", timeout, low=0.0, low_open=True)
        self.max_tokens = check_int("max_tokens", max_tokens)
        self._complete = complete or self._openai
        self._api_key, self._client = api_key, client

    async def __call__(self, messages: Sequence[Message], *, deadline: float = math.inf) -> str:
        import anyio

        timeout = self.timeout
        if deadline < math.inf:
            timeout = min(timeout, (deadline - anyio.current_time()) * self.share)
        if timeout <= 0:
            raise TimeoutError("no time left for a summary")
        transcript = "\n".join(f"{m.role}: {text_of(m)}" for m in messages)
        prompt = [
            {"role": "system", "content": _SUMMARY_PROMPT},
            {"role": "user", "content": transcript},
        ]

        async def call(lease: Any) -> str:
            return await self._complete(lease, prompt, self.max_tokens)

        return await self.sched.run(call, model=self.model, priority=self.priority, timeout=timeout)

    async def _openai(self, lease: Any, messages: list[dict[str, Any]], max_tokens: int) -> str:
        import httpx

        url = lease.endpoint.url.rstrip("/")
        url += "/chat/completions" if url.endswith("/v1") else "/v1/chat/completions"
        headers = {"Authorization": f"Bearer {self._api_key()}"} if self._api_key else {}
        body = {
            "model": lease.endpoint.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        client = self._client or httpx.AsyncClient()
        try:
            r = await client.post(url, json=body, headers=headers, timeout=lease.remaining())
            r.raise_for_status()
            return str(r.json()["choices"][0]["message"]["content"])
        finally:
            if self._client is None:
                await client.aclose()

    def __repr__(self) -> str:
        return f"SchedulerSummarizer(model={self.model!r}, priority={self.priority})"


_SUMMARY_PROMPT = (
    "Summarize the conversation below for the assistant that continues it. Keep every fact,"
    " decision, file name, identifier, number and open task; drop pleasantries. Be brief."
)
