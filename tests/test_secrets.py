"""Secrets: resolution from env or callable, and no way for the value to leak."""

from __future__ import annotations

import copy
import io
import json
import logging
import pickle
import traceback
from urllib.parse import quote

import msgspec
import pytest

from lmgate._endpoint import Endpoint
from lmgate._errors import InvalidParameter
from lmgate.security._secrets import (
    MASK,
    RedactingFilter,
    Secret,
    SecretStr,
    redact,
    resolve_api_key,
)

KEY = "sk-test-PLANTED/key+0123456789abcdef"


def _everything(exc: BaseException) -> str:
    """An exception's full printable form: message, repr, traceback and chain."""
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    seen = exc.__context__
    while seen is not None:
        parts.append(repr(seen))
        seen = seen.__context__
    return "\n".join(parts)


def test_secret_str_never_shows_its_value() -> None:
    """repr, str, format, %-format and f-strings all show the mask."""
    s = SecretStr(KEY)
    percent = "%s %r" % (s, s)  # noqa: UP031 - the old style must be masked too
    shown = [repr(s), str(s), f"{s}", f"{s!r}", f"{s:>40}", percent, repr([s])]
    assert all(KEY not in text for text in shown)
    assert str(s) == MASK
    assert s.get_secret_value() == KEY


def test_secret_str_refuses_serialisation_and_copies_safely() -> None:
    """pickle is refused; json and msgspec fail without echoing; copies are the same object."""
    s = SecretStr(KEY)
    with pytest.raises(TypeError) as info:
        pickle.dumps(s)
    assert KEY not in _everything(info.value)
    with pytest.raises(TypeError) as info:
        json.dumps({"k": s})
    assert KEY not in _everything(info.value)
    with pytest.raises(TypeError) as info:
        msgspec.json.encode({"k": s})
    assert KEY not in _everything(info.value)
    assert copy.copy(s) is s
    assert copy.deepcopy({"k": s})["k"] is s
    assert not hasattr(s, "__dict__")


def test_secret_str_equality() -> None:
    """Equal values compare and hash equal; a secret never equals a plain str."""
    assert SecretStr(KEY) == SecretStr(KEY)
    assert SecretStr(KEY) != SecretStr(KEY + "x")
    assert hash(SecretStr(KEY)) == hash(SecretStr(KEY))
    assert SecretStr(KEY) != KEY


@pytest.mark.parametrize("value", ["", KEY + "\n", "a\r\nX-Injected: 1", "nul\x00", 42, None])
def test_bad_secret_values_are_refused_without_echo(value: object) -> None:
    """Empty, non-str and header-splitting values are refused; the message omits them."""
    with pytest.raises(InvalidParameter) as info:
        SecretStr(value)  # type: ignore[arg-type]
    if isinstance(value, str) and value:
        assert value.strip() not in _everything(info.value)


def test_resolution_from_an_environment_variable() -> None:
    """An env var name resolves to its value; a missing one names the variable only."""
    secret = Secret.from_env("LMGATE_TEST_KEY")
    assert secret.resolve({"LMGATE_TEST_KEY": KEY}).get_secret_value() == KEY
    with pytest.raises(InvalidParameter) as info:
        secret.resolve({})
    assert "LMGATE_TEST_KEY" in str(info.value)
    assert info.value.field == "api_key_env"
    with pytest.raises(InvalidParameter):
        secret.resolve({"LMGATE_TEST_KEY": ""})
    assert repr(secret) == "Secret(env='LMGATE_TEST_KEY')"


def test_resolution_from_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a mapping, os.environ is read at resolve time (a rotated key is seen)."""
    secret = Secret.from_env("LMGATE_TEST_KEY")
    monkeypatch.setenv("LMGATE_TEST_KEY", KEY)
    assert secret.resolve().get_secret_value() == KEY
    monkeypatch.setenv("LMGATE_TEST_KEY", KEY + "2")
    assert secret.resolve().get_secret_value() == KEY + "2"


def test_resolution_from_a_callable() -> None:
    """A callable may return a str or a SecretStr; its failure keeps only the type."""

    def vault() -> str:
        return KEY

    assert Secret.from_callable(vault).resolve().get_secret_value() == KEY
    assert Secret.from_callable(lambda: SecretStr(KEY)).resolve() == SecretStr(KEY)
    assert "vault" in repr(Secret.from_callable(vault))

    def leaky() -> str:
        raise RuntimeError(f"token {KEY} expired")

    with pytest.raises(InvalidParameter) as info:
        Secret.from_callable(leaky).resolve()
    assert "RuntimeError" in str(info.value)
    assert info.value.__context__ is None
    assert info.value.__cause__ is None
    assert KEY not in _everything(info.value)

    with pytest.raises(InvalidParameter) as info:
        Secret.from_callable(lambda: KEY + "\r\n").resolve()
    assert KEY not in _everything(info.value)
    with pytest.raises(InvalidParameter):
        Secret.from_callable(lambda: 12345).resolve()


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"env": "A", "factory": str}, {"env": ""}, {"env": "A=B"}, {"factory": "not callable"}],
)
def test_a_secret_needs_exactly_one_valid_source(kwargs: dict[str, object]) -> None:
    """Exactly one of env= (a variable name) or factory= (a callable)."""
    with pytest.raises(InvalidParameter):
        Secret(**kwargs)  # type: ignore[arg-type]


def test_endpoint_keys_resolve_and_never_show() -> None:
    """An Endpoint's key comes from its env var or callable; its repr stays clean."""
    ep = Endpoint("cloud", url="https://api.example.com/v1", api_key_env="LMGATE_TEST_KEY")
    key = resolve_api_key(ep, {"LMGATE_TEST_KEY": KEY})
    assert key is not None
    assert key.get_secret_value() == KEY
    ep2 = Endpoint("cloud2", url="https://api.example.com/v1", api_key=lambda: KEY)
    key2 = resolve_api_key(ep2, {})
    assert key2 is not None
    assert key2.get_secret_value() == KEY
    assert resolve_api_key(Endpoint("local", url="http://127.0.0.1:8080"), {}) is None
    for shown in (repr(ep), repr(ep2), str(ep2), repr(key), repr(key2)):
        assert KEY not in shown


def test_redact_masks_plain_and_url_encoded_forms() -> None:
    """Known values are masked as written and as percent-encoded in a URL."""
    text = f"GET /v1?key={quote(KEY, safe='')} Authorization: Bearer {KEY}"
    out = redact(text, [SecretStr(KEY), "", "other-secret"])
    assert KEY not in out
    assert quote(KEY, safe="") not in out
    assert out.count(MASK) == 2
    assert redact("nothing here", [SecretStr(KEY)]) == "nothing here"


def test_redacting_filter_scrubs_messages_args_and_tracebacks() -> None:
    """A handler with the filter never prints the key, even in a traceback."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter([SecretStr(KEY)]))
    logger = logging.getLogger("lmgate.test_secrets")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("upstream said: %s", f"invalid key {KEY}")
        try:
            raise ValueError(f"bad header Bearer {KEY}")
        except ValueError:
            logger.exception("call failed")
        logger.warning("broken %s %s", KEY)  # wrong arg count must not print the args
        logger.warning("stack", stack_info=True, extra={"k": KEY})
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    out = stream.getvalue()
    assert KEY not in out
    assert "invalid key " + MASK in out
    assert "ValueError: bad header Bearer " + MASK in out
    assert "could not be formatted" in out


def test_redacting_filter_is_bounded() -> None:
    """It forgets the oldest values beyond max_secrets."""
    f = RedactingFilter(max_secrets=2)
    for i in range(5):
        f.add(SecretStr(f"{KEY}-{i}"))
    assert repr(f) == "<RedactingFilter secrets=2>"
    with pytest.raises(InvalidParameter):
        f.add(KEY)  # type: ignore[arg-type]
