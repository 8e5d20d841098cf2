"""The Redis store: several instances share one Redis, every decision is one Lua script.

A script runs atomically in Redis, so the read and the write of a decision
(count an attempt, end a verification, take a claim, lease outbox items) can
never interleave with another instance's.

Every step but a few goes over one pipelined connection
(engine/stores/redis_connection.py): scripts by SHA, loaded when Redis lacks
them; ``listen``'s subscriptions have a connection each. redis-py keeps the
rare reads that pipeline many commands: the history's and the holds'.

Keys, all under ``prefix`` (default ``mfa:``):

- ``v:{id}``: a verification, as a hash with short field names (see ``_SHORT``);
  it expires RETAIN_FINISHED_SECONDS after it would have expired, and again
  RETAIN_FINISHED_SECONDS after it ends;
- ``expiry``: sorted set of pending verification ids by ``expires_at``;
- ``call:{call_id}``: sorted set of a call's verification ids by ``expires_at``;
- ``hit:{key}``: sorted set of an exact window's events by time (see ``windows``): a
  send limit's, or a failure budget's wrong codes;
- ``count:{key}@{bucket}``: a bucketed window's count in one fixed bucket;
- ``hold:{prefix}``: a pumping guard's hold, as a hash (see ``_hold``); ``holds``: sorted
  set of held prefixes by the end of their hold;
- ``claim:{key}``, ``record:{kind}:{id}``, ``secret:{name}``: strings;
- ``outbox:{queue}:due`` (sorted set by due time), ``outbox:{queue}:payload`` and
  ``outbox:{queue}:attempts`` (hashes by item id);
- channel ``events``: the pub/sub channel of ``broadcast``/``listen``;
- the history (engine/stores/history.py), each for the retention: ``h:{id}``, an entry
  (a hash: the number masked); ``hx:st:{status}`` and ``hx:{status}|{agent}|{origin}|
  {channel}|{country}``, the indexes (sorted sets, every score 0, members ordered by
  their text: ``{send time in microseconds, 16 digits}:{id} {agent}|{origin}|{channel}|
  {country}``); ``hx:combos``, the combinations with an index (a sorted set by when each last
  got an entry, so one left empty for the retention goes);
  ``hr:{size}:{start}:{agent id}``, a bucket's counters (a hash of
  ``{origin}|{channel}|{country}|{s, a, e, m or c}`` and of ``t<bin>``, times to approve
  of every place) with ``hr:{size}:{start}:{agent id}:t`` (``{origin}|{channel}|
  {country}|t<bin>``), and ``hr:{size}:{start}:*`` and ``...:*:t``, all agents'
  (``{channel}|{country}|...``).

TTLs are always relative (PEXPIRE, PX), never absolute: the caller's ``now``
may be a test's fixed clock or a clock that disagrees with the Redis host's,
and neither may make fresh data vanish.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, cast

import redis.exceptions
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from engine.errors import StoreUnavailable
from engine.models import Channel, DeliveryState, Fallback, Origin, Status, Verification
from engine.stores.base import (
    RETAIN_FINISHED_SECONDS,
    Attempt,
    AttemptGate,
    Budgets,
    Claim,
    ClaimState,
    DeliveryChange,
    OutboxItem,
    Record,
    Store,
)
from engine.stores.guard import HELD, GuardCheck, GuardRefused, Hold, country_refusal
from engine.stores.history import (
    ALL_AGENTS,
    APPROVE_BIN_EDGES,
    DEFAULT_RETENTION,
    LEVELS,
    MERGE_UP_TO,
    TALLY_PLACES,
    HistoryEntry,
    HistoryFilter,
    HistoryPage,
    Position,
    Span,
    Tallies,
    TallySums,
    bucket_start,
    kept_for,
    kept_from_start,
    newest_first,
    newest_matching,
    next_page,
)
from engine.stores.redis_connection import RedisConnection, Script, Subscription, cannot_serve
from engine.stores.windows import (
    Refused,
    Window,
    bucket,
    bucket_key,
    buckets_retry_after,
    log_retry_after,
    previous_weight,
)

# A dead or unreachable Redis must answer "unavailable" fast, not hang a request.
SOCKET_TIMEOUT_SECONDS = 2.0
# redis-py's pool, for the steps that stay on it (the history's and the holds' reads).
MAX_CONNECTIONS = 64
# Verifications whose number and call this instance remembers (see begin_attempt): a miss
# costs one round trip more.
KNOWN_VERIFICATIONS = 10_000

# Verification field -> hash field. Short names keep a pending verification small.
_SHORT = {
    "to": "to",
    "channel": "ch",
    "status": "st",
    "max_attempts": "ma",
    "attempts": "at",
    "created_at": "ca",
    "expires_at": "ea",
    "updated_at": "ua",
    "agent_id": "ag",
    "call_id": "ci",
    "provider": "pv",
    "provider_ref": "pr",
    "code_digest": "cd",
    "origin": "og",
    "country": "cc",
    "delivery": "dl",
    "delivery_error": "de",
    "fallback": "fb",
    "fallback_digest": "fd",
    "delivery_told": "dt",
}
_LONG = {short: field for field, short in _SHORT.items()}
_RUNNING = "running"  # a claim's value while its owner works; a finished one holds JSON

_CREATE = """
-- KEYS: verification, expiry schedule, the call's codes (the verification again when on no call),
-- then the history's: the entry, the index of pending entries, the index of the entry's
-- combination, the combinations (a sorted set by when each last got an entry), the send's
-- bucket of each size (minute, hour, day) for its agent id, then for all agents.
-- ARGV: id, expires_at, ttl_ms, schedule (1/0), on a call (1/0), then the history's:
-- retention_ms, the indexes' cutoff (older members go), the entry's member in the status
-- index and in its combination's, its combination, the send's rollup field in its agent's
-- buckets and in all agents', each bucket's ttl_ms (3), the send's time, the combinations'
-- cutoff (older go), how many history fields and values follow (n); then those n, then the
-- verification's fields and values.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = tonumber(ARGV[18])
redis.call('HSET', KEYS[1], unpack(ARGV, 19 + n))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if ARGV[4] == '1' then redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1]) end
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
  if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[3], ARGV[3]) end
end
redis.call('HSET', KEYS[4], unpack(ARGV, 19, 18 + n))
redis.call('PEXPIRE', KEYS[4], ARGV[6])
for i = 5, 6 do
  redis.call('ZADD', KEYS[i], 0, ARGV[3 + i])
  redis.call('ZREMRANGEBYLEX', KEYS[i], '-', ARGV[7])
  redis.call('PEXPIRE', KEYS[i], ARGV[6])
end
redis.call('ZADD', KEYS[7], ARGV[16], ARGV[10])
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', ARGV[17])
redis.call('PEXPIRE', KEYS[7], ARGV[6])
for i = 1, 6 do
  local bucket, ttl = KEYS[7 + i], ARGV[12 + (i - 1) % 3 + 1]
  redis.call('HINCRBY', bucket, i <= 3 and ARGV[11] or ARGV[12], 1)
  if redis.call('PTTL', bucket) < 0 then redis.call('PEXPIRE', bucket, ttl) end
end
return 1
"""

# Prepended to the scripts that end a verification. The keys of an entry's indexes and
# buckets follow from the entry's own fields, so they are named in the script, under the
# prefix (this store runs on one Redis, not a Cluster).
_END_HISTORY = """
-- Ends a history entry that is still `pending` (one already forgotten, past the retention,
-- is left alone): its member moves to the indexes of its new status and combination, its
-- attempts are the verification's, and the outcome is counted in the buckets of its send
-- that are still kept.
-- h: the entry's key, id: the verification's; first: where ARGV holds the prefix,
-- retention_ms, the indexes' cutoff and each size's ms kept from a bucket's start (3).
local EDGES = {__EDGES__}
local SHORT = {approved = 'a', expired = 'e', max_attempts_reached = 'm', canceled = 'c'}
local LEVELS = {60, 3600, 86400}
local function end_history(h, id, status, now, attempts, first)
  local entry = redis.call('HMGET', h, 'st', 'us', 'ag', 'og', 'ch', 'cc')
  if entry[1] ~= 'pending' then return end
  local prefix, retention, cutoff = ARGV[first], ARGV[first + 1], ARGV[first + 2]
  local place = entry[5] .. '|' .. entry[6]
  local dimensions = entry[3] .. '|' .. entry[4] .. '|' .. place
  local short = entry[2] .. ':' .. id
  local member = short .. ' ' .. dimensions
  redis.call('HSET', h, 'st', status, 'ea', now, 'at', attempts)
  redis.call('ZREM', prefix .. 'hx:st:pending', member)
  redis.call('ZREM', prefix .. 'hx:pending|' .. dimensions, short)
  local combo = status .. '|' .. dimensions
  for _, index in ipairs({{prefix .. 'hx:st:' .. status, member}, {prefix .. 'hx:' .. combo, short}}) do
    redis.call('ZADD', index[1], 0, index[2])
    redis.call('ZREMRANGEBYLEX', index[1], '-', cutoff)
    redis.call('PEXPIRE', index[1], retention)
  end
  -- A combination no entry has joined for the retention holds none any more: it goes.
  local combos = prefix .. 'hx:combos'
  redis.call('ZADD', combos, now, combo)
  redis.call('ZREMRANGEBYSCORE', combos, '-inf', tonumber(now) - tonumber(retention) / 1000)
  redis.call('PEXPIRE', combos, retention)
  local created = tonumber(entry[2]) / 1000000
  local bin = nil
  if status == 'approved' then
    bin = #EDGES - 1
    local seconds = tonumber(now) - created
    for i = 1, #EDGES do
      if seconds <= EDGES[i] then bin = i - 1; break end
    end
  end
  for i = 1, 3 do
    local level = LEVELS[i]
    local start = math.floor(created / level) * level
    local ttl = tonumber(ARGV[first + 2 + i]) - math.floor((tonumber(now) - start) * 1000)
    if ttl > 0 then
      local base = prefix .. 'hr:' .. level .. ':' .. string.format('%d', start) .. ':'
      for _, row in ipairs({{base .. entry[3], entry[4] .. '|' .. place}, {base .. '*', place}}) do
        redis.call('HINCRBY', row[1], row[2] .. '|' .. SHORT[status], 1)
        if redis.call('PTTL', row[1]) < 0 then redis.call('PEXPIRE', row[1], ttl) end
        if bin then
          -- The bucket's own bin (what a summary of every place reads), and the place's.
          redis.call('HINCRBY', row[1], 't' .. bin, 1)
          local places = row[1] .. ':t'
          redis.call('HINCRBY', places, row[2] .. '|t' .. bin, 1)
          if redis.call('PTTL', places) < 0 then redis.call('PEXPIRE', places, ttl) end
        end
      end
    end
  end
end
""".replace("__EDGES__", ", ".join(str(edge) for edge in APPROVE_BIN_EDGES))

_BEGIN_ATTEMPT = (
    _END_HISTORY
    + """
-- KEYS: verification, expiry schedule, the call's verified record (or the verification again when
-- not asked), its history entry, then the event log of each failure budget.
-- ARGV: id, now, retain_ms, call id ('' for any), origin ('' for any), '1' to test the record,
-- a unique member, the history's prefix, retention_ms, cutoff and three buckets' ms kept, then three
-- per budget: limit, ttl_ms, the window's start (older events are gone).
-- Returns nil (not found / not ours), or {gate, the verification's fields, ...}: for over_budget
-- the budget's index (0-based) and its oldest event's time, for counted each budget's count before.
local key = KEYS[1]
local status = redis.call('HGET', key, 'st')
if not status then return false end
local call = redis.call('HGET', key, 'ci') or ''
if ARGV[4] ~= '' and call ~= ARGV[4] then return false end
local origin = redis.call('HGET', key, 'og') or (call ~= '' and 'call' or 'api')
if ARGV[5] ~= '' and origin ~= ARGV[5] then return false end
if ARGV[6] == '1' and call ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then
  return {'call_verified', redis.call('HGETALL', key)}
end
local budgets = (#ARGV - 13) / 3
local counts = {}
for i = 1, budgets do
  local log = KEYS[4 + i]
  redis.call('ZREMRANGEBYSCORE', log, '-inf', ARGV[13 + 3 * i])
  counts[i] = redis.call('ZCARD', log)
  if counts[i] >= tonumber(ARGV[11 + 3 * i]) then
    local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')[2]
    return {'over_budget', redis.call('HGETALL', key), i - 1, oldest}
  end
end
local function finish(to)
  redis.call('HSET', key, 'st', to, 'ua', ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('PEXPIRE', key, ARGV[3])
  end_history(KEYS[4], ARGV[1], to, ARGV[2], redis.call('HGET', key, 'at'), 8)
end
local gate = 'counted'
if status ~= 'pending' then
  gate = 'not_pending'
elseif tonumber(ARGV[2]) >= tonumber(redis.call('HGET', key, 'ea')) then
  gate = 'expired'
  finish('expired')
elseif tonumber(redis.call('HGET', key, 'at')) >= tonumber(redis.call('HGET', key, 'ma')) then
  -- Not ended here: a counted attempt still in flight may be the right code.
  gate = 'no_attempts_left'
else
  redis.call('HINCRBY', key, 'at', 1)
  redis.call('HSET', key, 'ua', ARGV[2])
  if redis.call('HGET', KEYS[4], 'st') == 'pending' then redis.call('HINCRBY', KEYS[4], 'at', 1) end
  for i = 1, budgets do
    redis.call('ZADD', KEYS[4 + i], ARGV[2], ARGV[7])
    redis.call('PEXPIRE', KEYS[4 + i], ARGV[12 + 3 * i])
  end
end
return {gate, redis.call('HGETALL', key), counts}
"""
)

_PENDING_FOR_CALL = """
-- KEYS: the call's codes (sorted set of ids by expires_at). ARGV: now, the verifications' key
-- prefix (the store's prefix and 'v:'), the most codes to read.
-- Returns each code of the call still to expire at now whose verification is pending, the
-- latest expiry first: its id, then its fields (flat, as HGETALL).
local ids = redis.call('ZRANGE', KEYS[1], '+inf', '(' .. ARGV[1], 'BYSCORE', 'REV', 'LIMIT', 0, ARGV[3])
local found = {}
for _, id in ipairs(ids) do
  local key = ARGV[2] .. id
  if redis.call('HGET', key, 'st') == 'pending' then
    found[#found + 1] = id
    found[#found + 1] = redis.call('HGETALL', key)
  end
end
return found
"""

_REFUND_ATTEMPT = """
-- KEYS: verification, its history entry, then the event log of each failure budget the attempt
-- was counted in.
if redis.call('HGET', KEYS[1], 'st') == 'pending' and tonumber(redis.call('HGET', KEYS[1], 'at')) > 0 then
  redis.call('HINCRBY', KEYS[1], 'at', -1)
  if redis.call('HGET', KEYS[2], 'st') == 'pending' and tonumber(redis.call('HGET', KEYS[2], 'at')) > 0 then
    redis.call('HINCRBY', KEYS[2], 'at', -1)
  end
end
for i = 3, #KEYS do redis.call('ZPOPMAX', KEYS[i]) end
return 0
"""

_TRANSITION = (
    _END_HISTORY
    + """
-- KEYS: verification, expiry schedule, its history entry, the record to keep with it (the
-- verification again when none), then the window of each event to give back (g of them: an
-- exact window's event log, a bucketed one's current bucket), then the current bucket of each
-- window to count.
-- ARGV: id, to, now, retain_ms, the history's prefix, retention_ms, cutoff and three buckets'
-- ms kept, the record's JSON ('' when none), its ttl_ms, g, then 'e' or 'b' for each window to
-- give back, then each bucket's ttl_ms.
-- The events go back first, whether or not the verification is still pending (see _UNHIT).
local given = tonumber(ARGV[13])
for i = 1, given do
  local key = KEYS[4 + i]
  if ARGV[13 + i] == 'e' then
    redis.call('ZPOPMAX', key)
  elseif tonumber(redis.call('GET', key) or '0') > 0 then
    redis.call('DECR', key)
  end
end
if redis.call('HGET', KEYS[1], 'st') ~= 'pending' then
  -- Also drops the schedule entry of a verification that Redis already forgot.
  redis.call('ZREM', KEYS[2], ARGV[1])
  return false
end
redis.call('HSET', KEYS[1], 'st', ARGV[2], 'ua', ARGV[3])
if ARGV[11] ~= '' then redis.call('SET', KEYS[4], ARGV[11], 'PX', ARGV[12]) end
for i = 5 + given, #KEYS do
  redis.call('INCR', KEYS[i])
  redis.call('PEXPIRE', KEYS[i], ARGV[i + 9])
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
end_history(KEYS[3], ARGV[1], ARGV[2], ARGV[3], redis.call('HGET', KEYS[1], 'at'), 5)
return redis.call('HGETALL', KEYS[1])
"""
)

_HIT = """
-- Count one event in every counted window if each window has room, else in none. With the
-- pumping guard, once every window has room, its decision in the same step
-- (engine/stores/guard.py).
-- ARGV: now, a unique member, the number of windows, then four per window: kind, limit, ttl_ms,
-- and for an exact window ('e', KEYS: its event log; 'p' for one that is tested, never counted)
-- the window's start (events at or before it are gone), for a bucketed one ('b', KEYS: previous
-- and current bucket) the previous bucket's weight. Then, with the guard (its first at g): prefix,
-- country, min sends, min conversion, the hold's end, its ttl_ms, the hour's previous-bucket
-- weight, an hour bucket's ttl_ms, the country's base, sends per approval, approvals at which it
-- is established, and its approvals' previous-bucket weight.
-- KEYS after the windows' (from k), with the guard: the hold, the holds index, then the previous
-- and current bucket of the prefix's sends, its approvals, the country's sends, its approvals.
-- Nil when counted; else {index of the first full window (0-based), then for 'e'/'p' the
-- oldest event's time, for 'b' the previous and current counts}; or the guard's refusal:
-- {'held', the hold's fields}, {'raised', the hold's fields}, {'budget', previous, current, limit}.
local windows = tonumber(ARGV[3])
local k = 1
for i = 0, windows - 1 do
  local kind, limit, extra = ARGV[4 + 4 * i], tonumber(ARGV[5 + 4 * i]), ARGV[7 + 4 * i]
  if kind == 'b' then
    local previous = tonumber(redis.call('GET', KEYS[k]) or '0')
    local current = tonumber(redis.call('GET', KEYS[k + 1]) or '0')
    if previous * tonumber(extra) + current + 1 > limit then return {i, previous, current} end
    k = k + 2
  else
    redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', extra)
    if redis.call('ZCARD', KEYS[k]) >= limit then
      return {i, redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')[2]}
    end
    k = k + 1
  end
end
local g = 4 + 4 * windows
local guarded = #ARGV >= g
if guarded then
  local function get(key) return tonumber(redis.call('GET', KEYS[key]) or '0') end
  local now, hour = tonumber(ARGV[1]), tonumber(ARGV[g + 6])
  local held_until = redis.call('HGET', KEYS[k], 'until')
  if held_until and tonumber(held_until) > now then
    return {'held', redis.call('HGETALL', KEYS[k])}
  end
  local sends = get(k + 2) * hour + get(k + 3)
  local approved = get(k + 4) * hour + get(k + 5)
  if sends >= tonumber(ARGV[g + 2]) and approved < tonumber(ARGV[g + 3]) * sends then
    local fields = {
      'country', ARGV[g + 1], 'since', ARGV[1], 'until', ARGV[g + 4], 'sends', math.floor(sends + 0.5),
      'approved', math.floor(approved + 0.5), 'reason', 'fraud_suspected',
    }
    redis.call('DEL', KEYS[k])
    redis.call('HSET', KEYS[k], unpack(fields))
    redis.call('PEXPIRE', KEYS[k], ARGV[g + 5])
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 1], '-inf', ARGV[1])
    redis.call('ZADD', KEYS[k + 1], ARGV[g + 4], ARGV[g])
    if redis.call('PTTL', KEYS[k + 1]) < tonumber(ARGV[g + 5]) then
      redis.call('PEXPIRE', KEYS[k + 1], ARGV[g + 5])
    end
    return {'raised', fields}
  end
  local country_approvals = get(k + 8) * tonumber(ARGV[g + 11]) + get(k + 9)
  if country_approvals < tonumber(ARGV[g + 10]) then
    local limit = tonumber(ARGV[g + 8]) + tonumber(ARGV[g + 9]) * country_approvals
    local previous, current = get(k + 6), get(k + 7)
    if previous * hour + current + 1 > limit then return {'budget', previous, current, tostring(limit)} end
  end
end
local guard_keys = k
k = 1
for i = 0, windows - 1 do
  local kind, ttl = ARGV[4 + 4 * i], tonumber(ARGV[6 + 4 * i])
  if kind == 'e' then
    redis.call('ZADD', KEYS[k], ARGV[1], ARGV[2])
    redis.call('PEXPIRE', KEYS[k], ttl)
    k = k + 1
  elseif kind == 'p' then
    k = k + 1
  else
    redis.call('INCR', KEYS[k + 1])
    redis.call('PEXPIRE', KEYS[k + 1], 2 * ttl)
    k = k + 2
  end
end
if guarded then
  for _, current in ipairs({guard_keys + 3, guard_keys + 7}) do
    redis.call('INCR', KEYS[current])
    redis.call('PEXPIRE', KEYS[current], 2 * tonumber(ARGV[g + 7]))
  end
end
return false
"""

_UNHIT = """
-- KEYS: an exact window's event log or a bucketed window's current bucket; ARGV: 'e' or 'b' for each.
for i, key in ipairs(KEYS) do
  if ARGV[i] == 'e' then
    redis.call('ZPOPMAX', key)
  elseif tonumber(redis.call('GET', key) or '0') > 0 then
    redis.call('DECR', key)
  end
end
"""

_RELEASE_HOLD = """
-- KEYS: the hold, the holds index, then the buckets to forget. ARGV: prefix, now.
-- The hold's fields if it was in force at now, else nil; either way it is gone after.
local fields = redis.call('HGETALL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1], unpack(KEYS, 3))
for i = 1, #fields, 2 do
  if fields[i] == 'until' and tonumber(fields[i + 1]) > tonumber(ARGV[2]) then return fields end
end
return false
"""

_CLAIM = """
-- KEYS: claim. ARGV: running marker, ttl_ms. Nil when the caller took it; else its value.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])
"""

_SERVER_KEYS = """
-- KEYS: one secret per name. ARGV: a value (hex) for each, kept only where none exists yet.
-- Returns what each key holds now, in the same order.
local held = {}
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i], 'NX')
  held[i] = redis.call('GET', key)
end
return held
"""

_ENQUEUE = """
-- KEYS: due schedule, payloads. ARGV: id, due_at, payload.
if redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
return 0
"""

_CLAIM_DUE = """
-- KEYS: due schedule, payloads, attempts. ARGV: now, lease end, limit.
-- Returns id, payload, attempts, due_at for each item, flattened.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
local items = {}
for i = 1, #due, 2 do
  local id = due[i]
  local payload = redis.call('HGET', KEYS[2], id)
  if payload then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    table.insert(items, id)
    table.insert(items, payload)
    table.insert(items, redis.call('HGET', KEYS[3], id) or '0')
    table.insert(items, due[i + 1])
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return items
"""

_ACK = """
-- KEYS: due schedule, payloads, attempts. ARGV: id. The item is gone from all three.
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 0
"""

_RETRY_LATER = """
-- KEYS: due schedule, payloads, attempts. ARGV: id, due_at.
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
end
return 0
"""

# Each delivery state's place in the order states come in (engine.models.DeliveryState.rank).
_RANKS = ", ".join(f"{state.value} = {state.rank}" for state in DeliveryState)
_FINAL_RANK = DeliveryState.DELIVERED.rank

_RECORD_DELIVERY = f"""
-- KEYS: verification. ARGV: the carrier's id for the text, the reported state, error code ('' for none).
-- Returns nil (unknown, not tracked, another carrier id), or {{1 if this report made it final else 0,
-- the verification's fields}}. The state only moves forward; the first final one stays.
local rank = {{{_RANKS}}}
local key = KEYS[1]
local recorded = redis.call('HGET', key, 'dl')
if not recorded or redis.call('HGET', key, 'pr') ~= ARGV[1] then return false end
local reported = rank[ARGV[2]]
if rank[recorded] >= {_FINAL_RANK} or reported <= rank[recorded] then
  return {{0, redis.call('HGETALL', key)}}
end
redis.call('HSET', key, 'dl', ARGV[2])
if reported >= {_FINAL_RANK} then
  if ARGV[3] ~= '' then redis.call('HSET', key, 'de', ARGV[3]) end
  return {{1, redis.call('HGETALL', key)}}
end
return {{0, redis.call('HGETALL', key)}}
"""

_CLAIM_FALLBACK = """
-- KEYS: verification. ARGV: now, 'calling', the call's code digest, 'delivered'.
-- The verification's fields when this call took the fallback, else nil.
local key = KEYS[1]
if redis.call('HGET', key, 'st') ~= 'pending' then return false end
if tonumber(ARGV[1]) >= tonumber(redis.call('HGET', key, 'ea')) then return false end
local delivery = redis.call('HGET', key, 'dl')
if not delivery or delivery == ARGV[4] or redis.call('HEXISTS', key, 'fb') == 1 then return false end
redis.call('HSET', key, 'fb', ARGV[2], 'fd', ARGV[3])
return redis.call('HGETALL', key)
"""

_SETTLE_FALLBACK = """
-- KEYS: verification. ARGV: 'calling', the outcome. The verification's fields, or nil if no call was
-- being placed.
if redis.call('HGET', KEYS[1], 'fb') ~= ARGV[1] then return false end
redis.call('HSET', KEYS[1], 'fb', ARGV[2])
return redis.call('HGETALL', KEYS[1])
"""

_MARK_TOLD = """
-- KEYS: verification. 1 when this call noted that the caller was told, else 0.
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'dt') == '1' then return 0 end
redis.call('HSET', KEYS[1], 'dt', '1')
return 1
"""


class _Scripts:
    """Every script, sent by its SHA (engine/stores/redis_connection.py loads one Redis lacks)."""

    create = Script(_CREATE)
    begin_attempt = Script(_BEGIN_ATTEMPT)
    pending_for_call = Script(_PENDING_FOR_CALL)
    refund_attempt = Script(_REFUND_ATTEMPT)
    transition = Script(_TRANSITION)
    hit = Script(_HIT)
    unhit = Script(_UNHIT)
    release_hold = Script(_RELEASE_HOLD)
    claim = Script(_CLAIM)
    server_keys = Script(_SERVER_KEYS)
    enqueue = Script(_ENQUEUE)
    claim_due = Script(_CLAIM_DUE)
    ack = Script(_ACK)
    retry_later = Script(_RETRY_LATER)
    record_delivery = Script(_RECORD_DELIVERY)
    claim_fallback = Script(_CLAIM_FALLBACK)
    settle_fallback = Script(_SETTLE_FALLBACK)
    mark_told = Script(_MARK_TOLD)


@contextmanager
def _unavailable() -> Iterator[None]:
    """Turn "cannot reach Redis" (or "cannot serve now": `cannot_serve`) into StoreUnavailable;
    other Redis errors are bugs and pass."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise StoreUnavailable("the Redis store cannot be reached") from exc
    except redis.exceptions.ResponseError as exc:
        if cannot_serve(exc):
            raise StoreUnavailable("the Redis store cannot serve now") from exc
        raise


def _num(value: float) -> str:
    """A float as Redis and Lua read it back exactly (repr is the shortest exact form)."""
    return repr(float(value))


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


def _ms(seconds: float) -> int:
    """A TTL in whole milliseconds, at least 1 (Redis refuses 0)."""
    return max(1, math.ceil(seconds * 1000))


def _to_hash(verification: Verification) -> list[str]:
    fields: list[str] = []
    for field, value in verification.model_dump(mode="json", exclude={"id"}).items():
        if value is None or value is False:
            continue  # absent reads back as the field's default
        fields += [_SHORT[field], "1" if value is True else str(value)]
    return fields


def _from_hash(verification_id: str, values: Mapping[str, str]) -> Verification:
    # The strings become numbers and enums through pydantic's validation.
    fields = {_LONG[short]: value for short, value in values.items()}
    if "origin" not in fields:  # kept before verifications recorded it
        fields["origin"] = "call" if fields.get("call_id") else "api"
    return Verification.model_validate({"id": verification_id, **fields})


def _hold(prefix: str, fields: Mapping[str, str]) -> Hold:
    return Hold(
        prefix=prefix,
        country=fields["country"],
        since=float(fields["since"]),
        until=float(fields["until"]),
        sends=int(fields["sends"]),
        approved=int(fields["approved"]),
        reason=fields["reason"],
    )


def _combo_matches(query: HistoryFilter, combo: str) -> bool:
    status, agent_id, origin, channel, country = combo.split("|")
    return query.matches(agent_id, origin, channel, country, status)


def _pairs(flat: list[str]) -> dict[str, str]:
    """HGETALL's reply inside a script: a flat list of field, value, field, value..."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _us(at: float) -> int:
    """A time in whole microseconds (never below 0): the history indexes' order."""
    return max(0, round(at * 1_000_000))


def _time_bound(at: float) -> str:
    """Sorts before every history member of that microsecond and after every earlier one."""
    return f"{_us(at):016d}:"


def _member(position: Position, dimensions: str = "") -> str:
    """A history index member. Every score is 0, so members sort by their text: as
    (created_at, id) do, the dimensions after a space (which sorts before any character
    of an id). A position alone, or a time, is a range bound (BYLEX)."""
    created_at, entry_id = position
    member = _time_bound(created_at) + entry_id
    return f"{member} {dimensions}" if dimensions else member


def _position(member: str) -> Position:
    time_part, _, rest = member.partition(":")
    return (int(time_part) / 1_000_000, rest.partition(" ")[0])


def _member_matches(query: HistoryFilter, member: str) -> bool:
    agent_id, origin, channel, country = member.partition(" ")[2].split("|")
    return query.matches(agent_id, origin, channel, country)


@dataclass(frozen=True)
class _HistoryFields:
    """A new verification's history entry, as the create script writes it. Every value is
    short (at most 64 bytes), so Redis keeps the entry's hash compact (a listpack)."""

    created_at: float  # to the microsecond, as its members say (and its buckets follow)
    member: str  # in the status index: {microseconds}:{id} {agent}|{origin}|{channel}|{country}
    short_member: str  # in its combination's index: {microseconds}:{id}
    combo: str  # status|agent|origin|channel|country: the name of its combination's index
    agent_field: str  # its send's field in its agent's buckets: origin|channel|country|s
    all_field: str  # and in all agents': channel|country|s
    fields: list[str]

    @classmethod
    def of(cls, verification: Verification) -> _HistoryFields:
        place = f"{verification.channel}|{verification.country or ''}"
        # No agent id holds a "|" (config.settings.AGENT_ID_PATTERN).
        dimensions = f"{verification.agent_id}|{verification.origin}|{place}"
        micros = _time_bound(verification.created_at)[:-1]
        short = f"{micros}:{verification.id}"
        fields = [
            "us", micros,
            "ag", verification.agent_id,
            "og", verification.origin,
            "ch", verification.channel,
            "cc", verification.country or "",
            "to", verification.masked_to,
            "st", verification.status.value,
            "at", str(verification.attempts),
            "ma", str(verification.max_attempts),
        ]  # fmt: skip
        if verification.call_id:
            fields += ["ci", verification.call_id]
        return cls(
            int(micros) / 1_000_000,
            f"{short} {dimensions}",
            short,
            f"{verification.status.value}|{dimensions}",
            f"{verification.origin}|{place}|s",
            f"{place}|s",
            fields,
        )


def _history_entry(entry_id: str, values: Mapping[str, str]) -> HistoryEntry | None:
    """An entry from its hash; None when it is gone (past the retention)."""
    if "us" not in values:
        return None
    return HistoryEntry(
        id=entry_id,
        to=values["to"],
        country=values["cc"] or None,
        agent_id=values["ag"],
        origin=cast(Origin, values["og"]),
        channel=cast(Channel, values["ch"]),
        call_id=values.get("ci"),
        status=Status(values["st"]),
        attempts=int(values["at"]),
        max_attempts=int(values["ma"]),
        created_at=int(values["us"]) / 1_000_000,
        ended_at=float(values["ea"]) if "ea" in values else None,
    )


_OUTCOMES = ("s", "a", "e", "m", "c")
_BINS = tuple(f"t{index}" for index in range(len(APPROVE_BIN_EDGES)))


def _pinned_fields(query: HistoryFilter, kinds: tuple[str, ...], *, with_origin: bool) -> list[str] | None:
    """The rollup fields of ``kinds`` a filter that names a country can need (HMGET reads
    those alone); None when it names none: every field may count (HGETALL)."""
    if query.country is None:
        return None
    channels = [query.channel] if query.channel is not None else ["sms", "call"]
    places = [f"{channel}|{query.country}" for channel in channels]
    if with_origin:
        origins = [query.origin] if query.origin is not None else ["call", "api", "workflow"]
        places = [f"{origin}|{place}" for origin in origins for place in places]
    return [f"{place}|{kind}" for place in places for kind in kinds]


class RedisStore(Store):
    """The store in Redis at ``url`` (``redis://`` or ``rediss://``), keys under ``prefix``.

    ``open()`` does not contact Redis: the instance starts, reports itself not
    ready through ``ping()``, and works as soon as Redis answers.
    ``history_retention``: seconds a verification stays in the history.
    """

    def __init__(
        self, url: str, prefix: str = "mfa:", *, history_retention: float = DEFAULT_RETENTION
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._retention = history_retention
        self._channel = f"{prefix}events"
        self._redis: Redis | None = None
        self._connection: RedisConnection | None = None
        # An event's member in a window's log only has to be unique: this instance's random
        # name and a count (os.urandom for each was a system call per event).
        self._instance = secrets.token_hex(6)
        self._events = itertools.count()
        # Id -> (number, call id) of verifications seen here: both never change for an id.
        self._known: OrderedDict[str, tuple[str, str | None]] = OrderedDict()
        # Listeners of this instance whose SUBSCRIBE is not confirmed yet (see broadcast).
        self._subscribing: set[asyncio.Task[Subscription]] = set()

    # -- lifecycle ----------------------------------------------------------
    async def open(self) -> None:
        pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=MAX_CONNECTIONS,
            timeout=SOCKET_TIMEOUT_SECONDS,  # waiting for a free connection
            socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            # One quick retry covers a pooled connection that went stale (Redis restarted);
            # the default retries with backoff for seconds, which a readiness probe cannot wait.
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=1),
            health_check_interval=30,
            decode_responses=True,
        )
        self._redis = Redis.from_pool(pool)
        self._connection = RedisConnection(self._url, timeout=SOCKET_TIMEOUT_SECONDS)

    async def close(self) -> None:
        client, self._redis = self._redis, None
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()
        for task in list(self._subscribing):
            task.cancel()
        if client is not None:
            with suppress(redis.exceptions.RedisError, OSError):
                await client.aclose()

    async def ping(self) -> None:
        await self._lean.execute("PING")

    @property
    def _client(self) -> Redis:
        if self._redis is None:
            raise StoreUnavailable("the Redis store is not open")
        return self._redis

    @property
    def _lean(self) -> RedisConnection:
        """The pipelined connection every step but the rare reads and pub/sub takes."""
        if self._connection is None:
            raise StoreUnavailable("the Redis store is not open")
        return self._connection

    async def _run(self, script: Script, keys: list[str], args: Sequence[str | int | float] = ()) -> Any:
        return await self._lean.run(script, keys, args)

    def _unique_member(self) -> str:
        return f"{self._instance}{next(self._events):x}"

    def _remember(self, verification_id: str, to: str, call_id: str | None) -> None:
        known = self._known
        known[verification_id] = (to, call_id)
        if len(known) > KNOWN_VERIFICATIONS:
            known.popitem(last=False)

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    # -- server keys --------------------------------------------------------
    async def server_keys(self, proposed: Mapping[str, bytes]) -> dict[str, bytes]:
        names = list(proposed)
        held: list[str] = await self._run(
            _Scripts.server_keys,
            [self._key("secret", name) for name in names],
            [proposed[name].hex() for name in names],
        )
        return {name: bytes.fromhex(value) for name, value in zip(names, held, strict=True)}

    # -- verifications ------------------------------------------------------
    async def create_verification(self, verification: Verification) -> None:
        lifetime = max(0.0, verification.expires_at - verification.created_at)
        history = _HistoryFields.of(verification)
        key = self._key("v", verification.id)
        call = verification.call_id
        created = await self._run(
            _Scripts.create,
            [
                key,
                self._key("expiry"),
                self._key("call", call) if call else key,
                self._key("h", verification.id),
                self._key("hx", "st", verification.status.value),
                self._key("hx", history.combo),
                self._key("hx", "combos"),
                *(self._bucket(level, verification.created_at, verification.agent_id) for level in LEVELS),
                *(self._bucket(level, verification.created_at, ALL_AGENTS) for level in LEVELS),
            ],
            [
                verification.id,
                _num(verification.expires_at),
                _ms(lifetime + RETAIN_FINISHED_SECONDS),
                "1" if verification.status is Status.PENDING else "0",
                "1" if call else "0",
                _ms(self._retention),
                self._cutoff(verification.created_at),
                history.member,
                history.short_member,
                history.combo,
                history.agent_field,
                history.all_field,
                *(_ms(self._kept(level, history.created_at)) for level in LEVELS),
                _num(history.created_at),
                _num(history.created_at - self._retention),
                len(history.fields),
                *history.fields,
                *_to_hash(verification),
            ],
        )
        if not created:
            raise ValueError(f"verification {verification.id} already exists")
        self._remember(verification.id, verification.to, call)

    async def get_verification(self, verification_id: str) -> Verification | None:
        flat: list[str] = await self._lean.execute("HGETALL", self._key("v", verification_id))
        return _from_hash(verification_id, _pairs(flat)) if flat else None

    async def begin_attempt(
        self,
        verification_id: str,
        now: float,
        *,
        call_id: str | None = None,
        origin: str | None = None,
        budgets: Budgets | None = None,
        verified_kind: str | None = None,
    ) -> Attempt | None:
        key = self._key("v", verification_id)
        # The script names every key it touches (but the history's, see _END_HISTORY), so
        # the keys that follow from the verification's number and call are found first.
        # Both never change for an id: this instance remembers those it saw, and asks
        # Redis for the others (sent from another instance, or forgotten here).
        known = self._known.get(verification_id)
        if known is None:
            to, call = await self._lean.execute("HMGET", key, "to", "ci")
            if to is None:
                return None
            self._remember(verification_id, to, call)
        else:
            to, call = known
        if call_id is not None and call != call_id:
            return None
        windows = tuple(budgets(to, call)) if budgets else ()
        verified = self._key("record", verified_kind, call) if verified_kind and call else key
        args: list[str | int | float] = [
            verification_id,
            _num(now),
            _ms(RETAIN_FINISHED_SECONDS),
            call_id or "",
            origin or "",
            "1" if verified != key else "0",
            self._unique_member(),
            *self._history_context(now),
        ]
        for window in windows:
            args += [window.limit, _ms(window.seconds), _num(now - window.seconds)]
        keys = [
            key,
            self._key("expiry"),
            verified,
            self._key("h", verification_id),
            *(self._key("hit", window.key) for window in windows),
        ]
        # The script checks the call again: a remembered verification may be gone from Redis.
        answer = await self._run(_Scripts.begin_attempt, keys, args)
        if answer is None:
            return None
        gate = AttemptGate(answer[0])
        verification = _from_hash(verification_id, _pairs(answer[1]))
        if gate is AttemptGate.OVER_BUDGET:
            index = int(answer[2])
            oldest = float(answer[3]) if len(answer) > 3 else None
            refused = Refused(index, log_retry_after(windows[index], oldest, now))
            return Attempt(gate, verification, refused=refused)
        if gate is AttemptGate.COUNTED:
            room = tuple(
                window.limit - int(count) - 1 for window, count in zip(windows, answer[2], strict=True)
            )
            return Attempt(gate, verification, budgets=windows, room=room)
        return Attempt(gate, verification, changed=gate is AttemptGate.EXPIRED)

    async def pending_for_call(self, call_id: str, now: float) -> list[Verification]:
        flat: list[Any] = await self._run(
            _Scripts.pending_for_call, [self._key("call", call_id)], [_num(now), self._key("v", ""), 20]
        )
        live = [_from_hash(flat[i], _pairs(flat[i + 1])) for i in range(0, len(flat), 2)]
        return sorted(live, key=lambda v: v.created_at, reverse=True)

    async def refund_attempt(self, verification_id: str, budgets: Sequence[Window], now: float) -> None:
        keys = [
            self._key("v", verification_id),
            self._key("h", verification_id),
            *(self._key("hit", window.key) for window in budgets),
        ]
        await self._run(_Scripts.refund_attempt, keys)

    async def transition(
        self,
        verification_id: str,
        to: Status,
        now: float,
        *,
        record: Record | None = None,
        count: Sequence[Window] = (),
        give_back: Sequence[Window] = (),
    ) -> Verification | None:
        key = self._key("v", verification_id)
        keys = [key, self._key("expiry"), self._key("h", verification_id)]
        args: list[str | int | float] = [
            verification_id,
            to.value,
            _num(now),
            _ms(RETAIN_FINISHED_SECONDS),
            *self._history_context(now),
        ]
        if record is not None:
            keys.append(self._key("record", record.kind, record.id))
            args += [_json(record.data), _ms(record.ttl)]
        else:
            keys.append(key)
            args += ["", 0]
        given = [window for window in give_back if window.counted]
        keys += self._unhit_keys(given, now)
        args += [len(given), *("e" if window.exact else "b" for window in given)]
        for window in count:
            assert not window.exact, "a transition counts bucketed windows only"
            keys.append(self._key("count", bucket_key(window, bucket(now, window.seconds))))
            args.append(_ms(2 * window.seconds))
        flat = await self._run(_Scripts.transition, keys, args)
        return None if flat is None else _from_hash(verification_id, _pairs(flat))

    async def due_for_expiry(self, now: float, limit: int = 100) -> list[str]:
        ids: list[str] = await self._lean.execute(
            "ZRANGEBYSCORE", self._key("expiry"), "-inf", _num(now), "LIMIT", 0, limit
        )
        return ids

    async def next_expiry(self) -> float | None:
        earliest: list[str] = await self._lean.execute("ZRANGE", self._key("expiry"), 0, 0, "WITHSCORES")
        return float(earliest[1]) if earliest else None

    # -- delivery ----------------------------------------------------------------
    async def record_delivery(
        self, verification_id: str, carrier_ref: str, state: DeliveryState, error_code: str | None
    ) -> DeliveryChange | None:
        answer = await self._run(
            _Scripts.record_delivery,
            [self._key("v", verification_id)],
            [carrier_ref, state.value, error_code or ""],
        )
        if answer is None:
            return None
        verification = _from_hash(verification_id, _pairs(answer[1]))
        return DeliveryChange(verification, became_final=int(answer[0]) == 1)

    async def claim_fallback(self, verification_id: str, now: float, code_digest: str) -> Verification | None:
        args = [_num(now), Fallback.CALLING.value, code_digest, DeliveryState.DELIVERED.value]
        flat = await self._run(_Scripts.claim_fallback, [self._key("v", verification_id)], args)
        return None if flat is None else _from_hash(verification_id, _pairs(flat))

    async def settle_fallback(self, verification_id: str, outcome: Fallback) -> Verification | None:
        flat = await self._run(
            _Scripts.settle_fallback,
            [self._key("v", verification_id)],
            [Fallback.CALLING.value, outcome.value],
        )
        return None if flat is None else _from_hash(verification_id, _pairs(flat))

    async def mark_delivery_told(self, verification_id: str) -> bool:
        marked = await self._run(_Scripts.mark_told, [self._key("v", verification_id)])
        return int(marked) == 1

    # -- history --------------------------------------------------------------
    # Written by the verification's own scripts (_CREATE, _BEGIN_ATTEMPT, _TRANSITION), read here.
    def _bucket(self, level: int, at: float, agent_id: str) -> str:
        return self._key("hr", str(level), str(bucket_start(at, level)), agent_id)

    def _cutoff(self, now: float) -> str:
        """The indexes' members older than the retention at ``now`` are those before this."""
        return "(" + _time_bound(now - self._retention)

    def _kept(self, level: int, created_at: float) -> float:
        return kept_for(level, self._retention, bucket_start(created_at, level), created_at)

    def _history_context(self, now: float) -> list[str | int]:
        """What _END_HISTORY reads from ARGV: the prefix, retention_ms, the indexes' cutoff,
        and how long a bucket of each size is kept from its start, in ms."""
        keeps = (_ms(kept_from_start(level, self._retention)) for level in LEVELS)
        return [self._prefix, _ms(self._retention), self._cutoff(now), *keeps]

    async def list_history(
        self, query: HistoryFilter, now: float, *, after: Position | None = None, limit: int = 50
    ) -> HistoryPage:
        low = max(query.since if query.since is not None else -math.inf, now - self._retention)
        lower = "[" + _time_bound(low)
        upper = "+" if query.until is None else "(" + _time_bound(query.until)
        if after is not None and (upper == "+" or "(" + _member(after) < upper):
            upper = "(" + _member(after)
        client = self._client
        statuses = list(Status) if query.status is None else [query.status]
        by_status = [self._key("hx", "st", status.value) for status in statuses]

        async def fetch(requests: list[tuple[str, str | None, int]]) -> list[list[str]]:
            async with client.pipeline(transaction=False) as pipe:
                for source, last, count in requests:
                    start = upper if last is None else "(" + last
                    pipe.zrange(source, start, lower, desc=True, bylex=True, offset=0, num=count)
                return cast(list[list[str]], await pipe.execute())

        def text(member: str) -> str:
            # A status index's members carry the dimensions after a space: the order is the rest's.
            return member.partition(" ")[0]

        with _unavailable():
            sources = by_status
            if query.names_more_than_status:
                combos = cast(list[str], await client.zrange(self._key("hx", "combos"), 0, -1))
                sources = [self._key("hx", combo) for combo in combos if _combo_matches(query, combo)]
            if len(sources) <= MERGE_UP_TO:
                members = await newest_first(sources, fetch, limit + 1, text)
                following = next_page(members, limit, _position)
            else:
                walked = await newest_matching(
                    by_status, fetch, limit + 1, text, lambda member: _member_matches(query, member)
                )
                members = walked.kept
                following = next_page(members, limit, _position, walked=walked)
            ids = [_position(member)[1] for member in members[:limit]]
            async with client.pipeline(transaction=False) as pipe:
                for entry_id in ids:
                    pipe.hgetall(self._key("h", entry_id))
                found = cast(list[dict[str, str]], await pipe.execute())
        entries = [
            entry
            for entry in map(_history_entry, ids, found)
            # Gone past the retention, or moved to another status since the index was read.
            if entry is not None and (query.status is None or entry.status is query.status)
        ]
        return HistoryPage(entries, following)

    async def history_tallies(self, query: HistoryFilter, span: Span) -> Tallies:
        client = self._client
        # A filter that names no channel or country reads each bucket's own bins; one that
        # does reads its places' bins from the bucket's ":t" hash.
        by_place = query.channel is not None or query.country is not None
        with _unavailable():
            # All agents' buckets, unless the filter names an agent id or an origin.
            if query.agent_id is not None:
                agents = [query.agent_id]
            elif query.origin is not None:
                combos = cast(list[str], await client.zrange(self._key("hx", "combos"), 0, -1))
                agents = sorted({combo.split("|")[1] for combo in combos})
            else:
                agents = [ALL_AGENTS]
            reads: list[tuple[int, str, list[str] | None]] = []
            async with client.pipeline(transaction=False) as pipe:
                for start in span.starts():
                    for agent in agents:
                        key = self._key("hr", str(span.level), str(start), agent)
                        hashes = [(key, _OUTCOMES)] + ([(key + ":t", _BINS)] if by_place else [])
                        for hash_key, kinds in hashes:
                            fields = _pinned_fields(query, kinds, with_origin=agent != ALL_AGENTS)
                            if fields is None:
                                pipe.hgetall(hash_key)
                            else:
                                pipe.hmget(hash_key, fields)
                            reads.append((start, agent, fields))
                found = cast(list[dict[str, str] | list[str | None]], await pipe.execute())
        sums = TallySums()
        for (start, agent, fields), values in zip(reads, found, strict=True):
            pairs = values.items() if isinstance(values, dict) else zip(fields or (), values, strict=True)
            for field, value in pairs:
                if value is None:
                    continue
                parts = field.split("|")
                if len(parts) == 1:  # the bucket's own bin, of every place
                    if not by_place and parts[0] in TALLY_PLACES:
                        sums.add_to_bucket(start, TALLY_PLACES[parts[0]], int(value))
                    continue
                origin = ALL_AGENTS if agent == ALL_AGENTS else parts.pop(0)
                channel, country, kind = parts
                if kind in TALLY_PLACES and query.matches(agent, origin, channel, country):
                    sums.add(start, channel, country, TALLY_PLACES[kind], int(value))
        return sums.tallies()

    # -- counters and limits ------------------------------------------------
    async def hit(
        self, windows: Sequence[Window], now: float, *, guard: GuardCheck | None = None
    ) -> Refused | GuardRefused | None:
        keys: list[str] = []
        # The member only has to be unique: two events may share a timestamp.
        args: list[str | int | float] = [_num(now), self._unique_member(), len(windows)]
        for window in windows:
            if window.exact:
                keys.append(self._key("hit", window.key))
                kind = "e" if window.counted else "p"
                args += [kind, window.limit, _ms(window.seconds), _num(now - window.seconds)]
            else:
                assert window.counted, "a bucketed window is always counted"
                number = bucket(now, window.seconds)
                keys += [
                    self._key("count", bucket_key(window, number - 1)),
                    self._key("count", bucket_key(window, number)),
                ]
                args += ["b", window.limit, _ms(window.seconds), _num(previous_weight(now, window.seconds))]
        if guard is not None:
            keys += self._guard_keys(guard, now)
            args += self._guard_args(guard, now)
        refused = await self._run(_Scripts.hit, keys, args)
        if refused is None:
            return None
        if guard is not None and isinstance(refused[0], str):
            return self._guard_refused(guard, refused, now)
        index = int(refused[0])
        window = windows[index]
        if window.exact:
            oldest = float(refused[1]) if len(refused) > 1 else None
            return Refused(index, log_retry_after(window, oldest, now))
        return Refused(index, buckets_retry_after(window, int(refused[1]), int(refused[2]), now))

    def _guard_keys(self, guard: GuardCheck, now: float) -> list[str]:
        keys = [self._key("hold", guard.prefix), self._key("holds")]
        for window in (guard.sends, guard.approvals, guard.budget.sends, guard.budget.approvals):
            number = bucket(now, window.seconds)
            keys += [
                self._key("count", bucket_key(window, number - 1)),
                self._key("count", bucket_key(window, number)),
            ]
        return keys

    @staticmethod
    def _guard_args(guard: GuardCheck, now: float) -> list[str | int | float]:
        budget = guard.budget
        return [
            guard.prefix,
            guard.country,
            guard.min_sends,
            _num(guard.min_conversion),
            _num(now + guard.hold_seconds),
            _ms(guard.hold_seconds),
            _num(previous_weight(now, guard.sends.seconds)),
            _ms(guard.sends.seconds),
            budget.base,
            _num(budget.per_approval),
            budget.established_at,
            _num(previous_weight(now, budget.approvals.seconds)),
        ]

    @staticmethod
    def _guard_refused(guard: GuardCheck, refused: list[Any], now: float) -> GuardRefused:
        verdict = refused[0]
        if verdict == "budget":
            previous, current, limit = int(refused[1]), int(refused[2]), float(refused[3])
            return country_refusal(guard.budget, previous, current, limit, now)
        hold = _hold(guard.prefix, _pairs([str(value) for value in refused[1]]))
        if verdict == "raised":
            return GuardRefused(HELD, guard.hold_seconds, hold, raised=True)
        return GuardRefused(HELD, hold.until - now, hold)

    async def unhit(self, windows: Sequence[Window], now: float) -> None:
        counted = [window for window in windows if window.counted]
        if counted:
            await self._run(
                _Scripts.unhit,
                self._unhit_keys(counted, now),
                ["e" if window.exact else "b" for window in counted],
            )

    def _unhit_keys(self, counted: Sequence[Window], now: float) -> list[str]:
        """Where each counted window's latest event is: an exact one's log, a bucketed one's bucket."""
        return [
            self._key("hit", window.key)
            if window.exact
            else self._key("count", bucket_key(window, bucket(now, window.seconds)))
            for window in counted
        ]

    # -- the pumping guard's holds -------------------------------------------
    async def holds(self, now: float) -> list[Hold]:
        with _unavailable():
            prefixes = cast(
                list[str], await self._client.zrangebyscore(self._key("holds"), f"({_num(now)}", "+inf")
            )
            async with self._client.pipeline(transaction=False) as pipe:
                for prefix in prefixes:
                    pipe.hgetall(self._key("hold", prefix))
                found = cast(list[dict[str, str]], await pipe.execute())
        holds = [_hold(prefix, fields) for prefix, fields in zip(prefixes, found, strict=True) if fields]
        return sorted((hold for hold in holds if hold.until > now), key=lambda hold: hold.since, reverse=True)

    async def release_hold(self, prefix: str, forget: Sequence[Window], now: float) -> Hold | None:
        keys = [self._key("hold", prefix), self._key("holds")]
        for window in forget:
            number = bucket(now, window.seconds)
            keys += [
                self._key("count", bucket_key(window, number - 1)),
                self._key("count", bucket_key(window, number)),
            ]
        fields = await self._run(_Scripts.release_hold, keys, [prefix, _num(now)])
        return None if fields is None else _hold(prefix, _pairs(fields))

    # -- repeated requests --------------------------------------------------
    async def claim(self, key: str, ttl: float) -> Claim:
        value = await self._run(_Scripts.claim, [self._key("claim", key)], [_RUNNING, _ms(ttl)])
        if value is None:
            return Claim(ClaimState.NEW)
        if value == _RUNNING:
            return Claim(ClaimState.RUNNING)
        return Claim(ClaimState.DONE, json.loads(value))

    async def complete(self, key: str, result: dict[str, Any], ttl: float) -> None:
        await self._lean.execute("SET", self._key("claim", key), _json(result), "PX", _ms(ttl))

    async def release(self, key: str) -> None:
        await self._lean.execute("DEL", self._key("claim", key))

    # -- generic records ----------------------------------------------------
    async def put_record(self, kind: str, record_id: str, data: dict[str, Any], ttl: float) -> None:
        await self._lean.execute("SET", self._key("record", kind, record_id), _json(data), "PX", _ms(ttl))

    async def get_record(self, kind: str, record_id: str) -> dict[str, Any] | None:
        value = await self._lean.execute("GET", self._key("record", kind, record_id))
        if value is None:
            return None
        data: dict[str, Any] = json.loads(value)
        return data

    async def delete_record(self, kind: str, record_id: str) -> None:
        await self._lean.execute("DEL", self._key("record", kind, record_id))

    # -- durable outbox -----------------------------------------------------
    def _outbox(self, queue: str) -> list[str]:
        return [self._key("outbox", queue, part) for part in ("due", "payload", "attempts")]

    async def enqueue(self, queue: str, item_id: str, payload: str, due_at: float) -> None:
        await self._run(_Scripts.enqueue, self._outbox(queue)[:2], [item_id, _num(due_at), payload])

    async def claim_due(self, queue: str, now: float, lease: float, limit: int) -> list[OutboxItem]:
        """Items due by ``now``, each hidden for ``lease`` seconds; ``due_at`` is when it fell due."""
        if limit <= 0:
            return []
        flat: list[str] = await self._run(
            _Scripts.claim_due, self._outbox(queue), [_num(now), _num(now + lease), limit]
        )
        return [
            OutboxItem(id=flat[i], payload=flat[i + 1], attempts=int(flat[i + 2]), due_at=float(flat[i + 3]))
            for i in range(0, len(flat), 4)
        ]

    async def ack(self, queue: str, item_id: str) -> None:
        await self._run(_Scripts.ack, self._outbox(queue), [item_id])

    async def retry_later(self, queue: str, item_id: str, due_at: float) -> None:
        await self._run(_Scripts.retry_later, self._outbox(queue), [item_id, _num(due_at)])

    async def backlog(self, queue: str) -> int:
        count: int = await self._lean.execute("ZCARD", self._key("outbox", queue, "due"))
        return count

    # -- event fan-out ------------------------------------------------------
    async def broadcast(self, message: str) -> None:
        connection = self._lean
        if self._subscribing:
            # This instance's listeners still subscribing: let them finish first, so a
            # message broadcast here after listen() returned reaches them. asyncio.wait
            # never cancels them, even if this call is cancelled.
            await asyncio.wait(set(self._subscribing), timeout=SOCKET_TIMEOUT_SECONDS)
        await connection.execute("PUBLISH", self._channel, message)

    def listen(self) -> AsyncIterator[str]:
        """Every message broadcast after this call, by any instance; ends when the store closes.

        Each call has its own subscription, on a connection of its own. Its SUBSCRIBE
        starts here, not at the first ``__anext__``, and this instance's ``broadcast``
        waits for it, so nothing this instance broadcasts after ``listen()`` returns is
        missed. The race that remains: a message another instance publishes before the
        SUBSCRIBE is confirmed (a few milliseconds) is not received, and neither is
        anything published after the connection was lost (pub/sub keeps no history):
        the listener raises StoreUnavailable, and its owner listens again.
        """
        subscribed = asyncio.create_task(self._lean.subscribe(self._channel))
        self._subscribing.add(subscribed)
        subscribed.add_done_callback(self._subscribing.discard)
        # Mark a failure as seen even if the iterator is never started; it re-raises on first use.
        subscribed.add_done_callback(lambda task: task.cancelled() or task.exception())
        return self._messages(subscribed)

    @staticmethod
    async def _messages(subscribed: asyncio.Task[Subscription]) -> AsyncIterator[str]:
        subscription: Subscription | None = None
        try:
            subscription = await subscribed
            while (message := await subscription.next()) is not None:
                yield message
        finally:
            subscribed.cancel()
            if subscription is None and subscribed.done() and not subscribed.cancelled():
                # Subscribed just as this listener was closed or cancelled: not kept.
                subscription = None if subscribed.exception() else subscribed.result()
            if subscription is not None:
                subscription.close()
