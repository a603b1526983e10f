"""API keys: where they come from, and how they are kept out of every output.

A key is never part of lmgate's configuration.  Configuration names *where*
to get it -- an environment variable or a callable (a vault client, a token
refresher) -- and the key is resolved only when a request needs it, into a
:class:`SecretStr` whose ``repr``, ``str``, format, pickle and copy never
show the value.  :func:`redact` and :class:`RedactingFilter` are the second
line: they scrub known values from text and log records in case one slipped
into an upstream error message.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, NoReturn, final
from urllib.parse import quote

from lmgate._errors import InvalidParameter

__all__ = [
    "MASK",
    "RedactingFilter",
    "Secret",
    "SecretStr",
    "guard_http_logs",
    "redact",
    "resolve_api_key",
    "scrub_userinfo",
]

MASK: Final = "**********"
_MAX_LEN = 16 * 1024
_FORBIDDEN = frozenset("\r\n\x00")


@final
class SecretStr:
    """A string that shows as ``**********`` everywhere except :meth:`get_secret_value`.

    Pickling is refused (a pickle ends up in caches and crash dumps); copies
    are the same object.  Equality is constant-time.
    """

    __slots__ = ("__value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise InvalidParameter(
                f"a secret must be a str, got {type(value).__name__}", field="secret"
            )
        if not value or len(value) > _MAX_LEN:
            raise InvalidParameter(
                f"a secret must be 1..{_MAX_LEN} characters long", field="secret"
            )
        if any(ch in _FORBIDDEN for ch in value):
            # A newline in a header value is request smuggling, not a key.
            raise InvalidParameter(
                "a secret must not contain CR, LF or NUL characters", field="secret"
            )
        self.__value = value

    def get_secret_value(self) -> str:
        """The value itself; use it only where it is sent, never where it is shown."""
        return self.__value

    def __repr__(self) -> str:
        return f"SecretStr('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return format(MASK, spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretStr):
            return NotImplemented
        return hmac.compare_digest(self.__value.encode(), other.__value.encode())

    def __hash__(self) -> int:
        return hash((SecretStr, self.__value))

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("SecretStr cannot be pickled")

    def __copy__(self) -> SecretStr:
        return self

    def __deepcopy__(self, memo: Any) -> SecretStr:
        return self


@final
class Secret:
    """Where a secret comes from: an environment variable name or a callable.

    Safe to log: its ``repr`` names the source, never the value.  The value
    is looked up on every :meth:`resolve` so a rotated key or a refreshed
    token is picked up; cache the result yourself if the callable is slow.
    """

    __slots__ = ("_env", "_factory")

    def __init__(self, *, env: str | None = None, factory: Callable[[], Any] | None = None):
        if (env is None) == (factory is None):
            raise InvalidParameter("give exactly one of env= or factory=", field="secret")
        if env is not None and (
            not isinstance(env, str) or not env or "=" in env or "\x00" in env or len(env) > 256
        ):
            raise InvalidParameter("env must be an environment variable name", field="env")
        if factory is not None and not callable(factory):
            raise InvalidParameter("factory must be callable", field="factory")
        self._env = env
        self._factory = factory

    @classmethod
    def from_env(cls, name: str) -> Secret:
        return cls(env=name)

    @classmethod
    def from_callable(cls, factory: Callable[[], Any]) -> Secret:
        return cls(factory=factory)

    def resolve(self, environ: Mapping[str, str] | None = None) -> SecretStr:
        """The current value; raises :class:`InvalidParameter` without echoing it."""
        if self._env is not None:
            value = (os.environ if environ is None else environ).get(self._env)
            if not value:
                raise InvalidParameter(
                    f"environment variable {self._env!r} is not set or empty", field="api_key_env"
                )
            return _wrap(value, "api_key_env")
        assert self._factory is not None
        failed: str | None = None
        try:
            value = self._factory()
        except Exception as exc:
            failed = type(exc).__name__
        if failed is not None:
            # Raised outside the handler on purpose: the callable's own error
            # may quote the key or a token, so it must not ride along as the
            # new error's __context__ either.
            raise InvalidParameter(f"the api_key callable failed with {failed}", field="api_key")
        if isinstance(value, SecretStr):
            return value
        return _wrap(value, "api_key")

    def __repr__(self) -> str:
        if self._env is not None:
            return f"Secret(env={self._env!r})"
        name = getattr(self._factory, "__qualname__", type(self._factory).__name__)
        return f"Secret(factory=<{name}>)"


def _wrap(value: Any, field: str) -> SecretStr:
    try:
        return SecretStr(value)
    except InvalidParameter as exc:
        message = str(exc)  # SecretStr's messages never include the value
    raise InvalidParameter(message, field=field)


def resolve_api_key(endpoint: Any, environ: Mapping[str, str] | None = None) -> SecretStr | None:
    """The key an :class:`lmgate.Endpoint` is configured with, or None if it has none.

    ``api_key`` (a callable) wins over ``api_key_env`` when both are set.
    """
    factory = getattr(endpoint, "api_key", None)
    if factory is not None:
        return Secret(factory=factory).resolve(environ)
    env = getattr(endpoint, "api_key_env", None)
    if env is not None:
        return Secret(env=env).resolve(environ)
    return None


def _variants(secret: SecretStr | str) -> set[str]:
    value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    if not isinstance(value, str) or not value:
        return set()
    return {value, quote(value, safe=""), quote(value, safe="/")}


_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@?#]+@")


def scrub_userinfo(text: str) -> str:
    """``text`` with the ``user:password@`` part of every URL in it masked."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text) if "@" in text else text


def redact(text: str, secrets: Iterable[SecretStr | str]) -> str:
    """``text`` with every known secret (and its URL-encoded form) masked,
    and the credentials part of any URL in it."""
    text = scrub_userinfo(text)
    values: set[str] = set()
    for s in secrets:
        values |= _variants(s)
    for value in sorted(values, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return text


@final
class RedactingFilter(logging.Filter):
    """Scrubs known secrets from log records: message, exception and stack text.

    Put it on your handlers as a last line of defence; lmgate itself never
    logs a key.  It keeps at most ``max_secrets`` values, forgetting the
    oldest (a rotated-out key) first.
    """

    def __init__(self, secrets: Iterable[SecretStr] = (), *, max_secrets: int = 64) -> None:
        super().__init__()
        self._max = max_secrets
        self._secrets: OrderedDict[SecretStr, None] = OrderedDict()
        for s in secrets:
            self.add(s)

    def add(self, secret: SecretStr) -> None:
        if not isinstance(secret, SecretStr):
            raise InvalidParameter("add() takes a SecretStr", field="secret")
        self._secrets[secret] = None
        self._secrets.move_to_end(secret)
        while len(self._secrets) > self._max:
            self._secrets.popitem(last=False)

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = list(self._secrets)
        try:
            message = record.getMessage()
        except Exception:
            # logging would print the raw arguments to stderr: never let it.
            message = "<log message could not be formatted; arguments dropped>"
        record.msg = redact(message, secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, secrets)
        return True

    def __repr__(self) -> str:
        return f"<RedactingFilter secrets={len(self._secrets)}>"


#: The HTTP client's loggers; a filter on a logger sees only the records
#: logged on that very logger, so each is named.
_HTTP_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
)
_HTTP_FILTER: RedactingFilter | None = None


def guard_http_logs(secret: SecretStr | None = None) -> None:
    """Scrub URL credentials (and ``secret``) from httpx's and httpcore's log records.

    httpx logs every request's URL at INFO, userinfo included, before any
    handler of the user's could filter it.  Called when an endpoint or a
    probe is given credentials; installs one filter, once.
    """
    global _HTTP_FILTER
    if _HTTP_FILTER is None:
        _HTTP_FILTER = RedactingFilter()
        for name in _HTTP_LOGGERS:
            logging.getLogger(name).addFilter(_HTTP_FILTER)
    if secret is not None:
        _HTTP_FILTER.add(secret)
