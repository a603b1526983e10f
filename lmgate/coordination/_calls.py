"""Argument lists of the scripts, and the scripts registered with a client.

The layout of each script's ``KEYS`` and ``ARGV`` lives here once, so the
coordinator and the tests that drive the scripts directly cannot drift.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

from lmgate.coordination._scripts import CONTROL, FAREWELL, PUBLISH_LIMIT, REJOIN, SYNC, Keys

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["Scripts", "control_call", "rejoin_call", "sync_call"]


@final
class Scripts:
    """The scripts, registered once with the coordinator's client."""

    __slots__ = ("control", "farewell", "publish_limit", "rejoin", "sync")

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.sync = client.register_script(SYNC)
        self.rejoin = client.register_script(REJOIN)
        self.control = client.register_script(CONTROL)
        self.publish_limit = client.register_script(PUBLISH_LIMIT)
        self.farewell = client.register_script(FAREWELL)


def _now(now_ms: int | None) -> str | int:
    return "" if now_ms is None else now_ms


def _pairs(registrations: list[tuple[str, int]]) -> list[Any]:
    out: list[Any] = [len(registrations)]
    for member, priority in registrations:
        out += [member, priority]
    return out


def sync_call(
    keys: Keys,
    *,
    owner: str,
    ttl_ms: int,
    default_limit: int,
    aging_ms: int,
    epoch: str,
    notify_prefix: str,
    name: str,
    removals: list[str],
    registrations: list[tuple[str, int]],
    renewals: list[str],
    samples: list[bytes],
    samples_maxlen: int = 10_000,
    now_ms: int | None = None,
) -> tuple[list[str], list[Any]]:
    """Keys and arguments of one ``SYNC`` call."""
    k = keys
    args: list[Any] = [
        owner,
        ttl_ms,
        _now(now_ms),
        default_limit,
        aging_ms,
        epoch,
        k.base,
        notify_prefix,
        name,
        samples_maxlen,
        len(removals),
        *removals,
        *_pairs(registrations),
        len(renewals),
        *renewals,
        len(samples),
        *samples,
    ]
    return [k.holders, k.waiting, k.owners, k.limit, k.epoch, k.waiters_of(owner), k.samples], args


def rejoin_call(
    keys: Keys,
    *,
    owner: str,
    ttl_ms: int,
    default_limit: int,
    aging_ms: int,
    new_epoch: str,
    held: list[str],
    registrations: list[tuple[str, int]],
    now_ms: int | None = None,
) -> tuple[list[str], list[Any]]:
    """Keys and arguments of one ``REJOIN`` call."""
    k = keys
    args: list[Any] = [
        owner,
        ttl_ms,
        _now(now_ms),
        default_limit,
        aging_ms,
        new_epoch,
        k.base,
        len(held),
        *held,
        *_pairs(registrations),
    ]
    return [k.holders, k.waiting, k.owners, k.limit, k.epoch, k.waiters_of(owner)], args


def control_call(
    keys: Keys,
    *,
    owner: str,
    ttl_ms: int,
    report: bytes,
    publish: bool,
    want_lead: bool,
    now_ms: int | None = None,
) -> tuple[list[str], list[Any]]:
    """Keys and arguments of one ``CONTROL`` call."""
    k = keys
    args: list[Any] = [
        owner,
        ttl_ms,
        _now(now_ms),
        report,
        "1" if publish else "0",
        k.channel,
        "1" if want_lead else "0",
    ]
    return [k.owners, k.leader, k.limit, k.breaker], args
