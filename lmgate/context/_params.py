"""Sampling parameters: one schema, documented coercions, hostile input refused.

Frameworks pass sampling parameters from everywhere -- user code, env vars,
config files, other frameworks' dicts -- and a bad one should fail here,
with the field's name, rather than as a 400 from a server three retries
later.  Validation never calls into the objects it inspects: types are
checked with ``type()`` (a proxy can lie to ``isinstance`` through
``__class__``), subclasses of str/int/float are copied through the base
type's own slot, and nothing is ``repr``'d, ``str``'d or compared.  Sizes
are checked before contents, so a megabyte string costs one ``len``.

Coercions, for values that arrive as text (env, config): ``"0.7"`` → 0.7,
``"42"`` → 42, integral floats such as ``40.0`` → 40 for integer fields,
``"true"/"false"/"1"/"0"/"yes"/"no"/"on"/"off"`` → bool for ``stream``, and a
single string → a one-element ``stop`` list.  Numbers are never bools and
bools never numbers.  ``max_completion_tokens`` is OpenAI's newer name for
``max_tokens``.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from typing import Any, Literal, final

import msgspec

from lmgate._errors import InvalidParameter

__all__ = ["LIMITS", "SamplingParams", "normalize_params"]

#: Size caps, checked before any other work.
LIMITS = {
    "keys": 64,  # keys in the parameter mapping
    "string": 64 * 1024,  # characters in any one string
    "total_chars": 1024 * 1024,  # characters across every string
    "values": 10_000,  # JSON values in tools, response_format and extras
    "depth": 32,  # nesting depth
    "stop": 16,  # stop sequences
    "tools": 128,
}
_FLOATS = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
_INTS = {"top_k": (0, 100_000), "max_tokens": (1, 2**31 - 1), "seed": (-(2**63), 2**64 - 1)}
_BOOLS = {"true": True, "1": True, "yes": True, "on": True}
_BOOLS |= {"false": False, "0": False, "no": False, "off": False}
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,3})?")
_INTEGER = re.compile(r"[+-]?\d{1,20}")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_FORMATS = ("text", "json_object", "json_schema")


@final
class SamplingParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Validated sampling parameters; ``None`` means "the server's default".

    ``extra`` carries keys lmgate has no field for (``min_p``,
    ``repeat_penalty``, ...) through to the server unchanged.
    """

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    stream: bool | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    tools: tuple[dict[str, Any], ...] | None = None
    response_format: dict[str, Any] | None = None
    extra: dict[str, Any] = {}

    def __post_init__(self) -> None:
        walk = _Walk()
        for name in _FIELDS:
            value = getattr(self, name)
            if value is not None:
                msgspec.structs.force_setattr(self, name, _field(name, value, walk, coerce=False))
        extra = _mapping(self.extra, "extra")
        clean = {}
        for key, value in extra.items():
            _key(key, "extra")
            if key in _FIELDS or key == "extra":
                raise InvalidParameter(f"extra.{key} shadows a field", field=f"extra.{key}")
            clean[key] = walk.json(value, f"extra.{key}", 0)
        msgspec.structs.force_setattr(self, "extra", clean)

    def to_dict(self) -> dict[str, Any]:
        """The parameters set, as a request body fragment (extras merged in)."""
        out: dict[str, Any] = {}
        for name in _FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if isinstance(value, tuple) else value
        out.update(self.extra)
        return out


_FIELDS = tuple(f for f in SamplingParams.__struct_fields__ if f != "extra")


def normalize_params(
    params: Mapping[str, Any] | SamplingParams, *, unknown: Literal["keep", "refuse"] = "keep"
) -> SamplingParams:
    """Validate and coerce ``params`` into :class:`SamplingParams`.

    Unknown keys go to ``extra`` (``unknown="keep"``) or are refused
    (``"refuse"``).  Raises InvalidParameter naming the offending field;
    the input is never modified.
    """
    if type(unknown) is not str or unknown not in ("keep", "refuse"):
        raise InvalidParameter("unknown must be 'keep' or 'refuse'", field="unknown")
    if type(params) is SamplingParams:
        return params
    items = _mapping(params, "params")
    walk = _Walk()
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in items.items():
        _key(key, "params")
        name = "max_tokens" if key == "max_completion_tokens" else key
        if name in _FIELDS:
            if value is None:
                continue
            v = _field(name, value, walk, coerce=True)
            if name in fields and fields[name] != v:
                raise InvalidParameter(
                    "max_tokens and max_completion_tokens disagree", field="max_tokens"
                )
            fields[name] = v
        elif unknown == "refuse":
            raise InvalidParameter(f"unknown parameter {key!r}", field=key)
        elif key == "extra":
            raise InvalidParameter("'extra' is reserved; pass server keys directly", field=key)
        else:
            extra[key] = walk.json(value, key, 0)
    return SamplingParams(**fields, extra=extra)


def _mapping(value: Any, where: str) -> dict[Any, Any]:
    """A plain dict copy of a mapping, capped in size, without trusting it."""
    t = type(value)
    if t is not dict and not issubclass(t, Mapping):
        raise InvalidParameter(f"{where} must be a mapping, got {_name(t)}", field=where)
    if t is dict:
        if len(value) > LIMITS["keys"]:
            raise InvalidParameter(f"{where} has more than {LIMITS['keys']} keys", field=where)
        return dict(value)
    try:
        pairs = list(itertools.islice(value.items(), LIMITS["keys"] + 1))
    except Exception:
        raise InvalidParameter(f"{where}: the mapping could not be read", field=where) from None
    if len(pairs) > LIMITS["keys"]:
        raise InvalidParameter(f"{where} has more than {LIMITS['keys']} keys", field=where)
    for k, _ in pairs:
        _key(k, where)  # before hashing them into a dict
    return dict(pairs)


def _key(key: Any, where: str) -> str:
    if type(key) is not str:
        raise InvalidParameter(
            f"{where}: keys must be strings, got {_name(type(key))}", field=where
        )
    if len(key) > 64 or not _KEY.fullmatch(key):
        shown = key[:64].replace("\x00", "\\0")
        raise InvalidParameter(f"{where}: bad parameter name {shown!r}", field=f"{where}[key]")
    return key


def _name(t: type) -> str:
    name = type.__getattribute__(t, "__name__")
    return name[:64] if type(name) is str else "object"


def _field(name: str, value: Any, walk: _Walk, *, coerce: bool) -> Any:
    if name in _FLOATS:
        low, high = _FLOATS[name]
        v = _number(name, value, coerce)
        if not low <= v <= high:
            raise InvalidParameter(f"{name} must be in [{low}, {high}], got {v}", field=name)
        return v
    if name in _INTS:
        low_i, high_i = _INTS[name]
        i = _integer(name, value, coerce)
        if not low_i <= i <= high_i:
            raise InvalidParameter(f"{name} must be in [{low_i}, {high_i}]", field=name)
        return i
    if name == "stream":
        if type(value) is bool:
            return value
        if coerce and type(value) is str and len(value) <= 8 and value.lower() in _BOOLS:
            return _BOOLS[value.lower()]
        raise InvalidParameter(f"stream must be a bool, got {_name(type(value))}", field=name)
    if name == "stop":
        if coerce and type(value) is str:
            value = [value]
        if type(value) not in (list, tuple):
            raise InvalidParameter("stop must be a list of strings", field=name)
        if len(value) > LIMITS["stop"]:
            raise InvalidParameter(f"stop has more than {LIMITS['stop']} entries", field=name)
        out = tuple(walk.string(s, f"stop[{i}]", cap=1024) for i, s in enumerate(value))
        if any(not s for s in out):
            raise InvalidParameter("stop sequences must not be empty", field=name)
        return out
    if name == "tools":
        if type(value) not in (list, tuple):
            raise InvalidParameter("tools must be a list of tool objects", field=name)
        if len(value) > LIMITS["tools"]:
            raise InvalidParameter(f"more than {LIMITS['tools']} tools", field=name)
        return tuple(_tool(walk.json(t, f"tools[{i}]", 1), i) for i, t in enumerate(value))
    fmt = walk.json(value, name, 0)  # response_format
    if type(fmt) is not dict or fmt.get("type") not in _FORMATS:
        raise InvalidParameter(f"response_format needs a type in {_FORMATS}", field=name)
    return fmt


def _number(name: str, value: Any, coerce: bool) -> float:
    t = type(value)
    if t is bool:
        raise InvalidParameter(f"{name} must be a number, got bool", field=name)
    if t is float or issubclass(t, float):
        v = float.__float__(value)
    elif t is int or issubclass(t, int):
        v = float(int.__index__(value)) if abs(int.__index__(value)) < 2**63 else math.inf
    elif coerce and t is str and len(value) <= 32 and _NUMBER.fullmatch(value):
        v = float(value)
    elif coerce and t is str:
        raise InvalidParameter(f"{name} must be a number; the string is not one", field=name)
    else:
        raise InvalidParameter(f"{name} must be a number, got {_name(t)}", field=name)
    if not math.isfinite(v):
        raise InvalidParameter(f"{name} must be finite", field=name)
    return v


def _integer(name: str, value: Any, coerce: bool) -> int:
    t = type(value)
    if t is bool:
        raise InvalidParameter(f"{name} must be an integer, got bool", field=name)
    if t is int or issubclass(t, int):
        return int.__index__(value)
    if t is float or issubclass(t, float):
        f = float.__float__(value)
        if math.isfinite(f) and f.is_integer() and abs(f) < 2**64:
            return int(f)
        raise InvalidParameter(f"{name} must be a finite whole number", field=name)
    if coerce and t is str and len(value) <= 21 and _INTEGER.fullmatch(value):
        return int(value)
    raise InvalidParameter(f"{name} must be an integer, got {_name(t)}", field=name)


def _tool(tool: Any, i: int) -> dict[str, Any]:
    where = f"tools[{i}]"
    if type(tool) is not dict or type(tool.get("type")) is not str:
        raise InvalidParameter(f"{where} must be an object with a type", field=where)
    if tool["type"] == "function":
        fn = tool.get("function")
        if type(fn) is not dict or type(fn.get("name")) is not str:
            raise InvalidParameter(f"{where}.function needs a name", field=f"{where}.function")
        if not _TOOL_NAME.fullmatch(fn["name"]):
            raise InvalidParameter(
                f"{where}.function.name must match [A-Za-z0-9_.-]{{1,64}}",
                field=f"{where}.function.name",
            )
    return tool


class _Walk:
    """Copies a JSON-like value into plain types, enforcing every cap."""

    __slots__ = ("chars", "open", "values")

    def __init__(self) -> None:
        self.open: set[int] = set()  # ids of the containers being walked
        self.values = LIMITS["values"]
        self.chars = LIMITS["total_chars"]

    def string(self, value: Any, where: str, cap: int = LIMITS["string"]) -> str:
        t = type(value)
        if t is not str and not issubclass(t, str):
            raise InvalidParameter(f"{where} must be a string, got {_name(t)}", field=where)
        s = str.__str__(value)
        if len(s) > cap:
            raise InvalidParameter(f"{where} is longer than {cap} characters", field=where)
        self.chars -= len(s)
        if self.chars < 0:
            raise InvalidParameter(
                f"{where}: more than {LIMITS['total_chars']} characters in all", field=where
            )
        if "\x00" in s:
            raise InvalidParameter(f"{where} contains a null byte", field=where)
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidParameter(f"{where} is not valid Unicode", field=where) from None
        return s

    def json(self, value: Any, where: str, depth: int) -> Any:
        self.values -= 1
        if self.values < 0:
            raise InvalidParameter(f"{where}: more than {LIMITS['values']} values", field=where)
        t = type(value)
        if value is None or t is bool:
            return value
        if t is int or (issubclass(t, int) and t is not bool):
            i = int.__index__(value)
            if i.bit_length() > 64:
                raise InvalidParameter(f"{where}: integer out of range", field=where)
            return i
        if t is float or issubclass(t, float):
            f = float.__float__(value)
            if not math.isfinite(f):
                raise InvalidParameter(f"{where} must be finite", field=where)
            return f
        if t is str or issubclass(t, str):
            return self.string(value, where)
        if t not in (list, tuple, dict):
            raise InvalidParameter(f"{where}: {_name(t)} is not a JSON value", field=where)
        if id(value) in self.open:
            raise InvalidParameter(f"{where}: circular reference", field=where)
        if depth >= LIMITS["depth"]:
            raise InvalidParameter(f"{where}: nested deeper than {LIMITS['depth']}", field=where)
        if len(value) > self.values:
            raise InvalidParameter(f"{where}: more than {LIMITS['values']} values", field=where)
        self.open.add(id(value))
        try:
            return self._container(value, where, depth)
        finally:
            self.open.discard(id(value))

    def _container(self, value: Any, where: str, depth: int) -> Any:
        if type(value) is dict:
            out: dict[str, Any] = {}
            for k, v in value.items():
                if type(k) is not str:
                    raise InvalidParameter(f"{where}: object keys must be strings", field=where)
                key = self.string(k, f"{where}[key]", cap=256)
                out[key] = self.json(v, f"{where}.{key[:64]}", depth + 1)
            return out
        return [self.json(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
