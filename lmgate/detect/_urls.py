"""Endpoint URLs, parsed strictly once: scheme, host, port, path, credentials.

A bad URL must fail where it was written, with ``InvalidParameter``, not as
an ``OverflowError`` inside a connection pool minutes later.  Credentials in
the URL (``http://user:password@host/v1``) are split off here: the URL that
is kept, shown and logged never holds them.
"""

from __future__ import annotations

from urllib.parse import SplitResult, unquote, urlsplit

from lmgate._errors import InvalidParameter

__all__ = ["EndpointUrl", "parse_endpoint_url"]

_FORBIDDEN = frozenset(" \t\r\n\x00\\")


class EndpointUrl:
    """A checked endpoint URL: ``url`` without credentials, and the credentials."""

    __slots__ = ("password", "url", "user")

    def __init__(self, url: str, user: str | None, password: str | None) -> None:
        self.url = url
        self.user = user
        self.password = password

    def __repr__(self) -> str:
        auth = " with credentials" if self.user is not None else ""
        return f"<EndpointUrl {self.url}{auth}>"


def _shown(url: str) -> str:
    """``url`` safe to put in an error message: credentials masked, cut short."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = "***@" + rest.split("@", 1)[1]
    return (scheme + sep + rest)[:80]


def parse_endpoint_url(url: str, field: str = "url") -> EndpointUrl:
    """Check ``url`` (``http(s)://host[:port][/path]``, ``unix:/path`` or ``http+unix://``)."""
    if any(c in _FORBIDDEN for c in url):
        raise InvalidParameter(
            f"{field} must not contain spaces, control characters or backslashes: {_shown(url)!r}",
            field=field,
        )
    if url.startswith("unix:"):
        path = url[len("unix:") :]
        if not path.startswith("/") or len(path) < 2:
            raise InvalidParameter(
                f"{field}: a unix socket URL is unix:/path/to/socket, got {_shown(url)!r}",
                field=field,
            )
        return EndpointUrl(url, None, None)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidParameter(f"{field}: {exc} in {_shown(url)!r}", field=field) from None
    if parts.scheme == "http+unix":
        if not parts.netloc:
            raise InvalidParameter(f"{field}: http+unix needs a socket path", field=field)
        return EndpointUrl(url, None, None)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParameter(
            f"{field} must be http(s)://host[:port][/path], got {_shown(url)!r}", field=field
        )
    if port is not None and not 0 < port < 65536:
        raise InvalidParameter(f"{field}: port {port} out of range", field=field)
    if parts.query or parts.fragment:
        raise InvalidParameter(f"{field} must not have a query or fragment", field=field)
    if parts.username is None and parts.password is None:
        return EndpointUrl(url, None, None)
    host = parts.netloc.rsplit("@", 1)[1]
    clean = SplitResult(parts.scheme, host, parts.path, "", "").geturl()
    return EndpointUrl(
        clean,
        unquote(parts.username or ""),
        unquote(parts.password) if parts.password is not None else None,
    )
