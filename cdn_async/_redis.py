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
* ``{ns:T}:epoch``, a hash naming the current incarnation of this state (``id``) and the end
  of its recovery window (``ru``). See "Restarts" below.

All three keys of ``K`` get a TTL of a bit over ``period + inflight_timeout`` (or the hold or
pause, if longer) on every touch, so idle keys vanish.

One Lua script (``_LUA``) does everything, stamped with ``redis.call('TIME')``. Its
``acquire`` operation, one round trip per attempt, expires old entries, checks that every key
fits (``in flight + released + held + units <= limit`` and not paused) and either adds the
lease to every key at once, or answers how long until it could fit (exact when time alone
frees enough, else "unknown": only an answer can free the slot, so the caller polls).

Restarts. Redis runs without persistence here: a restart forgets every window. Each process
keeps a *mirror* of what it put in: its leases in flight, its released leases until they
expire, its last sync hold and pause per key. A restart is noticed two ways: a connection
error, or a changed epoch id in a script's answer (the first script run on an empty Redis
creates a new epoch). Either way the process re-seeds its mirror (one ``restore`` script,
idempotent) before its next acquire. A new epoch also opens a *recovery window*
(``recovery_grace``) in which nothing is admitted: long enough for every live process to
notice (each one with a non-empty mirror heartbeats every ``heartbeat_interval``) and re-seed.
So no window straddling a restart ever holds more than the budget.
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
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._budgets import BudgetLease, MemoryBudgetStore
from ._limits import BudgetState, Claim, Lease
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
#: How long ``acquire`` keeps trying to reach Redis before it raises (``fallback="error"``).
DEFAULT_UNAVAILABLE_TIMEOUT = 5.0
#: TTL of the epoch marker: an empty Redis younger than this is taken as a restart.
DEFAULT_MARKER_TTL = 86400.0

# A sleep never shorter than this (Redis time is in ms; avoid spinning on rounding).
_MIN_SLEEP = 0.0005
# A sleep never longer than this: a sync hold or pause may be replaced by a shorter one.
_MAX_SLEEP = 1.0
# How often, while in memory fallback, an acquire tries Redis again.
_FALLBACK_RETRY = 1.0

_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)

# KEYS[1] = epoch hash; then per budget key i: KEYS[3i-1] = in-flight zset, KEYS[3i] =
# released zset, KEYS[3i+1] = meta hash. ARGV[1] = op, ARGV[2] = epoch id to create if none,
# ARGV[3] = recovery grace ms, ARGV[4] = epoch TTL ms, ARGV[5] = in-flight timeout ms, then
# op arguments (see each branch). Times are Redis TIME in ms, written with 3 decimals: Lua's
# default number formatting keeps 14 digits, too few for epoch milliseconds.
_LUA = r"""
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local inflight = tonumber(ARGV[5])
local nkeys = (#KEYS - 1) / 3

local function fmt(x) return string.format('%.3f', x) end
local function units_of(m) return tonumber(string.match(m, ':(%d+)$')) end

local e = redis.call('HMGET', KEYS[1], 'id', 'ru')
local epoch = e[1]
local ru = tonumber(e[2]) or 0
if not epoch then
  -- Empty Redis: a first use, or a restart that lost every window. Admit nothing until
  -- every live process had time to re-seed what it holds.
  epoch = ARGV[2]
  ru = now + tonumber(ARGV[3])
  redis.call('HSET', KEYS[1], 'id', epoch, 'ru', fmt(ru))
end
local mttl = tonumber(ARGV[4])
if redis.call('PTTL', KEYS[1]) < mttl then redis.call('PEXPIRE', KEYS[1], mttl) end

local function expire(i, period)
  local f, r, m = KEYS[3*i-1], KEYS[3*i], KEYS[3*i+1]
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

local function state(i)
  local v = redis.call('HMGET', KEYS[3*i+1], 'f', 'r', 'h', 'hu', 'p')
  local hu = tonumber(v[4]) or 0
  local h = 0
  if hu > now then h = tonumber(v[3]) or 0 end
  return tonumber(v[1]) or 0, tonumber(v[2]) or 0, h, hu, tonumber(v[5]) or 0
end

local function touch(i, period)
  local _, _, _, hu, p = state(i)
  local ttl = math.ceil(math.max(period + inflight, hu - now, p - now) + 1000)
  for k = 3*i-1, 3*i+1 do redis.call('PEXPIRE', KEYS[k], ttl) end
end

if op == 'acquire' then
  -- ARGV[6] = lease id; per key: limit, period ms, units.
  if ru > now then return {0, fmt(ru - now), epoch, '0', 0, 0} end
  local lease = ARGV[6]
  -- A client retrying after a lost reply must not take the units twice.
  if redis.call('ZSCORE', KEYS[2], lease .. ':' .. ARGV[9]) then
    return {1, '0', epoch, '0', 0, 0}
  end
  local wait, unknown, pmax, pidx = 0, 0, 0, 0
  for i = 1, nkeys do
    local b = 7 + 3 * (i - 1)
    local limit, period, units = tonumber(ARGV[b]), tonumber(ARGV[b+1]), tonumber(ARGV[b+2])
    expire(i, period)
    local f, r, h, hu, p = state(i)
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
        local rows = redis.call('ZRANGE', KEYS[3*i], 0, excess - 1, 'WITHSCORES')
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
  if wait > 0 or unknown == 1 then return {0, fmt(wait), epoch, fmt(pmax), pidx, unknown} end
  for i = 1, nkeys do
    local b = 7 + 3 * (i - 1)
    local period, units = tonumber(ARGV[b+1]), tonumber(ARGV[b+2])
    if redis.call('ZADD', KEYS[3*i-1], fmt(now + inflight), lease .. ':' .. units) == 1 then
      redis.call('HINCRBY', KEYS[3*i+1], 'f', units)
    end
    touch(i, period)
  end
  return {1, '0', epoch, '0', 0, 0}

elseif op == 'release' then
  -- ARGV[6] = lease id, ARGV[7] = '1' to give back (never sent); per key: period ms, units.
  local lease, give_back = ARGV[6], ARGV[7] == '1'
  for i = 1, nkeys do
    local b = 8 + 2 * (i - 1)
    local period, units = tonumber(ARGV[b]), tonumber(ARGV[b+1])
    expire(i, period)
    local mem = lease .. ':' .. units
    local m = KEYS[3*i+1]
    if redis.call('ZREM', KEYS[3*i-1], mem) == 1 then redis.call('HINCRBY', m, 'f', -units) end
    if give_back then
      if redis.call('ZREM', KEYS[3*i], mem) == 1 then redis.call('HINCRBY', m, 'r', -units) end
    elseif redis.call('ZADD', KEYS[3*i], 'GT', fmt(now + period), mem) == 1 then
      -- Also when the entry is missing (lost in a restart): counting it is the safe side.
      redis.call('HINCRBY', m, 'r', units)
    end
    touch(i, period)
  end
  return {epoch}

elseif op == 'sync' then
  -- One key. ARGV[6] = limit, [7] = remaining, [8] = reset ms, [9] = period ms.
  local limit, remaining = tonumber(ARGV[6]), tonumber(ARGV[7])
  local reset, period = tonumber(ARGV[8]), tonumber(ARGV[9])
  expire(1, period)
  local f, r, h, hu = state(1)
  remaining = math.min(math.max(remaining, 0), limit)
  local phantom = (limit - remaining) - (f + r)
  -- Answers arrive out of order: a live hold is only ever raised (as in the memory store).
  if phantom > 0 and reset > 0 then
    if h > 0 then
      redis.call('HSET', KEYS[4], 'h', math.max(h, phantom), 'hu', fmt(math.max(hu, now + reset)))
    else
      redis.call('HSET', KEYS[4], 'h', phantom, 'hu', fmt(now + reset))
    end
  end
  touch(1, period)
  return {epoch}

elseif op == 'pause' then
  -- One key. ARGV[6] = resume ms, [7] = period ms.
  local _, _, _, _, p = state(1)
  local until_ = now + tonumber(ARGV[6])
  if until_ > p then redis.call('HSET', KEYS[4], 'p', fmt(until_)) end
  touch(1, tonumber(ARGV[7]))
  return {epoch}

elseif op == 'heartbeat' then
  -- Per key: period ms, n, then n in-flight members whose deadlines move forward.
  local c = 6
  for i = 1, nkeys do
    local period, n = tonumber(ARGV[c]), tonumber(ARGV[c+1])
    c = c + 2
    for j = 1, n do
      redis.call('ZADD', KEYS[3*i-1], 'XX', 'GT', fmt(now + inflight), ARGV[c])
      c = c + 1
    end
    touch(i, period)
  end
  return {epoch}

elseif op == 'restore' then
  -- Per key: period ms, server-counted units, hold ms, pause ms, nf, nr, then nf in-flight
  -- members, then nr (member, ms left) pairs. Idempotent: members are unique lease ids.
  local c = 6
  for i = 1, nkeys do
    local fz, rz, m = KEYS[3*i-1], KEYS[3*i], KEYS[3*i+1]
    local period, used = tonumber(ARGV[c]), tonumber(ARGV[c+1])
    local hold_ms, pause_ms = tonumber(ARGV[c+2]), tonumber(ARGV[c+3])
    local nf, nr = tonumber(ARGV[c+4]), tonumber(ARGV[c+5])
    c = c + 6
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
    local f, r, h, hu, p = state(i)
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
    """Internal: a Redis call failed to connect or timed out."""


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


class RedisLease:
    """What ``RedisBudgetStore.acquire`` hands out; give it back to ``release``.

    Attributes:
        claims: The claims the request was admitted with.
    """

    __slots__ = ("_memory", "_parts", "_store", "claims", "id", "released")

    def __init__(
        self,
        lease_id: str,
        claims: tuple[Claim, ...],
        parts: tuple[tuple[Claim, int], ...],
        store: RedisBudgetStore,
        memory: BudgetLease | None = None,
    ) -> None:
        self.id = lease_id
        self.claims = claims
        self._parts = parts  # (first claim of the key, merged units), sorted by key
        self._store = store
        self._memory = memory  # set when admitted by the in-process fallback
        self.released = False

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


class RedisBudgetStore:
    """Budget windows kept in Redis, shared by every process that uses one API token.

    Pass it to ``CDNClient(budget_store=...)`` in every process (web workers, purge workers,
    hosts) with the same Redis and ``token_id``; together they never exceed a budget::

        from cdn_async import CDNClient
        from cdn_async.redis import RedisBudgetStore, token_id_for

        store = RedisBudgetStore("redis://localhost:6379/0", token_id=token_id_for(token))
        async with CDNClient(token, budget_store=store) as cdn:
            ...

    Within a process, acquires on the same key set queue in arrival order and only the head
    polls Redis; across processes, the first to ask when the units fit is admitted.

    Args:
        redis: A ``redis.asyncio.Redis`` client (not closed by the store), or a URL (the store
            makes, and closes, its own client).
        namespace: Prefix of every key (``{<namespace>:<token_id>}:...``).
        token_id: Which token's budgets these are, when several tokens share one Redis. Use
            ``token_id_for(token)``; never the token itself.
        fallback: What to do when Redis cannot be reached: ``"error"`` (default) raises
            ``BudgetStoreUnavailableError`` after ``unavailable_timeout`` s of trying;
            ``"memory"`` admits with in-process budgets (``MemoryBudgetStore``) at once,
            logging a WARNING, until Redis answers again.
        inflight_timeout: A request whose process stops heartbeating counts as answered this
            many seconds after its last heartbeat (its slot frees ``period`` after that).
            Must exceed ``heartbeat_interval``.
        heartbeat_interval: How often a process with state in Redis refreshes its in-flight
            deadlines and checks that Redis kept its state.
        recovery_grace: After Redis lost its state (restart), nothing is admitted for this
            long, so every process can re-seed its requests. Must exceed ``heartbeat_interval``
            plus a reconnect; 0 turns the wait off (then only processes that saw the outage
            re-seed before admitting).
        max_poll_interval: The longest a queued acquire sleeps before asking Redis again when
            only an answer can free its slot.
        unavailable_timeout: How long ``acquire`` retries an unreachable Redis before raising
            (``fallback="error"``).
        marker_ttl: How long the epoch marker outlives the last use; an empty Redis within
            this time is treated as restarted (with the recovery wait).
        clock: Monotonic seconds for this process's own waits and mirror; default the running
            loop's ``time``. Windows in Redis are stamped with Redis's clock.

    Raises:
        ValueError: An option is out of range.
    """

    def __init__(
        self,
        redis: aioredis.Redis | str,
        *,
        namespace: str = "cdn-async",
        token_id: str | None = None,
        fallback: Literal["error", "memory"] = "error",
        inflight_timeout: float = DEFAULT_INFLIGHT_TIMEOUT,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        recovery_grace: float = DEFAULT_RECOVERY_GRACE,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        unavailable_timeout: float = DEFAULT_UNAVAILABLE_TIMEOUT,
        marker_ttl: float = DEFAULT_MARKER_TTL,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if fallback not in ("error", "memory"):
            raise ValueError(f"fallback must be 'error' or 'memory', got {fallback!r}")
        for name, value in (
            ("inflight_timeout", inflight_timeout),
            ("heartbeat_interval", heartbeat_interval),
            ("max_poll_interval", max_poll_interval),
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
        if isinstance(redis, str):
            self._redis = aioredis.Redis.from_url(redis, socket_connect_timeout=2.0)
            self._owns_redis = True
        else:
            self._redis = redis
            self._owns_redis = False
        self._prefix = f"{{{namespace}:{tid}}}"
        self._epoch_key = f"{self._prefix}:epoch"
        self._fallback = fallback
        self._inflight_ms = _ms(inflight_timeout)
        self._heartbeat_interval = heartbeat_interval
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
        # The mirror of what this process put into Redis (re-seeded after a restart).
        self._inflight: dict[str, RedisLease] = {}
        self._released: deque[tuple[float, float, RedisLease]] = deque()  # (at, frees, lease)
        self._holds: dict[str, tuple[Claim, int, float]] = {}  # key -> (claim, used, until)
        self._pauses: dict[str, tuple[Claim, float]] = {}  # key -> (claim, until)
        self._epoch: str | None = None
        self._needs_restore = False
        self._restore_lock = asyncio.Lock()
        self._max_period = 0.0
        # Fallback state.
        self._memory: MemoryBudgetStore | None = None
        self._fallback_until = -math.inf  # while loop time < this, go straight to memory

    def __repr__(self) -> str:
        # The prefix names the namespace and token id (a hash), never a password or token.
        return f"<RedisBudgetStore {self._prefix} fallback={self._fallback!r}>"

    # -- clock ----------------------------------------------------------------------------------

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _loop_time(self) -> float:
        return self._get_loop().time()

    # -- the BudgetStore protocol ----------------------------------------------------------------

    async def acquire(
        self, claims: Sequence[Claim], *, max_wait: float | None = None
    ) -> RedisLease:
        """Wait until every claim fits in Redis, then take them all at once.

        One script call (one round trip) per attempt. Acquires on the same key set queue
        locally in arrival order; only the head asks Redis, sleeping what the script says is
        left (at most ``max_poll_interval`` when only an answer can free the slot, and waking
        at once when this process gets an answer).

        Args:
            claims: What the request takes, one claim per budget key (repeated keys add up).
            max_wait: The longest the caller will wait for a key paused by a 429; None: any.

        Returns:
            The lease to hand to ``release`` when the answer (or failure) arrives.

        Raises:
            RateLimitedError: A key is paused for longer than ``max_wait``.
            ValidationError: A claim has fewer than 1 unit or more than its limit.
            BudgetStoreUnavailableError: Redis could not be reached for
                ``unavailable_timeout`` s (with ``fallback="error"``).
            CDNError: The store is closed.
        """
        if self._closed:
            raise CDNError("budget store closed")
        parts = _merge(claims)
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
        records the release at once, so a restart cannot lose it. Idempotent.

        Args:
            lease: A lease this store returned from ``acquire``.

        Raises:
            ValueError: ``lease`` did not come from this store.
        """
        if not isinstance(lease, RedisLease) or lease._store is not self:
            raise ValueError(f"not a lease of this store: {lease!r}")
        if lease.released:
            return
        lease.released = True
        if lease._memory is not None and self._memory is not None:
            self._memory.release(lease._memory)
        if self._closed:
            return
        self._inflight.pop(lease.id, None)
        now = self._clock()
        self._released.append((now, now + max(c.period for c, _ in lease._parts), lease))
        self._wake_all()
        self._spawn(self._release_remote(lease, give_back=False))

    def sync(self, claim: Claim, remaining: int, reset_after: float) -> None:
        """Apply server headers for every process: until ``reset_after`` s from now, admit at
        most ``remaining`` more units on ``claim.key``.

        As in ``MemoryBudgetStore``: when the server counts more than Redis holds (in flight
        and released, over all processes), the difference is held until the reset.

        Args:
            claim: The claim the headers describe.
            remaining: ``ratelimit-remaining``.
            reset_after: Seconds from now until ``ratelimit-reset``.
        """
        if self._closed:
            return
        now = self._clock()
        used = claim.limit - min(max(remaining, 0), claim.limit)
        if reset_after > 0 and used > 0:
            self._holds[claim.key] = (claim, used, now + reset_after)
        else:
            self._holds.pop(claim.key, None)
        args = [str(claim.limit), str(remaining), _ms(max(reset_after, 0.0)), _ms(claim.period)]
        self._spawn(self._call_quiet("sync", ((claim, 0),), args))

    def pause(self, claim: Claim, resume_after: float) -> None:
        """The server answered 429 for this key: every process admits nothing on it for
        ``resume_after`` s (extends, never shortens, a pause).

        Args:
            claim: The claim whose key the 429 concerns.
            resume_after: Seconds from now.
        """
        if self._closed or resume_after <= 0:
            return
        now = self._clock()
        old = self._pauses.get(claim.key)
        if old is None or old[1] < now + resume_after:
            self._pauses[claim.key] = (claim, now + resume_after)
        self._wake_all()
        args = [_ms(resume_after), _ms(claim.period)]
        self._spawn(self._call_quiet("pause", ((claim, 0),), args))

    def snapshot(self) -> dict[str, BudgetState]:
        """This process's view of its keys (sync: it reads no Redis).

        ``used`` counts this process's own units (in flight and unexpired), ``waiters`` its
        own queued acquires and ``paused_for`` the pauses it knows of. Other processes'
        units are in Redis only.

        Returns:
            ``{key: BudgetState}`` for every key this process holds units on or waits for.
        """
        now = self._clock()
        self._prune(now)
        used: dict[str, int] = {}
        claims: dict[str, Claim] = {}
        frees: dict[str, float] = {}
        for lease in self._inflight.values():
            for c, u in lease._parts:
                used[c.key] = used.get(c.key, 0) + u
                claims.setdefault(c.key, c)
        for at, _, lease in self._released:
            for c, u in lease._parts:
                if at + c.period > now:
                    used[c.key] = used.get(c.key, 0) + u
                    claims.setdefault(c.key, c)
                    frees[c.key] = min(frees.get(c.key, math.inf), at + c.period - now)
        waiters: dict[str, int] = {}
        for keyset, group in self._groups.items():
            for key in keyset:
                waiters[key] = waiters.get(key, 0) + group.count
        for key, (c, _until) in self._pauses.items():
            claims.setdefault(key, c)
        out: dict[str, BudgetState] = {}
        for key, c in claims.items():
            u = used.get(key, 0)
            pause = self._pauses.get(key)
            out[key] = BudgetState(
                key=key,
                limit=c.limit,
                used=u,
                remaining=max(0, c.limit - u),
                next_free_in=0.0 if u < c.limit else frees.get(key, math.inf),
                waiters=waiters.get(key, 0),
                paused_for=max(0.0, pause[1] - now) if pause else 0.0,
            )
        return out

    async def aclose(self) -> None:
        """Finish pending Redis calls (releases, syncs), stop the heartbeat, close the client
        if the store made it. Queued acquires fail with ``CDNError``; later calls raise or do
        nothing, as for ``MemoryBudgetStore``.
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
        if self._memory is not None:
            await self._memory.aclose()
        if self._owns_redis:
            await self._redis.aclose()

    # -- acquiring --------------------------------------------------------------------------------

    async def _acquire_head(
        self,
        claims: tuple[Claim, ...],
        parts: tuple[tuple[Claim, int], ...],
        max_wait: float | None,
        group: _Group,
    ) -> RedisLease:
        unavailable_since: float | None = None
        while True:
            if self._closed:
                raise CDNError("budget store closed")
            if self._fallback == "memory" and self._clock() < self._fallback_until:
                return await self._acquire_memory(claims, parts, max_wait)
            lease = RedisLease(self._new_id(), claims, parts, self)
            try:
                admitted, wait, paused, pidx, unknown = await self._attempt(lease)
            except _Unavailable as exc:
                now = self._clock()
                if self._fallback == "memory":
                    if self._fallback_until == -math.inf:
                        logger.warning(
                            "Redis unreachable (%s); admitting with in-process budgets until "
                            "it answers again: other processes' spending is not counted",
                            exc,
                        )
                    self._fallback_until = now + _FALLBACK_RETRY
                    return await self._acquire_memory(claims, parts, max_wait)
                if unavailable_since is None:
                    unavailable_since = now
                elif now - unavailable_since >= self._unavailable_timeout:
                    raise BudgetStoreUnavailableError(
                        f"Redis unreachable for {now - unavailable_since:.1f} s ({exc}); "
                        "not admitting requests, which could exceed a budget shared with "
                        "other processes (pass fallback='memory' to use in-process budgets)"
                    ) from exc
                await self._nap(group, min(0.05, self._unavailable_timeout / 10 + _MIN_SLEEP))
                continue
            if self._fallback_until != -math.inf:
                logger.warning("Redis reachable again; budgets are shared again")
                self._fallback_until = -math.inf
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
        args = [self._new_epoch(), self._grace_ms, self._marker_ms(lease), self._inflight_ms]
        args.append(lease.id)
        for c, u in lease._parts:
            args.extend((str(c.limit), _ms(c.period), str(u)))
        task = asyncio.ensure_future(self._eval("acquire", lease._parts, args, build=False))
        try:
            res = await asyncio.shield(task)
        except asyncio.CancelledError:
            # The script may still admit the lease: give it back, it was never sent.
            task.add_done_callback(lambda t: self._after_cancel(t, lease))
            raise
        admitted = int(res[0]) == 1
        if admitted:
            self._inflight[lease.id] = lease
            self._ensure_heartbeat()
        return (
            admitted,
            float(_str(res[1])) / 1000.0,
            float(_str(res[3])) / 1000.0,
            int(res[4]),
            int(res[5]) == 1,
        )

    def _after_cancel(self, task: asyncio.Task[list[Any]], lease: RedisLease) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        if int(task.result()[0]) == 1 and not self._closed:
            lease.released = True
            self._spawn(self._release_remote(lease, give_back=True))

    async def _acquire_memory(
        self,
        claims: tuple[Claim, ...],
        parts: tuple[tuple[Claim, int], ...],
        max_wait: float | None,
    ) -> RedisLease:
        if self._memory is None:
            self._memory = MemoryBudgetStore(clock=self._clock)
        inner = await self._memory.acquire(claims, max_wait=max_wait)
        lease = RedisLease(self._new_id(), claims, parts, self, memory=inner)
        # Mirrored like any lease: when Redis answers again it learns about it.
        self._inflight[lease.id] = lease
        self._ensure_heartbeat()
        return lease

    def _check_local_pause(
        self, parts: tuple[tuple[Claim, int], ...], max_wait: float | None
    ) -> None:
        if max_wait is None or not self._pauses:
            return
        now = self._clock()
        for c, _ in parts:
            p = self._pauses.get(c.key)
            if p is not None and p[1] - now > max_wait:
                paused = p[1] - now
                raise RateLimitedError(
                    f"budget {c.budget!r} ({c.key}) is paused for {paused:.3f} s after a 429",
                    reset_at=time.time() + paused,
                    budget=c.budget,
                )

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
        keys = [self._epoch_key]
        p = self._prefix
        for c, _ in parts:
            keys.extend((f"{p}:f:{c.key}", f"{p}:r:{c.key}", f"{p}:m:{c.key}"))
        return keys

    async def _eval(
        self, op: str, parts: Sequence[tuple[Claim, int]], args: list[str], *, build: bool = True
    ) -> list[Any]:
        """Run one script operation, re-seeding first if Redis may have lost our state.

        Raises:
            _Unavailable: Redis could not be reached (the mirror will be re-seeded later).
        """
        if self._needs_restore and op != "restore":
            await self._restore()
        if build:
            args = [self._new_epoch(), self._grace_ms, self._marker_ms(), self._inflight_ms, *args]
        try:
            res: list[Any] = await self._script(keys=self._keys(parts), args=[op, *args])
        except _CONNECTION_ERRORS as exc:
            self._needs_restore = True
            raise _Unavailable(type(exc).__name__) from exc
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

    async def _call_quiet(
        self, op: str, parts: Sequence[tuple[Claim, int]], args: list[str]
    ) -> None:
        """A fire-and-forget call (sync, pause): the mirror keeps it for a re-seed on failure."""
        try:
            await self._eval(op, parts, args)
        except _Unavailable as exc:
            logger.debug("budget %s not written to Redis (%s); kept for re-seeding", op, exc)
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
        except Exception:
            logger.exception("budget release failed in Redis")
        self._ensure_heartbeat()

    async def _restore_quiet(self) -> None:
        with contextlib.suppress(_Unavailable):
            await self._restore()

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
                    )
                )
                args.extend(s.inflight)
                for member, left in s.released:
                    args.extend((member, _ms(left)))
            try:
                await self._eval("restore", parts, args)
            except BaseException:
                self._needs_restore = True
                raise
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

    def _mirror_empty(self) -> bool:
        return not (self._inflight or self._released or self._holds or self._pauses)

    def _ensure_heartbeat(self) -> None:
        if self._closed or (self._heartbeat is not None and not self._heartbeat.done()):
            return
        self._heartbeat = self._get_loop().create_task(self._heartbeat_loop())

    async def _heartbeat_loop(self) -> None:
        """While this process has state in Redis: keep its in-flight requests alive and
        notice a restart (then re-seed)."""
        while not self._closed:
            await asyncio.sleep(self._heartbeat_interval)
            self._prune(self._clock())
            if self._mirror_empty() and not self._needs_restore:
                return
            try:
                if self._needs_restore:
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
            except Exception:
                logger.exception("budget heartbeat failed")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._get_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Seed:
    """What this process re-seeds for one key after a restart."""

    __slots__ = ("claim", "hold", "inflight", "pause", "released", "used")

    def __init__(self, claim: Claim) -> None:
        self.claim = claim
        self.inflight: list[str] = []
        self.released: list[tuple[str, float]] = []
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
