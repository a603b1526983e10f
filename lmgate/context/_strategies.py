"""The synchronous context strategies and what they report.

Each strategy is a pure function of the messages, a token budget and a
token counter: it shortens the prompt towards the budget, may stop short of
it, and says what it did in an :class:`Applied` record.  What must never be
cut is decided once here (:func:`_groups`), so every strategy keeps the
same promises: the system prompt stays, the last user message and the
newest step stay, and a tool call never loses its result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, final, runtime_checkable

import msgspec

from lmgate._errors import InvalidParameter
from lmgate._validate import check_float, check_int
from lmgate.context._estimate import TokenCounter
from lmgate.context._messages import Message, SystemMessage, UserMessage, message_spans, to_dicts

__all__ = [
    "ELISION",
    "Applied",
    "Chain",
    "Compress",
    "ContextStrategy",
    "Fitted",
    "SlidingWindow",
    "Step",
    "afit_one",
    "default_strategy",
    "groups",
    "lead",
    "reach",
]

#: The marker left where text was cut, so the model knows something is missing.
ELISION = "\n[... {n} characters elided to fit the context window ...]\n"


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
    """A prompt that fits: the messages, their estimated tokens, what was done.

    ``window`` is None when the endpoint's window is unknown: nothing could
    be fitted, and the messages are the caller's, unchanged.
    """

    messages: tuple[Message, ...]
    tokens: int
    window: int | None
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


def lead(messages: Sequence[Message]) -> int:
    """How many leading system messages (the pinned system prompt) there are."""
    n = 0
    while n < len(messages) and isinstance(messages[n], SystemMessage):
        n += 1
    return n


def _last_user(messages: Sequence[Message], start: int) -> int | None:
    for i in range(len(messages) - 1, start - 1, -1):
        if isinstance(messages[i], UserMessage):
            return i
    return None


def groups(messages: Sequence[Message], start: int) -> list[range]:
    """Droppable groups after the ``start`` pinned messages, oldest first.

    Pinned: the system prompt, the last user message and the newest unit.
    Before the last user message whole turns go together, so what is left
    still opens with a user message (chat templates insist on it); after it,
    each assistant step with its tool results goes alone.
    """
    spans = message_spans(messages, start)
    last_user = _last_user(messages, start)
    out: list[range] = []
    turn: range | None = None
    for sp in spans:
        if sp is spans[-1] or sp.start == last_user:
            pass
        elif last_user is not None and sp.start < last_user:
            if turn is not None and not isinstance(messages[sp.start], UserMessage):
                turn = range(turn.start, sp.stop)
                continue
            if turn is not None:
                out.append(turn)
            turn = sp
            continue
        else:
            out.append(sp)
            continue
        if turn is not None:
            out.append(turn)
            turn = None
    if turn is not None:
        out.append(turn)
    return sorted(out, key=lambda g: g.start)


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
        for group in groups(messages, lead(messages)):
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
    and so on down.  The system prompt is never touched, and the last user
    message only with ``cut_newest=True`` (a tool result, even the newest
    message, is shortened like any other): cutting
    the caller's own words silently would lie about what was asked, so by
    default a prompt that only fits that way is refused (``ContextOverflow``).
    The cut is marked in the text so the model knows something is missing.
    The default for cloud endpoints, whose windows are large enough that
    old turns still help.
    """

    min_chars: int = 256
    head_share: float = 0.6
    cut_newest: bool = False

    def __post_init__(self) -> None:
        check_int("min_chars", self.min_chars, low=0, high=10_000_000)
        check_float("head_share", self.head_share, low=0.0, high=1.0)
        if type(self.cut_newest) is not bool:
            raise InvalidParameter("cut_newest must be a bool", field="cut_newest")

    def fit(self, messages: tuple[Message, ...], budget: int, count: TokenCounter) -> Step:
        msgs = list(messages)
        sizes = [count(m) for m in msgs]
        before = total = sum(sizes)
        first, originals, done = lead(msgs), dict[int, str](), set[int]()
        kept_chars: dict[int, int] = {}
        pinned = {_last_user(msgs, first)}
        for allow_pinned in (False, True) if self.cut_newest else (False,):
            while total > budget:
                best = -1
                for i in range(first, len(msgs)):
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
                if keep + len(ELISION) >= len(original) or keep >= len(text):
                    done.add(best)
                    continue
                head = int(keep * self.head_share)
                cut = original[:head] + ELISION.format(n=len(original) - keep)
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
            messages, done = await afit_one(s, messages, budget, count, deadline)
            applied.extend(done)
        return messages, tuple(applied)

    def reach(self, messages: tuple[Message, ...], count: TokenCounter) -> tuple[Message, ...]:
        for s in self.strategies:
            messages = reach(s, messages, count)
        return messages

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Chain) and self.strategies == other.strategies

    def __hash__(self) -> int:
        return hash(self.strategies)

    def __repr__(self) -> str:
        return f"Chain({', '.join(map(repr, self.strategies))})"


async def afit_one(
    s: ContextStrategy, msgs: tuple[Message, ...], budget: int, count: TokenCounter, dl: float
) -> Step:
    """Run one strategy, awaiting it if it has an async form (a summary)."""
    afit = getattr(s, "afit", None)
    if afit is not None:
        step: Step = await afit(msgs, budget, count, dl)
        return step
    return s.fit(msgs, budget, count)


def reach(
    s: ContextStrategy, msgs: tuple[Message, ...], count: TokenCounter
) -> tuple[Message, ...]:
    """The shortest ``s`` can make ``msgs``, worked out without awaiting anything.

    A strategy may say so itself (``reach``); otherwise it is run with a
    budget of zero, which makes every strategy here go as far as it can.
    One that cannot run synchronously is taken to reach nothing.
    """
    own = getattr(s, "reach", None)
    try:
        if own is not None:
            out: tuple[Message, ...] = own(msgs, count)
            return out
        return s.fit(msgs, 0, count)[0]
    except TypeError:
        return msgs


def default_strategy(local: bool | None) -> ContextStrategy:
    """Local (or unknown) endpoints slide, then compress; cloud ones the reverse.

    An endpoint of unknown locality is treated as local: assuming a small
    window costs a little context, assuming a large one overflows.
    """
    if local is False:
        return Chain(Compress(), SlidingWindow())
    return Chain(SlidingWindow(), Compress())
