"""normalize_params: documented coercions, bounds, and every dangerous input refused."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgate._errors import InvalidParameter
from lmgate.context._params import LIMITS, SamplingParams, normalize_params


class Boom(Exception):
    """Raised by hostile objects; must never escape normalize_params."""


class Hostile:
    """Raises from every dunder validation might be tempted to call."""

    def __str__(self) -> str:
        raise Boom("str")

    def __repr__(self) -> str:
        raise Boom("repr")

    def __eq__(self, other: object) -> bool:
        raise Boom("eq")

    def __hash__(self) -> int:
        return 1

    def __float__(self) -> float:
        raise Boom("float")

    def __index__(self) -> int:
        raise Boom("index")


class HostileStr(str):
    """A str subclass whose methods raise: its characters are still usable."""

    def __str__(self) -> str:
        raise Boom("str")

    def __eq__(self, other: object) -> bool:
        raise Boom("eq")

    __hash__ = str.__hash__


class HostileFloat(float):
    def __float__(self) -> float:
        raise Boom("float")


class Proxy:
    """Answers every attribute, even ``__class__``, claiming to be a dict."""

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: Proxy()

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return dict


class BadMapping(Mapping[str, Any]):
    """A Mapping whose iteration blows up."""

    def __getitem__(self, key: str) -> Any:
        raise Boom("getitem")

    def __iter__(self) -> Iterator[str]:
        raise Boom("iter")

    def __len__(self) -> int:
        return 1


def _circular_list() -> list[Any]:
    x: list[Any] = []
    x.append(x)
    return x


def _circular_dict() -> dict[str, Any]:
    d: dict[str, Any] = {}
    d["self"] = d
    return d


def _nested(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


MB = "x" * (1024 * 1024)

#: dangerous input -> the field named in the InvalidParameter it must raise.
DANGEROUS: list[tuple[str, Any, str]] = [
    ("null byte in a stop string", {"stop": ["a\x00b"]}, "stop[0]"),
    ("null byte in an extra string", {"grammar": "root\x00"}, "grammar"),
    ("null byte in a key", {"temp\x00": 1}, "params[key]"),
    ("megabyte stop string", {"stop": MB}, "stop[0]"),
    ("megabyte extra string", {"grammar": MB}, "grammar"),
    ("megabyte numeric string", {"temperature": "1" * 1_000_000}, "temperature"),
    ("megabyte key", {MB: 1}, "params[key]"),
    ("too many keys", {f"k{i}": i for i in range(10_000)}, "params"),
    ("object whose __str__/__eq__ raise, as a value", {"temperature": Hostile()}, "temperature"),
    ("hostile object in extras", {"grammar": Hostile()}, "grammar"),
    ("hostile object as a key", {Hostile(): 1}, "params"),
    ("str subclass whose __eq__ raises, in stop", {"stop": [HostileStr("\x00")]}, "stop[0]"),
    ("str subclass whose __eq__ raises, as stream", {"stream": HostileStr("true")}, "stream"),
    ("float subclass whose __float__ raises, NaN", {"top_p": HostileFloat("nan")}, "top_p"),
    ("circular list", {"logit_bias": _circular_list()}, "logit_bias[0]"),
    ("circular dict", {"metadata": _circular_dict()}, "metadata.self"),
    ("circular tool", {"tools": [_circular_dict()]}, "tools[0].self"),
    ("proxy answering every attribute, as params", Proxy(), "params"),
    ("proxy as a value", {"temperature": Proxy()}, "temperature"),
    ("proxy in extras", {"grammar": Proxy()}, "grammar"),
    ("mapping whose iteration raises", BadMapping(), "params"),
    ("NaN temperature", {"temperature": math.nan}, "temperature"),
    ("+inf top_p", {"top_p": math.inf}, "top_p"),
    ("-inf penalty", {"presence_penalty": -math.inf}, "presence_penalty"),
    ("'nan' string", {"temperature": "nan"}, "temperature"),
    ("'inf' string", {"temperature": "inf"}, "temperature"),
    ("1e999 string (overflows to inf)", {"temperature": "1e999"}, "temperature"),
    ("NaN inside extras", {"mirostat_tau": [1.0, math.nan]}, "mirostat_tau[1]"),
    ("inf max_tokens", {"max_tokens": math.inf}, "max_tokens"),
    ("bool as temperature", {"temperature": True}, "temperature"),
    ("bool as max_tokens", {"max_tokens": False}, "max_tokens"),
    ("bool as seed", {"seed": True}, "seed"),
    ("int as stream", {"stream": 1}, "stream"),
    ("float as stream", {"stream": 0.0}, "stream"),
    ("number as stop", {"stop": 5}, "stop"),
    ("fractional top_k", {"top_k": 40.5}, "top_k"),
    ("temperature out of range", {"temperature": 2.5}, "temperature"),
    ("max_tokens zero", {"max_tokens": 0}, "max_tokens"),
    ("huge int", {"seed": 2**200}, "seed"),
    ("huge int in extras", {"n_keep": 2**200}, "n_keep"),
    ("empty stop string", {"stop": [""]}, "stop"),
    ("too many stop strings", {"stop": ["a"] * 17}, "stop"),
    ("bytes as stop", {"stop": b"x"}, "stop"),
    ("set in extras", {"grammar": {1, 2}}, "grammar"),
    ("non-string key in extras", {"metadata": {1: 2}}, "metadata"),
    ("lone surrogate", {"stop": ["\ud800"]}, "stop[0]"),
    ("deeply nested JSON", {"metadata": _nested(10_000)}, "metadata" + "[0]" * 32),
    ("too many values", {"logit_bias": list(range(20_000))}, "logit_bias"),
    ("tool without a type", {"tools": [{"function": {"name": "f"}}]}, "tools[0]"),
    (
        "tool with a bad name",
        {"tools": [{"type": "function", "function": {"name": "a b"}}]},
        "tools[0].function.name",
    ),
    ("response_format of unknown type", {"response_format": {"type": "yaml"}}, "response_format"),
    ("max_tokens aliases disagree", {"max_tokens": 5, "max_completion_tokens": 6}, "max_tokens"),
    ("'extra' as a key", {"extra": {}}, "extra"),
    ("not a mapping", [("temperature", 1)], "params"),
]


@pytest.mark.parametrize(
    ("value", "field"), [(v, f) for _, v, f in DANGEROUS], ids=[name for name, _, _ in DANGEROUS]
)
def test_dangerous_input_is_refused(value: Any, field: str) -> None:
    """Each dangerous input raises InvalidParameter naming the field, nothing else."""
    before = _snapshot(value)
    with pytest.raises(InvalidParameter) as info:
        normalize_params(value)
    assert info.value.field == field
    assert _snapshot(value) == before, "the input was modified"


def _snapshot(value: Any) -> Any:
    """Identity and size of everything one level down: enough to see a mutation."""
    if type(value) is not dict:
        return None
    return [(id(k), id(v), len(v) if type(v) in (list, dict) else None) for k, v in value.items()]


def test_unknown_keys_can_be_refused() -> None:
    """unknown="refuse" turns a server-specific key into an error naming it."""
    assert normalize_params({"min_p": 0.1}).extra == {"min_p": 0.1}
    with pytest.raises(InvalidParameter) as info:
        normalize_params({"min_p": 0.1}, unknown="refuse")
    assert info.value.field == "min_p"


def test_documented_coercions() -> None:
    """Strings from env or config become numbers and bools; one stop string a list."""
    p = normalize_params(
        {
            "temperature": "0.7",
            "top_k": "40",
            "max_tokens": 100.0,
            "stream": "Yes",
            "stop": "END",
            "seed": "-3",
            "max_completion_tokens": 100,
        }
    )
    assert p == SamplingParams(
        temperature=0.7, top_k=40, max_tokens=100, stream=True, stop=("END",), seed=-3
    )
    assert p.to_dict() == {
        "temperature": 0.7,
        "top_k": 40,
        "max_tokens": 100,
        "stream": True,
        "stop": ["END"],
        "seed": -3,
    }


def test_construction_is_strict() -> None:
    """SamplingParams itself validates but does not coerce strings."""
    with pytest.raises(InvalidParameter):
        SamplingParams(temperature="0.7")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        SamplingParams(extra={"temperature": 1})


def test_numpy_style_subclasses_are_accepted_as_plain_values() -> None:
    """Subclasses of float and int are copied into plain values."""

    class F(float):
        pass

    p = normalize_params({"temperature": F(0.5), "grammar": F(1.5)})
    assert type(p.temperature) is float
    assert type(p.extra["grammar"]) is float


# -- fuzz ---------------------------------------------------------------------------


class ShownHostile(Hostile):
    """Hostile, but printable, so hypothesis can report a failing example."""

    def __repr__(self) -> str:
        return "ShownHostile()"


_weird = st.sampled_from(
    [
        ShownHostile(),
        Proxy(),
        HostileStr("x"),
        HostileFloat(1.0),
        b"x",
        {1},
        math.nan,
        math.inf,
        object(),
    ]
)
_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30), _weird
)
_json = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_keys = st.one_of(
    st.sampled_from(
        [
            "temperature",
            "top_p",
            "top_k",
            "max_tokens",
            "stop",
            "seed",
            "stream",
            "presence_penalty",
            "frequency_penalty",
            "tools",
            "response_format",
            "max_completion_tokens",
            "min_p",
            "extra",
        ]
    ),
    st.text(max_size=10),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _json, max_size=6), st.sampled_from(["keep", "refuse"]))
def test_fuzz_never_crashes_and_never_passes_invalid(params: dict[str, Any], unknown: Any) -> None:
    """Any input either normalizes to valid params or raises InvalidParameter."""
    refused: InvalidParameter | None = None
    try:
        p = normalize_params(params, unknown=unknown)
    except InvalidParameter as exc:
        refused = exc
    if refused is not None:
        assert refused.field
        return
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        v = getattr(p, name)
        assert v is None or (type(v) is float and math.isfinite(v))
    for name in ("top_k", "max_tokens", "seed"):
        assert getattr(p, name) is None or type(getattr(p, name)) is int
    assert p.stream is None or type(p.stream) is bool
    assert normalize_params(p.to_dict()) == p  # output is itself valid input
    if unknown == "refuse":
        assert p.extra == {}
    assert all(len(s) <= LIMITS["string"] for s in p.stop or ())
