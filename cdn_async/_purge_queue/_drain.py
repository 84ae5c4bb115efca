"""The draining half of ``RedisPurgeQueue`` (its base class) and its Redis client: take an
endpoint's batch under its lease, send it, complete it for every waiting ticket."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

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
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
)
from ._scripts import NAMES, source
from ._ticket import PurgeTicket, _Outcome, _Taken

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from .._session import Session

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
        return {name: self._redis.register_script(source(name)) for name in NAMES}

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
