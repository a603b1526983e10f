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
from typing import TYPE_CHECKING, Any, TypeVar, final

import anyio
import anyio.abc

from lmgate._backend import running_backend
from lmgate._endpoint import Endpoint
from lmgate._errors import InvalidParameter, SchedulerClosed
from lmgate.coordination._book import Want
from lmgate.coordination._calls import Scripts
from lmgate.coordination._fallback import Link
from lmgate.coordination._keeper import LinkKeeper
from lmgate.coordination._limit import SharedLimit
from lmgate.coordination._settings import Settings, redact
from lmgate.coordination._shared import Fault, SharedEndpoint
from lmgate.coordination._statistics import EndpointCoordination, RedisStatistics
from lmgate.observability._events import Event
from lmgate.policies._limit import FixedState, LimitPolicy, LimitState
from lmgate.scheduler._coordinator import CoordinatorHandle
from lmgate.scheduler._lease import Lease

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["Redis"]

T = TypeVar("T")


@final
class Redis:
    """Coordinates the schedulers of many processes through one Redis.

    ``lease_ttl`` is how long a shared slot outlives its holder's last
    renewal (holders renew every ``renew_every``, a third of it by default):
    a process killed outright frees its slots within it.  ``fallback_share``
    is the fraction of the limit a process may use while Redis is
    unreachable; by default the limit split equally among the processes
    last seen.  ``key_prefix`` separates deployments sharing one Redis.
    ``poll`` bounds how late what no notification said is noticed;
    ``op_timeout`` is how slow a command may be before Redis counts as down;
    ``rejoin_delay`` is how long a process keeps to its share after
    rejoining; ``aging`` is the shared queue's seconds per priority level.
    Every process should use the same settings.  One instance per
    scheduler; asyncio only.  See :mod:`lmgate.coordination` for the
    guarantees and their limits.
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
        self.eps: dict[str, SharedEndpoint] = {}
        self._leases: dict[Lease, tuple[SharedEndpoint, Want]] = {}
        self._handle: CoordinatorHandle | None = None
        self._client: redis.asyncio.Redis | None = None
        self._scripts: Scripts | None = None
        self._started = False
        self.keeper = LinkKeeper(self)
        self.errors = 0
        self.last_error = ""

    # -- the scheduler's side -------------------------------------------------------------

    def limit_state(self, endpoint: Endpoint, policy: LimitPolicy) -> LimitState:
        """The state the scheduler gives ``endpoint``'s actor (see ``_limit``)."""
        _check_asyncio(required=False)  # refuse trio where the scheduler is built
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
        _check_asyncio(required=True)
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
        keeper = self.keeper
        keeper.start()
        for ep in handle.endpoints:
            entry = self._policies.get(ep.name)
            if entry is None:  # a scheduler that does not share limits
                n = handle.local_limit(ep.name)
                policy, shared = None, SharedLimit(n, policy="local", ship=False)
            else:
                policy, shared, n = entry
            self.eps[ep.name] = SharedEndpoint(self, ep.name, shared, policy, n)
        s = self.settings
        self._client = aioredis.Redis.from_url(
            s.url,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=s.op_s,
            socket_connect_timeout=s.op_s,
            health_check_interval=0,
        )
        self._scripts = Scripts(self._client)
        try:
            async with anyio.create_task_group() as tg:
                if not await keeper.join():
                    keeper.lost_at_start()
                await keeper.apply_limits()
                tg.start_soon(keeper.supervise)
                tg.start_soon(keeper.listen)
                for sh in self.eps.values():
                    tg.start_soon(sh.sync_loop)
                    tg.start_soon(sh.control_loop)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                await keeper.leave()

    async def acquire(self, lease: Lease) -> None:
        """Wait for a shared slot of the lease's endpoint."""
        sh = self.eps.get(lease.endpoint.name)
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
    def client_or_none(self) -> redis.asyncio.Redis | None:
        return self._client

    @property
    def scripts(self) -> Scripts:
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
        self.keeper.lose(reason)

    async def apply_limit(self, sh: SharedEndpoint) -> None:
        await self.keeper.apply_limit(sh)

    # -- introspection ------------------------------------------------------------------------

    def statistics(self) -> RedisStatistics:
        eps = []
        for sh in self.eps.values():
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
            f" owner={self.owner} endpoints={list(self.eps)}>"
        )


def _check_asyncio(*, required: bool) -> None:
    """Refuse any event loop but asyncio's (none at all is fine unless ``required``)."""
    library = running_backend()
    if library is None:
        if not required:
            return
        library = "none"
    if library != "asyncio":
        raise InvalidParameter(
            f"lmgate.coordination.Redis runs on asyncio only (this is {library}):"
            " the redis.asyncio client needs an asyncio event loop",
            field="coordinator",
        )
