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
  tests (``ZSCORE``: the path itself, ``*``, each parent wildcard ``dir/*``), and fixing a
  batch needs the first N atomically (``ZPOPMIN``): a sorted set does both.
* ``P:w:<endpoint>``, a hash: pending path -> ``"<seq> <tickets...>"``: the entry's sequence
  number (its identity in results; unique, never reused while Redis keeps its data) and the
  tickets waiting on it.
* ``P:f:<endpoint>``, a hash: the batch *in flight*: path -> ``"<seq> <tickets...>"``, and the
  field ``""`` -> ``"<batch id> <high> <state>"`` (``high`` 1 if it holds a path submitted at
  priority "high"; ``state`` ``s`` once fixed, ``u`` when its drainer gave it back unsent). A
  path there is never joined (it may be on the wire).
* ``P:l:<endpoint>``, the endpoint's *lease*: a string (the token of the drain task holding
  it, ``<process id>.<n>``: one per drain task, never shared by two) with a TTL.
* ``P:e``, a set of endpoints with paths pending or in flight (what a worker drains).
* ``P:r:<ticket>``, a list: the results of one submission, one entry per batch that carried
  its paths (``"<outcome JSON>\\n<seq> <seq>..."``) after a header entry.

Why these: every step is one Lua script (submit a chunk, take a lease and a batch, fix the
batch, complete it, give it back unsent, renew a lease, poll results), so each is atomic without WATCH/MULTI retries, one round trip,
and stamped by one Redis. Streams were the other candidate (consumer groups give pending
entries and claiming), but a purge needs membership tests and de-duplication across entries
(is ``img/a.png`` pending, or ``img/*``?), which a stream cannot answer; a sorted set plus a
lease per endpoint is smaller and says exactly what "one batch in flight" means.

Submit. The paths are planned as ``Endpoints.purge`` plans them (``_purge_plan.sent_for``: normalised,
duplicates and covered paths dropped), then each path to send joins the endpoint's pending set
in one script per 1,000 paths: a path already pending, or covered by a pending ``*`` or
``dir/*``, is shared (the ticket waits on that entry); any other path becomes a new entry. A
path in flight is not pending, so it is never joined: it is queued again and sent again
(content changed after that request went out would stay cached otherwise). A later wildcard
does not absorb paths already pending (they go out on their own, as in the engine). Once
``submit`` returns, the paths are in Redis: the process may exit.

Drain. A drain task takes the endpoint's lease (``SET PX`` when no lease exists), then a
batch: the in-flight batch if there is one (its drainer died, or gave it back unsent), else
a *size*: ``min(purge_batch_size, pending)``, the paths left pending. It sends the batch
through a ``Session``, so the budgets (shared through ``RedisBudgetStore``) pace it, renewing
the lease every third of its TTL meanwhile. The batch is *fixed* only when the budgets admit
the request (the session's seal, ``lua/seal.lua``, under the lease): the first ``size``
pending paths, urgent ones first, move to the in-flight hash with their waiters. So a path
submitted by any process while the request waited for its budgets joins the pending entry
the batch then takes, as in one process's engine; only from the seal on is it "in flight"
(queued again, never joined). Then it completes the batch: appends the outcome to each
waiting ticket's results and deletes the in-flight hash, only if its batch id still matches
(completion is idempotent). It keeps the lease for its next batch.

One batch per endpoint in flight, across all processes, by construction:

* the lease token is one drain task's, not its process's: a second drain task of the same
  process waits for the lease like any other drainer;
* a lease whose batch is still in flight is never handed back, not even to its own holder:
  the take script answers "held" while a batch is in flight under a live lease, so a batch id
  is taken by exactly one drain task until its lease expires or is given back;
* a batch is given back (lease released, batch marked unsent, taken at once by the next
  drainer) only when it surely was not sent: its request never got its body (the session
  seals the body when the budgets admit the request; ``Session.request(seal=)``), i.e. the
  client was closed, or refused to wait for its budgets, or nobody here needed the batch
  any more before it was admitted;
* a batch that may have been sent and has no outcome (the client closed or the queue
  closed with the request on the wire, which the session does not abort; a retry refused
  after an attempt went out; the outcome not recordable in Redis) is left in flight under
  its lease, renewed to a full ``lease_ttl`` and then left to expire;
* 409s are retried by the session (``retry_conflict=True``), within ``max_retries``.

So no two identical purges of the queue overlap and none draws a 409, as long as a request
ends (is answered or dropped by the server) within ``lease_ttl`` of its drainer letting go.

At least once. The only resend is a takeover after a lease expired: a drainer that died
mid-batch (SIGKILL, a lost host), or that stopped with its batch possibly sent, leaves its
lease to expire after ``lease_ttl``; the next drainer finds the batch in flight and sends it
again. A batch is sent at least once and, after such a stop, possibly twice; never lost, and
never two copies at once. (The session's own retry of an attempt that failed without an
answer is the usual one of any idempotent request; a copy still at the server answers 409,
retried.) A drainer that stalls longer than ``lease_ttl`` (a blocked event loop, Redis
unreachable) may find its batch re-sent by another: the same batch then goes twice, and a 409
is possible (retried). The resend is paced by the budgets too: ``RedisBudgetStore`` counts a
dead process's request until its ``inflight_timeout`` (60 s by default) plus a period, so a
takeover waits for that. A batch whose request fails for good (an API error, no answer after
the client's retries) is completed as failed, like the engine's: nothing is silently dropped,
each path ends purged or failed. A drainer whose client sends nothing (closed, budget store
unreachable, or its own ``max_budget_wait``, ``max_rate_limit_wait`` or ``max_queued`` refused
the wait) records no outcome: it gives the batch back and the next drainer (maybe the same
one, after the wait the error named) sends it. Those limits bound each batch's wait, never a
path's life in the queue.

Stopping. A drainer stops once this process no longer needs the endpoint: no waiter with
unsettled paths and no worker. A batch still waiting for its budgets is then given back at
once; one already sealed is waited for and completed. ``purge``/``wait`` return only after
that (so closing the client next cannot cut a request of this process on the wire), and a
cancelled ``work`` (a purge-worker's SIGTERM) waits for it too. ``aclose`` does not wait: a
sealed batch is left under its lease.

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

Modules: ``_queue.py`` (``RedisPurgeQueue``: its public API, submit and wait; it holds a
drainer per endpoint), ``_drain.py`` (``Drainer``: one endpoint's waiters and its drain task
under the lease), ``_ticket.py`` (a submission in this process: ``Submission``, the queue's
bookkeeping of it, and ``PurgeTicket``, the user's handle on it; and how batch outcomes are
stored and read back), ``_scripts.py`` (``QueueScripts``: the key layout and one typed step per
``lua/<name>.lua``, over the budget store's ``Connection``).
"""

from ._queue import (
    DEFAULT_LEASE_TTL,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_RESULT_TTL,
    RedisPurgeQueue,
)
from ._ticket import PurgeTicket

__all__ = [
    "DEFAULT_LEASE_TTL",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_RESULT_TTL",
    "PurgeTicket",
    "RedisPurgeQueue",
]
