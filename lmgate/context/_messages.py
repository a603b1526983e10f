"""Chat messages in the shape OpenAI's chat API gives them, as frozen Structs.

Agent frameworks hand us OpenAI-shaped dicts; context strategies and
conversations need typed messages they can reason about (is this a tool
result, which call does it answer?).  The conversion is lossless: any key
lmgate has no field for is kept in ``extra`` and written back, and a key
that was absent stays absent, so ``to_dict(to_message(d)) == d``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeAlias, final

import msgspec
from msgspec import UNSET, UnsetType

from lmgate._errors import InvalidParameter

__all__ = [
    "AssistantMessage",
    "Content",
    "Message",
    "SystemMessage",
    "ToolCall",
    "ToolMessage",
    "UserMessage",
    "message_spans",
    "text_of",
    "to_dict",
    "to_dicts",
    "to_message",
    "to_messages",
]

#: A message body: plain text, or OpenAI content parts (``{"type": "text", ...}``).
Content: TypeAlias = str | tuple[dict[str, Any], ...]


@final
class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """One function call an assistant asked for; ``arguments`` is JSON text."""

    id: str
    name: str
    arguments: str = "{}"
    type: str = "function"
    extra: dict[str, Any] = {}
    function_extra: dict[str, Any] = {}


@final
class SystemMessage(msgspec.Struct, frozen=True):
    """Instructions; ``role`` is ``"developer"`` for OpenAI's newer name."""

    content: Content
    role: Literal["system", "developer"] = "system"
    extra: dict[str, Any] = {}


@final
class UserMessage(msgspec.Struct, frozen=True):
    """What the user (or the framework on their behalf) said."""

    content: Content
    extra: dict[str, Any] = {}
    role: ClassVar[str] = "user"


@final
class AssistantMessage(msgspec.Struct, frozen=True):
    """A model's reply; it may ask for tool calls whose results must follow."""

    content: Content | UnsetType | None = UNSET
    tool_calls: tuple[ToolCall, ...] = ()
    extra: dict[str, Any] = {}
    role: ClassVar[str] = "assistant"


@final
class ToolMessage(msgspec.Struct, frozen=True):
    """The result of the tool call ``tool_call_id``."""

    tool_call_id: str
    content: Content
    extra: dict[str, Any] = {}
    role: ClassVar[str] = "tool"


Message: TypeAlias = SystemMessage | UserMessage | AssistantMessage | ToolMessage
_MESSAGE_TYPES = (SystemMessage, UserMessage, AssistantMessage, ToolMessage)


def to_message(obj: Message | Mapping[str, Any], *, where: str = "message") -> Message:
    """A message Struct from an OpenAI-shaped dict (Structs pass through)."""
    if isinstance(obj, _MESSAGE_TYPES):
        return obj
    if not isinstance(obj, Mapping):
        raise InvalidParameter(
            f"{where} must be a dict or a message, got {type(obj).__name__}", field=where
        )
    d = dict(obj)
    role = d.pop("role", None)
    if role in ("system", "developer", "user", "tool"):
        if "content" not in d:
            raise InvalidParameter(f"{where}: a {role} message needs content", field=where)
        content = _content(d.pop("content"), where, allow_none=False)
        assert content is not None
        if role == "user":
            return UserMessage(content, extra=d)
        if role == "tool":
            call_id = d.pop("tool_call_id", None)
            if not isinstance(call_id, str):
                raise InvalidParameter(
                    f"{where}: tool_call_id must be a string", field=f"{where}.tool_call_id"
                )
            return ToolMessage(call_id, content, extra=d)
        return SystemMessage(
            content, role="developer" if role == "developer" else "system", extra=d
        )
    if role == "assistant":
        content_a: Content | UnsetType | None = UNSET
        if "content" in d:
            content_a = _content(d.pop("content"), where, allow_none=True)
        calls: tuple[ToolCall, ...] = ()
        if d.get("tool_calls") is not None:
            raw = d.pop("tool_calls")
            if not isinstance(raw, list | tuple):
                raise InvalidParameter(
                    f"{where}: tool_calls must be a list", field=f"{where}.tool_calls"
                )
            calls = tuple(_tool_call(c, f"{where}.tool_calls[{i}]") for i, c in enumerate(raw))
            if not calls:
                d["tool_calls"] = []  # an explicit empty list stays explicit
        return AssistantMessage(content_a, calls, extra=d)
    raise InvalidParameter(
        f"{where}: role must be system, developer, user, assistant or tool, got {role!r}"[:200],
        field=f"{where}.role",
    )


def _content(value: Any, where: str, *, allow_none: bool) -> Content | None:
    if isinstance(value, str):
        return value
    if value is None and allow_none:
        return None
    if isinstance(value, list | tuple) and all(isinstance(p, Mapping) for p in value):
        return tuple(dict(p) for p in value)
    raise InvalidParameter(
        f"{where}: content must be a string or a list of content parts", field=f"{where}.content"
    )


def _tool_call(value: Any, where: str) -> ToolCall:
    if not isinstance(value, Mapping):
        raise InvalidParameter(f"{where} must be a dict", field=where)
    d = dict(value)
    fn = d.pop("function", None)
    call_id, kind = d.pop("id", None), d.pop("type", "function")
    if not isinstance(fn, Mapping) or not isinstance(call_id, str) or not isinstance(kind, str):
        raise InvalidParameter(f"{where} needs id, type and a function object", field=where)
    f = dict(fn)
    name, args = f.pop("name", None), f.pop("arguments", "{}")
    if not isinstance(name, str) or not isinstance(args, str):
        raise InvalidParameter(f"{where}: function name and arguments must be strings", field=where)
    return ToolCall(id=call_id, name=name, arguments=args, type=kind, extra=d, function_extra=f)


def to_messages(items: Iterable[Message | Mapping[str, Any]]) -> tuple[Message, ...]:
    """Convert a whole message list, naming the index of any bad entry."""
    if isinstance(items, str | bytes | Mapping):
        raise InvalidParameter("messages must be a list of messages", field="messages")
    return tuple(to_message(m, where=f"messages[{i}]") for i, m in enumerate(items))


def to_dict(message: Message) -> dict[str, Any]:
    """The OpenAI-shaped dict for ``message``, extras included."""
    out: dict[str, Any] = {"role": message.role}
    match message:
        case AssistantMessage(content=content, tool_calls=calls):
            if content is not UNSET:
                out["content"] = list(content) if isinstance(content, tuple) else content
            if calls:
                out["tool_calls"] = [_call_dict(c) for c in calls]
        case ToolMessage(tool_call_id=call_id, content=content):
            out["tool_call_id"] = call_id
            out["content"] = list(content) if isinstance(content, tuple) else content
        case _:
            c = message.content
            out["content"] = list(c) if isinstance(c, tuple) else c
    out.update(message.extra)
    return out


def _call_dict(call: ToolCall) -> dict[str, Any]:
    fn = {"name": call.name, "arguments": call.arguments, **call.function_extra}
    return {"id": call.id, "type": call.type, "function": fn, **call.extra}


def to_dicts(messages: Iterable[Message]) -> list[dict[str, Any]]:
    return [to_dict(m) for m in messages]


def text_of(message: Message) -> str:
    """The text a tokenizer would see for ``message`` (content and tool calls)."""
    parts: list[str] = []
    content = message.content
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, tuple):
        parts.extend(p["text"] for p in content if isinstance(p.get("text"), str))
    if isinstance(message, AssistantMessage):
        for call in message.tool_calls:
            parts.append(call.name)
            parts.append(call.arguments)
    return "\n".join(parts)


def message_spans(messages: Sequence[Message], start: int = 0) -> list[range]:
    """Split ``messages[start:]`` into units that must stay or go together.

    An assistant message that asked for tool calls and the tool results right
    after it form one unit: a result without its call (or the reverse) is
    refused by most servers and confuses every model.  Other messages are
    units of one.  A stray tool result joins the unit before it.
    """
    spans: list[range] = []
    i, n = start, len(messages)
    while i < n:
        j = i + 1
        m = messages[i]
        if (isinstance(m, AssistantMessage) and m.tool_calls) or isinstance(m, ToolMessage):
            while j < n and isinstance(messages[j], ToolMessage):
                j += 1
        if isinstance(m, ToolMessage) and spans:
            prev = spans.pop()
            spans.append(range(prev.start, j))
        else:
            spans.append(range(i, j))
        i = j
    return spans
