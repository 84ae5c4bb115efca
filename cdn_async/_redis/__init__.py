"""``RedisBudgetStore``: the exact budget windows of ``_budgets.py``, kept in Redis.

Modules: ``_store.py`` (the store: acquire queues, fallback admission; it holds a link),
``_link.py`` (the link: every Redis call, reachability, re-seed, heartbeat; it owns the
connection and the mirror), ``_mirror.py`` (the restart mirror), ``_scripts.py`` (one encoder
and one typed reply decoder per Lua operation), ``lua/`` (one script per operation after the
shared ``common.lua``), ``_connection.py`` (the client, cluster upgrade, call bounds, the
cancellation guard, script loading: shared with the purge queue), ``_errors.py``,
``_lease.py``.

Every process that uses one API token points its store at the same Redis (and ``token_id``),
so together they obey every budget (docs/design.md, "Budgets").

Data model, per budget key ``K`` of token ``T`` (``{ns:T}`` is a Redis Cluster hash tag, so
one script's keys all live on one slot):

* ``{ns:T}:f:K``, a sorted set of requests *in flight*: member ``<lease id>:<units>``, score
  the deadline (Redis time in ms) after which a silent holder counts as dead. Live processes
  push their deadlines forward (heartbeat); an expired entry is treated as answered at its
  deadline and moves to the released set, so a dead process holds a slot for at most
  ``inflight_timeout + period``.
* ``{ns:T}:r:K``, a sorted set of *released* requests: same members, score ``answer + period``
  (the answer's time in Redis's clock: the release script's ``TIME`` less how long before the
  call its process got the answer, measured locally before sending, so never earlier than
  the answer; at most 50 ms is taken off).
* ``{ns:T}:m:K``, a hash: running sums ``f`` and ``r`` of the units in both sets (so a check is
  O(1), not O(entries)), the server-sync hold ``h`` until ``hu``, and the 429 pause ``p``.
* ``{ns:T}:g:K``, a sorted set of released requests that have *left* the window less than a
  period ago (score: when they left). A sync subtracts those that left after the answered
  request was admitted: the server's count, stamped after that admission, may include them
  (``SQLiteBudgetStore`` does the same), so they are not taken for another client's units.
* ``{ns:T}:epoch``, a hash naming the current incarnation of this state (``id``), the end of
  its recovery window (``ru``) and when that Redis started (``rs``). See "Restarts".
* ``{ns:T}:x``, a sorted set of lease ids given back (score: when the entry lapses), so an
  acquire call that runs after its caller gave up on it admits nothing. See "Stalls".

All keys of ``K`` get a TTL of a bit over ``period + inflight_timeout`` on every touch, so idle
keys vanish.

One Lua script per operation (``lua/<operation>.lua`` after ``lua/common.lua``) does the
work, stamped with ``redis.call('TIME')``. The ``acquire`` script, one round trip per
attempt, expires old entries, checks that every key fits (``in flight + released + held +
units <= limit`` and not paused) and either adds the lease to every key at once, or answers
how long until it could fit (exact when time alone frees enough, else "unknown": only an
answer can free the slot, so the caller polls). The caller counts that wait from when it
sent the call (the script ran no sooner), so its next call lands about when the units free,
not a round trip later.

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
   first use, an epoch expired after a day idle) holds nothing for it; a Redis that
   has just started cannot be told from a restarted one, so its first use pays the same
   (``_restart_hold=False`` skips it, for a Redis known to be new). With ``cdn`` per endpoint
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

from ._errors import BudgetStoreUnavailableError
from ._lease import RedisLease
from ._scripts import token_id_for
from ._store import RedisBudgetStore

__all__ = [
    "BudgetStoreUnavailableError",
    "RedisBudgetStore",
    "RedisLease",
    "token_id_for",
]
