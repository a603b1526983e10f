"""The Redis key layout and the Lua scripts that change it atomically.

Per endpoint name (``{name}`` is a hash tag, so an endpoint's keys share a
cluster slot), under ``key_prefix``:

``h``      ZSET of slot holders, scored by expiry (ms, Redis clock).  Holders
           renew while their call runs; an entry whose process died is
           purged once its score passes, which is what returns the slots of
           a process killed with SIGKILL.
``q``      ZSET of waiters, scored by rank = registration time (ms) +
           priority * aging (ms): lower priority numbers first, FIFO within
           a priority across processes, and a waiter ``aging`` seconds older
           per level overtakes -- the local queue's rule.
``o``      ZSET of live processes (owner ids), scored by expiry.
``w:<o>``  SET of owner ``o``'s waiters, dropped with it when it expires.
``l``      the shared limit (written by the leader; first writer seeds it).
``L``      the leader lock: owner id with a TTL.
``s``      STREAM of samples (capped) the leader feeds its limit policy.
``b``      HASH owner -> "expiry_ms|report": each process's breaker state.
``e``      epoch: a random id made when the keys are first created; a
           process that finds another one knows Redis lost its state.
``c``      pub/sub channel: the limit or a breaker changed.

Waiters are granted only from the head of ``q``: a free slot goes to the
most urgent waiter of any process.  A script grants its caller's waiters
that are in the head, and tells the other processes whose waiters are
there (on ``<prefix>:n:<owner>``) when it freed a slot for them.

Every script reads the time from Redis (``TIME``) unless handed one, so
the expiry of every process is judged by one clock; tests pass a time.
"""

from __future__ import annotations

from typing import final

__all__ = ["CONTROL", "FAREWELL", "PUBLISH_LIMIT", "REJOIN", "SYNC", "Keys", "notify_channel"]


@final
class Keys:
    """Key and channel names of one endpoint."""

    __slots__ = (
        "base",
        "breaker",
        "channel",
        "epoch",
        "holders",
        "leader",
        "limit",
        "owners",
        "samples",
        "waiting",
    )

    def __init__(self, prefix: str, name: str) -> None:
        self.base = f"{prefix}:{{{name}}}"
        b = self.base
        self.holders = f"{b}:h"
        self.waiting = f"{b}:q"
        self.owners = f"{b}:o"
        self.limit = f"{b}:l"
        self.leader = f"{b}:L"
        self.samples = f"{b}:s"
        self.breaker = f"{b}:b"
        self.epoch = f"{b}:e"
        self.channel = f"{b}:c"

    def waiters_of(self, owner: str) -> str:
        return f"{self.base}:w:{owner}"

    def __repr__(self) -> str:
        return f"<Keys {self.base}>"


def notify_channel(prefix: str, owner: str) -> str:
    """Where a process hears that a slot was freed for one of its waiters."""
    return f"{prefix}:n:{owner}"


_NOW = """
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# Drops expired holders and dead owners (with their waiters); returns how
# many entries went, i.e. whether slots may have been freed.
_PURGE = """
local function zrem_all(key, members)
  for i = 1, #members, 500 do
    redis.call('ZREM', key, unpack(members, i, math.min(i + 499, #members)))
  end
end
local function purge(holders, waiting, owners, base)
  local n = redis.call('ZREMRANGEBYSCORE', holders, '-inf', now)
  local dead = redis.call('ZRANGEBYSCORE', owners, '-inf', now, 'LIMIT', 0, 64)
  for _, o in ipairs(dead) do
    local ws = base .. ':w:' .. o
    zrem_all(waiting, redis.call('SMEMBERS', ws))
    redis.call('DEL', ws)
    redis.call('ZREM', owners, o)
    n = n + 1
  end
  return n
end
local function current_limit(key, default)
  local lim = tonumber(redis.call('GET', key))
  if not lim then
    lim = tonumber(default)
    redis.call('SET', key, lim)
  end
  return lim
end
"""

#: One round trip of lease traffic.
#: KEYS: holders, waiting, owners, limit, epoch, own waiter set, samples
#: ARGV: owner, ttl_ms, now|'', default_limit, aging_ms, epoch, base,
#:       notify_prefix, name, samples_maxlen,
#:       n, removals..., n, (member, priority)..., n, renewals..., n, samples...
#: Returns {1, granted, holders, limit, waiting, now, restored, reborn}
#: or {0, epoch} when the epoch is not the caller's.
SYNC = (
    _NOW
    + _PURGE
    + """
local holders, waiting, owners, ownset = KEYS[1], KEYS[2], KEYS[3], KEYS[6]
local owner, ttl = ARGV[1], tonumber(ARGV[2])
local epoch = redis.call('GET', KEYS[5])
if epoch ~= ARGV[6] then return {0, epoch or ''} end
local changed = purge(holders, waiting, owners, ARGV[7])
local reborn = redis.call('ZADD', owners, now + ttl, owner)
local i = 11
local n = tonumber(ARGV[i])
for j = i + 1, i + n do
  local m = ARGV[j]
  changed = changed + redis.call('ZREM', holders, m)
  redis.call('ZREM', waiting, m)
  redis.call('SREM', ownset, m)
end
i = i + n + 1
n = tonumber(ARGV[i])
local aging = tonumber(ARGV[5])
for j = i + 1, i + 2 * n, 2 do
  redis.call('ZADD', waiting, 'NX', now + tonumber(ARGV[j + 1]) * aging, ARGV[j])
  redis.call('SADD', ownset, ARGV[j])
end
i = i + 2 * n + 1
n = tonumber(ARGV[i])
local restored = 0
for j = i + 1, i + n do
  restored = restored + redis.call('ZADD', holders, now + ttl, ARGV[j])
end
i = i + n + 1
n = tonumber(ARGV[i])
for j = i + 1, i + n do
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[10], '*', 's', ARGV[j])
end
local lim = current_limit(KEYS[4], ARGV[4])
local held = redis.call('ZCARD', holders)
local granted = {}
local free = lim - held
if free > 0 then
  local mine = owner .. ':'
  local others = {}
  for _, m in ipairs(redis.call('ZRANGE', waiting, 0, free - 1)) do
    if string.sub(m, 1, #mine) == mine then
      redis.call('ZREM', waiting, m)
      redis.call('SREM', ownset, m)
      redis.call('ZADD', holders, now + ttl, m)
      granted[#granted + 1] = m
    else
      local o = string.match(m, '^([^:]*):')
      if o then others[o] = true end
    end
  end
  held = held + #granted
  if changed > 0 then
    for o, _ in pairs(others) do redis.call('PUBLISH', ARGV[8] .. o, ARGV[9]) end
  end
end
return {1, granted, held, lim, redis.call('ZCARD', waiting), now, restored, reborn}
"""
)

#: Count this process back in after a loss (or for the first time).
#: KEYS: holders, waiting, owners, limit, epoch, own waiter set
#: ARGV: owner, ttl_ms, now|'', default_limit, aging_ms, new_epoch, base,
#:       n, held..., n, (member, priority)...
#: Drops the process's old waiters and any holder entry of its that is not
#: running any more, counts every running lease, queues the given wants.
#: Returns {epoch, limit, holders, owners, now}.
REJOIN = (
    _NOW
    + _PURGE
    + """
local holders, waiting, owners, ownset = KEYS[1], KEYS[2], KEYS[3], KEYS[6]
local owner, ttl = ARGV[1], tonumber(ARGV[2])
local epoch = redis.call('GET', KEYS[5])
if not epoch then
  epoch = ARGV[6]
  redis.call('SET', KEYS[5], epoch)
end
purge(holders, waiting, owners, ARGV[7])
zrem_all(waiting, redis.call('SMEMBERS', ownset))
redis.call('DEL', ownset)
local i = 8
local n = tonumber(ARGV[i])
local keep = {}
for j = i + 1, i + n do keep[ARGV[j]] = true end
local mine = owner .. ':'
for _, m in ipairs(redis.call('ZRANGE', holders, 0, -1)) do
  if string.sub(m, 1, #mine) == mine and not keep[m] then redis.call('ZREM', holders, m) end
end
for j = i + 1, i + n do redis.call('ZADD', holders, now + ttl, ARGV[j]) end
i = i + n + 1
n = tonumber(ARGV[i])
local aging = tonumber(ARGV[5])
for j = i + 1, i + 2 * n, 2 do
  redis.call('ZADD', waiting, 'NX', now + tonumber(ARGV[j + 1]) * aging, ARGV[j])
  redis.call('SADD', ownset, ARGV[j])
end
redis.call('ZADD', owners, now + ttl, owner)
local lim = current_limit(KEYS[4], ARGV[4])
return {epoch, lim, redis.call('ZCARD', holders), redis.call('ZCARD', owners), now}
"""
)

#: Heartbeat, leadership, breaker reports: one round trip per poll.
#: KEYS: owners, leader, limit, breaker
#: ARGV: owner, ttl_ms, now|'', report|'', publish (0/1), channel, want_lead (0/1)
#: Returns {lead (0 no, 1 kept, 2 won), limit|false, reports (flat), owners, now, reborn}
CONTROL = (
    _NOW
    + """
local owner, ttl = ARGV[1], tonumber(ARGV[2])
local reborn = redis.call('ZADD', KEYS[1], now + ttl, owner)
local lead = 0
local cur = redis.call('GET', KEYS[2])
if not cur then
  if ARGV[7] == '1' then
    redis.call('SET', KEYS[2], owner, 'PX', ttl)
    lead = 2
  end
elseif cur == owner then
  redis.call('PEXPIRE', KEYS[2], ttl)
  lead = 1
end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[4], owner, (now + ttl) .. '|' .. ARGV[4])
else
  redis.call('HDEL', KEYS[4], owner)
end
if ARGV[5] == '1' then redis.call('PUBLISH', ARGV[6], 'state') end
local reports = {}
local all = redis.call('HGETALL', KEYS[4])
for j = 1, #all, 2 do
  local exp = tonumber(string.match(all[j + 1], '^(%d+)|'))
  if exp == nil or exp <= now then
    redis.call('HDEL', KEYS[4], all[j])
  elseif all[j] ~= owner then
    reports[#reports + 1] = all[j]
    reports[#reports + 1] = string.sub(all[j + 1], #tostring(exp) + 2)
  end
end
local owners = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
return {lead, redis.call('GET', KEYS[3]), reports, owners, now, reborn}
"""
)

#: The leader writes the limit -- only while it still holds the lock.
#: KEYS: leader, limit   ARGV: owner, limit, channel
PUBLISH_LIMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[3], 'limit')
return 1
"""

#: Leave cleanly: slots, waiters, heartbeat, lock and report go at once.
#: KEYS: holders, waiting, owners, own waiter set, leader, breaker
#: ARGV: owner, notify_prefix, name
FAREWELL = """
local owner = ARGV[1]
local mine = owner .. ':'
local freed = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(m, 1, #mine) == mine then freed = freed + redis.call('ZREM', KEYS[1], m) end
end
for _, m in ipairs(redis.call('SMEMBERS', KEYS[4])) do redis.call('ZREM', KEYS[2], m) end
redis.call('DEL', KEYS[4])
redis.call('ZREM', KEYS[3], owner)
if redis.call('GET', KEYS[5]) == owner then redis.call('DEL', KEYS[5]) end
redis.call('HDEL', KEYS[6], owner)
if freed > 0 then
  local seen = {}
  for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, freed - 1)) do
    local o = string.match(m, '^([^:]*):')
    if o and not seen[o] then
      seen[o] = true
      redis.call('PUBLISH', ARGV[2] .. o, ARGV[3])
    end
  end
end
return freed
"""
