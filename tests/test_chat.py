"""Chat message Structs: lossless conversion from and to OpenAI-shaped dicts."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgate._errors import InvalidParameter
from lmgate.context._messages import (
    AssistantMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
    UserMessage,
    message_spans,
    text_of,
    to_dict,
    to_message,
    to_messages,
)

_text = st.text(max_size=20)
_extra = st.dictionaries(
    st.sampled_from(["name", "refusal", "reasoning_content", "cache_control"]),
    st.one_of(st.none(), _text, st.integers()),
    max_size=2,
)
_parts = st.lists(
    st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": _text}),
        st.fixed_dictionaries(
            {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": _text})}
        ),
    ),
    max_size=3,
)
_content = st.one_of(_text, _parts)
_call = st.builds(
    lambda i, n, a, e: {"id": i, "type": "function", "function": {"name": n, "arguments": a}, **e},
    _text,
    _text,
    _text,
    st.dictionaries(st.just("index"), st.integers(0, 5), max_size=1),
)


def _with(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return {**extra, **base}


_message = st.one_of(
    st.builds(
        lambda c, e, r: _with({"role": r, "content": c}, e),
        _content,
        _extra,
        st.sampled_from(["system", "developer", "user"]),
    ),
    st.builds(
        lambda c, e, i: _with({"role": "tool", "content": c, "tool_call_id": i}, e),
        _content,
        _extra,
        _text,
    ),
    st.builds(
        lambda c, calls, e: _with(
            {
                "role": "assistant",
                **({} if c == "absent" else {"content": c}),
                **({} if calls is None else {"tool_calls": calls}),
            },
            e,
        ),
        st.one_of(st.just("absent"), st.none(), _content),
        st.one_of(st.none(), st.lists(_call, max_size=3)),
        _extra,
    ),
)


@settings(max_examples=200)
@given(_message)
def test_dict_round_trip_is_lossless(d: dict[str, Any]) -> None:
    """Any OpenAI-shaped message dict converts to a Struct and back unchanged."""
    assert to_dict(to_message(d)) == d


def test_roles_map_to_classes() -> None:
    """Each role becomes its own Struct with the fields lmgate reasons about."""
    msgs = to_messages(
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "a.txt"},
        ]
    )
    assert isinstance(msgs[0], SystemMessage)
    assert isinstance(msgs[1], UserMessage)
    assert msgs[2] == AssistantMessage(None, (ToolCall(id="c1", name="ls", arguments="{}"),))
    assert msgs[3] == ToolMessage("c1", "a.txt")
    assert text_of(msgs[2]) == "ls\n{}"


def test_structs_pass_through() -> None:
    """A Struct given where a dict is expected is used as is."""
    m = UserMessage("x")
    assert to_message(m) is m


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"role": "robot", "content": "x"}, "messages[0].role"),
        ({"content": "x"}, "messages[0].role"),
        ({"role": "user"}, "messages[0]"),
        ({"role": "user", "content": 5}, "messages[0].content"),
        ({"role": "tool", "content": "x"}, "messages[0].tool_call_id"),
        ({"role": "assistant", "tool_calls": "ls"}, "messages[0].tool_calls"),
        ({"role": "assistant", "tool_calls": [{"id": "1"}]}, "messages[0].tool_calls[0]"),
        ("user: hi", "messages[0]"),
    ],
)
def test_bad_messages_are_refused_with_their_index(value: Any, field: str) -> None:
    """A malformed message is refused, naming where it is in the list."""
    with pytest.raises(InvalidParameter) as info:
        to_messages([value])
    assert info.value.field == field


def test_a_string_is_not_a_message_list() -> None:
    """Passing one string where a list belongs is refused, not iterated."""
    with pytest.raises(InvalidParameter):
        to_messages("hello")  # type: ignore[arg-type]


def test_spans_keep_tool_calls_with_their_results() -> None:
    """An assistant's tool calls and the results after it form one unit."""
    call = AssistantMessage(None, (ToolCall(id="a", name="f"), ToolCall(id="b", name="g")))
    msgs = [
        SystemMessage("s"),
        UserMessage("u"),
        call,
        ToolMessage("a", "1"),
        ToolMessage("b", "2"),
        AssistantMessage("done"),
        ToolMessage("zz", "stray"),
    ]
    assert message_spans(msgs, 1) == [range(1, 2), range(2, 5), range(5, 7)]
