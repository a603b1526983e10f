"""Keeping one process's link to Redis: join, supervise, listen, leave.

The keeper decides when Redis counts as lost (any command failing or
slower than ``op_timeout``, the pub/sub connection breaking, the epoch
changing), retries joining every poll while it is, holds the process to
its shares for ``rejoin_delay`` after each join, and keeps local admission's
limit on the shared limit or the share accordingly (see ``_fallback``).
"""

from __future__ import annotations

from typing import Any, final

import anyio

from lmgate._errors import SchedulerClosed
from lmgate.coordination._events import (
    CoordinationLost,
    CoordinationRejoining,
    CoordinationRestored,
)
from lmgate.coordination._scripts import notify_channel
from lmgate.coordination._shared import Fault, Hub, SharedEndpoint

__all__ = ["LinkKeeper"]


@final
class LinkKeeper:
    """The tasks and transitions of one coordinator's link to Redis."""

    def __init__(self, coord: Hub) -> None:
        self.c = coord
        self._news: anyio.Event | None = None
        self._connected_once = False

    def start(self) -> None:
        self._news = anyio.Event()

    def _tell(self) -> None:
        if self._news is not None:
            self._news.set()

    async def _news_or(self, delay: float) -> None:
        ev = self._news
        assert ev is not None
        with anyio.move_on_after(delay):
            await ev.wait()
        if self._news is ev and ev.is_set():
            self._news = anyio.Event()

    # -- transitions ---------------------------------------------------------------------

    def lose(self, reason: str) -> None:
        """Redis failed us: every endpoint falls back to its share now."""
        c = self.c
        now = anyio.current_time()
        if c.link.lost(now, reason) is None:
            return
        shares = {}
        for sh in c.eps.values():
            sh.book.go_offline()
            shares[sh.name] = sh.freeze_share()
            sh.limit.follow(sh.share)
            sh.wake(sh.book.grant_local(sh.share))
        c.publish(CoordinationLost(at=now, reason=reason, shares=shares))
        self._tell()

    def lost_at_start(self) -> None:
        c = self.c
        for sh in c.eps.values():
            sh.limit.follow(sh.share)
        c.publish(
            CoordinationLost(
                at=anyio.current_time(),
                reason=f"no Redis at start: {c.last_error}",
                shares={sh.name: sh.share for sh in c.eps.values()},
            )
        )

    async def apply_limit(self, sh: SharedEndpoint) -> None:
        """Make local admission use the shared limit, or the share."""
        c = self.c
        target = sh.known_limit if c.link.mode == "connected" else sh.share
        sh.limit.follow(target)
        if target != sh.applied:
            sh.applied = target
            await c.handle.set_local_limit(sh.name, target)

    async def apply_limits(self) -> None:
        for sh in self.c.eps.values():
            await self.apply_limit(sh)

    async def join(self) -> bool:
        """Count this process's leases into Redis; True once every endpoint is in."""
        c = self.c
        first = not self._connected_once
        results = []
        if not first:
            # Pooled connections may date from before the fault (a restarted
            # server closed them): start afresh rather than fail on each.
            with anyio.move_on_after(c.settings.op_s):
                await c.client.connection_pool.disconnect()
        try:
            for sh in c.eps.values():
                keys, args = sh.rejoin_args()
                results.append((sh, await c.op(c.scripts.rejoin, keys=keys, args=args)))
        except Fault as exc:
            for sh in c.eps.values():
                sh.book.go_offline()
            c.link.last_reason = str(exc)
            return False
        for sh, res in results:
            sh.joined(res, first)
        self._connected_once = True
        change = c.link.joined(anyio.current_time())
        if change is not None and change.until is not None:
            c.publish(CoordinationRejoining(at=change.at, until=change.until))
        self._tell()
        return True

    # -- the tasks --------------------------------------------------------------------------

    async def supervise(self) -> None:
        c = self.c
        poll = c.settings.poll_s
        link = c.link
        while True:
            if link.mode == "fallback":
                await self._news_or(poll)
                if link.mode == "fallback":
                    await self.join()
            elif link.mode == "rejoining":
                assert link.until is not None
                await self._news_or(max(0.0, link.until - anyio.current_time()))
                change = link.tick(anyio.current_time())
                if change is not None:
                    c.publish(CoordinationRestored(at=change.at))
                    for sh in c.eps.values():
                        sh.wake_sync()
            else:
                await self._news_or(poll * 4)
            await self.apply_limits()

    async def listen(self) -> None:
        """Pub/sub: wake-ups for freed slots, limit and breaker news."""
        from redis.exceptions import RedisError

        c = self.c
        s = c.settings
        link = c.link
        channels = {sh.keys.channel.encode(): sh for sh in c.eps.values()}
        personal = notify_channel(s.key_prefix, c.owner)
        while True:
            if not link.trusted:
                await self._news_or(s.poll_s)
                continue
            gen = link.generation
            ps = c.client.pubsub(ignore_subscribe_messages=True)
            try:
                with anyio.fail_after(s.op_s):
                    await ps.subscribe(personal, *(k.decode() for k in channels))
                while link.generation == gen:
                    with anyio.fail_after(s.poll_s + s.op_s):
                        msg = await ps.get_message(ignore_subscribe_messages=True, timeout=s.poll_s)
                    if msg is not None:
                        self._dispatch(msg, channels)
            except (RedisError, OSError, TimeoutError) as exc:
                if link.generation == gen:
                    c.errors += 1
                    self.lose(f"pub/sub: {type(exc).__name__}: {exc}"[:300])
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(s.op_s):
                    await ps.aclose()

    def _dispatch(self, msg: dict[str, Any], channels: dict[bytes, SharedEndpoint]) -> None:
        channel = msg.get("channel")
        data = msg.get("data")
        sh = channels.get(channel) if isinstance(channel, bytes) else None
        if sh is not None:
            sh.wake_control()
            if data == b"limit":
                sh.poke()
        elif isinstance(data, bytes):
            target = self.c.eps.get(data.decode("utf-8", "replace"))
            if target is not None:
                target.poke()

    async def leave(self) -> None:
        """Closing: end waits, give every slot and the lock back, close the client."""
        c = self.c
        closed = SchedulerClosed("the scheduler closed")
        for sh in c.eps.values():
            sh.wake(sh.book.fail_all(closed))
        client = c.client_or_none
        if client is None:
            return
        s = c.settings
        if c.link.trusted:
            with anyio.move_on_after(s.op_s):
                for sh in c.eps.values():
                    k = sh.keys
                    keys = [
                        k.holders,
                        k.waiting,
                        k.owners,
                        k.waiters_of(c.owner),
                        k.leader,
                        k.breaker,
                    ]
                    args = [c.owner, notify_channel(s.key_prefix, ""), sh.name]
                    try:
                        await c.op(c.scripts.farewell, keys=keys, args=args)
                    except Fault:
                        break
        with anyio.move_on_after(s.op_s):
            await client.aclose()

    def __repr__(self) -> str:
        return f"<LinkKeeper {self.c.link!r}>"
