"""``lmgate.coordination.Redis``: many processes, one limit per endpoint.

Give every process's scheduler a ``Redis(url)`` and the processes that name
an endpoint alike share its limit, its adaptive limit policy and its
breaker state.  Local admission still queues and orders requests inside a
process; a granted lease then also takes one of the endpoint's shared
slots before its call runs (see ``_scripts`` for the data in Redis and
``_fallback`` for what happens when Redis is away).

Only asyncio: ``redis.asyncio`` is built on asyncio's streams and no anyio
bridge runs it under trio, so on trio ``run`` refuses to start with
``InvalidParameter`` rather than half-working.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, final

import anyio
import anyio.abc
import msgspec
import sniffio

from lmgate._endpoint import Endpoint
from lmgate._errors import InvalidParameter, SchedulerClosed
from lmgate._events import Event
from lmgate.coordination._book import Want
from lmgate.coordination._events import (
    CoordinationLost,
    CoordinationRejoining,
    CoordinationRestored,
)
from lmgate.coordination._fallback import Link, Mode
from lmgate.coordination._limit import SharedLimit
from lmgate.coordination._scripts import (
    CONTROL,
    FAREWELL,
    PUBLISH_LIMIT,
    REJOIN,
    SYNC,
    notify_channel,
)
from lmgate.coordination._settings import Settings, redact
from lmgate.coordination._shared import Fault, SharedEndpoint
from lmgate.policies._limit import FixedState, LimitPolicy, LimitState
from lmgate.scheduler._coordinator import CoordinatorHandle
from lmgate.scheduler._lease import Lease

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["EndpointCoordination", "Redis", "RedisStatistics"]

P = ParamSpec("P")
T = TypeVar("T")


@final
class EndpointCoordination(msgspec.Struct, frozen=True, kw_only=True):
    """One endpoint's share of the coordination, from this process."""

    name: str
    limit: int
    share: int
    local_limit: int | None
    running: int
    waiting: int
    peak_running: int
    processes: int | None
    leader: bool
    granted: int
    local_grants: int
    restored: int
    syncs: int
    samples_shipped: int
    applied_state: str | None


@final
class RedisStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of the coordinator: link mode, faults and endpoints."""

    url: str
    owner: str
    mode: Mode
    losses: int
    joins: int
    errors: int
    last_error: str
    endpoints: tuple[EndpointCoordination, ...]


@final
class _Scripts:
    __slots__ = ("control", "farewell", "publish_limit", "rejoin", "sync")

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.sync = client.register_script(SYNC)
        self.rejoin = client.register_script(REJOIN)
        self.control = client.register_script(CONTROL)
        self.publish_limit = client.register_script(PUBLISH_LIMIT)
        self.farewell = client.register_script(FAREWELL)


@final
class Redis:
    """Coordinates the schedulers of many processes through one Redis.

    ``lease_ttl`` is how long a shared slot outlives its holder's last
    renewal (holders renew every ``renew_every``): a process killed outright
    frees its slots within it.  ``fallback_share`` is the fraction of the
    limit a process may use while Redis is unreachable; by default the
    limit split equally among the processes last seen.  ``key_prefix``
    separates deployments sharing one Redis.  Use one instance per
    scheduler.
    """

    def __init__(
        self,
        url: str,
        *,
        lease_ttl: float = 10.0,
        renew_every: float | None = None,
        fallback_share: float | None = None,
        key_prefix: str = "lmgate",
        poll: float | None = None,
        op_timeout: float | None = None,
        rejoin_delay: float | None = None,
        aging: float = 10.0,
    ) -> None:
        self.settings = Settings(
            url=url,
            lease_ttl=lease_ttl,
            renew_every=renew_every,
            fallback_share=fallback_share,
            key_prefix=key_prefix,
            poll=poll,
            op_timeout=op_timeout,
            rejoin_delay=rejoin_delay,
            aging=aging,
        )
        #: This process's id in Redis (random; holders are ``owner:seq``).
        self.owner = secrets.token_hex(8)
        self.epoch_candidate = secrets.token_hex(8)
        self.link = Link(rejoin_delay=self.settings.rejoin_s)
        self._policies: dict[str, tuple[LimitPolicy, SharedLimit, int]] = {}
        self._eps: dict[str, SharedEndpoint] = {}
        self._channels: dict[bytes, SharedEndpoint] = {}
        self._leases: dict[Lease, tuple[SharedEndpoint, Want]] = {}
        self._handle: CoordinatorHandle | None = None
        self._client: redis.asyncio.Redis | None = None
        self._scripts: _Scripts | None = None
        self._news: anyio.Event | None = None
        self._started = False
        self._connected_once = False
        self.errors = 0
        self.last_error = ""

    # -- the scheduler's side -------------------------------------------------------------

    def limit_state(self, endpoint: Endpoint, policy: LimitPolicy) -> LimitState:
        """The state the scheduler gives ``endpoint``'s actor (see ``_limit``)."""
        if endpoint.name in self._policies or self._started:
            raise InvalidParameter(
                "a Redis coordinator serves one scheduler; create one per scheduler",
                field="coordinator",
            )
        initial = policy.build()
        ship = not isinstance(initial, FixedState)
        shared = SharedLimit(initial.limit, policy=type(policy).__name__, ship=ship)
        self._policies[endpoint.name] = (policy, shared, initial.limit)
        return shared

    async def run(
        self,
        handle: CoordinatorHandle,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Join Redis (or start in fallback), then serve until cancelled."""
        try:
            await self._run(handle, task_status)
        finally:
            handle.close()

    async def _run(
        self, handle: CoordinatorHandle, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        if sniffio.current_async_library() != "asyncio":
            raise InvalidParameter(
                "lmgate.coordination.Redis runs on asyncio only: the redis.asyncio client"
                " cannot run under trio",
                field="coordinator",
            )
        if self._started:
            raise InvalidParameter("this Redis coordinator already ran", field="coordinator")
        self._started = True
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError as exc:  # pragma: no cover
            raise InvalidParameter(
                "the redis package is needed: pip install 'lmgate[redis]'", field="coordinator"
            ) from exc
        self._handle = handle
        self._news = anyio.Event()
        for ep in handle.endpoints:
            entry = self._policies.get(ep.name)
            if entry is None:  # a scheduler that does not share limits
                n = handle.local_limit(ep.name)
                policy, shared = None, SharedLimit(n, policy="local", ship=False)
            else:
                policy, shared, n = entry
            sh = SharedEndpoint(self, ep.name, shared, policy, n)
            self._eps[ep.name] = sh
            self._channels[sh.keys.channel.encode()] = sh
        s = self.settings
        self._client = aioredis.Redis.from_url(
            s.url,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=s.op_s,
            socket_connect_timeout=s.op_s,
            health_check_interval=0,
        )
        self._scripts = _Scripts(self._client)
        try:
            async with anyio.create_task_group() as tg:
                if not await self._join():
                    self._lost_at_start()
                await self._apply_limits()
                tg.start_soon(self._supervise)
                tg.start_soon(self._listen)
                for sh in self._eps.values():
                    tg.start_soon(sh.sync_loop)
                    tg.start_soon(sh.control_loop)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                await self._leave()

    async def acquire(self, lease: Lease) -> None:
        """Wait for a shared slot of the lease's endpoint."""
        sh = self._eps.get(lease.endpoint.name)
        if sh is None or self._handle is None:
            raise SchedulerClosed("the coordinator is not running")
        if self._handle.closed:
            raise SchedulerClosed("the scheduler closed")
        w = sh.book.want(lease.priority, anyio.current_time(), anyio.Event())
        self._kick(sh)
        try:
            await w.event.wait()
        except BaseException:
            sh.book.abandon(w)
            self._kick(sh)
            raise
        if w.error is not None:
            raise w.error
        self._leases[lease] = (sh, w)

    def release(self, lease: Lease) -> None:
        """Give the shared slot back (sent with the next round trip)."""
        got = self._leases.pop(lease, None)
        if got is None:
            return
        sh, w = got
        sh.limit.note(lease.granted_at, w.in_flight)
        sh.book.release(w.member)
        self._kick(sh)

    def _kick(self, sh: SharedEndpoint) -> None:
        if self.link.trusted:
            sh.wake_sync()
        else:
            sh.wake(sh.book.grant_local(sh.share))

    # -- what the endpoint loops use ---------------------------------------------------------

    @property
    def handle(self) -> CoordinatorHandle:
        assert self._handle is not None
        return self._handle

    @property
    def client(self) -> redis.asyncio.Redis:
        assert self._client is not None
        return self._client

    @property
    def scripts(self) -> _Scripts:
        assert self._scripts is not None
        return self._scripts

    def handle_closed(self) -> bool:
        return self._handle is not None and self._handle.closed

    async def op(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """One Redis command, bounded by ``op_timeout``; failures raise ``Fault``."""
        from redis.exceptions import RedisError

        try:
            with anyio.fail_after(self.settings.op_s):
                return await fn(*args, **kwargs)
        except (RedisError, OSError, TimeoutError) as exc:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            raise Fault(self.last_error) from exc

    def publish(self, event: Event) -> None:
        if self._handle is not None:
            self._handle.publish(event)

    def lose(self, reason: str) -> None:
        """Redis failed us: every endpoint falls back to its share now."""
        now = anyio.current_time()
        change = self.link.lost(now, reason)
        if change is None:
            return
        shares = {}
        for sh in self._eps.values():
            sh.book.go_offline()
            shares[sh.name] = sh.freeze_share()
            sh.limit.follow(sh.share)
            sh.wake(sh.book.grant_local(sh.share))
        self.publish(CoordinationLost(at=now, reason=reason, shares=shares))
        self._tell()

    def _lost_at_start(self) -> None:
        shares = {sh.name: sh.share for sh in self._eps.values()}
        for sh in self._eps.values():
            sh.limit.follow(sh.share)
        self.publish(
            CoordinationLost(
                at=anyio.current_time(),
                reason=f"no Redis at start: {self.last_error}",
                shares=shares,
            )
        )

    async def apply_limit(self, sh: SharedEndpoint) -> None:
        """Make local admission use the shared limit, or the share."""
        target = sh.known_limit if self.link.mode == "connected" else sh.share
        sh.limit.follow(target)
        if target != sh.applied and self._handle is not None:
            sh.applied = target
            await self._handle.set_local_limit(sh.name, target)

    async def _apply_limits(self) -> None:
        for sh in self._eps.values():
            await self.apply_limit(sh)

    # -- the link: joining, supervising, listening ---------------------------------------

    def _tell(self) -> None:
        assert self._news is not None
        self._news.set()

    async def _news_or(self, delay: float) -> None:
        ev = self._news
        assert ev is not None
        with anyio.move_on_after(delay):
            await ev.wait()
        if self._news is ev and ev.is_set():
            self._news = anyio.Event()

    async def _join(self) -> bool:
        """Count this process's leases into Redis; True once every endpoint is in."""
        first = not self._connected_once
        results = []
        if not first:
            # Pooled connections may date from before the fault (a restarted
            # server closed them): start afresh rather than fail on each.
            with anyio.move_on_after(self.settings.op_s):
                await self.client.connection_pool.disconnect()
        try:
            for sh in self._eps.values():
                keys, args = sh.rejoin_args()
                results.append((sh, await self.op(self.scripts.rejoin, keys=keys, args=args)))
        except Fault as exc:
            for sh in self._eps.values():
                sh.book.go_offline()
            self.link.last_reason = str(exc)
            return False
        for sh, res in results:
            sh.joined(res, first)
        self._connected_once = True
        change = self.link.joined(anyio.current_time())
        if change is not None and change.until is not None:
            self.publish(CoordinationRejoining(at=change.at, until=change.until))
        self._tell()
        return True

    async def _supervise(self) -> None:
        s = self.settings
        link = self.link
        while True:
            if link.mode == "fallback":
                await self._news_or(s.poll_s)
                if link.mode == "fallback":
                    await self._join()
            elif link.mode == "rejoining":
                assert link.until is not None
                await self._news_or(max(0.0, link.until - anyio.current_time()))
                change = link.tick(anyio.current_time())
                if change is not None:
                    self.publish(CoordinationRestored(at=change.at))
                    for sh in self._eps.values():
                        sh.wake_sync()
            else:
                await self._news_or(s.poll_s * 4)
            await self._apply_limits()

    async def _listen(self) -> None:
        """Pub/sub: wake-ups for freed slots, limit and breaker news."""
        from redis.exceptions import RedisError

        s = self.settings
        link = self.link
        personal = notify_channel(s.key_prefix, self.owner)
        while True:
            if not link.trusted:
                await self._news_or(s.poll_s)
                continue
            gen = link.generation
            ps = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                with anyio.fail_after(s.op_s):
                    await ps.subscribe(personal, *(k.decode() for k in self._channels))
                while link.generation == gen:
                    with anyio.fail_after(s.poll_s + s.op_s):
                        msg = await ps.get_message(ignore_subscribe_messages=True, timeout=s.poll_s)
                    if msg is not None:
                        self._dispatch(msg)
            except (RedisError, OSError, TimeoutError) as exc:
                if link.generation == gen:
                    self.errors += 1
                    self.lose(f"pub/sub: {type(exc).__name__}: {exc}"[:300])
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(s.op_s):
                    await ps.aclose()  # type: ignore[no-untyped-call]

    def _dispatch(self, msg: dict[str, Any]) -> None:
        channel = msg.get("channel")
        data = msg.get("data")
        sh = self._channels.get(channel) if isinstance(channel, bytes) else None
        if sh is not None:
            sh.wake_control()
            if data == b"limit":
                sh.poke()
        elif isinstance(data, bytes):
            target = self._eps.get(data.decode("utf-8", "replace"))
            if target is not None:
                target.poke()

    async def _leave(self) -> None:
        """Closing: end waits, give every slot and the lock back, close the client."""
        closed = SchedulerClosed("the scheduler closed")
        for sh in self._eps.values():
            sh.wake(sh.book.fail_all(closed))
        client = self._client
        if client is None:
            return
        if self.link.trusted and self._scripts is not None:
            s = self.settings
            with anyio.move_on_after(s.op_s):
                for sh in self._eps.values():
                    k = sh.keys
                    try:
                        await self.op(
                            self._scripts.farewell,
                            keys=[
                                k.holders,
                                k.waiting,
                                k.owners,
                                k.waiters_of(self.owner),
                                k.leader,
                                k.breaker,
                            ],
                            args=[self.owner, notify_channel(s.key_prefix, ""), sh.name],
                        )
                    except Fault:
                        break
        with anyio.move_on_after(self.settings.op_s):
            await client.aclose()

    # -- introspection ------------------------------------------------------------------------

    def statistics(self) -> RedisStatistics:
        eps = []
        for sh in self._eps.values():
            m = sh.mirror
            eps.append(
                EndpointCoordination(
                    name=sh.name,
                    limit=sh.known_limit,
                    share=sh.share,
                    local_limit=sh.applied,
                    running=sh.book.running,
                    waiting=len(sh.book.waiting),
                    peak_running=sh.peak_running,
                    processes=sh.known_processes,
                    leader=sh.leading,
                    granted=sh.book.granted,
                    local_grants=sh.book.local_grants,
                    restored=sh.restored,
                    syncs=sh.syncs,
                    samples_shipped=sh.shipped,
                    applied_state=m.applied.state if m is not None and m.applied else None,
                )
            )
        link = self.link
        return RedisStatistics(
            url=redact(self.settings.url),
            owner=self.owner,
            mode=link.mode,
            losses=link.losses,
            joins=link.joins,
            errors=self.errors,
            last_error=self.last_error,
            endpoints=tuple(eps),
        )

    def __repr__(self) -> str:
        return (
            f"<lmgate.coordination.Redis {redact(self.settings.url)} {self.link.mode}"
            f" owner={self.owner} endpoints={list(self._eps)}>"
        )
