"""Validation of the Redis coordinator's settings; secrets never shown."""

from __future__ import annotations

from typing import Any

import pytest

import lmgate
from lmgate.coordination import Redis
from lmgate.coordination._settings import redact


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"url": ""}, "url"),
        ({"url": "http://127.0.0.1:6379"}, "url"),
        ({"url": "redis://"}, "url"),
        ({"url": "redis://h\x00"}, "url"),
        ({"url": 6379}, "url"),
        ({"lease_ttl": 0}, "lease_ttl"),
        ({"lease_ttl": float("nan")}, "lease_ttl"),
        ({"lease_ttl": True}, "lease_ttl"),
        ({"renew_every": 6.0}, "renew_every"),
        ({"renew_every": 4.0, "op_timeout": 6.5}, "op_timeout"),
        ({"fallback_share": 0.0}, "fallback_share"),
        ({"fallback_share": 1.5}, "fallback_share"),
        ({"key_prefix": ""}, "key_prefix"),
        ({"key_prefix": "a{b}"}, "key_prefix"),
        ({"key_prefix": "x" * 129}, "key_prefix"),
        ({"poll": 0.0}, "poll"),
        ({"aging": -1.0}, "aging"),
    ],
)
def test_bad_settings_are_refused_with_the_field(kwargs: dict[str, Any], field: str) -> None:
    """Each bad value raises InvalidParameter naming the field."""
    args = {"url": "redis://127.0.0.1:6379/0", **kwargs}
    url = args.pop("url")
    with pytest.raises(lmgate.InvalidParameter) as info:
        Redis(url, **args)
    assert info.value.field == field


def test_defaults_derive_from_the_lease_ttl() -> None:
    """Renewal, poll and timeouts follow lease_ttl and fit inside it."""
    s = Redis("redis://127.0.0.1/0", lease_ttl=10.0).settings
    assert s.renew == pytest.approx(10 / 3)
    assert s.poll_s == 0.25
    assert s.op_s == 1.0
    assert s.rejoin_s == pytest.approx(2.5)
    short = Redis("redis://127.0.0.1/0", lease_ttl=1.0).settings
    assert short.renew + short.op_s < 1.0


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@10.0.0.1:6379/0",
        "redis://user:hunter2@[::1]:6379/0",
        "rediss://default:hunter2@cache.internal/1",
        "redis://127.0.0.1:6379/0?password=hunter2&db=1",
        "unix:///run/redis.sock?db=0&password=hunter2",
    ],
)
def test_a_password_never_shows(url: str) -> None:
    """repr, settings and statistics hide the password."""
    coord = Redis(url)
    for text in (repr(coord), repr(coord.settings), redact(url), coord.statistics().url):
        assert "hunter2" not in text
    assert "***" in redact(url)


def test_one_coordinator_per_scheduler() -> None:
    """Handing one coordinator to two schedulers is refused at construction."""
    coord = Redis("redis://127.0.0.1/0")
    eps = [lmgate.Endpoint("gpu", url="http://127.0.0.1:9", models=["m"])]
    lmgate.Scheduler(eps, coordinator=coord)
    with pytest.raises(lmgate.InvalidParameter):
        lmgate.Scheduler(eps, coordinator=coord)


def test_exports_are_sorted_and_present() -> None:
    """The package exports a sorted list of names that all exist."""
    import lmgate.coordination as c

    assert c.__all__ == sorted(c.__all__)
    for name in c.__all__:
        assert hasattr(c, name)
