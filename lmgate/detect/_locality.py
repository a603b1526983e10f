"""Where a URL points, decided from the URL alone.

Guessing locality from substrings (``localhost``, ``:8080``, ``llama``) is
the habit this library exists to end, so this module parses the host the
way an HTTP client would -- userinfo stripped, brackets around IPv6,
percent-encoding undone, trailing dots and case folded -- and classifies
the resulting address or name.  No DNS lookup happens here: a name that is
neither an IP literal nor a reserved or cluster-internal name is ``PUBLIC``
until a probe says otherwise.  Locality is one input to the decision of
whether a server is a self-hosted model server; a fingerprint outranks it.
"""

from __future__ import annotations

import enum
import ipaddress
from typing import final
from urllib.parse import unquote, urlsplit

import msgspec

__all__ = ["Locality", "UrlLocality", "classify_url", "locality"]

_MAX_URL = 4096

#: Suffixes of names that only resolve inside a host, a LAN or a cluster.
_PRIVATE_SUFFIXES = (
    ".local",
    ".internal",
    ".lan",
    ".home.arpa",
    ".intranet",
    ".corp",
    ".private",
    ".cluster.local",
    ".svc",
    ".consul",
)

#: Networks that are not publicly routable.  ``is_private`` alone would
#: also call documentation and benchmark ranges private; this list is the
#: set a model server actually sits on.
_PRIVATE_NETS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
    )
)


class Locality(enum.Enum):
    """How far away the host of a URL is."""

    LOOPBACK = "loopback"
    UNIX_SOCKET = "unix_socket"
    PRIVATE = "private"
    PUBLIC = "public"
    INVALID = "invalid"

    @property
    def is_local(self) -> bool:
        """True for the localities a cloud API cannot have."""
        return self in (Locality.LOOPBACK, Locality.UNIX_SOCKET, Locality.PRIVATE)


@final
class UrlLocality(msgspec.Struct, frozen=True, kw_only=True):
    """The parsed host of a URL and its locality.

    ``reason`` says why, in a few words, so a report can show it; for
    ``INVALID`` it is the refusal.  ``socket_path`` is set for Unix sockets.
    """

    locality: Locality
    reason: str
    scheme: str = ""
    host: str = ""
    port: int | None = None
    path: str = ""
    socket_path: str | None = None


def locality(url: str) -> Locality:
    """The :class:`Locality` of ``url``; see :func:`classify_url` for the reason."""
    return classify_url(url).locality


def classify_url(url: object) -> UrlLocality:
    """Parse ``url`` and classify its host without any network access."""
    if not isinstance(url, str):
        return _invalid(f"not a string: {type(url).__name__}")
    if not url or len(url) > _MAX_URL:
        return _invalid("empty" if not url else f"longer than {_MAX_URL} characters")
    if any(c in url for c in "\x00\r\n\t ") or not url.isprintable():
        return _invalid("contains whitespace or control characters")
    lowered = url.lower()
    if lowered.startswith(("unix:", "http+unix:", "https+unix:")):
        return _unix(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return _invalid(f"unparsable: {exc}")
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return _invalid(f"scheme must be http or https, got {scheme or 'none'!r}")
    netloc = parts.netloc.rpartition("@")[2]
    if not netloc:
        return _invalid("no host")
    raw_host = parts.hostname
    if raw_host is None or not raw_host:
        return _invalid("no host")
    host = _normalise_host(raw_host)
    if host is None:
        return _invalid(f"bad host {raw_host[:60]!r}")
    where, reason = _classify_host(host)
    return UrlLocality(
        locality=where,
        reason=reason,
        scheme=scheme,
        host=host,
        port=port,
        path=parts.path,
    )


def _invalid(reason: str) -> UrlLocality:
    return UrlLocality(locality=Locality.INVALID, reason=reason)


def _unix(url: str) -> UrlLocality:
    scheme, _, rest = url.partition(":")
    rest = rest.removeprefix("//")
    if scheme.lower() == "unix":
        path = unquote(rest.split("?")[0])
        base = ""
    else:
        sock, _, base = rest.partition("/")
        path = unquote(sock)
        base = "/" + base if base else ""
    if not path.startswith("/") or "\x00" in path:
        return _invalid("unix socket path must be absolute")
    return UrlLocality(
        locality=Locality.UNIX_SOCKET,
        reason="unix domain socket",
        scheme=scheme.lower(),
        host="localhost",
        path=base,
        socket_path=path,
    )


def _normalise_host(raw: str) -> str | None:
    host = unquote(raw).strip().lower()
    if "%" in host and ":" in host:
        host = host.split("%", 1)[0]  # IPv6 zone id: fe80::1%eth0
    host = host.rstrip(".")
    if not host or any(c in host for c in "/\\@ \x00"):
        return None
    return host


def _classify_host(host: str) -> tuple[Locality, str]:
    addr = _parse_ip(host)
    if addr is not None:
        return _classify_ip(addr)
    if host == "localhost" or host.endswith(".localhost"):
        return Locality.LOOPBACK, "localhost name"
    if host in ("host.docker.internal", "gateway.docker.internal", "host.containers.internal"):
        return Locality.PRIVATE, "container host gateway name"
    if "." not in host:
        return Locality.PRIVATE, "single-label name (container or LAN host)"
    for suffix in _PRIVATE_SUFFIXES:
        if host.endswith(suffix):
            return Locality.PRIVATE, f"reserved or cluster-internal suffix {suffix}"
    return Locality.PUBLIC, "public DNS name"


def _parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # Legacy IPv4 spellings a resolver accepts: 127.1, 0x7f.0.0.1, 2130706433.
    if all(c in "0123456789abcdefx." for c in host) and host[:1].isdigit():
        try:
            return ipaddress.IPv4Address(_legacy_ipv4(host))
        except ValueError:
            return None
    return None


def _legacy_ipv4(host: str) -> int:
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        raise ValueError(host)
    nums = [int(p, 0) if not (p.startswith("0") and p[1:2].isdigit()) else int(p, 8) for p in parts]
    if any(n < 0 for n in nums):
        raise ValueError(host)
    *head, last = nums
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(nums)):
        raise ValueError(host)
    value = 0
    for n in head:
        value = value * 256 + n
    return int(value * 256 ** (4 - len(head)) + last)


def _classify_ip(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[Locality, str]:
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped
        if mapped is not None:
            where, reason = _classify_ip(mapped)
            return where, f"IPv4-mapped {reason}"
    if addr.is_loopback:
        return Locality.LOOPBACK, "loopback address"
    if addr.is_unspecified:
        return Locality.LOOPBACK, "unspecified address (this host)"
    for net in _PRIVATE_NETS:
        if addr.version == net.version and addr in net:
            return Locality.PRIVATE, f"private network {net}"
    return Locality.PUBLIC, "public address"
