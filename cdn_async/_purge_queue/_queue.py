"""``RedisPurgeQueue``: its public API, submitting and waiting. It holds a ``Drainer`` per
endpoint this process drains (``_drain.py``) and the queue's steps in Redis
(``QueueScripts``, ``_scripts.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from .. import _validation as check
from .._client import session_of
from .._limits import Priority
from .._logs import logger
from .._purge import PurgeProgress, PurgeReport
from .._purge_plan import sent_for
from .._redis._connection import Connection
from ..errors import CDNError, PurgeError
from ._drain import MAX_NAP, Drainer
from ._scripts import Batch, QueueScripts
from ._ticket import Outcome, Part, PurgeTicket, Submission, submission_of

if TYPE_CHECKING:
    from .._client import CDNClient
    from .._session import Session

#: Seconds a drainer's lease on an endpoint lasts without renewal: a drainer that dies has its
#: batch sent again by another this long after its last renewal.
DEFAULT_LEASE_TTL = 30.0
#: Seconds a submission's results are kept after their last write (or a waiter's last poll).
DEFAULT_RESULT_TTL = 3600.0
#: Seconds between two polls of a waiting process (for results, and for a busy lease).
DEFAULT_POLL_INTERVAL = 0.05

#: The longest one Redis call may take (a client made from a URL also gets these socket
#: timeouts). Generous: a stalled Redis only delays a purge, it never over-spends a budget.
_CALL_TIMEOUT = 5.0
#: Paths sent to Redis per submit script: a few ms of Redis time, so budget scripts of other
#: processes never wait long behind a big submit.
_SUBMIT_CHUNK = 1000


def _members_covering(path: str) -> list[str]:
    """The queue members that stand for ``path``: itself, ``*``, each parent's ``dir/*``."""
    members = [path, "*"]
    cut = path.find("/")
    while cut != -1:
        members.append(path[: cut + 1] + "*")
        cut = path.find("/", cut + 1)
    return members


class _Lost(Exception):
    """Redis lost a submission's results between two of its chunks (a restart)."""


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

    Guarantees (package ``cdn_async._purge_queue`` says how): a batch is sent at least once (a
    drainer that dies mid-batch has it sent again, so possibly twice, once its lease has
    expired and the shared budgets no longer count its request: ``lease_ttl`` after its
    last renewal, and, with a ``RedisBudgetStore``, its ``inflight_timeout`` after its last
    heartbeat, and until its units expire a period after that, whichever is later: 60-80 s
    with the defaults);
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
            it while its drainer lives): the soonest a dead drainer's batch is sent again (the
            budgets may hold it longer, see above).
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
        self._prefix = f"{{{namespace}:{tid}}}:pq"
        conn = Connection(
            redis, cluster=cluster, call_timeout=_CALL_TIMEOUT, scripts=QueueScripts.sources()
        )
        self._scripts = QueueScripts(conn, self._prefix, lease_ttl, result_ttl)
        self._lease_ttl = lease_ttl
        self._poll = poll_interval
        #: This process's drainer id; each drain task's lease token is ``<id>.<n>``.
        self._id = secrets.token_hex(8)
        self._tokens = itertools.count()
        self._drainers: dict[str, Drainer] = {}
        self._watching: set[Submission] = set()
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
        submission = Submission(cdn_id, sent_for(paths), high=priority == "high")
        await self._submit(submission, list(submission.mapping))
        return PurgeTicket(submission)

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
        session = session_of(client) if client is not None else None
        return await self._wait(submission_of(ticket), session, on_progress, on_batch)

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
        high = (priority or session.options.priority) == "high"
        submission = Submission(cdn_id, sent_for(paths), high=high)
        drainer = self._drainer(cdn_id)

        def drain() -> None:
            # The first chunk is in Redis: its batches may go out while the rest is queued
            # (a 10,000-path call would otherwise send nothing for the whole submission).
            # Their outcomes reach the submission through the poller, once it is watched.
            submission.session = session
            drainer.waiting.add(submission)
            drainer.start(session)

        try:
            mapping = submission.mapping
            await self._submit(submission, list(mapping), mapping, on_first=drain)
        except BaseException:
            drainer.waiting.discard(submission)
            drainer.poke()
            raise
        return await self._wait(submission, session, on_progress, on_batch)

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
        Cancelling it stops gracefully: a batch waiting for its budgets is given back at once,
        one already sent is answered and completed before it returns (cancel again to stop
        waiting for that; the batch is then sent again once its lease expires).

        Args:
            client: Sends the batches (its budgets pace them).
            endpoints: Only these endpoint ids; None: all of the token's.
            until_idle: Return once nothing is queued or in flight.
            on_batch: Called as ``on_batch(endpoint_id, paths, error)`` after each batch this
                process completes (``error`` None when purged).
        """
        self._check_open()
        session = session_of(client)
        only = {check.uuid_str("endpoints", e) for e in endpoints} if endpoints else None
        if on_batch is not None:
            self._batch_hooks.append(on_batch)
        nap = self._poll
        try:
            while not self._closed and not session.closed:
                try:
                    ids = await self._scripts.endpoints()
                except RedisError as exc:
                    logger.warning("purge queue: Redis unavailable (%s); retrying", exc)
                    nap = min(nap * 2, MAX_NAP)
                    await asyncio.sleep(nap)
                    continue
                nap = self._poll
                ids = [cdn_id for cdn_id in ids if only is None or cdn_id in only]
                for cdn_id in ids:
                    drainer = self._drainer(cdn_id)
                    drainer.worker = True
                    drainer.start(session)
                busy = any(d.worker and d.task is not None for d in self._drainers.values())
                if until_idle and not ids and not busy:
                    return
                await asyncio.sleep(self._poll)
        finally:
            try:
                await self._stop_workers()
            finally:
                if on_batch is not None:
                    self._batch_hooks.remove(on_batch)

    async def _stop_workers(self) -> None:
        """``work`` stops (cancelled, or idle): batches still waiting for their budgets are
        given back at once; one already on the wire is waited for and completed, so it is not
        sent twice. A second cancel stops that wait (the batch then stays under its lease
        until it expires)."""
        drainers = [d for d in self._drainers.values() if d.worker]
        for d in drainers:
            d.worker = False
            d.poke()
        tasks = [
            d.task for d in drainers if d.task is not None and not d.task.done() and not d.wanted()
        ]
        if tasks:
            await asyncio.wait(tasks)

    async def pending(self, cdn_id: str) -> int:
        """Paths of an endpoint queued or in flight now (across every process)."""
        cdn_id = check.uuid_str("cdn_id", cdn_id)
        return await self._scripts.pending(cdn_id)

    async def queued(
        self, cdn_id: str, paths: Iterable[str], *, in_flight: bool = True
    ) -> set[str]:
        """Which of ``paths`` (normalised, as in a report) are still in the queue: pending,
        covered by a pending wildcard (``*``, ``dir/*``), or in a batch in flight (only
        with ``in_flight``, the default).

        For a caller that stopped waiting (an interrupted ``cdn-async purge``): these paths
        are still sent by whichever process drains the endpoint next; the others have an
        outcome (or were never queued). A path in a batch in flight gets its outcome when
        that batch completes: a caller that must not report a path queued once it has one
        asks again with ``in_flight=False`` until the batch is done.
        """
        cdn_id = check.uuid_str("cdn_id", cdn_id)
        standing: dict[str, list[str]] = {}  # queue member -> the paths it stands for
        for path in dict.fromkeys(paths):
            for member in _members_covering(path):
                standing.setdefault(member, []).append(path)
        members = list(standing)
        found: set[str] = set()
        for start in range(0, len(members), _SUBMIT_CHUNK):
            chunk = members[start : start + _SUBMIT_CHUNK]
            for member in await self._scripts.standing(cdn_id, chunk, in_flight=in_flight):
                found.update(standing[member])
        return found

    async def aclose(self) -> None:
        """Stop this process's drainers and waits; close the Redis client if the queue made it.

        A batch this process's drainer holds but has not sent (still waiting for its budgets)
        is given back at once, for the next drainer. One that may be on the wire stays in
        flight under its lease: the next drainer sends it again once the lease expires
        (``lease_ttl``; at least once, never two copies at once). Waiting calls end with their
        unconfirmed paths failed (they stay queued). Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        tasks = [d.task for d in self._drainers.values() if d.task is not None]
        if self._poller is not None:
            tasks.append(self._poller)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        error = CDNError(
            "the purge queue was closed before these paths were confirmed purged; "
            "they stay queued for other processes"
        )
        for submission in list(self._watching):
            submission.fail_rest(error)
        await self._scripts.aclose()

    # -- submit and wait --------------------------------------------------------------------

    async def _submit(
        self,
        submission: Submission,
        owns: list[str],
        mapping: dict[str, str] | None = None,
        *,
        on_first: Callable[[], None] | None = None,
    ) -> None:
        """Queue ``owns`` (own paths of ``submission``; ``mapping``: their plan, if made) as a
        new part of it; ``on_first`` is called once the first chunk is in Redis."""
        if mapping is None:
            mapping = sent_for(owns)
        by_target: dict[str, list[str]] = {}
        for own, target in mapping.items():
            by_target.setdefault(target, []).append(own)
        targets = list(by_target)
        for _ in range(3):
            part = Part(secrets.token_hex(8))
            try:
                for start in range(0, len(targets), _SUBMIT_CHUNK):
                    chunk = targets[start : start + _SUBMIT_CHUNK]
                    seqs = await self._scripts.submit(
                        submission.endpoint_id,
                        part.id,
                        chunk,
                        first=start == 0,
                        high=submission.high,
                    )
                    if seqs is None:
                        raise _Lost
                    for target, seq in zip(chunk, seqs, strict=True):
                        part.owners.setdefault(seq, []).extend(by_target[target])
                    if on_first is not None:
                        call, on_first = on_first, None
                        call()
            except _Lost:
                logger.warning("purge queue: Redis lost a submission while it was made; again")
                continue
            except RedisError as exc:
                raise CDNError(f"purge queue: Redis unavailable: {exc}") from exc
            submission.parts.append(part)
            return
        raise CDNError("purge queue: Redis keeps losing its data; paths not queued")

    async def _wait(
        self,
        submission: Submission,
        session: Session | None,
        on_progress: Callable[[int, int], None] | None,
        on_batch: Callable[[PurgeProgress], None] | None = None,
    ) -> PurgeReport:
        finished = submission.begin_wait(session, on_progress, on_batch)
        drainer = self._drainer(submission.endpoint_id)
        drainer.waiting.add(submission)
        self._watching.add(submission)
        try:
            self._check_open()
            self._ensure_poller()
            if session is not None:
                drainer.start(session)
            # Cancelling the caller cancels only its own wait, never a shared task.
            await asyncio.shield(finished)
        finally:
            # The call has ended: no callback of it runs any more (a checkpoint written when
            # it ends, cancelled or not, has seen every batch it will see).
            submission.end_wait()
            drainer.waiting.discard(submission)
            self._watching.discard(submission)
            drainer.poke()
        # If nobody else here needs the endpoint drained, this process's drainer stops: a
        # batch still waiting for its budgets is given back at once, one on the wire is
        # answered and completed first. Waiting for that keeps a caller that closes its client
        # next from cutting a request on the wire (its batch would wait for its lease to
        # expire, then be sent again).
        task = drainer.task
        if task is not None and not task.done() and not drainer.wanted():
            await asyncio.wait((task,))
        report = submission.report()
        if report.failed:
            raise PurgeError(report)
        return report

    def _ensure_poller(self) -> None:
        if self._poke is None:
            self._poke = asyncio.Event()
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_loop())

    async def _poll_loop(self) -> None:
        """Read every waiting submission's new results, one script per round."""
        assert self._poke is not None
        nap = self._poll
        while self._watching and not self._closed:
            # Cleared before reading: a batch completed while the script runs wakes a new round.
            self._poke.clear()
            submissions = list(self._watching)
            parts = [(s, p) for s in submissions for p in s.parts]
            if parts:
                try:
                    answers = await self._scripts.poll([(p.id, p.offset) for _, p in parts])
                except RedisError as exc:
                    logger.warning("purge queue: cannot read results (%s); retrying", exc)
                    nap = min(nap * 2, MAX_NAP)
                    await asyncio.sleep(nap)
                    continue
                nap = self._poll
                for (submission, part), entries in zip(parts, answers, strict=True):
                    if entries is None:
                        await self._resubmit(submission, part)
                        continue
                    part.offset += len(entries)
                    for entry in entries:
                        submission.apply(part, entry)
            for submission in submissions:
                closed = submission.session is not None and submission.session.closed
                if closed and submission.done < submission.total:
                    submission.fail_rest(
                        CDNError(
                            "the client was closed before these paths were confirmed purged; "
                            "they stay queued for other processes"
                        )
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self._poll)

    async def _resubmit(self, submission: Submission, part: Part) -> None:
        """A part's results vanished (Redis lost its data): queue its open paths again."""
        submission.parts.remove(part)
        owns = submission.unresolved(part)
        if not owns:
            return
        logger.warning(
            "purge queue: Redis lost %d queued paths of endpoint %s (restart?); queueing "
            "them again",
            len(owns),
            submission.endpoint_id,
        )
        try:
            await self._submit(submission, owns)
        except CDNError as exc:
            submission.parts.append(part)  # tried again on the next round
            logger.warning("purge queue: %s", exc)

    # -- this process's drainers ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise CDNError("purge queue closed")

    def _drainer(self, cdn_id: str) -> Drainer:
        drainer = self._drainers.get(cdn_id)
        if drainer is None:
            drainer = self._drainers[cdn_id] = Drainer(
                cdn_id,
                self._scripts,
                poll=self._poll,
                lease_ttl=self._lease_ttl,
                new_token=lambda: f"{self._id}.{next(self._tokens)}",
                closed=lambda: self._closed,
                deliver=self._deliver,
                report=self._report,
                idle=self._forget,
            )
        return drainer

    def _forget(self, drainer: Drainer) -> None:
        if self._drainers.get(drainer.cdn_id) is drainer:
            del self._drainers[drainer.cdn_id]

    def _deliver(self, batch: Batch, outcome: Outcome) -> None:
        """Apply a completed batch to this process's waiting submissions (the poller then
        finds the same entry in Redis, which changes nothing)."""
        head = outcome.to_json()
        for submission in list(self._watching):
            for part in submission.parts:
                seqs = batch.seqs.get(part.id)
                if seqs:
                    submission.apply(part, head + "\n" + " ".join(seqs))

    def _report(self, cdn_id: str, paths: int, error: CDNError | None) -> None:
        """A batch of this process's drainers ended with an outcome: ``work``'s callbacks,
        and a new round of the poller."""
        for hook in list(self._batch_hooks):
            try:
                hook(cdn_id, paths, error)
            except Exception:
                logger.exception("on_batch callback failed")
        if self._poke is not None:
            self._poke.set()
