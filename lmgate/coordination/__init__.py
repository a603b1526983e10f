"""Many processes, one limit: schedulers coordinated through Redis.

It plugs into the scheduler through the ``Coordinator`` protocol, so it
sits above the scheduler and imports it; nothing below imports this.

Per-process limits multiply: N workers each allowed 8 requests send 8N to
the one GPU server they share.  Give each process's scheduler a
coordinator and the processes that name an endpoint alike share it::

    sched = lmgate.Scheduler(
        endpoints, coordinator=lmgate.coordination.Redis("redis://127.0.0.1:6379/0")
    )

What is shared, per endpoint name:

*Slots.*  After local admission a lease also takes one of the endpoint's
shared slots, within the request's deadline, and gives it back when it is
released.  A slot is an entry in a Redis sorted set scored by its expiry;
the process renews its holders every ``renew_every`` while their calls
run, so the slots of a process killed outright come back at most
``lease_ttl`` after its last renewal, and a waiting process takes them
within one ``poll``.  Lease traffic is batched: one script call per
endpoint carries every release, new wait and renewal that accumulated, so
a lease costs about one round trip.

*Order.*  Waiting leases of all processes queue in Redis by rank =
registration time + priority x ``aging`` (the local queue's rule): lower
priority numbers go first, FIFO within a priority across processes, and a
waiter older by ``aging`` seconds per level overtakes, so no process and no
priority starves.  A freed slot goes to the head of that queue, whichever
process it belongs to (the process is told over pub/sub).  Priorities hold
*approximately* across processes: a request enters the shared queue only
once its own process admitted it, and a process admits at most the
shared limit, so its urgent requests can wait behind up to that many of
its own less urgent ones; ranks are stamped with Redis's clock at
registration, one round trip after the request arrived.

*The adaptive limit.*  One process per endpoint, elected with a lock that
expires after ``lease_ttl``, runs the endpoint's limit policy on the
samples of every process (kept in a capped Redis stream, their in-flight
count being the shared slot count) and writes the limit; the others follow
it within a poll (sooner when told over pub/sub).  When the leader dies,
another takes the lock and rebuilds the policy from the most recent
samples.  Configure every process with the same policy: the leader's is the
one in force.

*Breakers.*  Each process reports its endpoint state when it is not plainly
up (open, held, half-open), noticed within a poll and announced over
pub/sub; every process routes by the most restrictive report of the others
(down, then held, then half-open) when it is worse than its own, until the
report is withdrawn or expires (``lease_ttl``).  The state then reads
``shared:<state>``.

*Faults.*  When Redis is down, or a command takes longer than
``op_timeout``, each process serves from a conservative share of the last
limit it knew -- ``fallback_share`` of it, or by default the limit split
equally among the processes last seen -- and publishes
``CoordinationLost``.  When Redis answers again it counts its running leases
back in, publishes ``CoordinationRejoining``, keeps to its share for
``rejoin_delay`` (long enough for every process to have noticed Redis is
back and counted its own leases in), then returns to the shared limit
(``CoordinationRestored``).  So the switch back adds nothing beyond the
limit when the shares add up to no more than it.  The switch *to* fallback
cannot be as strict: calls granted through Redis just before the loss keep
running while other processes start their shares, so for at most the
length of those calls the endpoint may see up to the limit plus the
shares; once they end, the shares hold.  A Redis that restarts empty is detected by the epoch
key and handled like an outage.  A process cut off from a Redis the others
still reach (or paused longer than ``lease_ttl``) cannot renew: its slots
expire and are handed out again while its calls may still run, so until it
rejoins the endpoint may see that process's calls (at most the larger of
what it ran and its share) on top of the limit; its next renewal counts
any such call back in (``statistics().endpoints[i].restored``).

*trio.*  ``redis.asyncio`` needs an asyncio event loop and no anyio bridge
runs it under trio, so the Redis coordinator is asyncio-only: built or
started under trio it raises ``InvalidParameter``.

One Redis server is supported; Redis Cluster is not (the scripts touch
per-process keys they compute), nor is failing over to a replica (writes
it never received would be lost).
"""

from lmgate.coordination._events import (
    CoordinationLost,
    CoordinationRejoining,
    CoordinationRestored,
    LeadershipChanged,
    SharedLimitPublished,
    SharedStateApplied,
)
from lmgate.coordination._fallback import fallback_limit
from lmgate.coordination._redis import Redis
from lmgate.coordination._statistics import EndpointCoordination, RedisStatistics

__all__ = [
    "CoordinationLost",
    "CoordinationRejoining",
    "CoordinationRestored",
    "EndpointCoordination",
    "LeadershipChanged",
    "Redis",
    "RedisStatistics",
    "SharedLimitPublished",
    "SharedStateApplied",
    "fallback_limit",
]
