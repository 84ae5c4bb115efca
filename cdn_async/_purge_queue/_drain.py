"""The draining half of ``RedisPurgeQueue`` (its base class) and its Redis client: take an
endpoint's batch under its lease, send it, complete it for every waiting ticket."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AskError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from .._limits import Priority
from .._logs import logger
from ..errors import (
    APIConnectionError,
    APIError,
    APIResponseError,
    AuthenticationError,
    BudgetWaitTimeout,
    CDNError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
)
from ._scripts import NAMES, source
from ._ticket import PurgeTicket, _Outcome, _Taken

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from .._session import Session

_T = TypeVar("_T")

#: Socket timeouts of a Redis client the queue makes from a URL.
_SOCKET_TIMEOUT = 5.0
#: The longest nap after repeated Redis failures.
_MAX_NAP = 1.0
#: Answers after which every later batch of the endpoint would fail the same way.
_FATAL = (AuthenticationError, PermissionDeniedError, NotFoundError)
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


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _call(aw: Awaitable[_T]) -> _T:
    """Await one redis-py call in a task of its own, never cancelled.

    redis-py (8.1) often swallows a cancellation that lands while a command is on its
    connection: the caller's task goes on as if never cancelled (a ``work()`` loop would then
    never stop). Here the caller's cancellation is raised in the caller, always; the call
    itself is let finish first (at most the socket timeout), so what it did in Redis is
    known to the caller's cleanup (a ``take`` that ran left a lease to give back).
    """
    task = asyncio.ensure_future(aw)
    task.add_done_callback(_consume)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait((task,), timeout=_SOCKET_TIMEOUT)
        raise


class _Lane:
    """This process's view of one endpoint: who waits here, and its drainer."""

    __slots__ = ("_wake", "cdn_id", "task", "tickets", "worker")

    def __init__(self, cdn_id: str) -> None:
        self.cdn_id = cdn_id
        self.tickets: set[PurgeTicket] = set()
        self.task: asyncio.Task[None] | None = None
        #: A worker asked for this endpoint to be drained until nothing is pending.
        self.worker = False
        self._wake: asyncio.Future[None] | None = None

    def wanted(self) -> bool:
        """Whether this process still needs the endpoint drained: a worker, or a waiter
        whose paths are not all settled yet."""
        return self.worker or any(t.done < t.total for t in self.tickets)

    def poke(self) -> None:
        """What ``wanted`` says may have changed: wake the drainer's wait."""
        if self._wake is not None:
            _resolve(self._wake)

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


class _Seal:
    """A batch's body, made when the budgets admit its request (``Session.request(seal=)``).

    A batch taken as a size only (``_Taken`` kind 2) is fixed in Redis then (``fix``, the seal
    script): paths submitted meanwhile, in any process, joined the pending entries it takes,
    as in one process's engine. From ``sealed`` on the request may be on the wire, and the
    batch may have been sent.
    """

    __slots__ = ("fix", "sealed", "taken")

    def __init__(self, taken: _Taken, fix: Callable[[], Awaitable[None]]) -> None:
        self.taken = taken
        self.fix = fix
        self.sealed = False

    def __call__(self) -> dict[str, list[str]] | Awaitable[dict[str, list[str]]]:
        if self.taken.kind == 1:
            self.sealed = True
            return {"files": self.taken.paths}
        return self._fixed()

    async def _fixed(self) -> dict[str, list[str]]:
        try:
            await self.fix()
        except RedisError as exc:
            raise _NotFixed(f"cannot fix the batch in Redis ({exc})") from None
        if self.taken.kind != 1:
            raise _NotFixed("nothing pending any more, or the lease was lost")
        self.sealed = True
        return {"files": self.taken.paths}


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


class _Drainer:
    """``RedisPurgeQueue``'s draining and Redis calls (``RedisPurgeQueue.__init__`` sets the
    state)."""

    _url: str | None
    _redis: aioredis.Redis | RedisCluster
    _may_upgrade: bool
    _prefix: str
    _lease_ttl: float
    _result_ttl: float
    _poll: float
    _scripts: dict[str, AsyncScript]
    _id: str
    _tokens: Iterator[int]
    _lanes: dict[str, _Lane]
    _watching: set[PurgeTicket]
    _poke: asyncio.Event | None
    _batch_hooks: list[Callable[[str, int, CDNError | None], None]]
    _closed: bool

    def _check_open(self) -> None:
        if self._closed:
            raise CDNError("purge queue closed")

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self._prefix}:{kind}:{name}" if name else f"{self._prefix}:{kind}"

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
        """Take, send and complete the endpoint's batches while this process wants them.

        The lease token is this task's own: a batch this task took is never handed to any
        other drain task (of this process or another) while the lease lives, nor back to this
        one; a batch that may have been sent without an outcome is left under the lease
        until it expires (at least once, never two copies in flight).
        """
        cdn_id = lane.cdn_id
        hold = _Hold(f"{self._id}.{next(self._tokens)}")
        fatal: CDNError | None = None
        nap = self._poll
        try:
            while not self._closed and lane.wanted() and not _session_closed(session):
                try:
                    taken = await self._take(cdn_id, hold.token, session.limits.purge_batch_size)
                except RedisError as exc:
                    logger.warning("purge queue: Redis unavailable (%s); retrying", exc)
                    nap = min(nap * 2, _MAX_NAP)
                    await lane.nap(nap)
                    continue
                nap = self._poll
                if taken.kind == 0:  # the lease is held (by another drainer, or guards ours)
                    await lane.nap(min(self._poll, taken.ttl) if taken.ttl > 0 else self._poll)
                    continue
                if taken.kind == 3:  # nothing pending or in flight
                    fatal = None
                    lane.worker = False
                    if lane.wanted():
                        await lane.nap(self._poll)
                    continue
                hold.guard = False  # the lease now stands for this batch
                if self._closed or not lane.wanted() or _session_closed(session):
                    # Nobody here needs it any more (a waiter was answered meanwhile).
                    await self._give_back(cdn_id, hold.token, taken.batch_id)
                    break
                if taken.resend:  # kind 1 only: a batch fixed earlier
                    logger.info(
                        "purge queue: endpoint %s: taking over a batch of %d paths whose "
                        "drainer stopped or died with it in flight (its lease expired): it "
                        "may have been sent already, so it is sent at least once more",
                        cdn_id,
                        len(taken.paths),
                    )
                result = await self._send_leased(session, lane, hold, taken, fatal)
                if result is None:  # may have been sent, no outcome: left under the lease
                    continue
                if isinstance(result, _Unsent):  # nothing sent: the next drainer takes it
                    await self._give_back(cdn_id, hold.token, taken.batch_id)
                    if lane.wanted():
                        await lane.nap(max(self._poll, result.delay))
                    continue
                outcome = result
                if await self._complete(cdn_id, hold, taken, outcome):
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
            if not hold.guard:  # else the lease guards a batch that may be on the wire
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._give_back(cdn_id, hold.token, ""), _SOCKET_TIMEOUT)
            if lane.task is asyncio.current_task():
                lane.task = None
            # Another waiter of this endpoint may still have an open client: it drains on.
            if not self._closed:
                for ticket in lane.tickets:
                    other = ticket._session
                    if other is not None and not _session_closed(other) and lane.wanted():
                        self._ensure_drainer(lane, other)
                        break
            if lane.task is None and not lane.wanted() and self._lanes.get(cdn_id) is lane:
                del self._lanes[cdn_id]

    async def _take(self, cdn_id: str, token: str, size: int) -> _Taken:
        keys = [
            self._key("l", cdn_id),
            self._key("p", cdn_id),
            self._key("w", cdn_id),
            self._key("f", cdn_id),
            self._key("e"),
            self._key("n"),
        ]
        raw = await self._eval("take", keys, [cdn_id, token, _ms(self._lease_ttl), str(size)])
        return _Taken(raw)

    async def _fix(self, cdn_id: str, token: str, taken: _Taken) -> None:
        """Fix a batch taken as a size (the seal script): ``taken`` becomes kind 1 with its
        paths, or stays kind 2 (the lease was lost, or nothing is pending). The script's
        answer is read even if the caller is cancelled meanwhile, so a batch fixed in Redis
        is known to the drainer's cleanup (given back unsent)."""
        keys = [
            self._key("l", cdn_id),
            self._key("p", cdn_id),
            self._key("w", cdn_id),
            self._key("f", cdn_id),
            self._key("n"),
        ]
        call = asyncio.ensure_future(self._eval("seal", keys, [token, str(taken.size)]))

        def read(task: asyncio.Future[Any]) -> None:
            if not task.cancelled() and task.exception() is None and int(task.result()[0]) == 1:
                taken.fix(task.result())

        call.add_done_callback(read)
        try:
            await asyncio.shield(call)
        except asyncio.CancelledError:
            await asyncio.wait((call,), timeout=_SOCKET_TIMEOUT)
            raise

    async def _send_leased(
        self, session: Session, lane: _Lane, hold: _Hold, taken: _Taken, fatal: CDNError | None
    ) -> _Outcome | _Unsent | None:
        """Send a batch, renewing the lease meanwhile.

        Returns its outcome; ``_Unsent`` when nothing was sent; None when it may have been
        sent but no outcome is known (then ``hold.guard`` is set and the lease left to expire).
        While the request waits for its budgets (nothing sent yet), the send is dropped as
        soon as this process no longer needs the endpoint drained; once sealed it is waited
        for. Cancelled (the queue closes), a sealed batch is left under its lease.
        """
        cdn_id = lane.cdn_id
        seal = _Seal(taken, lambda: self._fix(cdn_id, hold.token, taken))
        if fatal is not None:  # the API said every batch of this endpoint fails: none is sent
            if taken.kind == 2:
                try:
                    await seal.fix()
                except RedisError:
                    return _Unsent(self._poll)
            return _Outcome(fatal, sent=False) if taken.kind == 1 else _Unsent(0.0)
        loop = asyncio.get_running_loop()
        renew = loop.create_task(self._renew(cdn_id, hold.token))
        send = loop.create_task(self._send(session, cdn_id, seal, "high" if taken.high else None))
        try:
            while not send.done():
                if not seal.sealed and not lane.wanted():
                    send.cancel()  # still waiting for its budgets: nothing was sent
                    await asyncio.wait((send,))
                    break
                await lane.nap(self._poll, send)
        except asyncio.CancelledError:
            # The queue closes. A request on the wire is not aborted by the session (it may
            # still be stamped): its batch stays under the lease, unless its outcome is in.
            hold.guard = seal.sealed
            if not send.done():
                send.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait((send,), timeout=_SOCKET_TIMEOUT)
                done = send.done() and not send.cancelled() and send.exception() is None
                result = send.result() if done else None
                if isinstance(result, _Outcome):
                    hold.guard = True  # until the outcome is recorded
                    if await asyncio.wait_for(
                        self._complete(cdn_id, hold, taken, result), _SOCKET_TIMEOUT
                    ):
                        self._deliver(taken, result)
                elif hold.guard:
                    await asyncio.wait_for(self._abandon(cdn_id, hold.token), _SOCKET_TIMEOUT)
            raise
        finally:
            renew.cancel()
            await asyncio.gather(renew, return_exceptions=True)
        result = _Unsent(0.0) if send.cancelled() else send.result()
        if result is None:
            hold.guard = True
            await self._abandon(cdn_id, hold.token)
        return result

    async def _renew(self, cdn_id: str, token: str) -> None:
        while True:
            await asyncio.sleep(self._lease_ttl / 3)
            try:
                ours = await self._eval(
                    "lease", [self._key("l", cdn_id)], [token, _ms(self._lease_ttl)]
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

    async def _abandon(self, cdn_id: str, token: str) -> None:
        """Leave a batch that may have been sent under its lease, renewed one last time: the
        next drainer takes it over (sends it again) once the lease expires, ``lease_ttl``
        from now, by when the request on the wire has been answered or dropped."""
        logger.warning(
            "purge queue: endpoint %s: a batch may have been sent but its outcome is unknown "
            "(the client was closed or its retry refused); it is sent again once its lease "
            "expires in %.1f s (at least once)",
            cdn_id,
            self._lease_ttl,
        )
        with contextlib.suppress(RedisError):
            await self._eval("lease", [self._key("l", cdn_id)], [token, _ms(self._lease_ttl)])

    async def _send(
        self, session: Session, cdn_id: str, seal: _Seal, priority: Priority | None
    ) -> _Outcome | _Unsent | None:
        """One batch's request: its outcome; ``_Unsent`` (seconds to wait before trying
        again) when this client sent nothing; None when it may have sent it but ended with no
        outcome. The session retries what is safe, a 409 (an identical purge in progress)
        included, within the client's ``max_retries``."""
        try:
            resp = await session.request(
                "DELETE",
                f"/v2/cdn/endpoints/{cdn_id}/cache",
                endpoint_id=cdn_id,
                files=seal.taken.size,
                seal=seal,
                priority=priority,
                retry_conflict=True,
            )
        except _OUTCOMES as exc:
            return _Outcome(exc, sent=True)
        except CDNError as exc:
            if seal.sealed:
                return None
            logger.info("purge queue: endpoint %s: batch not sent, left queued (%s)", cdn_id, exc)
            return _Unsent(_later(exc))
        except Exception as exc:  # a bug or a misused session: still report the paths
            return _Outcome(
                CDNError(f"purge request failed: {type(exc).__name__}: {exc}"), sent=seal.sealed
            )
        logger.info("purge queue: endpoint %s: purged %d paths", cdn_id, len(seal.taken.paths))
        return _Outcome(None, sent=True, wait=resp.budget_wait)

    async def _complete(self, cdn_id: str, hold: _Hold, taken: _Taken, outcome: _Outcome) -> bool:
        """Record a batch's outcome for its tickets; False if it was no longer in flight (or
        Redis could not be reached: then the batch stays in flight under the lease, which
        ``hold`` now guards)."""
        keys = [
            self._key("f", cdn_id),
            self._key("l", cdn_id),
            self._key("p", cdn_id),
            self._key("e"),
        ]
        keys.extend(self._key("r", t) for t in taken.seqs)
        args = [
            taken.batch_id,
            hold.token,
            outcome.to_json(),
            _ms(self._result_ttl),
            _ms(self._lease_ttl),
            cdn_id,
            *taken.seqs,
        ]
        nap = self._poll
        for _ in range(5):
            try:
                done = bool(int(await self._eval("complete", keys, args)))
            except RedisError as exc:
                logger.warning("purge queue: cannot record a batch's outcome (%s); retrying", exc)
                await asyncio.sleep(nap)
                nap = min(nap * 2, _MAX_NAP)
                continue
            hold.guard = False
            return done
        # Left in flight under the lease: sent again once the lease expires.
        hold.guard = True
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

    async def _give_back(self, cdn_id: str, token: str, batch_id: str) -> None:
        """Release the lease, the batch in flight marked unsent (it never reached the wire):
        the next drainer sends it at once. ``batch_id`` "": whichever batch the lease holds."""
        with contextlib.suppress(RedisError):
            await self._eval(
                "giveback", [self._key("l", cdn_id), self._key("f", cdn_id)], [token, batch_id]
            )

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
        return {name: self._redis.register_script(source(name)) for name in NAMES}

    async def _eval(self, name: str, keys: Sequence[str], args: Sequence[str]) -> Any:
        try:
            return await _call(self._scripts[name](keys=keys, args=args))
        except AskError:  # also MovedError: the URL names a Redis Cluster node
            if not self._may_upgrade:
                raise
            self._may_upgrade = False
            logger.info("the Redis URL names a Redis Cluster node; using a cluster client")
            old, self._redis = self._redis, self._make_client(True)
            self._scripts = self._register()
            await old.aclose()
            return await _call(self._scripts[name](keys=keys, args=args))
