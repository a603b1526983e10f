"""Locality of a URL: parsed like an HTTP client parses it, no DNS."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmgate.detect import Locality, classify_url, locality

L, U, P, G, X = (
    Locality.LOOPBACK,
    Locality.UNIX_SOCKET,
    Locality.PRIVATE,
    Locality.PUBLIC,
    Locality.INVALID,
)

TABLE = [
    # loopback
    ("http://127.0.0.1:8080", L),
    ("http://127.3.4.5/v1", L),
    ("http://localhost:11434", L),
    ("http://LocalHost.:11434/", L),
    ("http://ollama.localhost/api", L),
    ("http://[::1]:8000/v1", L),
    ("http://[::ffff:127.0.0.1]:8000", L),
    ("http://[0:0:0:0:0:ffff:7f00:1]/", L),
    ("http://user:secret@127.0.0.1:8080/v1", L),
    ("http://%31%32%37.0.0.1:8080", L),
    ("http://127.1:8080", L),
    ("http://0x7f.0.0.1/", L),
    ("http://2130706433/", L),
    ("http://0.0.0.0:8080", L),
    # unix sockets
    ("unix:///run/ollama.sock", U),
    ("http+unix://%2Frun%2Fllama.sock/v1", U),
    # private
    ("http://10.0.0.5:8000", P),
    ("http://172.16.1.1", P),
    ("http://172.31.255.255", P),
    ("http://192.168.1.20:1234/v1", P),
    ("http://100.64.0.7:11434", P),
    ("http://169.254.169.254/", P),
    ("http://[fd12:3456::1]:8080", P),
    ("http://[fe80::1%25eth0]:8080", P),
    ("http://ollama:11434", P),
    ("http://vllm-0.vllm.default.svc.cluster.local:8000/v1", P),
    ("http://llm.default.svc:8000", P),
    ("http://gpu-box.local:8080", P),
    ("http://inference.internal/v1", P),
    ("http://host.docker.internal:11434", P),
    ("http://HOST.DOCKER.INTERNAL.:11434", P),
    ("http://[::ffff:192.168.0.1]/", P),
    # public
    ("https://api.openai.com/v1", G),
    ("https://llm.example.com:8443/v1", G),
    ("http://8.8.8.8", G),
    ("http://172.32.0.1", G),
    ("http://[2001:4860::8888]/", G),
    ("http://localhost.example.com/", G),
    ("http://127.0.0.1.nip.io/", G),
    ("https://user:pw@API.OpenAI.com./v1", G),
    # invalid
    ("", X),
    ("ftp://127.0.0.1/", X),
    ("127.0.0.1:8080", X),
    ("http://", X),
    ("http://:8080", X),
    ("http://[::1", X),
    ("http://127.0.0.1:99999", X),
    ("http://127.0.0.1/\x00", X),
    ("http://exa mple.com", X),
    ("unix://relative.sock", X),
]


@pytest.mark.parametrize(("url", "expected"), TABLE)
def test_locality_table(url: str, expected: Locality) -> None:
    """Each URL in the table has the locality a resolver-free reading gives."""
    assert locality(url) is expected, classify_url(url)


def test_invalid_carries_reason() -> None:
    """An invalid URL says why."""
    info = classify_url("ftp://127.0.0.1/")
    assert info.locality is Locality.INVALID
    assert "scheme" in info.reason


def test_parsed_parts() -> None:
    """Host, port and path come back normalised; userinfo never does."""
    info = classify_url("http://Admin:hunter2@GPU-Box.Local.:8080/v1")
    assert (info.host, info.port, info.path) == ("gpu-box.local", 8080, "/v1")
    assert "hunter2" not in repr(info)


def test_unix_socket_path() -> None:
    """The socket path of a unix URL is decoded; the rest is the base path."""
    info = classify_url("http+unix://%2Frun%2Fllama.sock/v1")
    assert info.socket_path == "/run/llama.sock"
    assert info.path == "/v1"


def test_not_a_string() -> None:
    """Non-strings are invalid, not a crash."""
    assert classify_url(None).locality is Locality.INVALID
    assert classify_url(b"http://127.0.0.1").locality is Locality.INVALID


@given(st.text(max_size=300))
def test_never_raises(url: str) -> None:
    """Any string gets a locality and a reason, never an exception."""
    info = classify_url(url)
    assert isinstance(info.locality, Locality)
    assert info.reason


@given(st.ip_addresses(v=4))
def test_ipv4_agrees_with_stdlib(addr: object) -> None:
    """Loopback and private IPv4 literals agree with the ipaddress module."""
    import ipaddress

    ip = ipaddress.IPv4Address(str(addr))
    got = locality(f"http://{ip}:80/")
    if ip.is_loopback or ip.is_unspecified:
        assert got is L
    elif got is P:
        assert ip.is_private or ip in ipaddress.ip_network("100.64.0.0/10")
