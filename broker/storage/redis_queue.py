"""The delivery queues on Redis: Streams with a consumer group, leases per lane, in Lua.

:class:`RedisQueue` implements :class:`broker.queue.DeliveryQueue` for several broker nodes
sharing one Redis (docs/DELIVERY.md, "Redis backend"). Keys are built in
:mod:`broker.storage.redis_keys`; each destination's keys share one hash tag, so every change
to a queue is one Lua script on one Cluster slot, atomic against every other node.

Layout. An entry's body (payload, ordering key, headers, …) is a Redis Stream entry on the
destination's stream, under stream id ``<entry id>-0``, so the id alone finds it; its mutable
state (state, attempts, lease owner and expiry, last error) is a JSON value in the
destination's ``meta`` hash, written at its first claim: an entry with no such record is
ready, never claimed (the state is derived from the body). Sorted sets index it: pending
(score id), leases (score: lease expiry), delayed retries (score: not_before), lanes and lane
heads (per ordering key), dead letters, delivered. A claimed entry is also in the consumer
group's pending list under its owner (``XCLAIM … FORCE``), and leaves it on ack, retry,
burial or release (``XACK``): ``XPENDING`` shows which node holds what, and for how long.
Redis keeps no id -> destination index (it cost memory for every queued entry): an instance
knows the ids it handed out or claimed, and looks others up on each known destination.

Claims follow :mod:`broker.queue.ordering` exactly (the contract suite checks it against the
SQLite reference): a lane's head only, never while the lane has a live lease; a run of due
entries after it. The visibility timeout is the lease: it is set from the caller's clock, and
an expired lease is reclaimed by the next claim that chooses its lane, which takes the lane
over whole (the dead owner's entries are released and ``XCLAIM``-ed to the new owner, so its
late outcomes fail). XAUTOCLAIM is not used: it reclaims single entries by the server's idle
time, blind to lanes, and could hand out a lane's second entry while its head still waits.

Times travel as decimal strings (``repr(float)``) and are stored as given: Lua's ``tostring``
and cjson keep only 14 significant digits, too few for an epoch time in microseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError
from redis.retry import Retry

from broker.effects import Enqueue
from broker.errors import StoreError
from broker.queue.base import (
    DEFAULT_LEASE_S,
    DEFAULT_RUN,
    PENDING_STATES,
    Entry,
    Ordering,
    QueueStats,
    Selection,
    State,
)
from broker.storage.redis_keys import (
    DEFAULT_PREFIX,
    DELIVERY_GROUP,
    QueueKeys,
    destinations,
    entry_ids,
    queue_keys,
)
from broker.storage.redis_tx import Tx

#: Socket timeouts of a client made by :meth:`RedisQueue.from_url` (each command is short;
#: a Redis that does not answer within this is down as far as a delivery is concerned).
DEFAULT_SOCKET_TIMEOUT_S = 5.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0
#: Retries of a command whose connection broke (every script below is safe to run twice:
#: enqueue is idempotent by id, the others refuse a second outcome for the same lease).
DEFAULT_RETRIES = 2
#: Entries a purge script removes per call, so one call never blocks Redis for long.
PURGE_BATCH = 500
#: id -> destination pairs kept in memory (ids are never reused, so they never go stale); an
#: id not here is looked for on each known destination (Redis keeps no id -> destination index).
_WHERE_CACHE_MAX = 100_000

# -- Lua ------------------------------------------------------------------------------------

ALLOCATE = """
-- Hand out entry ids for a destination (and record the destination as known).
-- KEYS[1] entry_ids counter, KEYS[2] destinations set
-- ARGV[1] destination, ARGV[2] how many ids
-- return: the last id of the block (the block is last - count + 1 .. last)
local last = redis.call('INCRBY', KEYS[1], tonumber(ARGV[2]))
redis.call('SADD', KEYS[2], ARGV[1])
return last
"""

# Shared by every queue script. KEYS[1..13] are QueueKeys.all() of one destination.
_PRELUDE = """
local STREAM, DEAD, META, PENDING, LEASES, DELAYED, LANES, HEADS, FAILING, ATTEMPTS,
      DEADIDX, DONE, CONTROL = unpack(KEYS)

-- The state of a never claimed entry: ready, body at stream id <id>-0 (see append).
local function fresh(k, c, sid)
  return {st = 'ready', n = 0, due = '0', own = '', err = '', la = '0', fs = '0', fin = '0',
          k = k, c = c, sid = sid}
end

-- An entry's state: its meta record, or, when it has none (ready, never claimed), derived
-- from its stream entry <id>-0 (ordering key and created_at read from the body).
local function load(id)
  local raw = redis.call('HGET', META, id)
  if raw then return cjson.decode(raw) end
  local sid = id .. '-0'
  local found = redis.call('XRANGE', STREAM, sid, sid)[1]
  if not found then return nil end
  local f, k, c = found[2], '', '0'
  for j = 1, #f, 2 do
    if f[j] == 'k' then k = f[j + 1] elseif f[j] == 'c' then c = f[j + 1] end
  end
  return fresh(k, c, sid)
end

local function save(id, m) redis.call('HSET', META, id, cjson.encode(m)) end

-- Append a new entry's body (fields: a flat list holding 'k' and 'c') under stream id
-- <id>-0, so the id alone finds it and a ready entry needs no meta record. An id lower than
-- the stream's last (two nodes enqueueing at once, ids handed out in one order and appended
-- in the other) goes right after the last instead, with a meta record naming its stream id.
local function append(id, k, c, fields)
  local added = redis.pcall('XADD', STREAM, id .. '-0', unpack(fields))
  if type(added) ~= 'table' or not added.err then return end
  local info, last = redis.call('XINFO', 'STREAM', STREAM), nil
  for j = 1, #info, 2 do
    if info[j] == 'last-generated-id' then last = info[j + 1] end
  end
  local ms, seq = string.match(last, '^(%d+)-(%d+)$')
  local sid = redis.call('XADD', STREAM, ms .. '-' .. string.format('%d', tonumber(seq) + 1),
                         unpack(fields))
  save(id, fresh(k, c, sid))
end

-- Lane members sort by key, then id; the key's length in front keeps keys that are
-- prefixes of others apart. Ids are 17 digits, zero-padded (ids < 2^53).
local function lane_prefix(key) return string.format('%08x', #key) .. key end
local function lane_member(key, id)
  return lane_prefix(key) .. string.format('%017d', tonumber(id))
end

local function first_of_lane(key, count)
  local p = lane_prefix(key)
  local ids = {}
  for i, member in ipairs(redis.call('ZRANGEBYLEX', LANES, '[' .. p, '(' .. p .. ':',
                                     'LIMIT', 0, count)) do
    ids[i] = string.match(string.sub(member, #p + 1), '^0*(%d+)$')
  end
  return ids
end

local function add_pending(id, key)
  redis.call('ZADD', PENDING, id, id)
  redis.call('ZADD', LANES, 0, lane_member(key, id))
  local head = redis.call('ZSCORE', HEADS, key)
  if (not head) or tonumber(head) > tonumber(id) then redis.call('ZADD', HEADS, id, key) end
end

local function leave_pending(id, key)
  redis.call('ZREM', PENDING, id)
  redis.call('ZREM', LEASES, id)
  redis.call('ZREM', DELAYED, id)
  redis.call('ZREM', FAILING, id)
  redis.call('ZREM', ATTEMPTS, id)
  redis.call('ZREM', LANES, lane_member(key, id))
  local head = redis.call('ZSCORE', HEADS, key)
  if head and tonumber(head) == tonumber(id) then
    local nxt = first_of_lane(key, 1)[1]
    if nxt then redis.call('ZADD', HEADS, nxt, key) else redis.call('ZREM', HEADS, key) end
  end
end

-- Ready, retry time reached, or lease expired.
local function is_due(id, now)
  local score = redis.call('ZSCORE', LEASES, id) or redis.call('ZSCORE', DELAYED, id)
  return (not score) or tonumber(score) <= now
end

local function ensure_group(group)
  if redis.call('EXISTS', STREAM) == 0 then
    redis.call('XGROUP', 'CREATE', STREAM, group, '0', 'MKSTREAM')
  end
end

-- in_flight -> claimable again (an entry that failed before stays 'retry', due at once).
local function unlease(id, m, group)
  redis.call('ZREM', LEASES, id)
  redis.call('XACK', STREAM, group, m.sid)
  m.own = ''
  m.due = '0'
  if m.n > 0 then
    m.st = 'retry'
    redis.call('ZADD', DELAYED, 0, id)
  else
    m.st = 'ready'
  end
  save(id, m)
end

local function forget_idle_consumer(group, consumer)
  if #redis.call('XPENDING', STREAM, group, '-', '+', 1, consumer) == 0 then
    redis.call('XGROUP', 'DELCONSUMER', STREAM, group, consumer)
  end
end

local function fields_of(stream, sid)
  local found = redis.call('XRANGE', stream, sid, sid)[1]
  if found then return found[2] end
  return {}
end

local function held(m, owner) return m and m.st == 'in_flight' and m.own == owner end
"""

ENQUEUE = (
    _PRELUDE
    + """
-- Append one entry to the destination's stream and index it as ready.
-- ARGV[1] group, ARGV[2] id, ARGV[3] ordering key, ARGV[4] content type,
-- ARGV[5] headers (JSON), ARGV[6] payload, ARGV[7] journal id, ARGV[8] created_at
-- return: 1 written, 0 already there (a retried call: enqueue is idempotent by id)
local id = ARGV[2]
if load(id) then return 0 end
ensure_group(ARGV[1])
append(id, ARGV[3], ARGV[8], {'id', id, 'k', ARGV[3], 'ct', ARGV[4], 'h', ARGV[5],
                              'p', ARGV[6], 'j', ARGV[7], 'c', ARGV[8]})
add_pending(id, ARGV[3])
return 1
"""
)

CLAIM = (
    _PRELUDE
    + """
-- Lease up to ARGV[6] lanes (runs of up to ARGV[7] entries) to an owner.
-- ARGV[1] group, ARGV[2] owner, ARGV[3] now, ARGV[4] lease expiry,
-- ARGV[5] ordering (destination | patient | none), ARGV[6] lanes, ARGV[7] run,
-- ARGV[8] lanes to skip (JSON array)
-- return: {{id, meta JSON, body fields}, ...} oldest first; {} when paused or none due
if redis.call('HGET', CONTROL, 'paused') == '1' then return {} end
local group, owner, now_s, until_s, ordering = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now, lanes, run = tonumber(now_s), tonumber(ARGV[6]), tonumber(ARGV[7])
local skip = {}
for _, lane in ipairs(cjson.decode(ARGV[8])) do skip[lane] = true end
local taken, previous = {}, {}

if ordering == 'none' then
  -- Every entry is its own lane: the oldest due entries, no take-over needed.
  local offset = 0
  while #taken < lanes do
    local ids = redis.call('ZRANGE', PENDING, offset, offset + 99)
    if #ids == 0 then break end
    for _, id in ipairs(ids) do
      if is_due(id, now) then
        taken[#taken + 1] = id
        if #taken >= lanes then break end
      end
    end
    offset = offset + 100
  end
elseif ordering == 'destination' then
  -- One lane: busy while any lease is live; else its head and the due entries after it.
  if lanes < 1 or skip[''] or redis.call('ZCOUNT', LEASES, '(' .. now_s, '+inf') > 0 then
    return {}
  end
  for _, id in ipairs(redis.call('ZRANGE', PENDING, 0, run - 1)) do
    if not is_due(id, now) then break end
    taken[#taken + 1] = id
  end
  if #taken > 0 then  -- take the lane over whole: expired leases anywhere are released
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '-inf', now_s)) do
      local m = load(id)
      previous[m.own] = true
      unlease(id, m, group)
    end
  end
else
  -- A lane per ordering key: oldest due heads first, skipping lanes with a live lease.
  local busy = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '(' .. now_s, '+inf')) do
    busy[load(id).k] = true
  end
  local chosen, offset = {}, 0
  while #chosen < lanes do
    local heads = redis.call('ZRANGE', HEADS, offset, offset + 99, 'WITHSCORES')
    if #heads == 0 then break end
    for i = 1, #heads, 2 do
      local key = heads[i]
      if not busy[key] and not skip[key]
         and is_due(string.format('%d', tonumber(heads[i + 1])), now) then
        chosen[#chosen + 1] = key
        if #chosen >= lanes then break end
      end
    end
    offset = offset + 100
  end
  if #chosen > 0 then
    local chosen_set = {}
    for _, key in ipairs(chosen) do
      chosen_set[key] = true
      for _, id in ipairs(first_of_lane(key, run)) do
        if not is_due(id, now) then break end
        taken[#taken + 1] = id
      end
    end
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '-inf', now_s)) do
      local m = load(id)
      if chosen_set[m.k] then
        previous[m.own] = true
        unlease(id, m, group)
      end
    end
  end
end

if #taken == 0 then return {} end
table.sort(taken, function(a, b) return tonumber(a) < tonumber(b) end)
local metas = {}
local xclaim = {'XCLAIM', STREAM, group, owner, '0'}
for i, id in ipairs(taken) do
  local m = load(id)
  if m.own ~= '' and m.own ~= owner then previous[m.own] = true end
  redis.call('ZREM', DELAYED, id)
  redis.call('ZADD', LEASES, until_s, id)
  m.st, m.own, m.due = 'in_flight', owner, until_s
  save(id, m)
  metas[i] = m
  xclaim[#xclaim + 1] = m.sid
end
xclaim[#xclaim + 1] = 'FORCE'
local bodies = {}
for _, found in ipairs(redis.call(unpack(xclaim))) do bodies[found[1]] = found[2] end
previous[owner] = nil
for old_owner in pairs(previous) do forget_idle_consumer(group, old_owner) end
local out = {}
for i, id in ipairs(taken) do
  out[i] = {id, cjson.encode(metas[i]), bodies[metas[i].sid] or {}}
end
return out
"""
)

RENEW = (
    _PRELUDE
    + """
-- Extend an owner's leases.
-- ARGV[1] group, ARGV[2] owner, ARGV[3] new expiry, ARGV[4..] ids
-- return: the ids the owner still held (now renewed)
local kept = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local m = load(id)
  if held(m, ARGV[2]) then
    m.due = ARGV[3]
    save(id, m)
    redis.call('ZADD', LEASES, ARGV[3], id)
    -- resets the idle time XPENDING shows (JUSTID: not counted as a delivery)
    redis.call('XCLAIM', STREAM, ARGV[1], ARGV[2], '0', m.sid, 'JUSTID')
    kept[#kept + 1] = id
  end
end
return kept
"""
)

ACK = (
    _PRELUDE
    + """
-- Mark a leased entry delivered.
-- ARGV[1] group, ARGV[2] owner, ARGV[3] id, ARGV[4] now
-- return: 1 delivered, 0 the owner does not hold the lease
local id = ARGV[3]
local m = load(id)
if not held(m, ARGV[2]) then return 0 end
leave_pending(id, m.k)
redis.call('XACK', STREAM, ARGV[1], m.sid)
m.st, m.fin, m.la, m.due, m.own = 'delivered', ARGV[4], ARGV[4], '0', ''
save(id, m)
redis.call('ZADD', DONE, ARGV[4], id)
return 1
"""
)

RETRY_LATER = (
    _PRELUDE
    + """
-- Record a failed attempt; the entry (and its lane) waits on the delayed set.
-- ARGV[1] group, ARGV[2] owner, ARGV[3] id, ARGV[4] now, ARGV[5] error, ARGV[6] not_before
-- return: 1 recorded, 0 the owner does not hold the lease
local id = ARGV[3]
local m = load(id)
if not held(m, ARGV[2]) then return 0 end
redis.call('ZREM', LEASES, id)
redis.call('XACK', STREAM, ARGV[1], m.sid)
m.st, m.n, m.due, m.err, m.la, m.own = 'retry', m.n + 1, ARGV[6], ARGV[5], ARGV[4], ''
if m.fs == '0' then m.fs = ARGV[4] end
save(id, m)
redis.call('ZADD', DELAYED, ARGV[6], id)
redis.call('ZADD', FAILING, m.fs, id)
redis.call('ZADD', ATTEMPTS, m.n, id)
return 1
"""
)

BURY = (
    _PRELUDE
    + """
-- Record a failed attempt and move the entry to the dead-letter stream with its last error.
-- ARGV[1] group, ARGV[2] owner, ARGV[3] id, ARGV[4] now, ARGV[5] error
-- return: 1 buried, 0 the owner does not hold the lease
local id = ARGV[3]
local m = load(id)
if not held(m, ARGV[2]) then return 0 end
leave_pending(id, m.k)
redis.call('XACK', STREAM, ARGV[1], m.sid)
m.n = m.n + 1
local xadd = {'XADD', DEAD, '*'}
for _, v in ipairs(fields_of(STREAM, m.sid)) do xadd[#xadd + 1] = v end
for _, v in ipairs({'err', ARGV[5], 'attempts', tostring(m.n), 'died', ARGV[4]}) do
  xadd[#xadd + 1] = v
end
local dead_sid = redis.call(unpack(xadd))
redis.call('XDEL', STREAM, m.sid)
if m.fs == '0' then m.fs = ARGV[4] end
m.st, m.err, m.la, m.fin, m.due, m.own, m.sid = 'dead', ARGV[5], ARGV[4], ARGV[4], '0', '',
                                                dead_sid
save(id, m)
redis.call('ZADD', DEADIDX, id, id)
return 1
"""
)

RELEASE = (
    _PRELUDE
    + """
-- Give leased entries back unattempted.
-- ARGV[1] group, ARGV[2] owner, ARGV[3..] ids
-- return: how many were released
local count = 0
for i = 3, #ARGV do
  local m = load(ARGV[i])
  if held(m, ARGV[2]) then
    unlease(ARGV[i], m, ARGV[1])
    count = count + 1
  end
end
if count > 0 then forget_idle_consumer(ARGV[1], ARGV[2]) end
return count
"""
)

LOCATE = (
    _PRELUDE
    + """
-- Which of some ids are this destination's entries (in whatever state).
-- ARGV[1..] ids
-- return: the ids found here
local found = {}
for _, id in ipairs(ARGV) do
  if load(id) then found[#found + 1] = id end
end
return found
"""
)

READ = (
    _PRELUDE
    + """
-- Entries by id, in whatever state.
-- ARGV[1..] ids
-- return: {{id, meta JSON, body fields}, ...} for the ids that exist
local out = {}
for _, id in ipairs(ARGV) do
  local m = load(id)
  if m then
    local stream = STREAM
    if m.st == 'dead' then stream = DEAD end
    out[#out + 1] = {id, cjson.encode(m), fields_of(stream, m.sid)}
  end
end
return out
"""
)

LIST = (
    _PRELUDE
    + """
-- Entries in some states, lowest ids first (delivered: the earliest finished).
-- ARGV[1] states (JSON array), ARGV[2] limit, ARGV[3] '1' with bodies, '0' without
-- return: {{id, meta JSON, body fields or {}}, ...}
local wanted = {}
for _, st in ipairs(cjson.decode(ARGV[1])) do wanted[st] = true end
local limit = tonumber(ARGV[2])
local ids = {}
if wanted['ready'] or wanted['in_flight'] or wanted['retry'] then
  local found, offset = 0, 0
  while found < limit do
    local batch = redis.call('ZRANGE', PENDING, offset, offset + 199)
    if #batch == 0 then break end
    for _, id in ipairs(batch) do
      local st = 'ready'
      if redis.call('ZSCORE', LEASES, id) then st = 'in_flight'
      elseif redis.call('ZSCORE', DELAYED, id) then st = 'retry' end
      if wanted[st] then
        ids[#ids + 1] = id
        found = found + 1
        if found >= limit then break end
      end
    end
    offset = offset + 200
  end
end
if wanted['dead'] and limit > 0 then
  for _, id in ipairs(redis.call('ZRANGE', DEADIDX, 0, limit - 1)) do ids[#ids + 1] = id end
end
if wanted['delivered'] and limit > 0 then
  for _, id in ipairs(redis.call('ZRANGE', DONE, 0, limit - 1)) do ids[#ids + 1] = id end
end
table.sort(ids, function(a, b) return tonumber(a) < tonumber(b) end)
local out = {}
for i = 1, math.min(#ids, limit) do
  local m = load(ids[i])
  local body = {}
  if ARGV[3] == '1' then
    local stream = STREAM
    if m.st == 'dead' then stream = DEAD end
    body = fields_of(stream, m.sid)
  end
  out[i] = {ids[i], cjson.encode(m), body}
end
return out
"""
)

REPLAY = (
    _PRELUDE
    + """
-- Put dead entries back at the tail of the stream under new ids, attempts reset.
-- ARGV[1] group, ARGV[2] now, ARGV[3..] pairs: old id, new id
-- return: {old id, new id, ...} for the entries that were still dead
ensure_group(ARGV[1])
local done = {}
for i = 3, #ARGV, 2 do
  local old, new = ARGV[i], ARGV[i + 1]
  local m = load(old)
  if m and m.st == 'dead' then
    local body = {}
    local f = fields_of(DEAD, m.sid)
    for j = 1, #f, 2 do body[f[j]] = f[j + 1] end
    append(new, m.k, ARGV[2], {'id', new, 'k', m.k, 'ct', body['ct'] or '',
                               'h', body['h'] or '{}', 'p', body['p'] or '',
                               'j', body['j'] or '0', 'c', ARGV[2]})
    add_pending(new, m.k)
    redis.call('XDEL', DEAD, m.sid)
    redis.call('HDEL', META, old)
    redis.call('ZREM', DEADIDX, old)
    done[#done + 1] = old
    done[#done + 1] = new
  end
end
return done
"""
)

PURGE_DEAD = (
    _PRELUDE
    + """
-- Delete dead entries.
-- ARGV[1..] ids
-- return: the ids deleted (those still dead)
local gone = {}
for _, id in ipairs(ARGV) do
  local m = load(id)
  if m and m.st == 'dead' then
    redis.call('XDEL', DEAD, m.sid)
    redis.call('HDEL', META, id)
    redis.call('ZREM', DEADIDX, id)
    gone[#gone + 1] = id
  end
end
return gone
"""
)

PURGE_DELIVERED = (
    _PRELUDE
    + """
-- Delete delivered entries finished before a time, a batch at a time.
-- ARGV[1] cutoff, ARGV[2] batch size
-- return: the ids deleted (fewer than the batch size: nothing older is left)
local gone = redis.call('ZRANGEBYSCORE', DONE, '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(gone) do
  local m = load(id)
  if m then redis.call('XDEL', STREAM, m.sid) end
  redis.call('HDEL', META, id)
  redis.call('ZREM', DONE, id)
end
return gone
"""
)

STATS = (
    _PRELUDE
    + """
-- Counts of one destination.
-- ARGV: none
-- return: {pending, in_flight, retry, dead, delivered, oldest created_at, retrying since,
--          most attempts, paused ('1'/'0'/''), paused_at, has a control record (0/1)}
local oldest = '0'
local first = redis.call('ZRANGE', PENDING, 0, 0)[1]
if first then oldest = load(first).c end
local failing = redis.call('ZRANGE', FAILING, 0, 0, 'WITHSCORES')
local tries = redis.call('ZREVRANGE', ATTEMPTS, 0, 0, 'WITHSCORES')
local control = redis.call('HMGET', CONTROL, 'paused', 'paused_at')
return {redis.call('ZCARD', PENDING), redis.call('ZCARD', LEASES),
        redis.call('ZCARD', DELAYED), redis.call('ZCARD', DEADIDX), redis.call('ZCARD', DONE),
        oldest, failing[2] or '0', tries[2] or '0', control[1] or '', control[2] or '0',
        redis.call('EXISTS', CONTROL)}
"""
)


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Redis and socket errors become :class:`StoreError` here, the one edge (STYLE.md)."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreError(f"redis queue: {what}: {type(exc).__name__}: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _num(value: float) -> str:
    """A time or number as Redis and Lua should see it: exact, round-trip decimal."""
    return repr(float(value))


def _enqueue_args(entry_id: int, effect: Enqueue, journal_id: int, now: float) -> list[Any]:
    """ARGV of the ENQUEUE script for one entry."""
    return [
        DELIVERY_GROUP,
        entry_id,
        effect.ordering_key,
        effect.content_type,
        json.dumps(effect.headers),
        effect.payload,
        journal_id,
        _num(now),
    ]


class RedisOutbox:
    """Queue entries from inside a store transaction (:mod:`broker.storage.redis_tx`), so an
    inbound message's outbound messages commit in the same MULTI/EXEC as its effects.

    Works on the synchronous client the store uses; ids come from the same counter as
    :meth:`RedisQueue.enqueue`'s, and the entry is written by the same ENQUEUE script.
    """

    def __init__(self, client: SyncRedis, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._allocate = client.register_script(ALLOCATE)
        self._enqueue = client.register_script(ENQUEUE)

    def add(self, tx: Tx, effect: Enqueue, journal_id: int, now: float) -> int:
        """Allocate the entry's id now (a gap if the unit is retried: ids only need to
        grow) and queue its ENQUEUE in ``tx``; returns the id."""
        keys = (entry_ids(self.prefix), destinations(self.prefix))
        entry_id = int(self._allocate(keys=keys, args=[effect.destination, 1], client=self.client))
        args = _enqueue_args(entry_id, effect, journal_id, now)
        tx.script(self._enqueue, queue_keys(effect.destination, self.prefix).all(), args)
        return entry_id


class RedisQueue:
    """:class:`broker.queue.DeliveryQueue` on Redis (see the module docstring).

    ``client`` must return bytes (``decode_responses=False``). ``async with`` or
    :meth:`aclose` closes it when this queue made it (:meth:`from_url`).
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] = time.time,
        owns_client: bool = False,
        also_close: Sequence[Redis] = (),
    ) -> None:
        """``also_close``: more clients :meth:`aclose` closes (a Sentinel's own clients)."""
        self.client = client
        self.prefix = prefix
        self.clock = clock
        self._owns_client = owns_client
        self._also_close = tuple(also_close)
        self._where: dict[int, str] = {}
        # Registered once per client; redis-py loads a script again after a Redis restart.
        self._allocate = client.register_script(ALLOCATE)
        self._enqueue = client.register_script(ENQUEUE)
        self._claim = client.register_script(CLAIM)
        self._renew = client.register_script(RENEW)
        self._ack = client.register_script(ACK)
        self._retry_later = client.register_script(RETRY_LATER)
        self._bury = client.register_script(BURY)
        self._release = client.register_script(RELEASE)
        self._locate = client.register_script(LOCATE)
        self._read = client.register_script(READ)
        self._list_entries = client.register_script(LIST)
        self._replay = client.register_script(REPLAY)
        self._purge_dead = client.register_script(PURGE_DEAD)
        self._purge_delivered = client.register_script(PURGE_DELIVERED)
        self._stats = client.register_script(STATS)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] = time.time,
        socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
    ) -> RedisQueue:
        """A queue with its own client for ``redis://HOST:PORT/DB`` (or ``rediss://``);
        redis-py sets TCP_NODELAY on its sockets. Raises StoreError for a malformed URL."""
        with _translated(f"connect to {url!r}"):
            try:
                client = Redis.from_url(
                    url,
                    socket_timeout=socket_timeout_s,
                    socket_connect_timeout=connect_timeout_s,
                    retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
                    decode_responses=False,
                )
            except ValueError as exc:
                raise StoreError(f"store: {url!r}: {exc}; expected redis://HOST:PORT/DB") from exc
        return cls(client, prefix=prefix, clock=clock, owns_client=True)

    async def aclose(self) -> None:
        """Close the client if this queue made it."""
        if self._owns_client:
            await self.client.aclose()
        for other in self._also_close:
            await other.aclose()

    async def __aenter__(self) -> RedisQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- plumbing ------------------------------------------------------------------------

    def _keys(self, destination: str) -> QueueKeys:
        return queue_keys(destination, self.prefix)

    async def _run(
        self, what: str, script: AsyncScript, destination: str, args: Iterable[Any]
    ) -> Any:
        with _translated(f"{what} on {destination!r}"):
            return await script(keys=self._keys(destination).all(), args=list(args))

    async def _allocate_ids(self, destination: str, count: int) -> list[int]:
        """``count`` new ids (increasing), recorded as the destination's. A step of its own:
        these keys are in another Cluster slot than the destination's."""
        keys = (entry_ids(self.prefix), destinations(self.prefix))
        with _translated(f"allocate ids for {destination!r}"):
            last = int(await self._allocate(keys=keys, args=[destination, count]))
        new = list(range(last - count + 1, last + 1))
        self._remember(dict.fromkeys(new, destination))
        return new

    def _remember(self, where: dict[int, str]) -> None:
        if len(self._where) + len(where) > _WHERE_CACHE_MAX:
            self._where.clear()
        self._where.update(where)

    async def _destinations_of(self, ids: Iterable[int]) -> dict[str, list[int]]:
        """The given ids grouped by destination (unknown ids left out)."""
        ids = list(dict.fromkeys(ids))
        where = {i: self._where[i] for i in ids if i in self._where}
        missing = [i for i in ids if i not in where]
        if missing:
            # Not claimed or enqueued by this instance: ask each destination (there are few;
            # an index in Redis would cost memory for every queued entry).
            found: dict[int, str] = {}
            for destination in await self._known_destinations():
                here = await self._run("look up entry ids", self._locate, destination, missing)
                found.update(dict.fromkeys((int(i) for i in here), destination))
                missing = [i for i in missing if i not in found]
                if not missing:
                    break
            self._remember(found)
            where.update(found)
        grouped: dict[str, list[int]] = {}
        for i in ids:
            if i in where:
                grouped.setdefault(where[i], []).append(i)
        return grouped

    def _forget(self, ids: Sequence[int]) -> None:
        """Drop deleted entries from the id -> destination cache."""
        for i in ids:
            self._where.pop(i, None)

    async def _known_destinations(self) -> list[str]:
        with _translated("list destinations"):
            members = await self.client.smembers(destinations(self.prefix))
        return sorted(_text(m) for m in members)

    async def _outcome(self, what: str, script: AsyncScript, entry_id: int, *args: Any) -> bool:
        where = await self._destinations_of([entry_id])
        if not where:
            return False
        ((destination, _),) = where.items()
        return bool(await self._run(what, script, destination, [DELIVERY_GROUP, *args]))

    # -- writing -------------------------------------------------------------------------

    async def enqueue(self, effect: Enqueue, *, journal_id: int = 0) -> int:
        (entry_id,) = await self._allocate_ids(effect.destination, 1)
        args = _enqueue_args(entry_id, effect, journal_id, self.clock())
        await self._run("enqueue", self._enqueue, effect.destination, args)
        return entry_id

    async def claim(
        self,
        destination: str,
        owner: str,
        *,
        ordering: Ordering = Ordering.DESTINATION,
        lanes: int = 1,
        run: int = DEFAULT_RUN,
        lease_s: float = DEFAULT_LEASE_S,
        exclude_lanes: Sequence[str] = (),
    ) -> list[Entry]:
        now = self.clock()
        args = [
            DELIVERY_GROUP,
            owner,
            _num(now),
            _num(now + lease_s),
            str(ordering),
            int(lanes),
            max(0, int(run)),
            json.dumps(list(exclude_lanes)),
        ]
        rows = await self._run("claim", self._claim, destination, args)
        entries = [_entry(destination, row) for row in rows]
        self._remember({e.id: destination for e in entries})
        return entries

    async def renew(self, owner: str, ids: Sequence[int], lease_s: float) -> set[int]:
        until = _num(self.clock() + lease_s)
        kept: set[int] = set()
        for destination, some in (await self._destinations_of(ids)).items():
            args = [DELIVERY_GROUP, owner, until, *some]
            kept.update(int(i) for i in await self._run("renew", self._renew, destination, args))
        return kept

    async def ack(self, owner: str, entry_id: int) -> bool:
        return await self._outcome("ack", self._ack, entry_id, owner, entry_id, _num(self.clock()))

    async def ack_many(self, owner: str, ids: Sequence[int]) -> set[int]:
        # One script call per entry (each is atomic on its own); sent concurrently, so the
        # client pipelines them over its connections.
        done = await asyncio.gather(*(self.ack(owner, i) for i in ids))
        return {i for i, ok in zip(ids, done, strict=True) if ok}

    async def retry_later(self, owner: str, entry_id: int, error: str, not_before: float) -> bool:
        now = _num(self.clock())
        args = (owner, entry_id, now, error, _num(not_before))
        return await self._outcome("retry_later", self._retry_later, entry_id, *args)

    async def bury(self, owner: str, entry_id: int, error: str) -> bool:
        args = (owner, entry_id, _num(self.clock()), error)
        return await self._outcome("bury", self._bury, entry_id, *args)

    async def release(self, owner: str, ids: Sequence[int]) -> int:
        count = 0
        for destination, some in (await self._destinations_of(ids)).items():
            args = [DELIVERY_GROUP, owner, *some]
            count += int(await self._run("release", self._release, destination, args))
        return count

    async def replay(self, destination: str, selection: Selection | None = None) -> list[int]:
        chosen = [e.id for e in await self._selected(destination, selection)]
        if not chosen:
            return []
        new_ids = await self._allocate_ids(destination, len(chosen))
        pairs = [x for pair in zip(chosen, new_ids, strict=True) for x in pair]
        args = [DELIVERY_GROUP, _num(self.clock()), *pairs]
        done = [int(x) for x in await self._run("replay", self._replay, destination, args)]
        replayed = dict(zip(done[::2], done[1::2], strict=True))
        used = set(replayed.values())
        self._forget([*replayed, *(i for i in new_ids if i not in used)])
        return [replayed[old] for old in chosen if old in replayed]

    async def purge_dead(self, destination: str, selection: Selection | None = None) -> int:
        chosen = [e.id for e in await self._selected(destination, selection)]
        if not chosen:
            return 0
        gone = await self._run("purge dead", self._purge_dead, destination, chosen)
        self._forget([int(i) for i in gone])
        return len(gone)

    async def purge_delivered(self, older_than_s: float) -> int:
        cutoff = _num(self.clock() - older_than_s)
        total = 0
        for destination in await self._known_destinations():
            while True:
                args = [cutoff, PURGE_BATCH]
                gone = await self._run("purge delivered", self._purge_delivered, destination, args)
                self._forget([int(i) for i in gone])
                total += len(gone)
                if len(gone) < PURGE_BATCH:
                    break
        return total

    async def pause(self, destination: str) -> None:
        with _translated(f"pause {destination!r}"):
            await self.client.sadd(destinations(self.prefix), destination)
            await self.client.hset(
                self._keys(destination).control,
                mapping={"paused": "1", "paused_at": _num(self.clock())},
            )

    async def resume(self, destination: str) -> None:
        with _translated(f"resume {destination!r}"):
            await self.client.hset(
                self._keys(destination).control, mapping={"paused": "0", "paused_at": "0"}
            )

    # -- reading -------------------------------------------------------------------------

    async def get(self, entry_id: int) -> Entry | None:
        for destination, some in (await self._destinations_of([entry_id])).items():
            rows = await self._run("get", self._read, destination, some)
            if rows:
                return _entry(destination, rows[0])
        return None

    async def entries(
        self,
        destination: str | None = None,
        *,
        states: Sequence[State] = PENDING_STATES,
        limit: int = 100,
    ) -> list[Entry]:
        names = [destination] if destination is not None else await self._known_destinations()
        found: list[Entry] = []
        for name in names:
            found.extend(await self._list(name, states, limit, bodies=True))
        return sorted(found, key=lambda e: e.id)[: max(0, limit)]

    async def dead(self, destination: str | None = None, *, limit: int = 100) -> list[Entry]:
        return await self.entries(destination, states=(State.DEAD,), limit=limit)

    async def stats(self, destinations: Sequence[str] = ()) -> dict[str, QueueStats]:
        named = set(destinations)
        out: dict[str, QueueStats] = {}
        for name in sorted(named | set(await self._known_destinations())):
            row = await self._run("stats", self._stats, name, [])
            pending, in_flight, retry, dead, _done = (int(x) for x in row[:5])
            oldest, since, attempts, paused, paused_at, has_control = row[5:]
            if not (name in named or pending or dead or int(has_control)):
                continue
            out[name] = QueueStats(
                destination=name,
                ready=pending - in_flight - retry,
                in_flight=in_flight,
                retry=retry,
                dead=dead,
                oldest_created_at=float(oldest),
                retrying_since=float(since),
                max_attempts=int(float(attempts)),
                paused=paused == b"1",
                paused_at=float(paused_at),
            )
        return out

    async def _list(
        self, destination: str, states: Sequence[State], limit: int, *, bodies: bool
    ) -> list[Entry]:
        args = [json.dumps([str(s) for s in states]), max(0, limit), "1" if bodies else "0"]
        rows = await self._run("list entries", self._list_entries, destination, args)
        return [_entry(destination, row) for row in rows]

    async def _selected(self, destination: str, selection: Selection | None) -> list[Entry]:
        """The dead entries a selection names (read without bodies; the scripts that act
        on them check again that each is still dead)."""
        chosen = selection or Selection()
        if chosen.ids is not None and not chosen.ids:
            return []
        dead = await self._list(destination, (State.DEAD,), 1 << 31, bodies=False)
        return [e for e in dead if chosen.matches(e)]


def _entry(destination: str, row: Sequence[Any]) -> Entry:
    """An Entry from a script's ``{id, meta JSON, body fields}``."""
    raw_id, raw_meta, flat = row
    meta = json.loads(raw_meta)
    body: dict[bytes, bytes] = dict(zip(flat[::2], flat[1::2], strict=True))
    return Entry(
        id=int(raw_id),
        destination=destination,
        payload=body.get(b"p", b""),
        ordering_key=str(meta["k"]),
        content_type=body.get(b"ct", b"").decode(),
        headers=json.loads(body.get(b"h", b"{}")),
        created_at=float(meta["c"]),
        state=State(meta["st"]),
        attempts=int(meta["n"]),
        not_before=float(meta["due"]),
        last_error=str(meta["err"]),
        last_attempt_at=float(meta["la"]),
        failed_since=float(meta["fs"]),
        lease_owner=str(meta["own"]),
        finished_at=float(meta["fin"]),
        journal_id=int(body.get(b"j", b"0")),
    )


__all__ = ["RedisQueue"]
