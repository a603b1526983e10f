"""One endpoint as the Redis coordinator shares it: two loops per endpoint.

The *sync* loop carries lease traffic: whenever a lease waits, is released
or must be renewed, one script call does it all (``_scripts.SYNC``), so
under load a round trip carries many leases.  It also re-checks the shared
queue every poll, which is how a slot freed by an expired holder (a killed
process) or a lost notification is noticed.

The *control* loop runs every poll (or when a peer publishes news): a
heartbeat, the leader lock, the shared limit, and the breaker reports.  The
leader feeds the samples of every process to the endpoint's limit policy
and writes the limit it computes; a follower just reads it.  When the
leader dies its lock expires within ``lease_ttl`` and another process takes
over: it rebuilds the policy from the most recent samples kept in Redis.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, final

import anyio

from lmgate._errors import SchedulerClosed
from lmgate.coordination._book import Batch, Book, Want
from lmgate.coordination._calls import Scripts, control_call, rejoin_call, sync_call
from lmgate.coordination._events import LeadershipChanged, SharedLimitPublished, SharedStateApplied
from lmgate.coordination._fallback import Link, fallback_limit
from lmgate.coordination._limit import SharedLimit, decode_sample
from lmgate.coordination._mirror import (
    StateMirror,
    decode_report,
    encode_report,
    route_state,
    worst,
)
from lmgate.coordination._scripts import Keys, notify_channel
from lmgate.coordination._settings import Settings
from lmgate.observability._events import Event
from lmgate.policies._limit import LimitPolicy, LimitState
from lmgate.scheduler._coordinator import CoordinatorHandle

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["Fault", "Hub", "SharedEndpoint"]

T = TypeVar("T")

_WARM = 1000
_READ = 512
_SAMPLES_MAXLEN = 10_000


class Fault(Exception):
    """A Redis command failed or took longer than ``op_timeout``."""


class Hub(Protocol):
    """What an endpoint's loops and the link keeper use of their coordinator.

    ``coordination.Redis`` is the one implementation; naming the part used
    here keeps the graph one-way (the coordinator imports its loops, never
    the reverse).
    """

    settings: Settings
    owner: str
    epoch_candidate: str
    link: Link
    eps: dict[str, SharedEndpoint]
    errors: int
    last_error: str

    @property
    def handle(self) -> CoordinatorHandle: ...
    @property
    def client(self) -> redis.asyncio.Redis: ...
    @property
    def client_or_none(self) -> redis.asyncio.Redis | None: ...
    @property
    def scripts(self) -> Scripts: ...
    def handle_closed(self) -> bool: ...
    async def op(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T: ...
    def publish(self, event: Event) -> None: ...
    def lose(self, reason: str) -> None: ...
    async def apply_limit(self, sh: SharedEndpoint) -> None: ...


@final
class SharedEndpoint:
    """The coordinator's state for one endpoint and the loops that move it."""

    def __init__(
        self,
        coord: Hub,
        name: str,
        limit: SharedLimit,
        policy: LimitPolicy | None,
        initial_limit: int,
    ) -> None:
        self.coord = coord
        self.name = name
        s = coord.settings
        self.keys = Keys(s.key_prefix, name)
        self.book = Book(coord.owner, aging=s.aging)
        self.limit = limit
        self.policy = policy
        self.known_limit = initial_limit
        self.known_processes: int | None = None
        self.share = fallback_limit(initial_limit, processes=None, share=s.fallback_share)
        #: The local admission limit last sent.
        self.applied: int | None = None
        self.mirror: StateMirror | None = None
        self.leading = False
        self.leader_state: LimitState | None = None
        self.last_id = b"0-0"
        self.epoch = ""
        self.next_renew = 0.0
        self.syncs = 0
        self.restored = 0
        self.shipped = 0
        self.peak_running = 0
        self._sync_wake = anyio.Event()
        self._control_wake = anyio.Event()
        self._poked = False

    # -- waking ----------------------------------------------------------------------

    def wake_sync(self) -> None:
        self._sync_wake.set()

    def poke(self) -> None:
        """A peer freed a slot for us (or the limit grew): ask Redis now."""
        self._poked = True
        self._sync_wake.set()

    def wake_control(self) -> None:
        self._control_wake.set()

    def wake(self, wants: list[Want]) -> None:
        for w in wants:
            w.event.set()
        if self.book.running > self.peak_running:
            self.peak_running = self.book.running

    def cap(self) -> int | None:
        return None if self.coord.link.mode == "connected" else self.share

    def freeze_share(self) -> int:
        """Fix the fallback share from what was known while Redis answered."""
        s = self.coord.settings
        self.share = fallback_limit(
            self.known_limit, processes=self.known_processes, share=s.fallback_share
        )
        return self.share

    # -- joining -------------------------------------------------------------------------

    def rejoin_args(self) -> tuple[list[str], list[Any]]:
        c = self.coord
        s = c.settings
        held, regs = self.book.rejoin(self.share)
        self.next_renew = anyio.current_time() + s.renew
        return rejoin_call(
            self.keys,
            owner=c.owner,
            ttl_ms=_ms(s.lease_ttl),
            default_limit=self.known_limit,
            aging_ms=_ms(s.aging),
            new_epoch=c.epoch_candidate,
            held=held,
            registrations=regs,
        )

    def joined(self, result: list[Any], first: bool) -> None:
        epoch, limit, _holders, owners, _now = result
        self.epoch = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        self.known_limit = int(limit)
        if first:
            self.known_processes = max(1, int(owners))
            self.freeze_share()
        self.wake_sync()
        self.wake_control()

    # -- the sync loop ----------------------------------------------------------------------

    async def sync_loop(self) -> None:
        c = self.coord
        s = c.settings
        book = self.book
        last = -math.inf
        while True:
            ev = self._sync_wake
            now = anyio.current_time()
            timeout = math.inf
            if book.waiting or (self.limit.pending and c.link.trusted):
                timeout = s.poll_s
            if book.held and c.link.trusted:  # nothing is renewed while Redis is away
                timeout = min(timeout, max(0.0, self.next_renew - now))
            with anyio.move_on_after(timeout):
                await ev.wait()
            self._sync_wake = anyio.Event()
            link = c.link
            if c.handle_closed() and book.waiting:
                self.wake(book.fail_all(SchedulerClosed("the scheduler closed")))
            if not link.trusted:
                continue
            now = anyio.current_time()
            renew = bool(book.held) and now >= self.next_renew
            batch = book.batch(cap=self.cap(), renew=renew)
            samples = self.limit.take() if self.limit.ship else []
            poked, self._poked = self._poked, False
            due = book.queued and (poked or now - last >= s.poll_s)
            if not batch and not samples and not due:
                continue
            if renew:
                self.next_renew = now + s.renew
            gen = link.generation
            try:
                keys, args = self._sync_call(batch, samples)
                res = await c.op(c.scripts.sync, keys=keys, args=args)
            except Fault as exc:
                c.lose(f"sync {self.name}: {exc}")
                continue
            last = anyio.current_time()
            if gen != link.generation:
                self._stale(res)
                continue
            self.syncs += 1
            self.shipped += len(samples)
            if int(res[0]) == 0:
                c.lose("Redis lost its state (the epoch changed): counting leases in again")
                continue
            granted = [m.decode() for m in res[1]]
            self.wake(book.settle(granted, int(res[2])))
            self.restored += int(res[6])
            if int(res[7]):  # presumed dead and purged: queue again
                book.forgotten()
                self.wake_sync()
            if int(res[3]) != self.known_limit:
                self.known_limit = int(res[3])
                await c.apply_limit(self)

    def _stale(self, res: list[Any]) -> None:
        """An answer from before a loss and a rejoin: what it granted goes back."""
        if int(res[0]) == 1 and self.book.disown(m.decode() for m in res[1]):
            self.wake_sync()

    def _sync_call(self, batch: Batch, samples: list[bytes]) -> tuple[list[str], list[Any]]:
        c = self.coord
        s = c.settings
        return sync_call(
            self.keys,
            owner=c.owner,
            ttl_ms=_ms(s.lease_ttl),
            default_limit=self.known_limit,
            aging_ms=_ms(s.aging),
            epoch=self.epoch,
            notify_prefix=notify_channel(s.key_prefix, ""),
            name=self.name,
            removals=batch.removals,
            registrations=batch.registrations,
            renewals=batch.renewals,
            samples=samples,
            samples_maxlen=_SAMPLES_MAXLEN,
        )

    # -- the control loop -------------------------------------------------------------------

    async def control_loop(self) -> None:
        c = self.coord
        s = c.settings
        handle = c.handle
        self.mirror = StateMirror(route_state(*handle.local_state(self.name)))
        mirror = self.mirror
        while True:
            ev = self._control_wake
            with anyio.move_on_after(s.poll_s):
                await ev.wait()
            self._control_wake = anyio.Event()
            link = c.link
            if not link.trusted:
                await self._stand_down()
                continue
            mirror.observe(route_state(*handle.local_state(self.name)))
            report, news = mirror.report()
            k = self.keys
            gen = link.generation
            try:
                keys, args = control_call(
                    k,
                    owner=c.owner,
                    ttl_ms=_ms(s.lease_ttl),
                    report=b"" if report is None else encode_report(report),
                    publish=news,
                    want_lead=self.policy is not None,
                )
                res = await c.op(c.scripts.control, keys=keys, args=args)
                if gen != link.generation:
                    continue
                lead, limit, reports, owners, _now, reborn = res
                self.known_processes = max(1, int(owners))
                if limit is not None:
                    self.known_limit = max(1, int(limit))
                if int(reborn):
                    self.book.forgotten()
                    self.wake_sync()
                await self._lead(int(lead))
            except Fault as exc:
                mirror.reported = None
                c.lose(f"control {self.name}: {exc}")
                continue
            peers = worst(st for st in map(decode_report, reports[1::2]) if st is not None)
            decision = mirror.decide(peers)
            if decision is not None:
                await handle.set_local_state(
                    self.name, decision.routing, decision.state, decision.trials
                )
                c.publish(
                    SharedStateApplied(
                        at=anyio.current_time(),
                        endpoint=self.name,
                        routing=decision.routing,
                        state=decision.state,
                        shared=decision.shared,
                    )
                )
            await c.apply_limit(self)

    async def _stand_down(self) -> None:
        """Redis is gone: stop leading, and route by our own state again."""
        c = self.coord
        if self.leading:
            self.leading = False
            self.leader_state = None
            c.publish(LeadershipChanged(at=anyio.current_time(), endpoint=self.name, leader=False))
        mirror = self.mirror
        if mirror is not None and mirror.applied is not None:
            own = mirror.own
            mirror.applied = None
            await c.handle.set_local_state(self.name, own.routing, own.state, own.trials)
            c.publish(
                SharedStateApplied(
                    at=anyio.current_time(),
                    endpoint=self.name,
                    routing=own.routing,
                    state=own.state,
                    shared=False,
                )
            )

    async def _lead(self, lead: int) -> None:
        c = self.coord
        if lead == 0:
            if self.leading:
                self.leading = False
                self.leader_state = None
                c.publish(
                    LeadershipChanged(at=anyio.current_time(), endpoint=self.name, leader=False)
                )
            return
        assert self.policy is not None
        if not self.leading or self.leader_state is None:
            self.leading = True
            self.leader_state = self.policy.build()
            c.publish(LeadershipChanged(at=anyio.current_time(), endpoint=self.name, leader=True))
            if self.limit.ship:
                await self._warm()
        state = self.leader_state
        now = anyio.current_time()
        if self.limit.ship:
            for _ in range(4):
                got: Any = await c.op(
                    c.client.xread, {self.keys.samples: self.last_id}, count=_READ
                )
                entries: list[Any] = got[0][1] if got else []
                self._feed(entries, now)
                if len(entries) < _READ:
                    break
        new = max(1, int(state.tick(now)))
        if new != self.known_limit:
            k = self.keys
            ok = await c.op(
                c.scripts.publish_limit,
                keys=[k.leader, k.limit],
                args=[c.owner, new, k.channel],
            )
            if int(ok):
                c.publish(
                    SharedLimitPublished(at=now, endpoint=self.name, old=self.known_limit, new=new)
                )
                self.known_limit = new

    async def _warm(self) -> None:
        """Rebuild the new leader's policy from the most recent samples."""
        c = self.coord
        recent: Any = await c.op(c.client.xrevrange, self.keys.samples, count=_WARM)
        self.last_id = recent[0][0] if recent else b"0-0"
        self._feed(list(reversed(recent)), anyio.current_time())

    def _feed(self, entries: list[Any], now: float) -> None:
        state = self.leader_state
        assert state is not None
        for entry_id, fields in entries:
            self.last_id = entry_id
            raw = fields.get(b"s")
            sample = decode_sample(raw, now) if isinstance(raw, bytes) else None
            if sample is not None:
                state.update(sample, now)

    def __repr__(self) -> str:
        return (
            f"<SharedEndpoint {self.name} limit={self.known_limit} running={self.book.running}"
            f" waiting={len(self.book.waiting)} leader={self.leading}>"
        )


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
