"""The Redis coordinator's settings, validated once where they are written.

Timings derive from ``lease_ttl`` unless given, and must fit together: a
holder renews well before its lease expires even when one Redis command
takes as long as it is allowed to, and a process that lost Redis stays
cautious after rejoining long enough for every other process to have
rejoined too (see ``_fallback``).
"""

from __future__ import annotations

from typing import Any, final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from lmgate._errors import InvalidParameter
from lmgate._validate import check_float

__all__ = ["Settings", "redact"]

_SCHEMES = ("redis", "rediss", "unix")


@final
class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Resolved settings of one :class:`lmgate.coordination.Redis`.

    ``poll`` bounds how late a process notices what no notification told it
    (an expired holder, a lost message, a peer's breaker); ``op_timeout``
    is how long one Redis command may take before Redis counts as down;
    ``rejoin_delay`` is how long a process stays within its fallback share
    after (re)joining.
    """

    url: str
    lease_ttl: float = 10.0
    renew_every: float | None = None
    fallback_share: float | None = None
    key_prefix: str = "lmgate"
    poll: float | None = None
    op_timeout: float | None = None
    rejoin_delay: float | None = None
    aging: float = 10.0

    def __post_init__(self) -> None:
        _check_url(self.url)
        ttl = check_float("lease_ttl", self.lease_ttl, low=0.05, high=86_400.0)
        set_ = msgspec.structs.force_setattr
        set_(self, "lease_ttl", ttl)
        renew = self.renew_every if self.renew_every is not None else ttl / 3
        set_(
            self,
            "renew_every",
            check_float("renew_every", renew, low=0.0, low_open=True, high=ttl / 2),
        )
        poll = self.poll if self.poll is not None else min(0.25, ttl / 10)
        set_(self, "poll", check_float("poll", poll, low=0.001, high=ttl / 2))
        op = self.op_timeout if self.op_timeout is not None else min(1.0, ttl / 4)
        set_(self, "op_timeout", check_float("op_timeout", op, low=0.001, high=60.0))
        if renew + op >= ttl:
            raise InvalidParameter(
                f"renew_every + op_timeout ({renew + op:.3f}s) must be below lease_ttl ({ttl}s)"
                " so a holder renews before its lease expires",
                field="op_timeout",
            )
        rejoin = self.rejoin_delay if self.rejoin_delay is not None else 2 * (poll + op)
        set_(self, "rejoin_delay", check_float("rejoin_delay", rejoin, low=0.0, high=3600.0))
        if self.fallback_share is not None:
            set_(
                self,
                "fallback_share",
                check_float(
                    "fallback_share", self.fallback_share, low=0.0, low_open=True, high=1.0
                ),
            )
        _check_prefix(self.key_prefix)
        set_(self, "aging", check_float("aging", self.aging, low=0.0, high=86_400.0))

    # Resolved values, typed without the ``None`` of the inputs.
    @property
    def renew(self) -> float:
        assert self.renew_every is not None
        return self.renew_every

    @property
    def poll_s(self) -> float:
        assert self.poll is not None
        return self.poll

    @property
    def op_s(self) -> float:
        assert self.op_timeout is not None
        return self.op_timeout

    @property
    def rejoin_s(self) -> float:
        assert self.rejoin_delay is not None
        return self.rejoin_delay

    def __repr__(self) -> str:
        return (
            f"Settings(url={redact(self.url)!r}, lease_ttl={self.lease_ttl},"
            f" renew_every={self.renew_every}, fallback_share={self.fallback_share},"
            f" key_prefix={self.key_prefix!r}, poll={self.poll}, op_timeout={self.op_timeout},"
            f" rejoin_delay={self.rejoin_delay}, aging={self.aging})"
        )


def _check_url(url: Any) -> None:
    if not isinstance(url, str) or not url or len(url) > 4096 or "\x00" in url:
        raise InvalidParameter("url must be a non-empty redis:// URL without NUL", field="url")
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise InvalidParameter(
            f"url must start with redis://, rediss:// or unix://, got {redact(url)[:80]!r}",
            field="url",
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise InvalidParameter(f"url has no host: {redact(url)[:80]!r}", field="url")


def _check_prefix(prefix: Any) -> None:
    if not isinstance(prefix, str) or not prefix or len(prefix) > 128:
        raise InvalidParameter(
            "key_prefix must be a string of 1 to 128 characters", field="key_prefix"
        )
    if any(c in prefix for c in "\x00{}") or not prefix.isprintable():
        raise InvalidParameter(
            "key_prefix must be printable and hold no braces (they would break hash tags)",
            field="key_prefix",
        )


def redact(url: str) -> str:
    """The URL with any password (userinfo or query) replaced, safe to log."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user = parts.username or ""
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode(
                [(k, "***" if "pass" in k.lower() else v) for k, v in pairs], safe="*"
            )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparsable url>"
