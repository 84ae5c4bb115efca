"""``RedisLink``: the store's link to Redis. It owns the connection and the mirror, and does
every script call (re-seeding first when Redis may have lost this process's state, and
noticing a new epoch), reachability, the re-seed itself, the heartbeat, and the background
tasks that write releases, syncs and pauses. The package docstring has the design;
``RedisBudgetStore`` (``_store.py``) holds one and admits through it."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from .._logs import logger
from . import _scripts
from ._connection import Connection, ms, ttl_ms
from ._errors import UNAVAILABLE, Unavailable, outage_reason
from ._lease import RedisLease
from ._mirror import Mirror

if TYPE_CHECKING:
    from ._scripts import Call, R

# While Redis is unreachable, how often the probe tries it (at most; heartbeat_interval if
# shorter).
_PROBE_INTERVAL = 0.1
# The most a release script takes off Redis's clock for the time between the answer and the
# call (see ``_release_remote``): normally well under a millisecond.
_MAX_RELEASE_AGE = 0.05


class RedisLink:
    """Keeps Redis in step with this process's mirror (module docstring).

    Args:
        conn: The client and the budget scripts (closed by ``aclose``).
        prefix: ``{<namespace>:<token id>}``, the hash tag of every key.
        inflight_timeout, heartbeat_interval, recovery_grace: As ``RedisBudgetStore``'s.
        marker_ttl: How long the epoch marker outlives its last use.
        clock: Monotonic seconds (the mirror's and the waits' clock).
        wake: Wakes every queued acquire (Redis answers again, a release reached Redis).
        while_down: What happens while Redis is unreachable, for the log line.
    """

    def __init__(
        self,
        conn: Connection,
        *,
        prefix: str,
        inflight_timeout: float,
        heartbeat_interval: float,
        recovery_grace: float,
        marker_ttl: float,
        clock: Callable[[], float],
        wake: Callable[[], None],
        while_down: str,
    ) -> None:
        self._conn = conn
        self._prefix = prefix
        self._inflight_ms = ms(inflight_timeout)
        self._heartbeat_interval = heartbeat_interval
        self._probe_interval = min(heartbeat_interval, _PROBE_INTERVAL)
        self._grace_ms = ms(recovery_grace)
        self._recovery_grace = recovery_grace
        self._marker_ttl = marker_ttl
        self._inflight_timeout = inflight_timeout
        self._clock = clock
        self._wake = wake
        self._while_down = while_down
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._restore_lock = asyncio.Lock()
        self._needs_restore = False
        self._closed = False
        #: What this process put into Redis (re-seeded after a restart or an outage), and per
        #: key the ledger of its own units (admits while Redis is away).
        self.mirror = Mirror()
        #: The id of the state Redis holds, as last seen (None: not yet asked).
        self.epoch: str | None = None
        #: The longest period acquired (the epoch marker outlives it).
        self.max_period = 0.0
        #: Redis unreachable since this clock time (None: reachable as far as we know).
        self.down_since: float | None = None

    @property
    def client(self) -> aioredis.Redis | RedisCluster:
        """The client in use (a cluster client after a ``MOVED`` upgrade)."""
        return self._conn.client

    # -- reachability -------------------------------------------------------------------------

    def mark_down(self, exc: Unavailable) -> None:
        """A call failed: Redis is unreachable from ``exc.started`` until the probe's re-seed
        gets through."""
        self._needs_restore = True
        if self.down_since is None:
            self.down_since = exc.started
            logger.warning(
                "Redis unreachable (%s); %s: other processes' spending is not counted",
                exc,
                self._while_down,
            )
        self.ensure_heartbeat()

    def _mark_up(self) -> None:
        if self.down_since is not None:
            logger.warning(
                "Redis reachable again after %.1f s; budgets are shared again",
                self._clock() - self.down_since,
            )
            self.down_since = None
            self._wake()

    # -- Redis calls ----------------------------------------------------------------------------

    def _header(self) -> _scripts.Header:
        ttl = max(self._marker_ttl, self.max_period + self._inflight_timeout + self._recovery_grace)
        return _scripts.Header(
            new_epoch=secrets.token_hex(8),
            grace_ms=self._grace_ms,
            marker_ms=ttl_ms(ttl),
            inflight_ms=self._inflight_ms,
        )

    async def call(self, call: Call[R]) -> R:
        """Run one script operation, re-seeding first if Redis may have lost our state.

        Raises:
            Unavailable: Redis could not answer within ``call_timeout`` (the mirror will be
                re-seeded later).
        """
        if self._needs_restore and call.op != "restore":
            try:
                await self._restore()
            except Unavailable as exc:
                exc.sent = False  # this operation never left
                raise
        keys = _scripts.keys(self._prefix, call.claims)
        started = self._clock()
        try:
            reply = await self._conn.script(call.op, keys, call.argv(self._header()), call.decode)
        except (*UNAVAILABLE, ResponseError) as exc:
            why = outage_reason(exc, self._conn.client)
            if why is None:
                raise  # a real error (a script bug, no permission): not an outage
            self._needs_restore = True
            raise Unavailable(why, sent=True, started=started) from exc
        self._mark_up()
        if self.epoch is None:
            self.epoch = reply.epoch
        elif reply.epoch != self.epoch:
            logger.warning(
                "Redis lost the shared budget state (restart?); re-seeding this process's "
                "requests and admitting nothing for %.1f s while the others do",
                self._recovery_grace,
            )
            self.epoch = reply.epoch
            self._needs_restore = True
            if call.op != "restore":
                self.spawn(self._restore_quiet())
        return reply

    def write_later(self, call: Call[Any]) -> None:
        """A sync or pause: written in a task, or kept in the mirror for the re-seed."""
        if self.down_since is not None:
            self._needs_restore = True
            return
        self.spawn(self._call_quiet(call))

    def send_release(self, lease: RedisLease, *, give_back: bool) -> None:
        """A release or give-back the mirror already holds: written in a task, or with the
        re-seed while Redis is unreachable."""
        if self.down_since is not None:
            if give_back:
                self.mirror.give_backs[lease.id] = lease
            self._needs_restore = True
        else:
            self.spawn(self._release_remote(lease, give_back=give_back))

    async def _call_quiet(self, call: Call[Any]) -> None:
        """A fire-and-forget call (sync, pause): the mirror keeps it for a re-seed on failure."""
        try:
            await self.call(call)
        except Unavailable as exc:
            logger.debug("budget %s not written to Redis (%s); kept for re-seeding", call.op, exc)
            self.mark_down(exc)
        except Exception:
            logger.exception("budget %s failed in Redis", call.op)
        self.ensure_heartbeat()

    async def _release_remote(self, lease: RedisLease, *, give_back: bool) -> None:
        # The units count from one period after the answer, not after this script runs: the
        # script subtracts how long ago the answer arrived, measured now, before the call is
        # sent (so short of the true age by the trip to Redis: the safe side). Capped: a
        # stalled loop's release is stamped late rather than trust a long local interval.
        age = 0.0
        if not give_back and lease.released_at is not None:
            age = min(max(self._clock() - lease.released_at, 0.0), _MAX_RELEASE_AGE)
        try:
            await self.call(_scripts.release(lease.id, lease.parts, give_back=give_back, age=age))
        except Unavailable as exc:
            logger.debug("release not written to Redis (%s); kept for re-seeding", exc)
            if give_back:
                self.mirror.give_backs[lease.id] = lease
            self.mark_down(exc)
        except Exception:
            logger.exception("budget release failed in Redis")
        else:
            # A waiter of this process that asked while this release was on its way heard
            # "in flight, ask again later": the units are now counted as released, ask now.
            self._wake()
        self.ensure_heartbeat()

    async def _restore_quiet(self) -> None:
        try:
            await self._restore()
        except Unavailable as exc:
            self.mark_down(exc)

    async def _restore(self) -> None:
        """Re-seed Redis with this process's mirror (idempotent; see the package docstring)."""
        async with self._restore_lock:
            if not self._needs_restore:
                return
            self._needs_restore = False
            now = self._clock()
            self.mirror.prune(now)
            given = dict(self.mirror.give_backs)
            seeds = self.mirror.seeds(now)
            try:
                await self.call(_scripts.restore(seeds))
            except BaseException:
                self._needs_restore = True
                raise
            for lease_id in given:
                self.mirror.give_backs.pop(lease_id, None)
            if seeds:
                logger.info("re-seeded %d budget keys in Redis", len(seeds))

    # -- mirror, heartbeat, tasks ------------------------------------------------------------------

    def ensure_heartbeat(self) -> None:
        """Run the heartbeat (it stops itself once this process holds nothing in Redis)."""
        if self._closed or (self._heartbeat is not None and not self._heartbeat.done()):
            return
        self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def _heartbeat_loop(self) -> None:
        """While this process has state in Redis: keep its in-flight requests alive and
        notice a restart (then re-seed). While Redis is unreachable: probe it (a re-seed)."""
        while not self._closed:
            down = self.down_since is not None
            await asyncio.sleep(self._probe_interval if down else self._heartbeat_interval)
            self.mirror.prune(self._clock())
            down = self.down_since is not None
            if not down and self.mirror.empty() and not self._needs_restore:
                return
            try:
                if down or self._needs_restore:
                    self._needs_restore = True
                    await self._restore()
                    continue
                await self.call(_scripts.heartbeat(self.mirror.heartbeat_members()))
            except Unavailable as exc:
                logger.debug("budget heartbeat: Redis unreachable (%s)", exc)
                self.mark_down(exc)
            except Exception:
                logger.exception("budget heartbeat failed")

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in a task that ``aclose`` waits for."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop the heartbeat, finish pending calls (each bounded by ``call_timeout``), close
        the connection."""
        self._closed = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self._conn.aclose()
