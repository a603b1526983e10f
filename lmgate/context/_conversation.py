"""Conversation history that only ever holds finished exchanges.

The failure this prevents: a stream dies halfway, or the call is
cancelled, or the process crashes, and the half-written answer (or a tool
call without its result) is now in history, where every later request
trips over it.  So a model call runs inside a :meth:`Conversation.step`:
what it adds is staged and committed in one piece when the block exits
cleanly with the reply complete and every tool call answered; any
exception, cancellation or missing piece commits nothing.

With a journal, each commit is one fsync'd record, so after a crash the
history reloads as of the last commit -- never a partial one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, final

import msgspec

from lmgate._errors import InvalidParameter
from lmgate.context._journal import Journal, JournalReport, JournalStatistics
from lmgate.context._messages import (
    AssistantMessage,
    Message,
    ToolMessage,
    to_dicts,
    to_message,
    to_messages,
)

__all__ = ["Conversation", "ConversationStatistics", "Step"]

Input = Message | Mapping[str, Any]


@final
class ConversationStatistics(msgspec.Struct, frozen=True, kw_only=True):
    messages: int
    commits: int
    discarded: int
    journal: JournalStatistics | None = None


def _check(history_open: frozenset[str], batch: tuple[Message, ...]) -> frozenset[str]:
    """Check tool results answer open calls; return the calls still open after ``batch``."""
    open_calls = history_open
    for i, m in enumerate(batch):
        if isinstance(m, ToolMessage):
            if m.tool_call_id not in open_calls:
                raise InvalidParameter(
                    f"tool result for unknown or answered call {m.tool_call_id[:64]!r}",
                    field=f"messages[{i}].tool_call_id",
                )
            open_calls = open_calls - {m.tool_call_id}
            continue
        if open_calls:
            raise InvalidParameter(
                f"{len(open_calls)} tool call(s) still need results before a {m.role} message",
                field=f"messages[{i}]",
            )
        if isinstance(m, AssistantMessage) and m.tool_calls:
            open_calls = frozenset(c.id for c in m.tool_calls)
            if len(open_calls) != len(m.tool_calls):
                raise InvalidParameter("duplicate tool call ids", field=f"messages[{i}]")
    return open_calls


@final
class Conversation:
    """Committed chat history; see :meth:`step` for adding a model's reply."""

    __slots__ = ("_commits", "_discarded", "_journal", "_messages", "_step", "report")

    def __init__(self, messages: Iterable[Input] = (), *, journal: Journal | None = None) -> None:
        msgs = to_messages(messages)
        if _check(frozenset(), msgs):
            raise InvalidParameter("history ends with unanswered tool calls", field="messages")
        self._messages = msgs
        self._journal = journal
        self._step: Step | None = None
        self._commits = self._discarded = 0
        self.report: JournalReport | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Conversation:
        """Reload history from a journal (creating it), and keep appending to it.

        ``report`` on the result says whether a torn or corrupt tail was dropped.
        """
        journal, records, report = Journal.open(path)
        try:
            msgs: list[Message] = []
            for n, rec in enumerate(records):
                if type(rec) is not dict or type(rec.get("messages")) is not list:
                    raise InvalidParameter(f"journal record {n} is not a commit", field="journal")
                batch = to_messages(rec["messages"])
                _check(frozenset(), batch)
                msgs.extend(batch)
            conv = cls(msgs, journal=journal)
        except BaseException:
            journal.close()
            raise
        conv.report = report
        return conv

    @property
    def messages(self) -> tuple[Message, ...]:
        return self._messages

    def append(self, *messages: Input) -> None:
        """Commit messages that need no model call (a system prompt, a user turn)."""
        batch = tuple(to_message(m, where=f"messages[{i}]") for i, m in enumerate(messages))
        if _check(frozenset(), batch):
            raise InvalidParameter(
                "tool calls need their results in the same commit", field="messages"
            )
        self._commit(batch)

    def step(self, *new: Input) -> Step:
        """Open a step: ``new`` messages (a user turn, say) plus the reply to come.

        Use it as a context manager; only one step is open at a time.
        """
        if self._step is not None:
            raise RuntimeError("a step is already open on this conversation")
        batch = tuple(to_message(m, where=f"messages[{i}]") for i, m in enumerate(new))
        if _check(frozenset(), batch):
            raise InvalidParameter(
                "a step's input cannot hold unanswered tool calls", field="messages"
            )
        self._step = Step(self, batch)
        return self._step

    def _commit(self, batch: tuple[Message, ...]) -> None:
        if not batch:
            return
        if self._journal is not None:
            try:
                self._journal.append({"messages": to_dicts(batch)})
            except (TypeError, msgspec.EncodeError) as exc:
                raise InvalidParameter(
                    f"message not JSON-serializable: {exc}"[:200], field="messages"
                ) from None
        self._messages = self._messages + batch
        self._commits += 1

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()

    def statistics(self) -> ConversationStatistics:
        j = self._journal.statistics() if self._journal is not None else None
        return ConversationStatistics(
            messages=len(self._messages),
            commits=self._commits,
            discarded=self._discarded,
            journal=j,
        )

    def __repr__(self) -> str:
        step = " step-open" if self._step is not None else ""
        return f"<Conversation messages={len(self._messages)}{step}>"


@final
class Step:
    """One model call's worth of history, staged until it is whole."""

    __slots__ = ("_conv", "_done", "_open_calls", "_staged")

    def __init__(self, conv: Conversation, new: tuple[Message, ...]) -> None:
        self._conv = conv
        self._staged = new
        self._open_calls: frozenset[str] = frozenset()
        self._done = False

    @property
    def messages(self) -> tuple[Message, ...]:
        """History plus what this step has staged: what to send to the model."""
        return self._conv.messages + self._staged

    @property
    def pending_calls(self) -> frozenset[str]:
        """Ids of tool calls that still need a result before the step can commit."""
        return self._open_calls

    def complete(self, reply: AssistantMessage | Mapping[str, Any]) -> None:
        """Stage the model's finished reply.  Call it only once the stream ended."""
        msg = to_message(reply, where="reply")
        if not isinstance(msg, AssistantMessage):
            raise InvalidParameter("the reply must be an assistant message", field="reply")
        self._open_calls = _check(self._open_calls, (msg,))
        self._staged += (msg,)
        self._done = True

    def add_tool_result(self, result: ToolMessage | Mapping[str, Any]) -> None:
        """Stage the result of one of the reply's tool calls."""
        msg = to_message(result, where="result")
        if not isinstance(msg, ToolMessage):
            raise InvalidParameter("a tool result must be a tool message", field="result")
        self._open_calls = _check(self._open_calls, (msg,))
        self._staged += (msg,)

    def __enter__(self) -> Step:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        conv = self._conv
        conv._step = None
        if et is None and self._done and not self._open_calls:
            conv._commit(self._staged)
        else:
            conv._discarded += 1

    def __repr__(self) -> str:
        return (
            f"<Step staged={len(self._staged)} complete={self._done}"
            f" pending_calls={len(self._open_calls)}>"
        )
