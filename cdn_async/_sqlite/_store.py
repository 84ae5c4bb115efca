"""``SQLiteBudgetStore``: the ``BudgetStore`` protocol over the budget file's transactions
(the package docstring has the design)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .._ledger import WindowLedger
from .._limits import BudgetState, Claim, Lease, Priority, merge_claims, priority_lead
from .._local_queue import Group, LocalQueue, line_estimate
from .._logs import logger
from ..errors import BudgetFileError, CDNError, RateLimitedError
from ._file import CHECKPOINT_EVERY, AcquireReply, BudgetFile, Busy, Part
from ._lease import SQLiteLease

if TYPE_CHECKING:
    from .._limits import BudgetStore

#: Seconds a lease may go without its process's heartbeat before it counts as answered (its
#: process died or stalled); its units then leave the windows a period after that.
DEFAULT_INFLIGHT_TIMEOUT = 10.0
#: How often a process with leases in flight pushes their deadlines forward.
DEFAULT_HEARTBEAT_INTERVAL = 1.0
#: The longest a queued acquire sleeps before asking the file again while only an answer
#: (maybe in another process) can free its room.
DEFAULT_MAX_POLL_INTERVAL = 0.02
#: How long the file may stay locked by others before ``acquire`` raises ``BudgetFileError``.
DEFAULT_LOCK_TIMEOUT = 5.0

# Sleeps between attempts: never shorter (timer granularity), never longer (a pause or hold
# may be capped shorter by another process meanwhile).
_MIN_SLEEP = 0.0005
_MAX_SLEEP = 1.0
# Retrying a locked file: from _MIN_SLEEP, doubling up to this.
_MAX_BUSY_SLEEP = 0.01


class SQLiteBudgetStore:
    """Budget windows kept in one SQLite file, shared by every process on this host that
    opens it: the exact windows of the in-process store, with no server to run.

    Give every process that uses the token (uvicorn or gunicorn workers, parallel jobs on
    one machine) a store on the same path; together they never exceed a budget::

        from cdn_async import CDNClient, SQLiteBudgetStore

        store = SQLiteBudgetStore("/var/tmp/cdn-async-budgets.sqlite3")
        async with CDNClient(token, budget_store=store) as cdn:
            ...
        await store.aclose()

    One file per token (several tokens in one file would share their budgets). The file must
    be on a local filesystem of one host (not NFS or SMB: SQLite's locks and WAL need one
    kernel), and every process must see the same file (containers: a shared volume) and the
    same monotonic clock (one host; containers share it unless they run in a time namespace).
    Across hosts, use ``cdn_async.redis.RedisBudgetStore``.

    Every operation is one short write transaction (``BEGIN IMMEDIATE``); the event loop
    never waits on the file's lock: a locked file is tried again in a few ms, and ``acquire``
    raises ``BudgetFileError`` once it has stayed locked for ``lock_timeout``. Within a
    process, acquires on the same budgets queue in ``priority`` order (as in the in-process
    store) and only the first asks the file; across processes, the first to ask when units
    free is admitted.

    Args:
        path: The file; created with its tables if missing (its directory must exist).
        inflight_timeout: A request whose process stops heartbeating (killed, or its loop
            stalled) counts as answered this many seconds after the last heartbeat; its units
            then leave the windows a period later. Must exceed ``heartbeat_interval``.
        heartbeat_interval: How often a process with requests in flight refreshes their
            deadlines.
        max_poll_interval: The longest a queued acquire waits before asking the file again
            when only an answer can free room (answers in this process wake it at once).
        lock_timeout: How long the file may stay locked by others (another program holding a
            transaction open) before ``acquire`` raises ``BudgetFileError``; opening the file
            also waits at most this long.
        clock: Seconds on a clock every process on the host shares. Default
            ``time.monotonic`` (system-wide on Linux, macOS and Windows); inject one only for
            tests, the same in every store on the file.

    Raises:
        BudgetFileError: The file cannot be opened, created or written (a missing or
            read-only directory), or is not a budget file (corrupt).
        ValueError: An option is out of range.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        inflight_timeout: float = DEFAULT_INFLIGHT_TIMEOUT,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        clock: Callable[[], float] | None = None,
    ) -> None:
        for name, value in (
            ("inflight_timeout", inflight_timeout),
            ("heartbeat_interval", heartbeat_interval),
            ("max_poll_interval", max_poll_interval),
            ("lock_timeout", lock_timeout),
        ):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if inflight_timeout <= heartbeat_interval:
            raise ValueError("inflight_timeout must exceed heartbeat_interval")
        self._file = BudgetFile(
            os.fspath(path), inflight_timeout=inflight_timeout, open_timeout=lock_timeout
        )
        self._clock: Callable[[], float] = clock if clock is not None else time.monotonic
        self._heartbeat_interval = heartbeat_interval
        self._poll = max_poll_interval
        self._lock_timeout = lock_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue = LocalQueue()
        self._inflight: dict[str, SQLiteLease] = {}
        # Per key, when the request answered last was admitted (``sync`` follows its release).
        self._answered: dict[str, float] = {}
        # Pauses this process knows of (its own, and what acquires read): key -> until.
        self._pauses: dict[str, float] = {}
        # Writes (release, give back, sync, pause) that met a locked file, in order.
        self._pending: deque[Callable[[], None]] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._checkpoint: asyncio.Task[None] | None = None
        self._checkpointed = 0  # the file's commit count at the last checkpoint
        self._ids = itertools.count()
        self._id_prefix = secrets.token_hex(6) + "-"
        self._pid = os.getpid()
        self._closed = False

    def __repr__(self) -> str:
        return f"<SQLiteBudgetStore {self._file.path!r}>"

    @property
    def path(self) -> str:
        """The budget file."""
        return self._file.path

    # -- the BudgetStore protocol ----------------------------------------------------------------

    async def acquire(
        self,
        claims: Sequence[Claim],
        *,
        max_wait: float | None = None,
        priority: Priority = "normal",
    ) -> SQLiteLease:
        """Wait until every claim fits in the file, then take them all at once.

        ``priority`` orders this process's calls for the same budgets, as in the in-process
        store (higher first, arrival order within a level, none starved); across processes,
        whichever asks first when units free is admitted. One transaction per attempt: the
        first call of a key set asks the file, the others queue behind it; it sleeps the
        time the file says is left (at most ``max_poll_interval`` when only an answer can free
        room, waking at once when this process gets an answer).

        Args:
            claims: What the request takes, one claim per budget key (repeated keys add up).
            max_wait: The longest the caller will wait for a key paused by a 429; None: any.
            priority: ``"high"``, ``"normal"`` or ``"low"``.

        Returns:
            The lease to hand to ``release`` (or ``give_back``) when the attempt is over.

        Raises:
            RateLimitedError: A key is paused for longer than ``max_wait``.
            ValidationError: A claim has fewer than 1 unit or more than its limit.
            BudgetFileError: The file stayed locked by others for ``lock_timeout``, or cannot
                be read or written (corrupt): nothing was admitted.
            CDNError: The store is closed.
        """
        if self._closed:
            raise CDNError("budget store closed")
        merged = merge_claims(claims)  # the same rule as the other stores
        parts = tuple(Part(c.key, c.limit, c.period, u) for c, u in merged)
        self._check_local_pause(merged, max_wait)
        return await self._queue.run(
            tuple(p.key for p in parts),
            self._clock() - priority_lead(claims, priority),
            {p.key: p.units for p in parts},
            lambda group: self._acquire_head(tuple(claims), merged, parts, max_wait, group),
        )

    def admission_delay(
        self, claims: Sequence[Claim], priority: Priority = "normal"
    ) -> tuple[float, str]:
        """How long, at least, a call with ``claims`` queued now at ``priority`` would wait,
        and on which budget: the units of this process's queued calls that go before it,
        fitted into what the file counts on each key (a read, waiting for no lock;
        ``line_estimate``), and no sooner than the file last said the head of the same
        budgets could fit. Other processes' queued calls can only add to it: a lower bound
        (for ``max_budget_wait``, ``max_queued`` and ``BudgetWaitTimeout.retry_after``)."""
        now = self._clock()
        merged = merge_claims(claims, to_fit=False)
        vt = now - priority_lead(claims, priority)

        def ledger(c: Claim) -> WindowLedger | None:
            try:
                return self._file.ledger(c.key, now)
            except (BudgetFileError, Busy):
                return None  # unreadable now: estimate from the line alone

        return line_estimate(self._queue.groups, merged, vt, now, now, ledger)

    def release(self, lease: Lease) -> None:
        """The request's answer (or failure) arrived: its units leave the windows ``period``
        s from now, for every process (the release is stamped now, even if the file is locked
        and it is written a little later). Idempotent, and a no-op after ``give_back``.

        Raises:
            ValueError: ``lease`` did not come from this store.
        """
        own = self._own(lease)
        parts = self._finish(own)
        if parts is None:
            return
        answered = self._clock()
        self._write(lambda: self._file.finish(own.id, parts, self._clock, answered_at=answered))

    def give_back(self, lease: Lease) -> None:
        """The request was never sent, or the server refused it with a 429 without counting
        it: its units are uncounted at once, for every process. Idempotent, and a no-op after
        ``release``.

        Raises:
            ValueError: ``lease`` did not come from this store.
        """
        own = self._own(lease)
        parts = self._finish(own)
        if parts is None:
            return
        self._write(lambda: self._file.finish(own.id, parts, self._clock, answered_at=None))

    def sync(self, claim: Claim, remaining: int, reset_after: float, refused: bool = False) -> None:
        """Apply server headers for every process: when the server counts more than the file
        holds (in flight and released, over all processes), the difference is another
        client's, held until ``reset_after`` s from now (at most ``claim.period``); a live
        hold is raised, never lowered. As in ``RedisBudgetStore``, requests are not sent one
        at a time after a refusal (``refused`` is accepted and not used): processes sharing
        the file see each other's units exactly.

        The server counted at its stamp, which came after the answered request was admitted;
        units that left the windows since that admission may have been in its count, so they
        are not taken for another client's (else one unit expiring during a round trip would
        hold a unit back for a whole period). The answered request is the one this process
        released (or gave back) last on the key: the session settles a request, then applies
        its headers.
        """
        since = self._answered.pop(claim.key, None)
        if self._closed:
            return
        part = Part(claim.key, claim.limit, claim.period, 0)
        reset = min(reset_after, claim.period)
        self._write(lambda: self._file.sync(part, remaining, reset, since, self._clock))

    def pause(self, claim: Claim, resume_after: float) -> None:
        """The server answered 429 for this key: every process admits nothing on it for
        ``resume_after`` s, capped at ``claim.period`` (extends, never shortens, a pause)."""
        resume_after = min(resume_after, claim.period)
        if self._closed or resume_after <= 0:
            return
        until = self._clock() + resume_after
        self._pauses[claim.key] = max(self._pauses.get(claim.key, 0.0), until)
        part = Part(claim.key, claim.limit, claim.period, 0)
        self._write(lambda: self._file.pause(part, resume_after, self._clock))
        self._queue.wake_all()

    def snapshot(self) -> dict[str, BudgetState]:
        """Every key in the file, over all processes (a read; it waits for no lock).

        ``waiters`` counts this process's queued acquires only. Empty when the file cannot be
        read.
        """
        try:
            rows = self._file.snapshot(self._clock())
        except (BudgetFileError, Busy) as exc:
            logger.debug("budget file not read for a snapshot (%s)", exc)
            return {}
        waiters = self._queue.waiters()
        return {
            row.key: BudgetState(
                key=row.key,
                limit=row.limit,
                used=row.used,
                remaining=max(0, row.limit - row.used),
                next_free_in=row.next_free_in,
                waiters=waiters.get(row.key, 0),
                paused_for=row.paused_for,
            )
            for row in rows
        }

    async def aclose(self) -> None:
        """Write what is pending (for at most ``lock_timeout``), stop the heartbeat, close
        the file. Queued acquires fail with ``CDNError``; later ``acquire`` calls raise it,
        and ``release``, ``sync`` and ``pause`` do nothing. A request still in flight keeps its
        units until ``inflight_timeout`` plus a period (it may still reach the server).
        Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self._queue.wake_all()
        if self._checkpoint is not None:
            await self._checkpoint
        for task in (self._heartbeat, self._flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._flush(deadline=self._clock() + self._lock_timeout)
        if self._pending:
            logger.warning(
                "budget file %r stayed locked: %d releases, syncs or pauses not written",
                self._file.path,
                len(self._pending),
            )
        self._file.close()

    # -- acquiring ---------------------------------------------------------------------------------

    async def _acquire_head(
        self,
        claims: tuple[Claim, ...],
        merged: tuple[tuple[Claim, int], ...],
        parts: tuple[Part, ...],
        max_wait: float | None,
        group: Group,
    ) -> SQLiteLease:
        loop = self._get_loop()
        locked_since: float | None = None
        busy_sleep = _MIN_SLEEP
        while True:
            if self._closed:
                raise CDNError("budget store closed")
            group.check_passed()  # a call of an earlier virtual time goes first
            lease_id = self._new_id()
            try:
                reply = self._file.acquire(lease_id, parts, self._clock)
            except Busy:
                now = self._clock()
                if locked_since is None:
                    locked_since = now
                elif now - locked_since >= self._lock_timeout:
                    raise self._file.error(
                        None, f"stayed locked by another program for {now - locked_since:.1f} s"
                    ) from None
                await group.nap(loop, busy_sleep)
                busy_sleep = min(busy_sleep * 2, _MAX_BUSY_SLEEP)
                continue
            locked_since, busy_sleep = None, _MIN_SLEEP
            self._maintain()
            if reply.admitted:
                lease = SQLiteLease(lease_id, claims, parts, self, reply.at)
                self._inflight[lease_id] = lease
                self._ensure_heartbeat()
                return lease
            # Units in flight (``unknown``) free no sooner than a period after an answer.
            soonest = max(reply.wait, min(p.period for p in parts)) if reply.unknown else reply.wait
            group.ready_at = self._clock() + soonest
            self._check_reply_pause(reply, merged, max_wait)
            delay = max(reply.wait, self._poll) if reply.unknown else reply.wait
            await group.nap(loop, min(max(delay, _MIN_SLEEP), _MAX_SLEEP))

    def _check_reply_pause(
        self, reply: AcquireReply, merged: tuple[tuple[Claim, int], ...], max_wait: float | None
    ) -> None:
        if reply.paused_index < 0:
            return
        c = merged[reply.paused_index][0]
        until = self._clock() + reply.paused
        self._pauses[c.key] = max(self._pauses.get(c.key, 0.0), until)
        if max_wait is not None and reply.paused > max_wait:
            raise RateLimitedError.paused(c.budget, c.key, reply.paused, time.time())

    def _check_local_pause(
        self, merged: tuple[tuple[Claim, int], ...], max_wait: float | None
    ) -> None:
        if max_wait is None or not self._pauses:
            return
        now = self._clock()
        for c, _ in merged:
            left = self._pauses.get(c.key, 0.0) - now
            if left > max_wait:
                raise RateLimitedError.paused(c.budget, c.key, left, time.time())

    def _new_id(self) -> str:
        if os.getpid() != self._pid:  # a forked child: its own ids, none of the parent's leases
            self._pid = os.getpid()
            self._id_prefix = secrets.token_hex(6) + "-"
            self._inflight.clear()
        return f"{self._id_prefix}{next(self._ids):x}"

    # -- releases, syncs, pauses: written now, or soon if the file is locked --------------------

    def _own(self, lease: Lease) -> SQLiteLease:
        if not isinstance(lease, SQLiteLease) or not lease.issued_by(self):
            raise ValueError(f"not a lease of this store: {lease!r}")
        return lease

    def _finish(self, lease: SQLiteLease) -> tuple[Part, ...] | None:
        """End ``lease`` here (once): its units by key, to write to the file; None if it had
        ended already or the store is closed."""
        parts = lease.end()
        if parts is None:
            return None
        self._inflight.pop(lease.id, None)
        if self._closed:
            return None
        for part in parts:
            self._answered[part.key] = lease.admitted_at
        return parts

    def _write(self, op: Callable[[], None]) -> None:
        """Run a write now; if the file is locked, keep it (in order) for the flush task. A
        queued acquire of this process is woken: room may have freed."""
        if not self._pending:
            try:
                op()
            except Busy:
                pass
            except BudgetFileError as exc:
                logger.error("%s", exc)
                return
            else:
                self._queue.wake_all()
                self._maintain()
                return
        self._pending.append(op)
        if self._flusher is None or self._flusher.done():
            self._flusher = self._get_loop().create_task(self._flush())

    async def _flush(self, deadline: float | None = None) -> None:
        sleep = _MIN_SLEEP
        while self._pending:
            try:
                self._pending[0]()
            except Busy:
                if deadline is not None and self._clock() >= deadline:
                    return
                await asyncio.sleep(sleep)
                sleep = min(sleep * 2, _MAX_BUSY_SLEEP)
                continue
            except BudgetFileError as exc:
                logger.error("%s", exc)
            self._pending.popleft()
            sleep = _MIN_SLEEP
            self._queue.wake_all()

    def _maintain(self) -> None:
        """Every ``CHECKPOINT_EVERY`` commits, checkpoint the WAL in a thread."""
        if self._file.commits - self._checkpointed < CHECKPOINT_EVERY or self._closed:
            return
        if self._checkpoint is None or self._checkpoint.done():
            self._checkpointed = self._file.commits
            self._checkpoint = self._get_loop().create_task(
                asyncio.to_thread(self._file.checkpoint)
            )

    # -- heartbeat --------------------------------------------------------------------------------

    def _ensure_heartbeat(self) -> None:
        if self._closed or (self._heartbeat is not None and not self._heartbeat.done()):
            return
        self._heartbeat = self._get_loop().create_task(self._heartbeat_loop())

    async def _heartbeat_loop(self) -> None:
        """While this process has requests in flight, push their deadlines forward (a locked
        file is tried again every few ms, well within ``inflight_timeout``)."""
        while not self._closed and self._inflight:
            await asyncio.sleep(self._heartbeat_interval)
            sleep = _MIN_SLEEP
            while not self._closed and self._inflight:
                try:
                    self._file.heartbeat(list(self._inflight), self._clock)
                except Busy:
                    await asyncio.sleep(sleep)
                    sleep = min(sleep * 2, _MAX_BUSY_SLEEP)
                    continue
                except BudgetFileError as exc:
                    logger.error("budget heartbeat: %s", exc)
                break

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop


if TYPE_CHECKING:

    def _conforms(store: SQLiteBudgetStore) -> BudgetStore:
        return store
