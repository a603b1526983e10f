"""``ResetWithSummary``: the context strategy that trades old turns for a summary.

Sliding drops old turns and compressing mangles them; a summary keeps what
they said in a few hundred tokens.  Writing it needs a model, so this is
the one strategy that awaits: the summary comes from a caller-supplied
async callable (or :class:`lmgate.context._fit.SchedulerSummarizer`),
and only ``afit_messages`` can run it.  Everything else -- what to
summarize, where the summary goes, what a failure leaves -- is decided
here without I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import final

import msgspec

from lmgate._errors import InvalidParameter
from lmgate._validate import check_float, check_int
from lmgate.context._estimate import TokenCounter
from lmgate.context._messages import Message, SystemMessage
from lmgate.context._strategies import ELISION, Applied, Step, groups, lead

__all__ = ["ResetWithSummary", "Summarizer"]

#: ``await summarizer(messages, deadline=...)`` returns a summary of ``messages``;
#: ``deadline`` is absolute on the ``anyio.current_time()`` clock (may be inf).
Summarizer = Callable[..., Awaitable[str]]


@final
class ResetWithSummary:
    """Replace the older turns by a summary of them.

    The newest turns (at most ``keep_share`` of the budget, and always the
    pinned last user message and newest step) stay verbatim; everything
    older goes to ``summarizer`` and comes back as a block appended to the
    system prompt, where every chat template accepts it.  If the summarizer
    fails, the failure is recorded and the prompt is left for the next
    strategy in a :class:`~lmgate.context._fit.Chain`.
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
        first = lead(messages)
        sizes = [count(m) for m in messages]
        droppable = groups(messages, first)
        grouped = {i for g in droppable for i in g}
        room = budget * self.keep_share - sum(
            sizes[i] for i in range(len(messages)) if i >= first and i not in grouped
        )
        older: list[int] = []
        for g in reversed(droppable):
            cost = sum(sizes[i] for i in g)
            if older or cost > room:
                older[:0] = g
            else:
                room -= cost
        if not older:
            return None
        old = set(older)
        return older, [i for i in range(first, len(messages)) if i not in old]

    def fit(self, messages: tuple[Message, ...], budget: int, count: TokenCounter) -> Step:
        raise TypeError("ResetWithSummary awaits its summarizer: use afit_messages")

    def reach(self, messages: tuple[Message, ...], count: TokenCounter) -> tuple[Message, ...]:
        """The prompt with everything droppable replaced by a longest-possible summary."""
        plan = self.plan(messages, 0, count)
        if plan is None:
            return messages
        older, kept = plan
        return self._assemble(messages, older, kept, "x" * self.max_summary_chars)

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
            summary = summary[:half] + ELISION.format(n=len(summary) - 2 * half) + summary[-half:]
        out = self._assemble(messages, older, kept, summary)
        after = sum(count(m) for m in out)
        return out, (
            Applied(
                strategy="ResetWithSummary",
                tokens_before=before,
                tokens_after=after,
                summarized=len(older),
            ),
        )

    @staticmethod
    def _assemble(
        messages: tuple[Message, ...], older: list[int], kept: list[int], summary: str
    ) -> tuple[Message, ...]:
        block = f"[Summary of {len(older)} earlier messages, replaced to fit the context window]\n"
        first = lead(messages)
        head: tuple[Message, ...]
        if first:
            system = messages[0]
            assert isinstance(system, SystemMessage)
            content = system.content
            text = block + summary
            new_content = (
                content + "\n\n" + text
                if isinstance(content, str)
                else (*content, {"type": "text", "text": text})
            )
            head = (msgspec.structs.replace(system, content=new_content), *messages[1:first])
        else:
            head = (SystemMessage(block + summary),)
        return head + tuple(messages[i] for i in kept)

    def __repr__(self) -> str:
        return f"ResetWithSummary(keep_share={self.keep_share})"
