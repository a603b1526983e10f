"""Conversation: a reply is committed only whole; tool calls only with their results."""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lmgate._errors import InvalidParameter
from lmgate.context._conversation import Conversation
from lmgate.context._journal import read_journal
from lmgate.context._messages import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    UserMessage,
)

CALL = AssistantMessage(None, (ToolCall(id="c1", name="ls"), ToolCall(id="c2", name="pwd")))


def test_completed_step_commits_input_and_reply_together() -> None:
    """A clean step adds the user turn and the reply in one commit."""
    conv = Conversation([SystemMessage("s")])
    with conv.step(UserMessage("hi")) as step:
        assert step.messages == (SystemMessage("s"), UserMessage("hi"))
        assert conv.messages == (SystemMessage("s"),)  # nothing visible before commit
        step.complete({"role": "assistant", "content": "hello"})
    assert conv.messages == (SystemMessage("s"), UserMessage("hi"), AssistantMessage("hello"))
    assert conv.statistics().commits == 1


def test_error_mid_stream_leaves_history_unchanged() -> None:
    """An exception after a partial reply commits nothing, not even the user turn."""
    conv = Conversation([SystemMessage("s")])
    with pytest.raises(ConnectionError), conv.step(UserMessage("hi")):
        raise ConnectionError("stream reset")
    assert conv.messages == (SystemMessage("s"),)
    assert conv.statistics().discarded == 1


def test_step_without_complete_commits_nothing() -> None:
    """A stream closed early without a finished reply is not a reply."""
    conv = Conversation()
    with conv.step(UserMessage("hi")):
        pass
    assert conv.messages == ()


@pytest.mark.anyio
async def test_cancelled_call_leaves_history_unchanged() -> None:
    """Cancellation, even after the reply was staged, commits nothing."""
    conv = Conversation()
    with anyio.move_on_after(0.01):
        with conv.step(UserMessage("hi")) as step:
            step.complete(AssistantMessage("partial"))
            await anyio.sleep_forever()
    assert conv.messages == ()


def test_tool_calls_commit_only_with_all_results() -> None:
    """A reply asking for tools commits with every result, or not at all."""
    conv = Conversation()
    with conv.step(UserMessage("look")) as step:
        step.complete(CALL)
        step.add_tool_result(ToolMessage("c1", "a.txt"))
        assert step.pending_calls == {"c2"}
    assert conv.messages == ()
    with conv.step(UserMessage("look")) as step:
        step.complete(CALL)
        step.add_tool_result(ToolMessage("c2", "/"))
        step.add_tool_result({"role": "tool", "tool_call_id": "c1", "content": "a.txt"})
    assert conv.messages == (
        UserMessage("look"),
        CALL,
        ToolMessage("c2", "/"),
        ToolMessage("c1", "a.txt"),
    )
    with conv.step() as step:  # the model's answer after the results, in its own step
        step.complete(AssistantMessage("done"))
    assert conv.messages[-1] == AssistantMessage("done")


@pytest.mark.parametrize(
    "act",
    [
        lambda s: s.add_tool_result(ToolMessage("nope", "x")),
        lambda s: (s.complete(CALL), s.add_tool_result(ToolMessage("c3", "x"))),
        lambda s: (s.complete(CALL), s.complete(AssistantMessage("early"))),
        lambda s: s.complete(UserMessage("not a reply")),
    ],
    ids=["result-without-call", "result-for-other-call", "reply-before-results", "not-assistant"],
)
def test_broken_pairs_are_refused(act: object) -> None:
    """Results without a call, or a reply before all results, are refused at once."""
    conv = Conversation()
    with pytest.raises(InvalidParameter), conv.step(UserMessage("x")) as step:
        act(step)  # type: ignore[operator]
    assert conv.messages == ()


def test_append_refuses_unanswered_calls_and_second_steps() -> None:
    """Direct appends keep pairs whole; only one step is open at a time."""
    conv = Conversation()
    with pytest.raises(InvalidParameter):
        conv.append(UserMessage("u"), CALL)
    conv.append(UserMessage("u"), CALL, ToolMessage("c1", "1"), ToolMessage("c2", "2"))
    with conv.step(), pytest.raises(RuntimeError):
        conv.step()
    with pytest.raises(InvalidParameter):
        Conversation([CALL])


def test_journal_reload_and_torn_commit(tmp_path: Path) -> None:
    """History reloads from the journal; a torn last commit is dropped whole."""
    path = tmp_path / "conv.jsonl"
    conv = Conversation.open(path)
    snapshots = [conv.messages]
    conv.append(SystemMessage("s"))
    snapshots.append(conv.messages)
    for i in range(3):
        with conv.step(UserMessage(f"q{i}")) as step:
            step.complete(CALL)
            step.add_tool_result(ToolMessage("c1", "x" * 50))
            step.add_tool_result(ToolMessage("c2", "y"))
        snapshots.append(conv.messages)
    conv.close()
    again = Conversation.open(path)
    assert again.messages == snapshots[-1]
    assert again.report is not None
    assert again.report.clean
    again.close()
    data = path.read_bytes()
    for cut in range(0, len(data), 7):
        path.write_bytes(data[:cut])
        reloaded = Conversation.open(path)
        assert reloaded.messages in snapshots, "a partial commit was read"
        reloaded.close()
    path.write_bytes(data[:-3])
    torn = Conversation.open(path)
    assert torn.messages == snapshots[-2]
    assert torn.report is not None
    assert torn.report.dropped_bytes > 0
    torn.close()
    assert read_journal(path)[1].clean  # opening cut the tail


def test_unserializable_extra_is_refused_and_not_committed(tmp_path: Path) -> None:
    """A message the journal cannot encode is refused and leaves history unchanged."""
    conv = Conversation.open(tmp_path / "c.jsonl")
    with pytest.raises(InvalidParameter):
        conv.append({"role": "user", "content": "x", "meta": object()})
    assert conv.messages == ()
    conv.close()


class ConversationMachine(RuleBasedStateMachine):
    """Random steps, completions, tool results, failures: history is always whole."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "c.jsonl"
        self.conv = Conversation.open(self.path)
        self.model: list[Message] = []
        self.step = None
        self.staged: list[Message] = []
        self.n = 0

    def teardown(self) -> None:
        if self.step is not None:
            self.step.__exit__(None, None, None)
        self.conv.close()
        self.dir.cleanup()

    @precondition(lambda self: self.step is None)
    @rule(with_user=st.booleans())
    def begin(self, with_user: bool) -> None:
        new = [UserMessage(f"u{self.n}")] if with_user else []
        self.n += 1
        self.step = self.conv.step(*new).__enter__()
        self.staged = list(new)

    @precondition(lambda self: self.step is not None and not self.step.pending_calls)
    @rule(calls=st.integers(0, 2))
    def complete(self, calls: int) -> None:
        reply = AssistantMessage(
            f"r{self.n}", tuple(ToolCall(id=f"c{self.n}-{k}", name="f") for k in range(calls))
        )
        self.n += 1
        self.step.complete(reply)
        self.staged.append(reply)

    @precondition(lambda self: self.step is not None and self.step.pending_calls)
    @rule()
    def answer(self) -> None:
        call_id = sorted(self.step.pending_calls)[0]
        result = ToolMessage(call_id, "ok")
        self.step.add_tool_result(result)
        self.staged.append(result)

    @precondition(lambda self: self.step is not None)
    @rule(fail=st.booleans())
    def finish(self, fail: bool) -> None:
        step, self.step = self.step, None
        whole = any(isinstance(m, AssistantMessage) for m in self.staged)
        whole = whole and not step.pending_calls
        if fail:
            step.__exit__(RuntimeError, RuntimeError("boom"), None)
        else:
            step.__exit__(None, None, None)
            if whole:
                self.model.extend(self.staged)

    @invariant()
    def history_matches_the_committed_steps(self) -> None:
        assert list(self.conv.messages) == self.model

    @invariant()
    def journal_reloads_to_the_same_history(self) -> None:
        records, report = read_journal(self.path)
        assert report.clean
        assert sum(len(r["messages"]) for r in records) == len(self.model)


TestConversationMachine = ConversationMachine.TestCase
TestConversationMachine.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
