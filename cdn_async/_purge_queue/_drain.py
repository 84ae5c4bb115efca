"""``Drainer``: this process's hold on one endpoint of a ``RedisPurgeQueue``: who waits on it
here, and the task that takes its batches under the endpoint's lease, sends them and
completes them for every waiting submission (the package docstring, "Drain")."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from .._logs import logger
from .._purge import ENDPOINT_FATAL
from ..errors import (
    APIConnectionError,
    APIError,
    APIResponseError,
    BudgetWaitTimeout,
    CDNError,
    RateLimitedError,
)
from ._scripts import Batch, Held, Idle, QueueScripts, Slot
from ._ticket import Outcome, Submission

if TYPE_CHECKING:
    from .._session import Session

#: The longest nap after repeated Redis failures.
MAX_NAP = 1.0
#: Failures that say what happened to a request that went out: they are the batch's outcome.
#: Any other ``CDNError`` says nothing about the paths: raised before the batch was sealed
#: (the client is closed, its budget store is unreachable, its own
#: ``max_budget_wait``/``max_rate_limit_wait``/``max_queued`` refused the wait), nothing was
#: sent and the batch is given back for the next drainer; raised after (a retry refused or
#: the client closed while a request was on the wire), it may have been sent and is left
#: under its lease until the lease expires.
_OUTCOMES = (APIError, APIConnectionError, APIResponseError)
#: The longest a drainer sleeps before trying again a batch its client refused to wait for.
_MAX_LATER = 60.0


def _later(exc: CDNError) -> float:
    """How long a drainer whose client refused to send (``exc``) waits before trying again."""
    delay = 0.0
    if isinstance(exc, BudgetWaitTimeout) and exc.retry_after is not None:
        delay = exc.retry_after
    elif isinstance(exc, RateLimitedError) and exc.reset_at is not None:
        delay = exc.reset_at - time.time()
    return min(max(delay, 0.0), _MAX_LATER)


class _Seal:
    """A batch's body, made when the budgets admit its request (``Session.request(seal=)``).

    A batch taken as a slot only (``Slot``) is fixed in Redis then (``fix``, the seal
    script): paths submitted meanwhile, in any process, joined the pending entries it takes,
    as in one process's engine. From ``sealed`` on the request may be on the wire, and the
    batch may have been sent.
    """

    __slots__ = ("batch", "fix", "high", "sealed", "size")

    def __init__(self, taken: Slot | Batch, fix: Callable[[_Seal], Awaitable[None]]) -> None:
        #: The fixed batch (None while only a slot).
        self.batch = taken if isinstance(taken, Batch) else None
        self.size = taken.size if isinstance(taken, Slot) else len(taken.paths)
        self.high = taken.high
        self.fix = fix
        self.sealed = False

    def __call__(self) -> dict[str, list[str]] | Awaitable[dict[str, list[str]]]:
        if self.batch is not None:
            self.sealed = True
            return {"files": self.batch.paths}
        return self._fixed()

    async def _fixed(self) -> dict[str, list[str]]:
        try:
            await self.fix(self)
        except RedisError as exc:
            raise _NotFixed(f"cannot fix the batch in Redis ({exc})") from None
        if self.batch is None:
            raise _NotFixed("nothing pending any more, or the lease was lost")
        self.sealed = True
        return {"files": self.batch.paths}


class _NotFixed(CDNError):
    """The batch could not be fixed when its request was admitted: nothing is sent."""


class _Hold:
    """One drain task's hold on an endpoint: its lease token (a lease is never handed from
    one drain task to another, even in one process) and whether it *guards* a batch left in
    flight that may have been sent (then its lease is left to expire: the only resend)."""

    __slots__ = ("guard", "token")

    def __init__(self, token: str) -> None:
        self.token = token
        self.guard = False


class _Unsent:
    """Nothing of the batch was sent: give it back, try again after ``delay`` s."""

    __slots__ = ("delay",)

    def __init__(self, delay: float) -> None:
        self.delay = delay


class Drainer:
    """One endpoint, in this process: the submissions waiting on it, whether a worker wants it
    drained, and the drain task.

    Args:
        cdn_id: The endpoint.
        scripts: The queue's steps in Redis.
        poll: Seconds between two looks at a lease another drainer holds.
        lease_ttl: Seconds the endpoint's lease lasts without renewal.
        new_token: A lease token no other drain task (of any process) has.
        closed: Whether the queue is closed.
        deliver: A batch's outcome, recorded in Redis, for this process's waiting submissions.
        report: After each batch with an outcome: ``(endpoint, paths, error)``.
        idle: This drainer has no task and nobody here wants the endpoint any more.
    """

    def __init__(
        self,
        cdn_id: str,
        scripts: QueueScripts,
        *,
        poll: float,
        lease_ttl: float,
        new_token: Callable[[], str],
        closed: Callable[[], bool],
        deliver: Callable[[Batch, Outcome], None],
        report: Callable[[str, int, CDNError | None], None],
        idle: Callable[[Drainer], None],
    ) -> None:
        self.cdn_id = cdn_id
        self._scripts = scripts
        self._poll = poll
        self._lease_ttl = lease_ttl
        self._new_token = new_token
        self._closed = closed
        self._deliver = deliver
        self._report = report
        self._idle = idle
        #: Submissions of the endpoint that a call of this process waits on.
        self.waiting: set[Submission] = set()
        #: The drain task, while one runs.
        self.task: asyncio.Task[None] | None = None
        #: A worker asked for this endpoint to be drained until nothing is pending.
        self.worker = False
        self._wake: asyncio.Future[None] | None = None

    def wanted(self) -> bool:
        """Whether this process still needs the endpoint drained: a worker, or a waiter
        whose paths are not all settled yet."""
        return self.worker or any(s.done < s.total for s in self.waiting)

    def poke(self) -> None:
        """What ``wanted`` says may have changed: wake the drainer's wait."""
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def start(self, session: Session) -> None:
        """Drain with ``session`` unless a drain task runs already."""
        if self._closed() or (self.task is not None and not self.task.done()):
            return
        self.task = asyncio.get_running_loop().create_task(self._run(session))

    async def nap(self, delay: float, *also: asyncio.Future[Any]) -> None:
        """Sleep up to ``delay`` s; return early on ``poke`` or when one of ``also`` is done."""
        loop = asyncio.get_running_loop()
        wake = self._wake = loop.create_future()
        try:
            await asyncio.wait((wake, *also), timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
            if self._wake is wake:
                self._wake = None

    # -- the drain task ------------------------------------------------------------------------

    async def _run(self, session: Session) -> None:
        """Take, send and complete the endpoint's batches while this process wants them.

        The lease token is this task's own: a batch this task took is never handed to any
        other drain task (of this process or another) while the lease lives, nor back to this
        one; a batch that may have been sent without an outcome is left under the lease
        until it expires (at least once, never two copies in flight).
        """
        hold = _Hold(self._new_token())
        fatal: CDNError | None = None
        nap = self._poll
        try:
            while not self._closed() and self.wanted() and not session.closed:
                try:
                    size = session.limits.purge_batch_size
                    taken = await self._scripts.take(self.cdn_id, hold.token, size)
                except RedisError as exc:
                    logger.warning("purge queue: Redis unavailable (%s); retrying", exc)
                    nap = min(nap * 2, MAX_NAP)
                    await self.nap(nap)
                    continue
                nap = self._poll
                if isinstance(taken, Held):  # by another drainer, or guarding ours
                    await self.nap(min(self._poll, taken.ttl) if taken.ttl > 0 else self._poll)
                    continue
                if isinstance(taken, Idle):  # nothing pending or in flight
                    fatal = None
                    self.worker = False
                    if self.wanted():
                        await self.nap(self._poll)
                    continue
                hold.guard = False  # the lease now stands for this batch
                if self._closed() or not self.wanted() or session.closed:
                    # Nobody here needs it any more (a waiter was answered meanwhile).
                    batch_id = taken.batch_id if isinstance(taken, Batch) else ""
                    await self._give_back(hold.token, batch_id)
                    break
                fatal = await self._batch(session, hold, taken, fatal)
        finally:
            await self._stop(hold)

    async def _stop(self, hold: _Hold) -> None:
        """The drain task ends: release the lease (unless it guards a batch that may be on
        the wire), hand the endpoint to another waiter's open client, or go idle."""
        if not hold.guard:
            with contextlib.suppress(Exception):
                await self._give_back(hold.token, "")
        if self.task is asyncio.current_task():
            self.task = None
        # Another waiter of this endpoint may still have an open client: it drains on.
        if not self._closed():
            for submission in self.waiting:
                other = submission.session
                if other is not None and not other.closed and self.wanted():
                    self.start(other)
                    break
        if self.task is None and not self.wanted():
            self._idle(self)

    async def _batch(
        self, session: Session, hold: _Hold, taken: Slot | Batch, fatal: CDNError | None
    ) -> CDNError | None:
        """Send one batch and complete it; returns the error that fails every later batch
        of the endpoint (the API said so: ``ENDPOINT_FATAL``), if any."""
        if isinstance(taken, Batch) and taken.resend:
            logger.info(
                "purge queue: endpoint %s: taking over a batch of %d paths whose drainer "
                "stopped or died with it in flight (its lease expired): it may have been sent "
                "already, so it is sent at least once more",
                self.cdn_id,
                len(taken.paths),
            )
        seal = _Seal(taken, lambda s: self._fix(hold.token, s))
        result = await self._send_leased(session, hold, seal, fatal)
        if result is None:  # may have been sent, no outcome: left under the lease
            return fatal
        batch = seal.batch
        if isinstance(result, _Unsent) or batch is None:  # nothing sent: the next one takes it
            await self._give_back(hold.token, batch.batch_id if batch is not None else "")
            if self.wanted():
                await self.nap(max(self._poll, result.delay if isinstance(result, _Unsent) else 0))
            return fatal
        if await self._complete(hold, batch, result):
            # This process's own waiters learn it now, not at the next poll: a drainer whose
            # waiters are all answered stops before taking another batch.
            self._deliver(batch, result)
        self._report(self.cdn_id, len(batch.paths), result.error)
        return result.error if isinstance(result.error, ENDPOINT_FATAL) else fatal

    async def _fix(self, token: str, seal: _Seal) -> None:
        """Fix a slot's batch (the seal script): ``seal.batch`` is set, or stays None (the
        lease was lost, or nothing is pending). The script's answer is read even if the
        caller is cancelled meanwhile, so a batch fixed in Redis is known to the drainer."""
        call = asyncio.ensure_future(self._scripts.seal(self.cdn_id, token, seal.size))

        def read(task: asyncio.Future[Batch | None]) -> None:
            if not task.cancelled() and task.exception() is None:
                seal.batch = task.result()

        call.add_done_callback(read)
        try:
            await asyncio.shield(call)
        except asyncio.CancelledError:
            await asyncio.wait((call,), timeout=self._scripts.call_timeout)
            raise

    async def _send_leased(
        self, session: Session, hold: _Hold, seal: _Seal, fatal: CDNError | None
    ) -> Outcome | _Unsent | None:
        """Send a batch, renewing the lease meanwhile.

        Returns its outcome; ``_Unsent`` when nothing was sent; None when it may have been
        sent but no outcome is known (then ``hold.guard`` is set and the lease left to expire).
        While the request waits for its budgets (nothing sent yet), the send is dropped as
        soon as this process no longer needs the endpoint drained; once sealed it is waited
        for. Cancelled (the queue closes), a sealed batch is left under its lease.
        """
        if fatal is not None:  # the API said every batch of this endpoint fails: none is sent
            if seal.batch is None:
                try:
                    await seal.fix(seal)
                except RedisError:
                    return _Unsent(self._poll)
            return Outcome(fatal, sent=False) if seal.batch is not None else _Unsent(0.0)
        loop = asyncio.get_running_loop()
        renew = loop.create_task(self._renew(hold.token))
        send = loop.create_task(self._send(session, seal))
        try:
            while not send.done():
                if not seal.sealed and not self.wanted():
                    send.cancel()  # still waiting for its budgets: nothing was sent
                    await asyncio.wait((send,))
                    break
                await self.nap(self._poll, send)
        except asyncio.CancelledError:
            await self._cancelled(hold, seal, send)
            raise
        finally:
            renew.cancel()
            await asyncio.gather(renew, return_exceptions=True)
        result = _Unsent(0.0) if send.cancelled() else send.result()
        if result is None:
            hold.guard = True
            await self._abandon(hold.token)
        return result

    async def _cancelled(
        self, hold: _Hold, seal: _Seal, send: asyncio.Task[Outcome | _Unsent | None]
    ) -> None:
        """The queue closes. A request on the wire is not aborted by the session (it may
        still be stamped): its batch stays under the lease, unless its outcome is in."""
        hold.guard = seal.sealed
        if not send.done():
            send.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait((send,), timeout=self._scripts.call_timeout)
            done = send.done() and not send.cancelled() and send.exception() is None
            result = send.result() if done else None
            if isinstance(result, Outcome) and seal.batch is not None:
                hold.guard = True  # until the outcome is recorded
                bound = self._scripts.call_timeout
                if await asyncio.wait_for(self._complete(hold, seal.batch, result), bound):
                    self._deliver(seal.batch, result)
            elif hold.guard:
                await self._abandon(hold.token)

    async def _renew(self, token: str) -> None:
        while True:
            await asyncio.sleep(self._lease_ttl / 3)
            try:
                ours = await self._scripts.renew(self.cdn_id, token)
            except RedisError as exc:
                logger.warning("purge queue: cannot renew the lease of %s (%s)", self.cdn_id, exc)
                continue
            if not ours:
                logger.warning(
                    "purge queue: lost the lease of endpoint %s while sending (stalled longer "
                    "than lease_ttl, or Redis lost it): the batch may be sent twice",
                    self.cdn_id,
                )
                return

    async def _abandon(self, token: str) -> None:
        """Leave a batch that may have been sent under its lease, renewed one last time: the
        next drainer takes it over (sends it again) once the lease expires, ``lease_ttl``
        from now, by when the request on the wire has been answered or dropped."""
        logger.warning(
            "purge queue: endpoint %s: a batch may have been sent but its outcome is unknown "
            "(the client was closed or its retry refused); it is sent again once its lease "
            "expires in %.1f s (at least once)",
            self.cdn_id,
            self._lease_ttl,
        )
        with contextlib.suppress(RedisError):
            await self._scripts.renew(self.cdn_id, token)

    async def _send(self, session: Session, seal: _Seal) -> Outcome | _Unsent | None:
        """One batch's request: its outcome; ``_Unsent`` (seconds to wait before trying
        again) when this client sent nothing; None when it may have sent it but ended with no
        outcome. The session retries what is safe, a 409 (an identical purge in progress)
        included, within the client's ``max_retries``."""
        try:
            resp = await session.request(
                "DELETE",
                f"/v2/cdn/endpoints/{self.cdn_id}/cache",
                endpoint_id=self.cdn_id,
                files=seal.size,
                seal=seal,
                priority="high" if seal.high else None,
                retry_conflict=True,
            )
        except _OUTCOMES as exc:
            return Outcome(exc, sent=True)
        except CDNError as exc:
            if seal.sealed:
                return None
            logger.info(
                "purge queue: endpoint %s: batch not sent, left queued (%s)", self.cdn_id, exc
            )
            return _Unsent(_later(exc))
        except Exception as exc:  # a bug or a misused session: still report the paths
            return Outcome(
                CDNError(f"purge request failed: {type(exc).__name__}: {exc}"), sent=seal.sealed
            )
        paths = len(seal.batch.paths) if seal.batch is not None else 0
        logger.info("purge queue: endpoint %s: purged %d paths", self.cdn_id, paths)
        return Outcome(None, sent=True, wait=resp.budget_wait)

    async def _complete(self, hold: _Hold, batch: Batch, outcome: Outcome) -> bool:
        """Record a batch's outcome for its tickets; False if it was no longer in flight (or
        Redis could not be reached: then the batch stays in flight under the lease, which
        ``hold`` now guards)."""
        nap = self._poll
        for _ in range(5):
            try:
                done = await self._scripts.complete(
                    self.cdn_id, hold.token, batch, outcome.to_json()
                )
            except RedisError as exc:
                logger.warning("purge queue: cannot record a batch's outcome (%s); retrying", exc)
                await asyncio.sleep(nap)
                nap = min(nap * 2, MAX_NAP)
                continue
            hold.guard = False
            return done
        # Left in flight under the lease: sent again once the lease expires.
        hold.guard = True
        logger.warning(
            "purge queue: a batch of %s stays in flight; it will be sent again", self.cdn_id
        )
        return False

    async def _give_back(self, token: str, batch_id: str) -> None:
        """Release the lease, the batch in flight marked unsent (it never reached the wire):
        the next drainer sends it at once. ``batch_id`` "": whichever batch the lease holds."""
        with contextlib.suppress(RedisError):
            await self._scripts.give_back(self.cdn_id, token, batch_id)
