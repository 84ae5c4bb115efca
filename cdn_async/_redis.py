"""``RedisBudgetStore``: the exact budget windows of ``_budgets.py``, kept in Redis.

Every process that uses one API token points its store at the same Redis (and ``token_id``),
so together they obey every budget (DESIGN.md, "Budgets", semantic 7).

Data model, per budget key ``K`` of token ``T`` (``{ns:T}`` is a Redis Cluster hash tag, so
one script's keys all live on one slot):

* ``{ns:T}:f:K``, a sorted set of requests *in flight*: member ``<lease id>:<units>``, score
  the deadline (Redis time in ms) after which a silent holder counts as dead. Live processes
  push their deadlines forward (heartbeat); an expired entry is treated as answered at its
  deadline and moves to the released set, so a dead process holds a slot for at most
  ``inflight_timeout + period``.
* ``{ns:T}:r:K``, a sorted set of *released* requests: same members, score ``answer + period``.
* ``{ns:T}:m:K``, a hash: running sums ``f`` and ``r`` of the units in both sets (so a check is
  O(1), not O(entries)), the server-sync hold ``h`` until ``hu``, and the 429 pause ``p``.
* ``{ns:T}:epoch``, a hash naming the current incarnation of this state (``id``), the end of
  its recovery window (``ru``) and when that Redis started (``rs``). See "Restarts".
* ``{ns:T}:x``, a sorted set of lease ids given back (score: when the entry lapses), so an
  acquire call that runs after its caller gave up on it admits nothing. See "Stalls".

All keys of ``K`` get a TTL of a bit over ``period + inflight_timeout`` on every touch, so idle
keys vanish.

One Lua script (``_LUA``) does everything, stamped with ``redis.call('TIME')``. Its
``acquire`` operation, one round trip per attempt, expires old entries, checks that every key
fits (``in flight + released + held + units <= limit`` and not paused) and either adds the
lease to every key at once, or answers how long until it could fit (exact when time alone
frees enough, else "unknown": only an answer can free the slot, so the caller polls).

Each process keeps a *mirror* of what it put in: its leases in flight, its released leases
until they expire, its give-backs not yet written, its last sync hold and pause per key, and,
per key, a ``WindowLedger`` of its own units with those holds and pauses (the rules of the
in-memory store). The mirror serves the three cases below.

Restarts. Redis runs without persistence here: a restart forgets every window. A restart is
noticed by a missing epoch (the first script run on an empty Redis creates a new one, and
records when that Redis started: ``TIME`` minus ``INFO`` ``uptime_in_seconds`` less one
second, as that figure is a difference of whole seconds; the time of detection when ``INFO``
is refused) and, by live processes, by a connection error or a changed epoch id.

1. Every live process re-seeds its mirror (one ``restore`` script, idempotent) before its next
   acquire, and a new epoch admits nothing for ``recovery_grace`` so that they all can.
2. Units of processes that are gone are lost. Each of them was stamped before Redis started
   again, so each has left every server window one period after that start. Until then a key
   whose history may be lost admits nothing, unless another budget of the same request bounds
   it: a budget counted per request (``unit="request"``) is not held when the request also
   claims a token-wide per-request budget ``B`` (every request claims it) whose
   ``limit * (floor(period / B.period) + 1)`` is within its own ``limit``; ``B``, exact across
   the restart, lets no more requests than that through in any of its windows. Which budgets
   are token-wide and per request comes from ``limits`` (default ``RateLimits.documented()``).

   Cost with the documented budgets: after a restart ``cdn`` admits nothing until 10 s after
   Redis started and purges (``purge_files``) nothing until 20 s after; ``minute`` (at most
   35 requests per 60 s through ``cdn``) and ``hourly`` (at most 1,805 per hour) are not held.
   A Redis up longer than a budget's period (plus a second) when its epoch is missing (a
   first use, an epoch expired after ``marker_ttl`` idle) holds nothing for it; a Redis that
   has just started cannot be told from a restarted one, so its first use pays the same
   (``restart_hold=False`` skips it, for a Redis known to be new). With ``cdn`` per endpoint
   no budget is token-wide enough: ``minute`` and ``hourly`` are then held 60 s and 1 h.
   Not covered: keys deleted from a Redis that stays up (``FLUSHALL``, eviction: keep the
   budget Redis at ``maxmemory-policy noeviction``), and restarts *with* persistence (the
   epoch survives, windows come back as of the last save; run the budget Redis without
   persistence, or with ``appendfsync always``).

Fallback. With ``fallback="memory"``, while Redis is unreachable each process admits from its
mirror's ledgers: its own units (in flight; released, until one period after the answer), the
holds its answers' ``ratelimit-remaining`` set (what the others spent, until the reset) and
its 429 pauses, kept and applied exactly as ``MemoryBudgetStore`` does. A lone process is
exact across an outage. ``N`` processes each keep the whole budget to themselves: at most
``N x limit`` units in any window while Redis is away (and in the windows around the outage,
until every process has re-seeded), fewer in practice because each answer's headers hold back
what the others spent. When Redis answers again every process re-seeds what it admitted
meanwhile, so Redis counts it from then on.

Stalls. Every Redis call is bounded by ``call_timeout``: an ``asyncio.timeout`` around each
script call, and a client the store makes also gets socket timeouts of ``call_timeout`` and
no retries of its own but one, at once, on a connection error (a pooled connection that a
restart closed). A call that fails to connect, times out, or meets a cluster error
(cluster down, moved, try again, a read-only replica, loading) marks Redis unreachable: from
then on no acquire calls Redis; one probe (the heartbeat task) re-seeds the mirror every
``min(heartbeat_interval, 0.1)`` s until Redis answers. Meanwhile ``fallback="memory"``
admits at once from the mirror, and with ``fallback="error"`` acquires wait, then raise
``BudgetStoreUnavailableError`` once Redis has been unreachable for ``unavailable_timeout``,
counted from the start of the first failed call. Releases, syncs, pauses and give-backs made
meanwhile stay in the mirror and go with the re-seed. An acquire call that timed out may
still run when Redis wakes: its lease is given back with the re-seed, and a tombstone (kept
``inflight_timeout``) stops it from admitting anything if it runs after the give-back.

Pauses. No pause or sync hold outlasts one period of its key (every unit of a window has
expired a period later, so no answer justifies more): ``pause`` and ``sync`` cap the time at
``claim.period``, the script caps it again, and every acquire caps what it finds in Redis with
its own period and writes the cap back, so no process (a wrong clock, an older version) holds
the others off for longer than a period from when they first meet the pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._ledger import WindowLedger
from ._limits import BudgetState, Claim, Lease, Priority, RateLimits
from ._logs import logger
from .errors import CDNError, RateLimitedError, ValidationError

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from ._limits import BudgetStore


#: Seconds after which a request that is neither answered nor kept alive by its process's
#: heartbeat counts as answered (its process died); it then frees ``period`` later.
DEFAULT_INFLIGHT_TIMEOUT = 60.0
#: The longest a queued acquire sleeps before asking Redis again while only an answer (maybe
#: in another process) can free its slot.
DEFAULT_MAX_POLL_INTERVAL = 0.05
#: How often a process with live state in Redis refreshes its in-flight deadlines and checks
#: that Redis did not lose its state.
DEFAULT_HEARTBEAT_INTERVAL = 1.0
#: After Redis lost its state, how long nothing is admitted while processes re-seed theirs.
DEFAULT_RECOVERY_GRACE = 3.0
#: How long Redis may be unreachable before ``acquire`` raises (``fallback="error"``).
DEFAULT_UNAVAILABLE_TIMEOUT = 5.0
#: The longest one Redis call may take before Redis counts as unreachable.
DEFAULT_CALL_TIMEOUT = 0.5
#: TTL of the epoch marker: an empty Redis younger than this is taken as a restart.
DEFAULT_MARKER_TTL = 86400.0

# A sleep never shorter than this (Redis time is in ms; avoid spinning on rounding).
_MIN_SLEEP = 0.0005
# A sleep never longer than this: a sync hold or pause may be replaced by a shorter one.
_MAX_SLEEP = 1.0
# While Redis is unreachable, how often the probe tries it (at most; heartbeat_interval if
# shorter).
_PROBE_INTERVAL = 0.1
# Hold flags cached per claim set; cleared past this many (endpoint-scoped keys vary).
_FLAG_CACHE = 1024

# Errors that mean "Redis cannot answer now" (not "the script is wrong"): retried, then a
# fallback or BudgetStoreUnavailableError. Builtin TimeoutError (asyncio.timeout) is an OSError.
_UNAVAILABLE = (
    RedisConnectionError,  # also BusyLoadingError (LOADING), MaxConnectionsError
    RedisTimeoutError,
    OSError,
    ClusterError,  # ClusterDownError, MasterDownError
    AskError,  # MovedError: a cluster client that gave up following the slot
    TryAgainError,
    ReadOnlyError,  # a replica that has not been promoted yet
    OutOfMemoryError,
    RedisClusterException,  # SlotNotCoveredError and topology errors
    BusyLoadingError,
)

# KEYS[1] = epoch hash, KEYS[2] = give-back tombstones; then per budget key i: KEYS[3i] =
# in-flight zset, KEYS[3i+1] = released zset, KEYS[3i+2] = meta hash. ARGV[1] = op, ARGV[2] =
# epoch id to create if none, ARGV[3] = recovery grace ms, ARGV[4] = epoch TTL ms, ARGV[5] =
# in-flight timeout ms, then op arguments (see each branch). Times are Redis TIME in ms,
# written with 3 decimals: Lua's default number formatting keeps 14 digits, too few for epoch
# milliseconds.
_LUA = r"""
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local inflight = tonumber(ARGV[5])
local nkeys = (#KEYS - 2) / 3
local X = KEYS[2]

local function fmt(x) return string.format('%.3f', x) end
local function units_of(m) return tonumber(string.match(m, ':(%d+)$')) end
local function id_of(m) return string.match(m, '^(.*):%d+$') end

local e = redis.call('HMGET', KEYS[1], 'id', 'ru', 'rs')
local epoch = e[1]
local ru = tonumber(e[2]) or 0
local rs = tonumber(e[3]) or 0
if not epoch then
  -- Empty Redis: a first use, or a restart that lost every window. Admit nothing until
  -- every live process had time to re-seed what it holds, and remember when this Redis
  -- started: every unit it may have lost was stamped before then.
  epoch = ARGV[2]
  ru = now + tonumber(ARGV[3])
  rs = now
  local info = redis.pcall('INFO', 'server')
  if type(info) == 'string' then
    -- A difference of whole-second clocks: the real uptime may be up to 1 s shorter.
    local up = tonumber(string.match(info, 'uptime_in_seconds:(%d+)'))
    if up and up > 1 then rs = now - (up - 1) * 1000 end
  end
  redis.call('HSET', KEYS[1], 'id', epoch, 'ru', fmt(ru), 'rs', fmt(rs))
end
local mttl = tonumber(ARGV[4])
if redis.call('PTTL', KEYS[1]) < mttl then redis.call('PEXPIRE', KEYS[1], mttl) end

local function tombstone(id)
  redis.call('ZREMRANGEBYSCORE', X, '-inf', fmt(now))
  redis.call('ZADD', X, fmt(now + inflight), id)
  redis.call('PEXPIRE', X, math.ceil(inflight + 1000))
end

local function expire(i, period)
  local f, r, m = KEYS[3*i], KEYS[3*i+1], KEYS[3*i+2]
  local cut = fmt(now)
  local dead = redis.call('ZRANGEBYSCORE', f, '-inf', cut, 'WITHSCORES')
  if #dead > 0 then
    local n = 0
    for j = 1, #dead, 2 do
      local u = units_of(dead[j])
      n = n + u
      -- Its process stopped answering: count it as answered at its deadline.
      local exp = tonumber(dead[j+1]) + period
      if exp > now and redis.call('ZADD', r, 'GT', fmt(exp), dead[j]) == 1 then
        redis.call('HINCRBY', m, 'r', u)
      end
    end
    redis.call('ZREMRANGEBYSCORE', f, '-inf', cut)
    redis.call('HINCRBY', m, 'f', -n)
  end
  local gone = redis.call('ZRANGEBYSCORE', r, '-inf', cut)
  if #gone > 0 then
    local n = 0
    for j = 1, #gone do n = n + units_of(gone[j]) end
    redis.call('ZREMRANGEBYSCORE', r, '-inf', cut)
    redis.call('HINCRBY', m, 'r', -n)
  end
  -- Self-healing sums: an empty set counts nothing, whatever the hash says.
  if redis.call('ZCARD', f) == 0 then redis.call('HSET', m, 'f', 0) end
  if redis.call('ZCARD', r) == 0 then redis.call('HSET', m, 'r', 0) end
end

local function state(i, period)
  local m = KEYS[3*i+2]
  local v = redis.call('HMGET', m, 'f', 'r', 'h', 'hu', 'p')
  local hu = tonumber(v[4]) or 0
  local p = tonumber(v[5]) or 0
  -- No hold or pause outlasts one period of the key, whoever wrote it: cap it for good.
  if hu > now + period then hu = now + period; redis.call('HSET', m, 'hu', fmt(hu)) end
  if p > now + period then p = now + period; redis.call('HSET', m, 'p', fmt(p)) end
  local h = 0
  if hu > now then h = tonumber(v[3]) or 0 end
  return tonumber(v[1]) or 0, tonumber(v[2]) or 0, h, hu, p
end

local function touch(i, period)
  local _, _, _, hu, p = state(i, period)
  local ttl = math.ceil(math.max(period + inflight, hu - now, p - now) + 1000)
  for k = 3*i, 3*i+2 do redis.call('PEXPIRE', KEYS[k], ttl) end
end

if op == 'acquire' then
  -- ARGV[6] = lease id; per key: limit, period ms, units, '1' if held while its history
  -- may be lost.
  local lease = ARGV[6]
  -- Given back (its caller stopped waiting for this call) before the call ran.
  if redis.call('ZSCORE', X, lease) then return {0, '0', epoch, '0', 0, 0, '0'} end
  if ru > now then return {0, fmt(ru - now), epoch, '0', 0, 0, '0'} end
  -- A client retrying after a lost reply must not take the units twice.
  if redis.call('ZSCORE', KEYS[3], lease .. ':' .. ARGV[9]) then
    return {1, '0', epoch, '0', 0, 0, '0'}
  end
  local wait, unknown, pmax, pidx, lost = 0, 0, 0, 0, 0
  for i = 1, nkeys do
    local b = 7 + 4 * (i - 1)
    local limit, period, units = tonumber(ARGV[b]), tonumber(ARGV[b+1]), tonumber(ARGV[b+2])
    expire(i, period)
    if ARGV[b+3] == '1' and rs + period > now then lost = math.max(lost, rs + period - now) end
    local f, r, h, hu, p = state(i, period)
    if p > now then
      wait = math.max(wait, p - now)
      if p - now > pmax then pmax = p - now; pidx = i end
    end
    local excess = f + r + h + units - limit
    if excess > 0 then
      if f + units > limit then
        unknown = 1
      else
        -- Walk the releases in expiry order (the hold ends at hu) until enough are free.
        local at = nil
        local held = h
        local rows = redis.call('ZRANGE', KEYS[3*i+1], 0, excess - 1, 'WITHSCORES')
        for j = 1, #rows, 2 do
          local exp = tonumber(rows[j+1])
          if held > 0 and hu <= exp then
            excess = excess - held; held = 0
            if excess <= 0 then at = hu; break end
          end
          excess = excess - units_of(rows[j])
          if excess <= 0 then at = exp; break end
        end
        if at == nil and held > 0 then at = hu end
        if at == nil then unknown = 1 else wait = math.max(wait, at - now) end
      end
    end
  end
  wait = math.max(wait, lost)
  if wait > 0 or unknown == 1 then
    return {0, fmt(wait), epoch, fmt(pmax), pidx, unknown, fmt(lost)}
  end
  for i = 1, nkeys do
    local b = 7 + 4 * (i - 1)
    local period, units = tonumber(ARGV[b+1]), tonumber(ARGV[b+2])
    if redis.call('ZADD', KEYS[3*i], fmt(now + inflight), lease .. ':' .. units) == 1 then
      redis.call('HINCRBY', KEYS[3*i+2], 'f', units)
    end
    touch(i, period)
  end
  return {1, '0', epoch, '0', 0, 0, '0'}

elseif op == 'release' then
  -- ARGV[6] = lease id, ARGV[7] = '1' to give back (never counted); per key: period ms,
  -- units.
  local lease, give_back = ARGV[6], ARGV[7] == '1'
  if give_back then tombstone(lease) end
  for i = 1, nkeys do
    local b = 8 + 2 * (i - 1)
    local period, units = tonumber(ARGV[b]), tonumber(ARGV[b+1])
    expire(i, period)
    local mem = lease .. ':' .. units
    local m = KEYS[3*i+2]
    if redis.call('ZREM', KEYS[3*i], mem) == 1 then redis.call('HINCRBY', m, 'f', -units) end
    if give_back then
      if redis.call('ZREM', KEYS[3*i+1], mem) == 1 then redis.call('HINCRBY', m, 'r', -units) end
    elseif redis.call('ZADD', KEYS[3*i+1], 'GT', fmt(now + period), mem) == 1 then
      -- Also when the entry is missing (lost in a restart): counting it is the safe side.
      redis.call('HINCRBY', m, 'r', units)
    end
    touch(i, period)
  end
  return {epoch}

elseif op == 'sync' then
  -- One key. ARGV[6] = limit, [7] = remaining, [8] = reset ms, [9] = period ms.
  local limit, remaining = tonumber(ARGV[6]), tonumber(ARGV[7])
  local period = tonumber(ARGV[9])
  local reset = math.min(tonumber(ARGV[8]), period)
  expire(1, period)
  local f, r, h, hu = state(1, period)
  remaining = math.min(math.max(remaining, 0), limit)
  local phantom = (limit - remaining) - (f + r)
  -- Answers arrive out of order: a live hold is only ever raised (as in the memory store).
  if phantom > 0 and reset > 0 then
    if h > 0 then
      redis.call('HSET', KEYS[5], 'h', math.max(h, phantom), 'hu', fmt(math.max(hu, now + reset)))
    else
      redis.call('HSET', KEYS[5], 'h', phantom, 'hu', fmt(now + reset))
    end
  end
  touch(1, period)
  return {epoch}

elseif op == 'pause' then
  -- One key. ARGV[6] = resume ms, [7] = period ms.
  local period = tonumber(ARGV[7])
  local _, _, _, _, p = state(1, period)
  local until_ = now + math.min(tonumber(ARGV[6]), period)
  if until_ > p then redis.call('HSET', KEYS[5], 'p', fmt(until_)) end
  touch(1, period)
  return {epoch}

elseif op == 'heartbeat' then
  -- Per key: period ms, n, then n in-flight members whose deadlines move forward.
  local c = 6
  for i = 1, nkeys do
    local period, n = tonumber(ARGV[c]), tonumber(ARGV[c+1])
    c = c + 2
    for j = 1, n do
      redis.call('ZADD', KEYS[3*i], 'XX', 'GT', fmt(now + inflight), ARGV[c])
      c = c + 1
    end
    touch(i, period)
  end
  return {epoch}

elseif op == 'restore' then
  -- Per key: period ms, server-counted units, hold ms, pause ms, nf, nr, ng, then nf
  -- in-flight members, nr (member, ms left) pairs, ng members given back. Idempotent:
  -- members are unique lease ids.
  local c = 6
  for i = 1, nkeys do
    local fz, rz, m = KEYS[3*i], KEYS[3*i+1], KEYS[3*i+2]
    local period, used = tonumber(ARGV[c]), tonumber(ARGV[c+1])
    local hold_ms = math.min(tonumber(ARGV[c+2]), period)
    local pause_ms = math.min(tonumber(ARGV[c+3]), period)
    local nf, nr, ng = tonumber(ARGV[c+4]), tonumber(ARGV[c+5]), tonumber(ARGV[c+6])
    c = c + 7
    expire(i, period)
    for j = 1, nf do
      local mem = ARGV[c]
      c = c + 1
      if not redis.call('ZSCORE', rz, mem) then
        if redis.call('ZADD', fz, 'GT', fmt(now + inflight), mem) == 1 then
          redis.call('HINCRBY', m, 'f', units_of(mem))
        end
      end
    end
    for j = 1, nr do
      local mem, left = ARGV[c], tonumber(ARGV[c+1])
      c = c + 2
      local u = units_of(mem)
      if redis.call('ZREM', fz, mem) == 1 then redis.call('HINCRBY', m, 'f', -u) end
      if redis.call('ZADD', rz, 'GT', fmt(now + left), mem) == 1 then
        redis.call('HINCRBY', m, 'r', u)
      end
    end
    for j = 1, ng do
      local mem = ARGV[c]
      c = c + 1
      local u = units_of(mem)
      if redis.call('ZREM', fz, mem) == 1 then redis.call('HINCRBY', m, 'f', -u) end
      if redis.call('ZREM', rz, mem) == 1 then redis.call('HINCRBY', m, 'r', -u) end
      tombstone(id_of(mem))
    end
    local f, r, h, hu, p = state(i, period)
    if hold_ms > 0 then
      local phantom = used - (f + r)
      if phantom > h then
        redis.call('HSET', m, 'h', phantom, 'hu', fmt(math.max(hu, now + hold_ms)))
      end
    end
    if pause_ms > 0 and now + pause_ms > p then
      redis.call('HSET', m, 'p', fmt(now + pause_ms))
    end
    touch(i, period)
  end
  return {epoch}
end
return redis.error_reply('cdn-async: unknown op ' .. tostring(op))
"""


class BudgetStoreUnavailableError(CDNError):
    """Redis could not be reached, so no request can be admitted without risking a budget.

    Pass ``fallback="memory"`` to ``RedisBudgetStore`` to fall back to in-process budgets
    instead (each process then spends the whole budget on its own).
    """


class _Unavailable(Exception):
    """Internal: a Redis call failed to connect, timed out, or met a cluster error.

    ``sent``: the failed call may have reached Redis (and may still run there).
    ``started``: loop time when the failed call began.
    """

    def __init__(self, reason: str, *, sent: bool, started: float) -> None:
        super().__init__(reason)
        self.sent = sent
        self.started = started


def token_id_for(token: str) -> str:
    """A stable, non-reversible id for an API token, to name its budgets in Redis.

    Several tokens can share one Redis; each token's windows live under its own id. The id is
    a truncated SHA-256, so the token itself never reaches Redis.

    Args:
        token: The API token.

    Returns:
        16 hex digits.
    """
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _ms(seconds: float) -> str:
    return format(seconds * 1000.0, ".3f")


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _busy(exc: BaseException) -> bool:
    """Errors with no class of their own that mean "cannot answer now": another client's
    script is running (BUSY), or a cluster node is busy failing over."""
    return str(exc).startswith(("BUSY", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "LOADING"))


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RedisLease:
    """What ``RedisBudgetStore.acquire`` hands out; give it back to ``release``.

    Attributes:
        claims: The claims the request was admitted with.
    """

    __slots__ = ("_parts", "_store", "claims", "id", "released")

    def __init__(
        self,
        lease_id: str,
        claims: tuple[Claim, ...],
        parts: tuple[tuple[Claim, int], ...],
        store: RedisBudgetStore,
    ) -> None:
        self.id = lease_id
        self.claims = claims
        self._parts = parts  # (first claim of the key, merged units), sorted by key
        self._store = store
        self.released = False  # released or given back

    def __repr__(self) -> str:
        keys = ", ".join(f"{c.key}={u}" for c, u in self._parts)
        return f"<RedisLease {keys}{' released' if self.released else ''}>"


class _Group:
    """The local FIFO of acquires on one key set: only the head asks Redis."""

    __slots__ = ("count", "lock", "sleeper")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()  # FIFO: asyncio.Lock wakes waiters in arrival order
        self.count = 0
        self.sleeper: asyncio.Future[None] | None = None


class _Local(WindowLedger):
    """This process's own units on one key, with the holds and pauses it learned."""

    __slots__ = ("claim",)

    def __init__(self, claim: Claim) -> None:
        super().__init__(claim.limit, claim.period)
        self.claim = claim


class RedisBudgetStore:
    """Budget windows kept in Redis, shared by every process that uses one API token.

    Pass it to ``CDNClient(budget_store=...)`` in every process (web workers, purge workers,
    hosts) with the same Redis and ``token_id``; together they never exceed a budget::

        from cdn_async import CDNClient
        from cdn_async.redis import RedisBudgetStore, token_id_for

        store = RedisBudgetStore("redis://localhost:6379/0", token_id=token_id_for(token))
        async with CDNClient(token, budget_store=store) as cdn:
            ...

    Redis Cluster: pass the URL of any node (``cluster=True`` makes a cluster client at once;
    the default switches to one on the first ``MOVED``), or a
    ``redis.asyncio.cluster.RedisCluster``. A token's keys share one hash tag, so each script
    runs on one node; a failover or restart of that node is an outage like any other.

    Within a process, acquires on the same key set queue in arrival order and only the head
    polls Redis; across processes, the first to ask when the units fit is admitted. What
    happens when Redis restarts, stalls or cannot be reached is in the module docstring
    (``cdn_async._redis``): no budget is exceeded across a restart; a lone process is exact
    across an outage with ``fallback="memory"``, and ``N`` processes spend at most ``N`` times
    a budget while Redis is away.

    Args:
        redis: A URL (the store makes, and closes, its own client, with ``call_timeout``
            socket timeouts), a ``redis.asyncio.Redis`` or a
            ``redis.asyncio.cluster.RedisCluster`` client (not closed by the store; its calls
            are bounded by ``call_timeout`` too).
        namespace: Prefix of every key (``{<namespace>:<token_id>}:...``).
        token_id: Which token's budgets these are, when several tokens share one Redis. Use
            ``token_id_for(token)``; never the token itself.
        fallback: What to do when Redis cannot be reached: ``"error"`` (default) raises
            ``BudgetStoreUnavailableError`` once it has been unreachable for
            ``unavailable_timeout`` s; ``"memory"`` admits at once from this process's own
            record of its units, pauses and holds (the rules of ``MemoryBudgetStore``),
            logging a WARNING, until Redis answers again.
        cluster: With a URL: ``True`` makes a Redis Cluster client (the URL of any node);
            ``None`` (default) makes a plain client and switches to a cluster client the first
            time Redis answers ``MOVED``; ``False`` never does.
        limits: The budgets the clients on this token use (default
            ``RateLimits.documented()``). Only which budgets are token-wide and counted per
            request is read, to know which need no hold after a restart (module docstring).
        inflight_timeout: A request whose process stops heartbeating counts as answered this
            many seconds after its last heartbeat (its slot frees ``period`` after that).
            Must exceed ``heartbeat_interval``.
        heartbeat_interval: How often a process with state in Redis refreshes its in-flight
            deadlines and checks that Redis kept its state.
        recovery_grace: After Redis lost its state (restart), nothing is admitted for this
            long, so every process can re-seed its requests. Must exceed ``heartbeat_interval``
            plus a reconnect; 0 turns the wait off (then only processes that saw the outage
            re-seed before admitting).
        restart_hold: After Redis lost its state, a budget that no other budget of the
            request bounds admits nothing until one of its periods has passed since Redis
            started (units of processes that are gone are unknown). ``False`` skips that: only
            for a Redis known to be new (tests); a restart may then admit a period's worth of
            requests twice.
        max_poll_interval: The longest a queued acquire sleeps before asking Redis again when
            only an answer can free its slot.
        unavailable_timeout: How long Redis may be unreachable before ``acquire`` raises
            (``fallback="error"``).
        call_timeout: The longest one Redis call may take; a slower one counts as Redis being
            unreachable (a stalled server).
        marker_ttl: How long the epoch marker outlives the last use; an empty Redis within
            this time is treated as restarted (with the recovery wait).
        clock: Monotonic seconds for this process's own waits and mirror; default the running
            loop's ``time``. Windows in Redis are stamped with Redis's clock.

    Raises:
        ValueError: An option is out of range.
    """

    def __init__(
        self,
        redis: aioredis.Redis | RedisCluster | str,
        *,
        namespace: str = "cdn-async",
        token_id: str | None = None,
        fallback: Literal["error", "memory"] = "error",
        cluster: bool | None = None,
        limits: RateLimits | None = None,
        inflight_timeout: float = DEFAULT_INFLIGHT_TIMEOUT,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        recovery_grace: float = DEFAULT_RECOVERY_GRACE,
        restart_hold: bool = True,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        unavailable_timeout: float = DEFAULT_UNAVAILABLE_TIMEOUT,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        marker_ttl: float = DEFAULT_MARKER_TTL,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if fallback not in ("error", "memory"):
            raise ValueError(f"fallback must be 'error' or 'memory', got {fallback!r}")
        for name, value in (
            ("inflight_timeout", inflight_timeout),
            ("heartbeat_interval", heartbeat_interval),
            ("max_poll_interval", max_poll_interval),
            ("call_timeout", call_timeout),
            ("marker_ttl", marker_ttl),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name, value in (
            ("recovery_grace", recovery_grace),
            ("unavailable_timeout", unavailable_timeout),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if inflight_timeout <= heartbeat_interval:
            raise ValueError("inflight_timeout must exceed heartbeat_interval")
        tid = token_id if token_id is not None else "default"
        if any(ch in tid for ch in "{}") or any(ch in namespace for ch in "{}"):
            raise ValueError("namespace and token_id must not contain braces")
        self._call_timeout = call_timeout
        self._url: str | None = None
        self._redis: aioredis.Redis | RedisCluster
        if isinstance(redis, str):
            self._url = redis
            self._redis = self._make_client(cluster is True)
            self._owns_redis = True
            self._may_upgrade = cluster is None
        else:
            if cluster is not None:
                raise ValueError("cluster= applies to a URL; a client is used as it is")
            self._redis = redis
            self._owns_redis = False
            self._may_upgrade = False
        self._prefix = f"{{{namespace}:{tid}}}"
        self._epoch_key = f"{self._prefix}:epoch"
        self._tomb_key = f"{self._prefix}:x"
        self._fallback = fallback
        limits = limits if limits is not None else RateLimits.documented()
        # Budgets every request claims once, one window for the whole token (may bound others).
        self._universal = frozenset(
            b.name for b in limits.budgets if b.unit == "request" and b.scope == "token"
        )
        self._per_request = frozenset(b.name for b in limits.budgets if b.unit == "request")
        self._restart_hold = restart_hold
        self._flags: dict[tuple[tuple[Claim, int], ...], tuple[str, ...]] = {}
        self._inflight_ms = _ms(inflight_timeout)
        self._heartbeat_interval = heartbeat_interval
        self._probe_interval = min(heartbeat_interval, _PROBE_INTERVAL)
        self._grace_ms = _ms(recovery_grace)
        self._poll = max_poll_interval
        self._unavailable_timeout = unavailable_timeout
        self._marker_ttl = marker_ttl
        self._inflight_timeout = inflight_timeout
        self._recovery_grace = recovery_grace
        self._script: AsyncScript = self._redis.register_script(_LUA)
        self._clock: Callable[[], float] = clock if clock is not None else self._loop_time
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count()
        self._id_prefix = secrets.token_hex(6) + "-"
        self._closed = False
        self._groups: dict[tuple[str, ...], _Group] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        # The mirror of what this process put into Redis (re-seeded after a restart or an
        # outage), and per key the ledger of its own units (admits while Redis is away).
        self._inflight: dict[str, RedisLease] = {}
        self._released: deque[tuple[float, float, RedisLease]] = deque()  # (at, frees, lease)
        self._holds: dict[str, tuple[Claim, int, float]] = {}  # key -> (claim, used, until)
        self._pauses: dict[str, tuple[Claim, float]] = {}  # key -> (claim, until)
        self._give_backs: dict[str, RedisLease] = {}  # given back, not yet written to Redis
        self._local: dict[str, _Local] = {}
        self._epoch: str | None = None
        self._lost_warned: str | None = None  # epoch whose restart hold was logged
        self._needs_restore = False
        self._restore_lock = asyncio.Lock()
        self._max_period = 0.0
        # Redis unreachable since this loop time (None: reachable as far as we know).
        self._down_since: float | None = None

    def __repr__(self) -> str:
        # The prefix names the namespace and token id (a hash), never a password or token.
        return f"<RedisBudgetStore {self._prefix} fallback={self._fallback!r}>"

    def _make_client(self, cluster: bool) -> aioredis.Redis | RedisCluster:
        assert self._url is not None
        timeout = self._call_timeout
        if cluster:
            # One retry: a MOVED after a failover refreshes the slot map and follows it.
            return RedisCluster.from_url(
                self._url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 1),
            )
        # One retry on a connection error only: a pooled connection that a Redis restart
        # closed is replaced at once. Timeouts are not retried: call_timeout bounds a call.
        return aioredis.Redis.from_url(
            self._url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )

    # -- clock ----------------------------------------------------------------------------------

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _loop_time(self) -> float:
        return self._get_loop().time()

    # -- the BudgetStore protocol ----------------------------------------------------------------

    async def acquire(
        self,
        claims: Sequence[Claim],
        *,
        max_wait: float | None = None,
        priority: Priority = "normal",
    ) -> RedisLease:
        """Wait until every claim fits in Redis, then take them all at once.

        ``priority`` is accepted and not honoured: across processes, whichever asks first
        when units free is admitted (see docs/design.md).

        One script call (one round trip) per attempt. Acquires on the same key set queue
        locally in arrival order; only the head asks Redis, sleeping what the script says is
        left (at most ``max_poll_interval`` when only an answer can free the slot, and waking
        at once when this process gets an answer).

        Args:
            claims: What the request takes, one claim per budget key (repeated keys add up).
            max_wait: The longest the caller will wait for a key paused by a 429; None: any.

        Returns:
            The lease to hand to ``release`` (or ``give_back``) when the attempt is over.

        Raises:
            RateLimitedError: A key is paused for longer than ``max_wait``.
            ValidationError: A claim has fewer than 1 unit or more than its limit.
            BudgetStoreUnavailableError: Redis has been unreachable for
                ``unavailable_timeout`` s (with ``fallback="error"``).
            CDNError: The store is closed.
        """
        if self._closed:
            raise CDNError("budget store closed")
        parts = _merge(claims)
        for c, _ in parts:
            self._ledger(c)
        self._check_local_pause(parts, max_wait)
        keyset = tuple(c.key for c, _ in parts)
        group = self._groups.get(keyset)
        if group is None:
            group = self._groups[keyset] = _Group()
        group.count += 1
        try:
            async with group.lock:
                return await self._acquire_head(tuple(claims), parts, max_wait, group)
        finally:
            group.count -= 1
            if group.count == 0 and self._groups.get(keyset) is group:
                del self._groups[keyset]

    def release(self, lease: Lease) -> None:
        """The request's answer (or failure) arrived: its units free ``period`` s from now.

        The Redis call runs in a task (``aclose`` waits for it); this process's mirror
        records the release at once, so a restart or an outage cannot lose it. Idempotent,
        and a no-op after ``give_back``.

        Args:
            lease: A lease this store returned from ``acquire``.

        Raises:
            ValueError: ``lease`` did not come from this store.
        """
        self._check_lease(lease)
        assert isinstance(lease, RedisLease)
        if lease.released:
            return
        lease.released = True
        if self._closed:
            return
        self._inflight.pop(lease.id, None)
        now = self._clock()
        for c, u in lease._parts:
            self._ledger(c).release(u, now)
        self._released.append((now, now + max(c.period for c, _ in lease._parts), lease))
        self._wake_all()
        if self._down_since is not None:
            self._needs_restore = True  # written with the re-seed when Redis answers
        else:
            self._spawn(self._release_remote(lease, give_back=False))

    def give_back(self, lease: Lease) -> None:
        """The request was never sent, or the server refused it with a 429 without counting
        it: its units are uncounted at once (here and in Redis), not one period from now.

        Idempotent, and a no-op after ``release``. Written to Redis in a task, like
        ``release``; while Redis is unreachable it waits in the mirror for the re-seed.

        Args:
            lease: A lease this store returned from ``acquire``.

        Raises:
            ValueError: ``lease`` did not come from this store.
        """
        self._check_lease(lease)
        assert isinstance(lease, RedisLease)
        if lease.released:
            return
        lease.released = True
        if self._closed:
            return
        self._inflight.pop(lease.id, None)
        for c, u in lease._parts:
            self._ledger(c).give_back(u)
        self._wake_all()
        if self._down_since is not None:
            self._give_backs[lease.id] = lease
            self._needs_restore = True
        else:
            self._spawn(self._release_remote(lease, give_back=True))

    def sync(self, claim: Claim, remaining: int, reset_after: float) -> None:
        """Apply server headers for every process: until ``reset_after`` s from now (at most
        ``claim.period``), admit at most ``remaining`` more units on ``claim.key``.

        As in ``MemoryBudgetStore``: when the server counts more than Redis holds (in flight
        and released, over all processes), the difference is held until the reset; a live
        hold is raised, never lowered.

        Args:
            claim: The claim the headers describe.
            remaining: ``ratelimit-remaining``.
            reset_after: Seconds from now until ``ratelimit-reset``.
        """
        if self._closed:
            return
        reset_after = min(reset_after, claim.period)
        now = self._clock()
        self._ledger(claim).sync(remaining, reset_after, now)
        used = claim.limit - min(max(remaining, 0), claim.limit)
        if reset_after > 0 and used > 0:
            old = self._holds.get(claim.key)
            if old is not None and old[2] > now:
                self._holds[claim.key] = (claim, max(used, old[1]), max(now + reset_after, old[2]))
            else:
                self._holds[claim.key] = (claim, used, now + reset_after)
        if self._down_since is not None:
            self._needs_restore = True
            return
        args = [str(claim.limit), str(remaining), _ms(max(reset_after, 0.0)), _ms(claim.period)]
        self._spawn(self._call_quiet("sync", ((claim, 0),), args))

    def pause(self, claim: Claim, resume_after: float) -> None:
        """The server answered 429 for this key: every process admits nothing on it for
        ``resume_after`` s, capped at ``claim.period`` (extends, never shortens, a pause).

        Args:
            claim: The claim whose key the 429 concerns.
            resume_after: Seconds from now.
        """
        resume_after = min(resume_after, claim.period)
        if self._closed or resume_after <= 0:
            return
        now = self._clock()
        self._ledger(claim).pause(resume_after, now)
        old = self._pauses.get(claim.key)
        if old is None or old[1] < now + resume_after:
            self._pauses[claim.key] = (claim, now + resume_after)
        self._wake_all()
        if self._down_since is not None:
            self._needs_restore = True
            return
        args = [_ms(resume_after), _ms(claim.period)]
        self._spawn(self._call_quiet("pause", ((claim, 0),), args))

    def snapshot(self) -> dict[str, BudgetState]:
        """This process's view of its keys (sync: it reads no Redis).

        ``used`` counts this process's own units (in flight and unexpired) plus what its
        answers' headers said others spent (sync holds), ``waiters`` its own queued acquires
        and ``paused_for`` the pauses it knows of. Other processes' units are in Redis only.

        Returns:
            ``{key: BudgetState}`` for every key this process holds units on or waits for.
        """
        now = self._clock()
        self._prune(now)
        waiters: dict[str, int] = {}
        for keyset, group in self._groups.items():
            for key in keyset:
                waiters[key] = waiters.get(key, 0) + group.count
        out: dict[str, BudgetState] = {}
        for key, led in self._local.items():
            used = led.used(now)
            out[key] = BudgetState(
                key=key,
                limit=led.limit,
                used=used,
                remaining=max(0, led.limit - used),
                next_free_in=led.next_free_in(now),
                waiters=waiters.get(key, 0),
                paused_for=led.paused_for(now),
            )
        return out

    async def aclose(self) -> None:
        """Finish pending Redis calls (each bounded by ``call_timeout``), stop the heartbeat,
        close the client if the store made it. Queued acquires fail with ``CDNError``; later
        calls raise or do nothing, as for ``MemoryBudgetStore``.
        """
        if self._closed:
            return
        self._closed = True
        self._wake_all()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._owns_redis:
            await self._redis.aclose()

    # -- acquiring --------------------------------------------------------------------------------

    def _check_lease(self, lease: Lease) -> None:
        if not isinstance(lease, RedisLease) or lease._store is not self:
            raise ValueError(f"not a lease of this store: {lease!r}")

    async def _acquire_head(
        self,
        claims: tuple[Claim, ...],
        parts: tuple[tuple[Claim, int], ...],
        max_wait: float | None,
        group: _Group,
    ) -> RedisLease:
        while True:
            if self._closed:
                raise CDNError("budget store closed")
            down = self._down_since
            if down is not None:
                if self._fallback == "memory":
                    got = await self._acquire_local(claims, parts, max_wait, group)
                    if got is not None:
                        return got
                    continue  # Redis answers again
                left = down + self._unavailable_timeout - self._clock()
                if left <= 0:
                    raise BudgetStoreUnavailableError(
                        f"Redis unreachable for {self._clock() - down:.1f} s; not admitting "
                        "requests, which could exceed a budget shared with other processes "
                        "(pass fallback='memory' to use in-process budgets)"
                    )
                await self._nap(group, min(left, _MAX_SLEEP))  # woken when Redis answers
                continue
            lease = RedisLease(self._new_id(), claims, parts, self)
            try:
                admitted, wait, paused, pidx, unknown = await self._attempt(lease)
            except _Unavailable as exc:
                self._mark_down(exc)
                continue
            if admitted:
                return lease
            if max_wait is not None and paused > max_wait:
                c = parts[pidx - 1][0] if pidx else parts[0][0]
                raise RateLimitedError(
                    f"budget {c.budget!r} ({c.key}) is paused for {paused:.3f} s after a 429",
                    reset_at=time.time() + paused,
                    budget=c.budget,
                )
            delay = max(wait, self._poll) if unknown else wait
            await self._nap(group, min(max(delay, _MIN_SLEEP), _MAX_SLEEP))

    async def _attempt(self, lease: RedisLease) -> tuple[bool, float, float, int, bool]:
        """One acquire script call; the lease is in the mirror as soon as Redis may hold it."""
        task = asyncio.ensure_future(self._acquire_call(lease))
        try:
            res = await asyncio.shield(task)
        except asyncio.CancelledError:
            # The script may still admit the lease: give it back, it was never sent.
            task.add_done_callback(lambda t: self._after_cancel(t, lease))
            raise
        admitted = int(res[0]) == 1
        if admitted:
            self._admitted(lease)
        lost = float(_str(res[6])) / 1000.0
        if lost > 0 and self._lost_warned != self._epoch:
            self._lost_warned = self._epoch
            flags = self._hold_flags(lease._parts)
            logger.warning(
                "Redis holds no budget history (it restarted, or is new): admitting nothing "
                "on %s for up to %.1f s more, in case processes that are gone spent it",
                ", ".join(c.key for (c, _), f in zip(lease._parts, flags, strict=True) if f == "1"),
                lost,
            )
        return (
            admitted,
            float(_str(res[1])) / 1000.0,
            float(_str(res[3])) / 1000.0,
            int(res[4]),
            int(res[5]) == 1,
        )

    async def _acquire_call(self, lease: RedisLease) -> list[Any]:
        args = [self._new_epoch(), self._grace_ms, self._marker_ms(lease), self._inflight_ms]
        args.append(lease.id)
        for (c, u), flag in zip(lease._parts, self._hold_flags(lease._parts), strict=True):
            args.extend((str(c.limit), _ms(c.period), str(u), flag))
        try:
            return await self._eval("acquire", lease._parts, args, build=False)
        except _Unavailable as exc:
            if exc.sent:
                # It may still run when Redis wakes: give it back with the re-seed.
                self._give_backs[lease.id] = lease
            raise

    def _after_cancel(self, task: asyncio.Future[list[Any]], lease: RedisLease) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        if int(task.result()[0]) == 1 and not self._closed:
            lease.released = True
            if self._down_since is not None:
                self._give_backs[lease.id] = lease
            else:
                self._spawn(self._release_remote(lease, give_back=True))

    def _admitted(self, lease: RedisLease) -> None:
        for c, u in lease._parts:
            self._ledger(c).take(u)
        self._inflight[lease.id] = lease
        self._ensure_heartbeat()

    async def _acquire_local(
        self,
        claims: tuple[Claim, ...],
        parts: tuple[tuple[Claim, int], ...],
        max_wait: float | None,
        group: _Group,
    ) -> RedisLease | None:
        """Admit from this process's ledgers while Redis is unreachable (``fallback="memory"``).

        Returns None as soon as Redis answers again (the caller asks Redis then).
        """
        while self._down_since is not None:
            if self._closed:
                raise CDNError("budget store closed")
            now = self._clock()
            self._check_local_pause(parts, max_wait)
            delay = 0.0
            for c, u in parts:
                delay = max(delay, self._ledger(c).fit_delay(u, now))
            if delay <= 0:
                lease = RedisLease(self._new_id(), claims, parts, self)
                self._admitted(lease)  # re-seeded into Redis when it answers
                return lease
            # inf: only an answer frees room; release() wakes this nap.
            await self._nap(group, min(max(delay, _MIN_SLEEP), _MAX_SLEEP))
        return None

    def _check_local_pause(
        self, parts: tuple[tuple[Claim, int], ...], max_wait: float | None
    ) -> None:
        if max_wait is None:
            return
        now = self._clock()
        for c, _ in parts:
            led = self._local.get(c.key)
            if led is not None and led.paused_until - now > max_wait:
                paused = led.paused_until - now
                raise RateLimitedError(
                    f"budget {c.budget!r} ({c.key}) is paused for {paused:.3f} s after a 429",
                    reset_at=time.time() + paused,
                    budget=c.budget,
                )

    def _ledger(self, c: Claim) -> _Local:
        led = self._local.get(c.key)
        if led is None:
            led = self._local[c.key] = _Local(c)
        elif led.limit != c.limit or led.period != c.period:
            led.limit, led.period, led.claim = c.limit, c.period, c
        return led

    def _hold_flags(self, parts: tuple[tuple[Claim, int], ...]) -> tuple[str, ...]:
        """Per key of a request: '1' if it is held while its history may be lost, '0' if
        another budget of the request bounds it (module docstring, "Restarts")."""
        flags = self._flags.get(parts)
        if flags is not None:
            return flags
        out = []
        for a, _ in parts:
            held = self._restart_hold
            if held and a.budget in self._per_request:
                for b, _ in parts:
                    if b.key == a.key or b.key != b.budget or b.budget not in self._universal:
                        continue
                    # Requests B lets through in any window of A's period (closed windows).
                    most = b.limit * (math.floor(a.period / b.period * (1 + 1e-9)) + 1)
                    if most <= a.limit:
                        held = False
                        break
            out.append("1" if held else "0")
        flags = tuple(out)
        if len(self._flags) >= _FLAG_CACHE:
            self._flags.clear()
        self._flags[parts] = flags
        return flags

    async def _nap(self, group: _Group, delay: float) -> None:
        """Sleep ``delay`` s, or less if this process gets an answer (a slot may be free)."""
        loop = self._get_loop()
        fut: asyncio.Future[None] = loop.create_future()
        group.sleeper = fut
        handle = loop.call_later(delay, _resolve, fut)
        try:
            await fut
        finally:
            handle.cancel()
            group.sleeper = None

    def _wake_all(self) -> None:
        for group in self._groups.values():
            if group.sleeper is not None:
                _resolve(group.sleeper)

    # -- reachability -------------------------------------------------------------------------

    def _mark_down(self, exc: _Unavailable) -> None:
        self._needs_restore = True
        if self._down_since is None:
            self._down_since = exc.started
            if self._fallback == "memory":
                then = (
                    "admitting with in-process budgets (this process's own units, pauses "
                    "and holds) until it answers again"
                )
            else:
                then = f"acquires wait for it, then raise after {self._unavailable_timeout:.1f} s"
            logger.warning(
                "Redis unreachable (%s); %s: other processes' spending is not counted",
                exc,
                then,
            )
        self._ensure_heartbeat()

    def _mark_up(self) -> None:
        if self._down_since is not None:
            logger.warning(
                "Redis reachable again after %.1f s; budgets are shared again",
                self._clock() - self._down_since,
            )
            self._down_since = None
            self._wake_all()

    # -- Redis calls ----------------------------------------------------------------------------

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"

    def _new_epoch(self) -> str:
        return secrets.token_hex(8)

    def _marker_ms(self, lease: RedisLease | None = None) -> str:
        if lease is not None:
            self._max_period = max(self._max_period, *(c.period for c, _ in lease._parts))
        ttl = max(
            self._marker_ttl, self._max_period + self._inflight_timeout + self._recovery_grace
        )
        return str(math.ceil(ttl * 1000))

    def _keys(self, parts: Sequence[tuple[Claim, int]]) -> list[str]:
        keys = [self._epoch_key, self._tomb_key]
        p = self._prefix
        for c, _ in parts:
            keys.extend((f"{p}:f:{c.key}", f"{p}:r:{c.key}", f"{p}:m:{c.key}"))
        return keys

    async def _eval(
        self, op: str, parts: Sequence[tuple[Claim, int]], args: list[str], *, build: bool = True
    ) -> list[Any]:
        """Run one script operation, re-seeding first if Redis may have lost our state.

        Raises:
            _Unavailable: Redis could not answer within ``call_timeout`` (the mirror will be
                re-seeded later).
        """
        if self._needs_restore and op != "restore":
            try:
                await self._restore()
            except _Unavailable as exc:
                exc.sent = False  # this operation never left
                raise
        if build:
            args = [self._new_epoch(), self._grace_ms, self._marker_ms(), self._inflight_ms, *args]
        keys = self._keys(parts)
        started = self._clock()
        try:
            try:
                async with asyncio.timeout(self._call_timeout):
                    res: list[Any] = await self._script(keys=keys, args=[op, *args])
            except AskError:
                if not self._upgrade():
                    raise
                async with asyncio.timeout(self._call_timeout):
                    res = await self._script(keys=keys, args=[op, *args])
        except (*_UNAVAILABLE, ResponseError) as exc:
            if not isinstance(exc, _UNAVAILABLE) and not _busy(exc):
                raise  # a real error (a script bug, no permission): not an outage
            self._needs_restore = True
            reason = _reason(exc)
            if isinstance(exc, AskError) and not isinstance(self._redis, RedisCluster):
                reason += " (this Redis is a cluster node: pass a RedisCluster client)"
            elif isinstance(exc, TimeoutError) and not isinstance(exc, RedisTimeoutError):
                reason = f"no answer within {self._call_timeout:g} s"
            raise _Unavailable(reason, sent=True, started=started) from exc
        self._mark_up()
        epoch = _str(res[2] if op == "acquire" else res[0])
        if self._epoch is None:
            self._epoch = epoch
        elif epoch != self._epoch:
            logger.warning(
                "Redis lost the shared budget state (restart?); re-seeding this process's "
                "requests and admitting nothing for %.1f s while the others do",
                self._recovery_grace,
            )
            self._epoch = epoch
            self._needs_restore = True
            if op != "restore":
                self._spawn(self._restore_quiet())
        return res

    def _upgrade(self) -> bool:
        """Redis answered MOVED to a plain client made from a URL: it is a cluster node, so
        switch to a cluster client once. Returns False when that is not allowed."""
        if not self._may_upgrade:
            return False
        self._may_upgrade = False
        old = self._redis
        logger.info("the Redis URL names a Redis Cluster node; using a cluster client")
        self._redis = self._make_client(True)
        self._script = self._redis.register_script(_LUA)
        self._spawn(old.aclose())
        return True

    async def _call_quiet(
        self, op: str, parts: Sequence[tuple[Claim, int]], args: list[str]
    ) -> None:
        """A fire-and-forget call (sync, pause): the mirror keeps it for a re-seed on failure."""
        try:
            await self._eval(op, parts, args)
        except _Unavailable as exc:
            logger.debug("budget %s not written to Redis (%s); kept for re-seeding", op, exc)
            self._mark_down(exc)
        except Exception:
            logger.exception("budget %s failed in Redis", op)
        self._ensure_heartbeat()

    async def _release_remote(self, lease: RedisLease, *, give_back: bool) -> None:
        args = [lease.id, "1" if give_back else "0"]
        for c, u in lease._parts:
            args.extend((_ms(c.period), str(u)))
        try:
            await self._eval("release", lease._parts, args)
        except _Unavailable as exc:
            logger.debug("release not written to Redis (%s); kept for re-seeding", exc)
            if give_back:
                self._give_backs[lease.id] = lease
            self._mark_down(exc)
        except Exception:
            logger.exception("budget release failed in Redis")
        self._ensure_heartbeat()

    async def _restore_quiet(self) -> None:
        try:
            await self._restore()
        except _Unavailable as exc:
            self._mark_down(exc)

    async def _restore(self) -> None:
        """Re-seed Redis with this process's mirror (idempotent; see the module docstring)."""
        async with self._restore_lock:
            if not self._needs_restore:
                return
            self._needs_restore = False
            now = self._clock()
            self._prune(now)
            per_key: dict[str, _Seed] = {}

            def seed(c: Claim) -> _Seed:
                s = per_key.get(c.key)
                if s is None:
                    s = per_key[c.key] = _Seed(c)
                return s

            for lease in self._inflight.values():
                for c, u in lease._parts:
                    seed(c).inflight.append(f"{lease.id}:{u}")
            for at, _, lease in self._released:
                for c, u in lease._parts:
                    left = at + c.period - now
                    if left > 0:
                        seed(c).released.append((f"{lease.id}:{u}", left))
            given = dict(self._give_backs)
            for lease in given.values():
                for c, u in lease._parts:
                    seed(c).given.append(f"{lease.id}:{u}")
            for c, used, until in self._holds.values():
                s = seed(c)
                s.used, s.hold = used, until - now
            for c, until in self._pauses.values():
                seed(c).pause = until - now
            parts = [(s.claim, 0) for s in per_key.values()]
            args: list[str] = []
            for s in per_key.values():
                args.extend(
                    (
                        _ms(s.claim.period),
                        str(s.used),
                        _ms(max(s.hold, 0.0)),
                        _ms(max(s.pause, 0.0)),
                        str(len(s.inflight)),
                        str(len(s.released)),
                        str(len(s.given)),
                    )
                )
                args.extend(s.inflight)
                for member, left in s.released:
                    args.extend((member, _ms(left)))
                args.extend(s.given)
            try:
                await self._eval("restore", parts, args)
            except BaseException:
                self._needs_restore = True
                raise
            for lease_id in given:
                self._give_backs.pop(lease_id, None)
            if per_key:
                logger.info("re-seeded %d budget keys in Redis", len(per_key))

    # -- mirror, heartbeat, tasks ------------------------------------------------------------------

    def _prune(self, now: float) -> None:
        released = self._released
        # Entries are in release order; frees-times are close to monotonic, and a lingering
        # entry only makes a re-seed count a little more (the safe side).
        while released and released[0][1] <= now:
            released.popleft()
        for key in [k for k, v in self._holds.items() if v[2] <= now]:
            del self._holds[key]
        for key in [k for k, v in self._pauses.items() if v[1] <= now]:
            del self._pauses[key]
        busy = {key for keyset in self._groups for key in keyset}
        for key in [k for k, v in self._local.items() if k not in busy and v.is_idle(now)]:
            del self._local[key]

    def _mirror_empty(self) -> bool:
        return not (
            self._inflight or self._released or self._holds or self._pauses or self._give_backs
        )

    def _ensure_heartbeat(self) -> None:
        if self._closed or (self._heartbeat is not None and not self._heartbeat.done()):
            return
        self._heartbeat = self._get_loop().create_task(self._heartbeat_loop())

    async def _heartbeat_loop(self) -> None:
        """While this process has state in Redis: keep its in-flight requests alive and
        notice a restart (then re-seed). While Redis is unreachable: probe it (a re-seed)."""
        while not self._closed:
            down = self._down_since is not None
            await asyncio.sleep(self._probe_interval if down else self._heartbeat_interval)
            self._prune(self._clock())
            down = self._down_since is not None
            if not down and self._mirror_empty() and not self._needs_restore:
                return
            try:
                if down or self._needs_restore:
                    self._needs_restore = True
                    await self._restore()
                    continue
                per_key: dict[str, tuple[Claim, list[str]]] = {}
                for lease in list(self._inflight.values()):
                    for c, u in lease._parts:
                        per_key.setdefault(c.key, (c, []))[1].append(f"{lease.id}:{u}")
                args: list[str] = []
                for c, members in per_key.values():
                    args.extend((_ms(c.period), str(len(members)), *members))
                await self._eval("heartbeat", [(c, 0) for c, _ in per_key.values()], args)
            except _Unavailable as exc:
                logger.debug("budget heartbeat: Redis unreachable (%s)", exc)
                self._mark_down(exc)
            except Exception:
                logger.exception("budget heartbeat failed")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._get_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Seed:
    """What this process re-seeds for one key after a restart or an outage."""

    __slots__ = ("claim", "given", "hold", "inflight", "pause", "released", "used")

    def __init__(self, claim: Claim) -> None:
        self.claim = claim
        self.inflight: list[str] = []
        self.released: list[tuple[str, float]] = []
        self.given: list[str] = []
        self.used = 0
        self.hold = 0.0
        self.pause = 0.0


def _merge(claims: Sequence[Claim]) -> tuple[tuple[Claim, int], ...]:
    """One (claim, units) per key, sorted by key; validates as ``MemoryBudgetStore`` does."""
    merged: dict[str, list[Any]] = {}
    for c in claims:
        if c.units < 1 or c.units > c.limit:
            raise ValidationError(
                f"claim on {c.key!r} takes {c.units} units; it must be 1..{c.limit}"
            )
        entry = merged.get(c.key)
        if entry is None:
            merged[c.key] = [c, c.units]
        else:
            entry[1] += c.units
            if entry[1] > c.limit:
                raise ValidationError(f"claims on {c.key!r} take {entry[1]} units; limit {c.limit}")
    return tuple((c, u) for _, (c, u) in sorted(merged.items()))


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


if TYPE_CHECKING:

    def _conforms(store: RedisBudgetStore) -> BudgetStore:
        return store
