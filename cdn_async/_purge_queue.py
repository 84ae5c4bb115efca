"""``RedisPurgeQueue``: one purge queue for every process on a token, kept in Redis.

Public as ``cdn_async.redis.RedisPurgeQueue``. Every process (web workers, CI jobs, a
``cdn-async purge-worker``) that points a queue at the same Redis and ``token_id`` shares
one pending set per endpoint: a path is sent once however many processes ask for it, one
batch per endpoint is in flight at a time across all of them, and what was submitted
survives the death of the process that submitted it.

Structures (``P`` is ``{<namespace>:<token_id>}:pq``: the hash tag puts every key of a token,
budget keys included, in one Redis Cluster slot, so each script runs on one node):

* ``P:p:<endpoint>``, a sorted set of the *pending* paths, scored by their place in line: the
  entry's sequence number (from the counter ``P:n``: first in, first out), minus 2^50 for a
  path submitted at priority ``"high"`` (ahead of everything else). Sharing needs membership
  tests (``ZSCORE``: the path itself, ``*``, each parent wildcard ``dir/*``), and taking a
  batch needs the first N atomically (``ZPOPMIN``): a sorted set does both.
* ``P:w:<endpoint>``, a hash: pending path -> ``"<seq> <tickets...>"``: the entry's sequence
  number (its identity in results; unique, never reused while Redis keeps its data) and the
  tickets waiting on it.
* ``P:f:<endpoint>``, a hash: the batch *in flight*: path -> ``"<seq> <tickets...>"``, and the
  field ``""`` -> the batch id. A path there is never joined (it may be on the wire).
* ``P:l:<endpoint>``, the endpoint's *lease*: a string (the drainer's id) with a TTL.
* ``P:e``, a set of endpoints with paths pending or in flight (what a worker drains).
* ``P:r:<ticket>``, a list: the results of one submission, one entry per batch that carried
  its paths (``"<outcome JSON>\\n<seq> <seq>..."``) after a header entry.

Why these: every step is one Lua script (submit a chunk, take a batch, complete it, renew or
release a lease, poll results), so each is atomic without WATCH/MULTI retries, one round trip,
and stamped by one Redis. Streams were the other candidate (consumer groups give pending
entries and claiming), but a purge needs membership tests and de-duplication across entries
(is ``img/a.png`` pending, or ``img/*``?), which a stream cannot answer; a sorted set plus a
lease per endpoint is smaller and says exactly what "one batch in flight" means.

Submit. The paths are planned as ``Endpoints.purge`` plans them (``_purge.plan``: normalised,
duplicates and covered paths dropped), then each path to send joins the endpoint's pending set
in one script per 1,000 paths: a path already pending, or covered by a pending ``*`` or
``dir/*``, is shared (the ticket waits on that entry); any other path becomes a new entry. A
path in flight is not pending, so it is never joined: it is queued again and sent again
(content changed after that request went out would stay cached otherwise). A later wildcard
does not absorb paths already pending (they go out on their own, as in the engine). Once
``submit`` returns, the paths are in Redis: the process may exit.

Drain. A drainer takes the endpoint's lease (``SET NX PX``), then a batch: the in-flight batch
if there is one (its drainer died), else the oldest ``purge_batch_size`` pending paths, moved
to the in-flight hash with their waiters. It sends the batch through a ``Session``, so the
budgets (shared through ``RedisBudgetStore``) pace it, renewing the lease every third of its
TTL meanwhile, then completes it: appends the outcome to each waiting ticket's results and
deletes the in-flight hash, only if its batch id still matches (completion is idempotent).
One lease per endpoint means at most one batch per endpoint in flight across all processes,
so no two identical purges overlap and none draws a 409.

At least once. A drainer that dies mid-batch (SIGKILL, a lost host) leaves its lease to expire
after ``lease_ttl``; the next drainer finds the batch in flight and sends it again. A batch is
sent at least once and, after a crash, possibly twice; never lost. A drainer that stalls longer
than ``lease_ttl`` (a blocked event loop, Redis unreachable) may find its batch re-sent by
another: the same batch then goes twice, and a 409 is possible (retried, as the engine does).
The resend is paced by the budgets too: ``RedisBudgetStore`` counts a dead process's request
until its ``inflight_timeout`` (60 s by default) plus a period, so a takeover waits for that.
A batch whose request fails for good (an API error, no answer after the client's retries) is
completed as failed, like the engine's: nothing is silently dropped, each path ends purged or
failed. A drainer whose client sends nothing (closed, budget store unreachable, or its own
``max_budget_wait``, ``max_rate_limit_wait`` or ``max_queued`` refused the wait) records no
outcome: it releases the lease, the batch stays in flight unsent and the next drainer (maybe
the same one, after the wait the error named) sends it. Those limits bound each batch's wait,
never a path's life in the queue.

Results. A submitter that waits (``purge``, or ``wait`` on a ticket) polls its tickets' result
lists (one script per ``poll_interval`` for all tickets of the process; at once when a drainer
of the process completes a batch) and builds the ``PurgeReport`` the engine would. Each result
list expires ``result_ttl`` (default one hour) after its last write: a submission, a batch
outcome, or a waiter's poll (a waiter keeps it alive). A submitter that does not wait needs
nothing else: its paths are purged by whichever process drains.

Redis restarts. Without persistence a restart (or ``FLUSHALL``) loses everything the queue
held: pending paths, in-flight batches, leases, results. Plainly: **paths submitted by
processes that do not wait are lost**, unless Redis persists (``appendonly yes`` with
``appendfsync always`` keeps every acknowledged submit). A process waiting on its paths notices
(its result list is gone) and submits the paths not yet confirmed again, as a new ticket: its
paths are purged, some of them possibly twice. A drainer whose batch vanished completes
nothing (its batch id is unknown) and takes the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AskError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from . import _validation as check
from ._limits import Priority
from ._logs import logger
from ._purge import PurgeProgress, PurgeReport, plan
from .errors import (
    APIConnectionError,
    APIError,
    APIResponseError,
    APITimeoutError,
    AuthenticationError,
    BudgetWaitTimeout,
    CDNError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    PurgeError,
    RateLimitedError,
    error_class_for,
)

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from ._client import CDNClient
    from ._session import Session

#: Seconds a drainer's lease on an endpoint lasts without renewal: a drainer that dies has its
#: batch sent again by another this long after its last renewal.
DEFAULT_LEASE_TTL = 30.0
#: Seconds a submission's results are kept after their last write (or a waiter's last poll).
DEFAULT_RESULT_TTL = 3600.0
#: Seconds between two polls of a waiting process (for results, and for a busy lease).
DEFAULT_POLL_INTERVAL = 0.05

#: Paths sent to Redis per submit script: a few ms of Redis time, so budget scripts of other
#: processes never wait long behind a big submit.
_SUBMIT_CHUNK = 1000
#: Socket timeouts of a Redis client the queue makes from a URL.
_SOCKET_TIMEOUT = 5.0
#: The longest nap after repeated Redis failures.
_MAX_NAP = 1.0
#: Answers after which every later batch of the endpoint would fail the same way.
_FATAL = (AuthenticationError, PermissionDeniedError, NotFoundError)
#: Failures that say what happened to a request that went out: they are the batch's outcome.
#: Any other ``CDNError`` (nothing was sent: the client is closed, its budget store is
#: unreachable, its own ``max_budget_wait``/``max_rate_limit_wait``/``max_queued`` refused the
#: wait) says nothing about the paths: the batch stays queued for the next drainer.
_OUTCOMES = (APIError, APIConnectionError, APIResponseError)
#: The longest a drainer sleeps before trying again a batch its client refused to wait for.
_MAX_LATER = 60.0

# KEYS: pending zset, waiters hash, endpoints set, counter, results list. ARGV: endpoint id,
# ticket id, result TTL ms, '1' on the first chunk of a submission, '1' for priority "high",
# then the paths to send. Returns the entry (sequence number) each path joined, or {'lost'}
# when a later chunk finds the submission's results gone (Redis lost its data in between).
# An entry's score is its place in line: its sequence number, minus FRONT when it is "high".
_SUBMIT = r"""
local pend, wait, eps, ctr, res = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ticket = ARGV[2]
local high = ARGV[5] == '1'
local FRONT = 1125899906842624
if redis.call('EXISTS', res) == 0 then
  if ARGV[4] ~= '1' then return {'lost'} end
  redis.call('RPUSH', res, 'ticket')
end
redis.call('PEXPIRE', res, ARGV[3])
local function cover(path)
  if redis.call('ZSCORE', pend, path) then return path end
  if redis.call('ZSCORE', pend, '*') then return '*' end
  local from = 1
  while true do
    local cut = string.find(path, '/', from, true)
    if not cut then return nil end
    local wc = string.sub(path, 1, cut) .. '*'
    if wc ~= path and redis.call('ZSCORE', pend, wc) then return wc end
    from = cut + 1
  end
end
local joined = {}
local out = {}
for i = 6, #ARGV do
  local path = ARGV[i]
  local key = cover(path)
  if key then
    local w = redis.call('HGET', wait, key)
    local seq = string.match(w, '^%S+')
    out[#out + 1] = seq
    if not joined[key] then
      joined[key] = true
      if not string.find(string.sub(w, #seq + 1) .. ' ', ' ' .. ticket .. ' ', 1, true) then
        redis.call('HSET', wait, key, w .. ' ' .. ticket)
      end
      if high and tonumber(redis.call('ZSCORE', pend, key)) > 0 then
        redis.call('ZADD', pend, tonumber(seq) - FRONT, key)
      end
    end
  else
    local seq = redis.call('INCR', ctr)
    local score = seq
    if high then score = seq - FRONT end
    redis.call('ZADD', pend, score, path)
    redis.call('HSET', wait, path, seq .. ' ' .. ticket)
    joined[path] = true
    out[#out + 1] = tostring(seq)
  end
end
redis.call('SADD', eps, ARGV[1])
return out
"""

# KEYS: lease, pending zset, waiters hash, in-flight hash, endpoints set, counter. ARGV:
# endpoint id, drainer id, lease TTL ms, batch size. Returns {0, lease PTTL} (another drainer
# holds the lease), {1, batch id, '1' if it holds a "high" entry, path, "seq tickets", ...} (a
# new batch), {2, ...} (the batch in flight, sent again) or {3} (nothing to send: lease
# released, endpoint idle).
_TAKE = r"""
local lease, pend, wait, fl, eps, ctr = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local cur = redis.call('GET', lease)
if cur and cur ~= ARGV[2] then return {0, redis.call('PTTL', lease)} end
redis.call('SET', lease, ARGV[2], 'PX', ARGV[3])
local f = redis.call('HGETALL', fl)
if #f > 0 then
  local out = {2, '0', '0'}
  for i = 1, #f, 2 do
    if f[i] == '' then out[2] = f[i + 1] else
      out[#out + 1] = f[i]
      out[#out + 1] = f[i + 1]
    end
  end
  return out
end
local items = redis.call('ZPOPMIN', pend, tonumber(ARGV[4]))
if #items == 0 then
  redis.call('DEL', lease)
  redis.call('SREM', eps, ARGV[1])
  return {3}
end
local bid = tostring(redis.call('INCR', ctr))
redis.call('HSET', fl, '', bid)
local out = {1, bid, '0'}
for i = 1, #items, 2 do
  local path = items[i]
  if tonumber(items[i + 1]) < 0 then out[3] = '1' end
  local v = redis.call('HGET', wait, path) or items[i + 1]
  redis.call('HDEL', wait, path)
  redis.call('HSET', fl, path, v)
  out[#out + 1] = path
  out[#out + 1] = v
end
return out
"""

# KEYS: in-flight hash, lease, then one results list per waiting ticket. ARGV: batch id,
# drainer id, outcome JSON, result TTL ms, lease TTL ms, then the tickets (as KEYS[3..]).
# Returns 1, or 0 when the batch is no longer in flight (completed by another, or lost).
_COMPLETE = r"""
local fl, lease = KEYS[1], KEYS[2]
if redis.call('HGET', fl, '') ~= ARGV[1] then return 0 end
local per = {}
local f = redis.call('HGETALL', fl)
for i = 1, #f, 2 do
  if f[i] ~= '' then
    local seq = nil
    for word in string.gmatch(f[i + 1], '%S+') do
      if not seq then seq = word
      elseif per[word] then per[word] = per[word] .. ' ' .. seq
      else per[word] = seq end
    end
  end
end
for k = 3, #KEYS do
  local seqs = per[ARGV[k + 3]]
  if seqs and redis.call('EXISTS', KEYS[k]) == 1 then
    redis.call('RPUSH', KEYS[k], ARGV[3] .. '\n' .. seqs)
    redis.call('PEXPIRE', KEYS[k], ARGV[4])
  end
end
redis.call('DEL', fl)
if redis.call('GET', lease) == ARGV[2] then redis.call('PEXPIRE', lease, ARGV[5]) end
return 1
"""

# KEYS: lease. ARGV: drainer id, lease TTL ms ('0': release). Returns 1 if the lease was ours.
_LEASE = r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""

# KEYS: results lists. ARGV: result TTL ms, then each list's offset. Returns per list its
# entries from the offset on, or nil when the list is gone (expired, or Redis lost it).
_POLL = r"""
local out = {}
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    out[i] = redis.call('LRANGE', KEYS[i], ARGV[i + 1], -1)
  else
    out[i] = false
  end
end
return out
"""

_SCRIPTS = {
    "submit": _SUBMIT,
    "take": _TAKE,
    "complete": _COMPLETE,
    "lease": _LEASE,
    "poll": _POLL,
}


class _Lost(Exception):
    """Redis lost a submission's results between two of its chunks (a restart)."""


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ms(seconds: float) -> str:
    return str(max(1, math.ceil(seconds * 1000)))


def _later(exc: CDNError) -> float:
    """How long a drainer whose client refused to send (``exc``) waits before trying again."""
    delay = 0.0
    if isinstance(exc, BudgetWaitTimeout) and exc.retry_after is not None:
        delay = exc.retry_after
    elif isinstance(exc, RateLimitedError) and exc.reset_at is not None:
        delay = exc.reset_at - time.time()
    return min(max(delay, 0.0), _MAX_LATER)


def _session_closed(session: Session) -> bool:
    # Session keeps whether it is closed in its pool (shared by its copies).
    return session._pool.closed


class _Part:
    """One Redis ticket of a submission: its id and who waits on which entry."""

    __slots__ = ("id", "offset", "owners")

    def __init__(self, ticket_id: str) -> None:
        self.id = ticket_id
        #: Entry (sequence number) -> the submission's own paths it stands for.
        self.owners: dict[int, list[str]] = {}
        #: Results read so far (entry 0 is the header).
        self.offset = 1


class PurgeTicket:
    """A submission to a ``RedisPurgeQueue``: what ``submit`` returns, for ``wait``.

    Holds, in the submitting process, which entries of the queue its paths joined; the paths
    themselves are in Redis. Read ``endpoint_id``, ``total`` (paths, normalised, once each)
    and ``done`` (paths with an outcome so far).
    """

    def __init__(self, endpoint_id: str, mapping: dict[str, str]) -> None:
        self.endpoint_id = endpoint_id
        self._mapping = mapping
        self._purged: set[str] = set()
        self._failed: dict[str, CDNError] = {}
        self._parts: list[_Part] = []
        self._requests = 0
        self._budget_wait = 0.0
        self._on_progress: Callable[[int, int], None] | None = None
        self._on_batch: Callable[[PurgeProgress], None] | None = None
        self._finished: asyncio.Future[None] | None = None
        self._session: Session | None = None
        self._high = False

    def __repr__(self) -> str:
        return f"<PurgeTicket {self.endpoint_id} {self.done}/{self.total}>"

    @property
    def total(self) -> int:
        """Paths of the submission (normalised, once each)."""
        return len(self._mapping)

    @property
    def done(self) -> int:
        """Paths with an outcome so far (purged or failed)."""
        return len(self._purged) + len(self._failed)

    def _report(self) -> PurgeReport:
        return PurgeReport(
            self.endpoint_id,
            tuple(p for p in self._mapping if p in self._purged),
            {p: self._failed[p] for p in self._mapping if p in self._failed},
            self._requests,
            self._budget_wait,
        )

    def _unresolved(self, part: _Part) -> list[str]:
        return [
            own
            for owns in part.owners.values()
            for own in owns
            if own not in self._purged and own not in self._failed
        ]

    def _apply(self, part: _Part, entry: str) -> None:
        head, _, tail = entry.partition("\n")
        outcome = json.loads(head)
        error = _error_from(outcome["e"]) if "e" in outcome else None
        confirmed: list[str] = []
        failed: dict[str, CDNError] = {}
        for word in tail.split():
            for own in part.owners.pop(int(word), ()):
                if own in self._purged or own in self._failed:
                    continue
                if error is None:
                    self._purged.add(own)
                    confirmed.append(own)
                else:
                    self._failed[own] = failed[own] = error
        if (confirmed or failed) and outcome.get("s"):
            self._requests += 1
            self._budget_wait += float(outcome.get("w", 0.0))
        if confirmed or failed:
            self._progress(confirmed, failed)

    def _fail_rest(self, error: CDNError) -> None:
        failed = {
            own: error
            for own in self._mapping
            if own not in self._purged and own not in self._failed
        }
        self._failed.update(failed)
        if failed:
            self._progress([], failed)
        self._finish()

    def _progress(self, confirmed: list[str], failed: dict[str, CDNError]) -> None:
        """Tell the callbacks what one batch settled (each path once, as the engine does)."""
        if self._on_batch is not None:
            try:
                self._on_batch(PurgeProgress(self.done, self.total, tuple(confirmed), failed))
            except Exception:  # a broken callback must not lose the purge's results
                logger.exception("on_batch callback failed")
        if self._on_progress is not None:
            try:
                self._on_progress(self.done, self.total)
            except Exception:
                logger.exception("on_progress callback failed")
        if self.done >= self.total:
            self._finish()

    def _finish(self) -> None:
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)


class _Taken:
    """What the take script answered."""

    __slots__ = ("batch_id", "high", "kind", "paths", "resend", "seqs", "ttl")

    def __init__(self, raw: list[Any]) -> None:
        self.kind = int(raw[0])
        self.ttl = int(raw[1]) / 1000 if self.kind == 0 else 0.0
        self.batch_id = _str(raw[1]) if self.kind in (1, 2) else ""
        self.resend = self.kind == 2
        #: The batch holds a path submitted at priority "high": it waits at that priority.
        self.high = self.kind == 1 and _str(raw[2]) == "1"
        self.paths: list[str] = []
        #: Each waiting ticket -> the entries (sequence numbers) of the batch it waits on.
        self.seqs: dict[str, list[str]] = {}
        if self.kind in (1, 2):
            for i in range(3, len(raw), 2):
                self.paths.append(_str(raw[i]))
                seq, *tickets = _str(raw[i + 1]).split()
                for ticket in tickets:
                    self.seqs.setdefault(ticket, []).append(seq)


class _Outcome:
    """A batch's outcome, as stored in Redis."""

    __slots__ = ("error", "sent", "wait")

    def __init__(self, error: CDNError | None, sent: bool, wait: float = 0.0) -> None:
        self.error = error
        self.sent = sent
        self.wait = wait

    def to_json(self) -> str:
        data: dict[str, Any] = {"s": 1 if self.sent else 0, "w": round(self.wait, 6)}
        if self.error is not None:
            data["e"] = _error_json(self.error)
        return json.dumps(data, separators=(",", ":"))


def _error_json(exc: CDNError) -> dict[str, Any]:
    data: dict[str, Any] = {"t": type(exc).__name__, "m": str(exc)}
    if isinstance(exc, APIError):
        data.update(
            m=exc.message,
            st=exc.status,
            id=exc.error_id,
            r=exc.request_id,
            a=exc.attempts,
            mt=exc.method,
            p=exc.path,
        )
    elif isinstance(exc, APIResponseError):
        data.update(m=exc.message, st=exc.status)
    elif isinstance(exc, APIConnectionError):
        data.update(m=exc.message, a=exc.attempts, mt=exc.method, p=exc.path)
    elif isinstance(exc, RateLimitedError):
        data.update(m=exc.message, b=exc.budget, ra=exc.reset_at)
    return data


def _error_from(data: Mapping[str, Any]) -> CDNError:
    """The error another process recorded for a batch, as the same class where it can be."""
    kind, message = data.get("t"), str(data.get("m", ""))
    if kind == "APIResponseError":
        return APIResponseError(message, status=int(data.get("st") or 0))
    status = data.get("st")
    if isinstance(status, int) and status >= 400:
        return error_class_for(status)(
            message,
            status=status,
            error_id=data.get("id"),
            request_id=data.get("r"),
            attempts=int(data.get("a") or 1),
            method=str(data.get("mt") or ""),
            path=str(data.get("p") or ""),
        )
    if kind in ("APIConnectionError", "APITimeoutError"):
        cls = APITimeoutError if kind == "APITimeoutError" else APIConnectionError
        return cls(
            message,
            method=str(data.get("mt") or ""),
            path=str(data.get("p") or ""),
            attempts=int(data.get("a") or 1),
        )
    if kind == "RateLimitedError":
        return RateLimitedError(message, reset_at=data.get("ra"), budget=data.get("b"))
    return CDNError(message)


class _Lane:
    """This process's view of one endpoint: who waits here, and its drainer."""

    __slots__ = ("cdn_id", "task", "tickets", "worker")

    def __init__(self, cdn_id: str) -> None:
        self.cdn_id = cdn_id
        self.tickets: set[PurgeTicket] = set()
        self.task: asyncio.Task[None] | None = None
        #: A worker asked for this endpoint to be drained until nothing is pending.
        self.worker = False

    def wanted(self) -> bool:
        return self.worker or bool(self.tickets)


class RedisPurgeQueue:
    """One purge queue for every process on a token, kept in Redis.

    Plug it into ``CDNClient(purge_queue=...)`` in every process that purges: ``purge()``
    then coalesces paths across processes (a path pending anywhere is shared, never sent
    twice), sends one batch per endpoint at a time across all of them (no 409), and keeps
    what was submitted even if the process dies. Share the budgets too (``RedisBudgetStore``
    on the same Redis), so the batches go out at the budget's pace::

        from cdn_async import CDNClient
        from cdn_async.redis import RedisBudgetStore, RedisPurgeQueue, token_id_for

        tid = token_id_for(token)
        store = RedisBudgetStore(url, token_id=tid)
        queue = RedisPurgeQueue(url, token_id=tid)
        async with CDNClient(token, budget_store=store, purge_queue=queue) as cdn:
            report = await cdn.endpoints.purge(cdn_id, paths)  # same call, same report

    While a caller waits in ``purge()``, its process drains that endpoint (a lone process
    needs nothing else). A process that only submits (``await queue.submit(...)``, e.g. a web
    handler answering 202) needs another process to drain: one waiting in ``purge()``,
    ``await queue.work(cdn)``, or ``cdn-async purge-worker``.

    Guarantees (module ``cdn_async._purge_queue`` says how): a batch is sent at least once (a
    drainer that dies mid-batch has it sent again ``lease_ttl`` later, so possibly twice);
    nothing submitted is dropped while Redis keeps its data; every path ends purged or failed,
    and a waiter gets that per path. Results are kept ``result_ttl`` after their last write.
    A Redis restart without persistence loses the paths of submitters that do not wait;
    waiters submit their unconfirmed paths again.

    Args:
        redis: A URL (the queue makes, and closes, its own client), a ``redis.asyncio.Redis``
            or a ``redis.asyncio.cluster.RedisCluster`` (not closed by the queue).
        namespace: Prefix of every key (``{<namespace>:<token_id>}:pq:...``).
        token_id: Which token's queue this is: ``token_id_for(token)``, as for
            ``RedisBudgetStore``; never the token itself.
        cluster: With a URL: ``True`` makes a Redis Cluster client; ``None`` (default) a plain
            one that switches to a cluster client the first time Redis answers ``MOVED``;
            ``False`` never does.
        lease_ttl: Seconds an endpoint's lease lasts without renewal (renewed every third of
            it while its drainer lives): the delay before a dead drainer's batch is sent again.
            Keep it above the longest a purge request may take (``timeout``), so the batch is
            not re-sent while the dead drainer's request is still running (a 409).
        result_ttl: Seconds a submission's results are kept after their last write.
        poll_interval: Seconds between two polls of a waiting process: for results that
            another process's drainer wrote, and for a lease another drainer holds.

    Raises:
        ValueError: An option is out of range.
    """

    def __init__(
        self,
        redis: aioredis.Redis | RedisCluster | str,
        *,
        namespace: str = "cdn-async",
        token_id: str | None = None,
        cluster: bool | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        result_ttl: float = DEFAULT_RESULT_TTL,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        for name, value in (
            ("lease_ttl", lease_ttl),
            ("result_ttl", result_ttl),
            ("poll_interval", poll_interval),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        tid = token_id if token_id is not None else "default"
        if any(ch in tid for ch in "{}") or any(ch in namespace for ch in "{}"):
            raise ValueError("namespace and token_id must not contain braces")
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
        self._prefix = f"{{{namespace}:{tid}}}:pq"
        self._lease_ttl = lease_ttl
        self._result_ttl = result_ttl
        self._poll = poll_interval
        self._scripts = self._register()
        #: This process's drainer id (a lease holds it).
        self._id = secrets.token_hex(8)
        self._lanes: dict[str, _Lane] = {}
        self._watching: set[PurgeTicket] = set()
        self._poller: asyncio.Task[None] | None = None
        self._poke: asyncio.Event | None = None
        self._batch_hooks: list[Callable[[str, int, CDNError | None], None]] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"<RedisPurgeQueue {self._prefix}>"

    # -- public API -----------------------------------------------------------------------

    async def submit(
        self, cdn_id: str, files: Iterable[str], *, priority: Priority | None = None
    ) -> PurgeTicket:
        """Queue paths of an endpoint for purging; they are in Redis when this returns.

        Paths are checked and planned as ``endpoints.purge`` does (normalised, duplicates and
        covered paths dropped); a path already pending (from any process), or covered by a
        pending wildcard, is shared. Nothing is sent here: a drainer sends it (a process
        waiting in ``purge``, ``work``, or ``cdn-async purge-worker``).

        Args:
            cdn_id: The endpoint's UUID.
            files: The paths; wildcards such as ``css/*`` allowed.
            priority: ``"high"`` puts the paths (and pending paths they share) at the front
                of the endpoint's line, ahead of every process's bulk purges; their batch
                waits at ``"high"`` for the budgets. Otherwise first in, first out.

        Returns:
            A ticket for ``wait`` (only in this process); drop it to not wait at all.

        Raises:
            ValidationError: A bad id or path (nothing queued).
            CDNError: Redis could not be reached (the paths may be partly queued).
        """
        self._check_open()
        cdn_id = check.uuid_str("cdn_id", cdn_id)
        paths = await check.files_async(files)
        ticket = PurgeTicket(cdn_id, plan(paths))
        ticket._high = priority == "high"
        await self._submit(ticket, list(ticket._mapping))
        return ticket

    async def wait(
        self,
        ticket: PurgeTicket,
        client: CDNClient | None = None,
        *,
        on_progress: Callable[[int, int], None] | None = None,
        on_batch: Callable[[PurgeProgress], None] | None = None,
    ) -> PurgeReport:
        """Wait for a submission's outcome, per path.

        Args:
            ticket: What ``submit`` returned.
            client: Drain the ticket's endpoint with this client while waiting; None waits
                for other processes to drain it.
            on_progress: Called as ``on_progress(done, total)`` when outcomes arrive.
            on_batch: Called with a ``PurgeProgress`` for each batch that settles some of
                the ticket's paths (each confirmed path delivered once).

        Returns:
            The report, as ``endpoints.purge`` returns it.

        Raises:
            PurgeError: Some paths failed; ``.report`` says which.
        """
        session = client._session if client is not None else None
        return await self._wait(ticket, session, on_progress, on_batch)

    async def purge(
        self,
        session: Session,
        cdn_id: str,
        paths: Sequence[str],
        *,
        on_progress: Callable[[int, int], None] | None = None,
        on_batch: Callable[[PurgeProgress], None] | None = None,
        priority: Priority | None = None,
    ) -> PurgeReport:
        """``PurgeEngine.purge`` through the shared queue (what ``endpoints.purge`` calls).

        Submits ``paths`` (already validated and normalised) and waits for their outcome,
        draining the endpoint with ``session`` meanwhile. ``on_progress`` and ``on_batch``
        are called as the engine calls them; ``priority`` (None: the client's) ``"high"``
        puts the paths at the front of the shared line (see ``submit``). Cancelling it stops
        the wait only: the paths stay queued and are purged anyway.

        Raises:
            PurgeError: Some paths failed; ``.report`` says which.
            CDNError: Redis could not be reached to queue the paths.
        """
        self._check_open()
        ticket = PurgeTicket(cdn_id, plan(paths))
        ticket._high = (priority or session.options.priority) == "high"
        await self._submit(ticket, list(ticket._mapping))
        return await self._wait(ticket, session, on_progress, on_batch)

    async def work(
        self,
        client: CDNClient,
        *,
        endpoints: Iterable[str] | None = None,
        until_idle: bool = False,
        on_batch: Callable[[str, int, CDNError | None], None] | None = None,
    ) -> None:
        """Drain the queue with ``client``: every endpoint with paths queued, until cancelled.

        What ``cdn-async purge-worker`` runs, for processes that only submit. Several workers
        (and waiting processes) may run at once: each endpoint's lease lets one send at a time.

        Args:
            client: Sends the batches (its budgets pace them).
            endpoints: Only these endpoint ids; None: all of the token's.
            until_idle: Return once nothing is queued or in flight.
            on_batch: Called as ``on_batch(endpoint_id, paths, error)`` after each batch this
                process completes (``error`` None when purged).
        """
        self._check_open()
        session = client._session
        only = {check.uuid_str("endpoints", e) for e in endpoints} if endpoints else None
        if on_batch is not None:
            self._batch_hooks.append(on_batch)
        nap = self._poll
        try:
            while not self._closed and not _session_closed(session):
                try:
                    members = await self._redis.smembers(self._key("e"))
                except RedisError as exc:
                    logger.warning("purge queue: Redis unavailable (%s); retrying", exc)
                    nap = min(nap * 2, _MAX_NAP)
                    await asyncio.sleep(nap)
                    continue
                nap = self._poll
                ids = [m for m in (_str(x) for x in members) if only is None or m in only]
                for cdn_id in ids:
                    lane = self._lane(cdn_id)
                    lane.worker = True
                    self._ensure_drainer(lane, session)
                busy = any(lane.worker and lane.task is not None for lane in self._lanes.values())
                if until_idle and not ids and not busy:
                    return
                await asyncio.sleep(self._poll)
        finally:
            if on_batch is not None:
                self._batch_hooks.remove(on_batch)
            for lane in self._lanes.values():
                lane.worker = False

    async def pending(self, cdn_id: str) -> int:
        """Paths of an endpoint queued or in flight now (across every process)."""
        cdn_id = check.uuid_str("cdn_id", cdn_id)
        queued = await self._redis.zcard(self._key("p", cdn_id))
        flying = await self._redis.hlen(self._key("f", cdn_id))
        return int(queued) + max(0, int(flying) - 1)

    async def aclose(self) -> None:
        """Stop this process's drainers and waits; close the Redis client if the queue made it.

        A batch this process was sending stays in flight in Redis and its lease is released:
        the next drainer sends it again. Waiting calls end with their unconfirmed paths failed
        (they stay queued). Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        if self._poller is not None:
            tasks.append(self._poller)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        error = CDNError(
            "the purge queue was closed before these paths were confirmed purged; "
            "they stay queued for other processes"
        )
        for ticket in list(self._watching):
            ticket._fail_rest(error)
        if self._owns_redis:
            await self._redis.aclose()

    # -- submit and wait --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise CDNError("purge queue closed")

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self._prefix}:{kind}:{name}" if name else f"{self._prefix}:{kind}"

    async def _submit(self, ticket: PurgeTicket, owns: list[str]) -> None:
        """Queue ``owns`` (own paths of ``ticket``) as a new part of it."""
        mapping = plan(owns)
        by_target: dict[str, list[str]] = {}
        for own, target in mapping.items():
            by_target.setdefault(target, []).append(own)
        targets = list(by_target)
        cdn_id = ticket.endpoint_id
        keys = [
            self._key("p", cdn_id),
            self._key("w", cdn_id),
            self._key("e"),
            self._key("n"),
            "",
        ]
        for _ in range(3):
            part = _Part(secrets.token_hex(8))
            keys[4] = self._key("r", part.id)
            try:
                for start in range(0, len(targets), _SUBMIT_CHUNK):
                    chunk = targets[start : start + _SUBMIT_CHUNK]
                    first = "1" if start == 0 else "0"
                    high = "1" if ticket._high else "0"
                    args = [cdn_id, part.id, _ms(self._result_ttl), first, high, *chunk]
                    seqs = await self._eval("submit", keys, args)
                    if seqs and _str(seqs[0]) == "lost":
                        raise _Lost
                    for target, seq in zip(chunk, seqs, strict=True):
                        part.owners.setdefault(int(_str(seq)), []).extend(by_target[target])
            except _Lost:
                logger.warning("purge queue: Redis lost a submission while it was made; again")
                continue
            except RedisError as exc:
                raise CDNError(f"purge queue: Redis unavailable: {exc}") from exc
            ticket._parts.append(part)
            return
        raise CDNError("purge queue: Redis keeps losing its data; paths not queued")

    async def _wait(
        self,
        ticket: PurgeTicket,
        session: Session | None,
        on_progress: Callable[[int, int], None] | None,
        on_batch: Callable[[PurgeProgress], None] | None = None,
    ) -> PurgeReport:
        ticket._on_progress = on_progress
        ticket._on_batch = on_batch
        if ticket._finished is None or ticket._finished.done():
            ticket._finished = asyncio.get_running_loop().create_future()
        if ticket.done >= ticket.total:
            ticket._finish()
        ticket._session = session
        lane = self._lane(ticket.endpoint_id)
        lane.tickets.add(ticket)
        self._watching.add(ticket)
        try:
            self._check_open()
            self._ensure_poller()
            if session is not None:
                self._ensure_drainer(lane, session)
            # Cancelling the caller cancels only its own wait, never a shared task.
            await asyncio.shield(ticket._finished)
        finally:
            lane.tickets.discard(ticket)
            self._watching.discard(ticket)
        report = ticket._report()
        if report.failed:
            raise PurgeError(report)
        return report

    def _ensure_poller(self) -> None:
        if self._poke is None:
            self._poke = asyncio.Event()
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_loop())

    async def _poll_loop(self) -> None:
        """Read every waiting ticket's new results, one script per round."""
        assert self._poke is not None
        nap = self._poll
        while self._watching and not self._closed:
            # Cleared before reading: a batch completed while the script runs wakes a new round.
            self._poke.clear()
            tickets = list(self._watching)
            parts = [(t, p) for t in tickets for p in t._parts]
            if parts:
                keys = [self._key("r", p.id) for _, p in parts]
                args = [_ms(self._result_ttl), *(str(p.offset) for _, p in parts)]
                try:
                    answers = await self._eval("poll", keys, args)
                except RedisError as exc:
                    logger.warning("purge queue: cannot read results (%s); retrying", exc)
                    nap = min(nap * 2, _MAX_NAP)
                    await asyncio.sleep(nap)
                    continue
                nap = self._poll
                for (ticket, part), entries in zip(parts, answers, strict=True):
                    if entries is None:
                        await self._resubmit(ticket, part)
                        continue
                    part.offset += len(entries)
                    for entry in entries:
                        ticket._apply(part, _str(entry))
            for ticket in tickets:
                closed = ticket._session is not None and _session_closed(ticket._session)
                if closed and ticket.done < ticket.total:
                    ticket._fail_rest(
                        CDNError(
                            "the client was closed before these paths were confirmed purged; "
                            "they stay queued for other processes"
                        )
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self._poll)

    async def _resubmit(self, ticket: PurgeTicket, part: _Part) -> None:
        """A ticket's results vanished (Redis lost its data): queue its open paths again."""
        ticket._parts.remove(part)
        owns = ticket._unresolved(part)
        if not owns:
            return
        logger.warning(
            "purge queue: Redis lost %d queued paths of endpoint %s (restart?); queueing "
            "them again",
            len(owns),
            ticket.endpoint_id,
        )
        try:
            await self._submit(ticket, owns)
        except CDNError as exc:
            ticket._parts.append(part)  # tried again on the next round
            logger.warning("purge queue: %s", exc)

    # -- draining ---------------------------------------------------------------------------

    def _lane(self, cdn_id: str) -> _Lane:
        lane = self._lanes.get(cdn_id)
        if lane is None:
            lane = self._lanes[cdn_id] = _Lane(cdn_id)
        return lane

    def _ensure_drainer(self, lane: _Lane, session: Session) -> None:
        if self._closed or (lane.task is not None and not lane.task.done()):
            return
        lane.task = asyncio.get_running_loop().create_task(self._drain(lane, session))

    async def _drain(self, lane: _Lane, session: Session) -> None:
        """Take, send and complete the endpoint's batches while this process wants them."""
        cdn_id = lane.cdn_id
        fatal: CDNError | None = None
        nap = self._poll
        try:
            while not self._closed and lane.wanted() and not _session_closed(session):
                try:
                    taken = await self._take(cdn_id, session.limits.purge_batch_size)
                except RedisError as exc:
                    logger.warning("purge queue: Redis unavailable (%s); retrying", exc)
                    nap = min(nap * 2, _MAX_NAP)
                    await asyncio.sleep(nap)
                    continue
                nap = self._poll
                if taken.kind == 0:  # another drainer holds the lease
                    await asyncio.sleep(min(self._poll, taken.ttl) if taken.ttl > 0 else self._poll)
                    continue
                if taken.kind == 3:  # nothing pending or in flight
                    fatal = None
                    lane.worker = False
                    if lane.tickets:
                        await asyncio.sleep(self._poll)
                    continue
                if taken.resend:
                    logger.info(
                        "purge queue: endpoint %s: taking over a batch of %d paths another "
                        "drainer left in flight (it stopped or died): sent at least once more",
                        cdn_id,
                        len(taken.paths),
                    )
                outcome = await self._send_leased(session, cdn_id, taken, fatal)
                if isinstance(outcome, float):  # not sent: the batch waits for a drainer
                    await self._release(cdn_id)
                    await asyncio.sleep(max(self._poll, outcome))
                    continue
                if await self._complete(cdn_id, taken, outcome):
                    # This process's own waiters learn it now, not at the next poll: a drainer
                    # whose waiters are all answered stops before taking another batch.
                    self._deliver(taken, outcome)
                if isinstance(outcome.error, _FATAL):
                    fatal = outcome.error
                for hook in list(self._batch_hooks):
                    try:
                        hook(cdn_id, len(taken.paths), outcome.error)
                    except Exception:
                        logger.exception("on_batch callback failed")
                if self._poke is not None:
                    self._poke.set()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._release(cdn_id), _SOCKET_TIMEOUT)
            if lane.task is asyncio.current_task():
                lane.task = None
            # Another waiter of this endpoint may still have an open client: it drains on.
            if not self._closed:
                for ticket in lane.tickets:
                    other = ticket._session
                    if other is not None and not _session_closed(other):
                        self._ensure_drainer(lane, other)
                        break
            if lane.task is None and not lane.wanted() and self._lanes.get(cdn_id) is lane:
                del self._lanes[cdn_id]

    async def _take(self, cdn_id: str, size: int) -> _Taken:
        keys = [
            self._key("l", cdn_id),
            self._key("p", cdn_id),
            self._key("w", cdn_id),
            self._key("f", cdn_id),
            self._key("e"),
            self._key("n"),
        ]
        raw = await self._eval("take", keys, [cdn_id, self._id, _ms(self._lease_ttl), str(size)])
        return _Taken(raw)

    async def _send_leased(
        self, session: Session, cdn_id: str, taken: _Taken, fatal: CDNError | None
    ) -> _Outcome | float:
        """Send a batch, renewing the lease meanwhile."""
        if fatal is not None:  # the API said every batch of this endpoint fails: none is sent
            return _Outcome(fatal, sent=False)
        renew = asyncio.get_running_loop().create_task(self._renew(cdn_id))
        try:
            return await self._send(session, cdn_id, taken.paths, "high" if taken.high else None)
        finally:
            renew.cancel()
            await asyncio.gather(renew, return_exceptions=True)

    async def _renew(self, cdn_id: str) -> None:
        while True:
            await asyncio.sleep(self._lease_ttl / 3)
            try:
                ours = await self._eval(
                    "lease", [self._key("l", cdn_id)], [self._id, _ms(self._lease_ttl)]
                )
            except RedisError as exc:
                logger.warning("purge queue: cannot renew the lease of %s (%s)", cdn_id, exc)
                continue
            if not int(ours):
                logger.warning(
                    "purge queue: lost the lease of endpoint %s while sending (stalled longer "
                    "than lease_ttl, or Redis lost it): the batch may be sent twice",
                    cdn_id,
                )
                return

    async def _send(
        self, session: Session, cdn_id: str, paths: list[str], priority: Priority | None
    ) -> _Outcome | float:
        """One batch's request (409s retried as the engine does), or when this client sent
        nothing and the batch should wait for a drainer, seconds to wait before trying again."""
        url_path = f"/v2/cdn/endpoints/{cdn_id}/cache"
        retries = session.options.max_retries
        error: CDNError | None = None
        for attempt in range(retries + 1):
            try:
                resp = await session.request(
                    "DELETE",
                    url_path,
                    endpoint_id=cdn_id,
                    files=len(paths),
                    json={"files": paths},
                    priority=priority,
                )
            except ConflictError as exc:
                # An identical purge is in progress (a dead drainer's): wait, send again.
                error = exc
                if attempt < retries:
                    await session.backoff("DELETE", url_path, attempt + 1, "409 conflict")
                continue
            except _OUTCOMES as exc:
                return _Outcome(exc, sent=True)
            except CDNError as exc:
                logger.info(
                    "purge queue: endpoint %s: batch not sent, left queued (%s)", cdn_id, exc
                )
                return _later(exc)
            except Exception as exc:  # a bug or a misused session: still report the paths
                return _Outcome(
                    CDNError(f"purge request failed: {type(exc).__name__}: {exc}"), sent=False
                )
            logger.info("purge queue: endpoint %s: purged %d paths", cdn_id, len(paths))
            return _Outcome(None, sent=True, wait=resp.budget_wait)
        return _Outcome(error, sent=True)

    async def _complete(self, cdn_id: str, taken: _Taken, outcome: _Outcome) -> bool:
        """Record a batch's outcome for its tickets; False if it was no longer in flight."""
        keys = [self._key("f", cdn_id), self._key("l", cdn_id)]
        keys.extend(self._key("r", t) for t in taken.seqs)
        args = [
            taken.batch_id,
            self._id,
            outcome.to_json(),
            _ms(self._result_ttl),
            _ms(self._lease_ttl),
            *taken.seqs,
        ]
        nap = self._poll
        for _ in range(5):
            try:
                return bool(int(await self._eval("complete", keys, args)))
            except RedisError as exc:
                logger.warning("purge queue: cannot record a batch's outcome (%s); retrying", exc)
                await asyncio.sleep(nap)
                nap = min(nap * 2, _MAX_NAP)
        # Left in flight: the next drainer sends it again once the lease expires.
        logger.warning("purge queue: a batch of %s stays in flight; it will be sent again", cdn_id)
        return False

    def _deliver(self, taken: _Taken, outcome: _Outcome) -> None:
        """Apply a completed batch to this process's waiting tickets (the poller then finds
        the same entry in Redis, which changes nothing)."""
        head = outcome.to_json()
        for ticket in list(self._watching):
            for part in ticket._parts:
                seqs = taken.seqs.get(part.id)
                if seqs:
                    ticket._apply(part, head + "\n" + " ".join(seqs))

    async def _release(self, cdn_id: str) -> None:
        with contextlib.suppress(RedisError):
            await self._eval("lease", [self._key("l", cdn_id)], [self._id, "0"])

    # -- Redis ------------------------------------------------------------------------------

    def _make_client(self, cluster: bool) -> aioredis.Redis | RedisCluster:
        assert self._url is not None
        if cluster:
            return RedisCluster.from_url(
                self._url,
                socket_timeout=_SOCKET_TIMEOUT,
                socket_connect_timeout=_SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 1),
            )
        # One retry on a connection error: a pooled connection a restart closed is replaced.
        return aioredis.Redis.from_url(
            self._url,
            socket_timeout=_SOCKET_TIMEOUT,
            socket_connect_timeout=_SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )

    def _register(self) -> dict[str, AsyncScript]:
        return {name: self._redis.register_script(src) for name, src in _SCRIPTS.items()}

    async def _eval(self, name: str, keys: Sequence[str], args: Sequence[str]) -> Any:
        try:
            return await self._scripts[name](keys=keys, args=args)
        except AskError:  # also MovedError: the URL names a Redis Cluster node
            if not self._may_upgrade:
                raise
            self._may_upgrade = False
            logger.info("the Redis URL names a Redis Cluster node; using a cluster client")
            old, self._redis = self._redis, self._make_client(True)
            self._scripts = self._register()
            await old.aclose()
            return await self._scripts[name](keys=keys, args=args)
