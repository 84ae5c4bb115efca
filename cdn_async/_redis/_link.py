"""The store's link to Redis: every script call (re-seeding first when Redis may have lost
this process's state, and noticing a new epoch), reachability, the re-seed itself, the
heartbeat, and the background tasks that write releases, syncs and pauses. The package
docstring has the design; ``RedisBudgetStore`` (``_store.py``) builds on this class."""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Callable, Collection, Coroutine
from typing import TYPE_CHECKING, Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from .._logs import logger
from . import _scripts
from ._connection import Connection
from ._errors import Unavailable
from ._lease import RedisLease
from ._mirror import Mirror

if TYPE_CHECKING:
    from ._scripts import Call, R


#: Seconds after which a request that is neither answered nor kept alive by its process's
#: heartbeat counts as answered (its process died); it then frees ``period`` later.
DEFAULT_INFLIGHT_TIMEOUT = 60.0
#: How long a queued acquire sleeps, at least, before asking Redis again while only an answer
#: (maybe in another process) can free its slot.
IN_FLIGHT_POLL_INTERVAL = 0.05
#: How often a process with live state in Redis refreshes its in-flight deadlines and checks
#: that Redis did not lose its state.
DEFAULT_HEARTBEAT_INTERVAL = 1.0
#: After Redis lost its state, how long nothing is admitted while processes re-seed theirs.
DEFAULT_RECOVERY_GRACE = 3.0
#: How long Redis may be unreachable before ``acquire`` raises (``fallback="error"``).
DEFAULT_UNAVAILABLE_TIMEOUT = 5.0
#: The longest one Redis call may take before Redis counts as unreachable.
DEFAULT_CALL_TIMEOUT = 0.5
#: TTL of the epoch marker: an empty Redis younger than this is taken as a restart.
DEFAULT_MARKER_TTL = 86400.0

# While Redis is unreachable, how often the probe tries it (at most; heartbeat_interval if
# shorter).
_PROBE_INTERVAL = 0.1
# The most a release script takes off Redis's clock for the time between the answer and the
# call (see ``_release_remote``): normally well under a millisecond.
_MAX_RELEASE_AGE = 0.05


class RedisLink:
    """Keeps Redis in step with this process's mirror (module docstring). The arguments are
    ``RedisBudgetStore``'s, which documents them; they are validated here.

    Raises:
        ValueError: An option is out of range.
    """

    def __init__(
        self,
        redis: aioredis.Redis | RedisCluster | str,
        *,
        namespace: str,
        token_id: str | None,
        fallback: Literal["error", "memory"],
        cluster: bool | None,
        inflight_timeout: float,
        heartbeat_interval: float,
        recovery_grace: float,
        unavailable_timeout: float,
        call_timeout: float,
        marker_ttl: float,
        clock: Callable[[], float] | None,
    ) -> None:
        if fallback not in ("error", "memory"):
            raise ValueError(f"fallback must be 'error' or 'memory', got {fallback!r}")
        for name, value in (
            ("inflight_timeout", inflight_timeout),
            ("heartbeat_interval", heartbeat_interval),
            ("call_timeout", call_timeout),
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
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn = Connection(
            redis, cluster=cluster, call_timeout=call_timeout, spawn=self._spawn
        )
        self._prefix = f"{{{namespace}:{tid}}}"
        self._fallback = fallback
        self._inflight_ms = _scripts.ms(inflight_timeout)
        self._heartbeat_interval = heartbeat_interval
        self._probe_interval = min(heartbeat_interval, _PROBE_INTERVAL)
        self._grace_ms = _scripts.ms(recovery_grace)
        self._unavailable_timeout = unavailable_timeout
        self._marker_ttl = marker_ttl
        self._inflight_timeout = inflight_timeout
        self._recovery_grace = recovery_grace
        self._clock: Callable[[], float] = clock if clock is not None else self._loop_time
        self._closed = False
        self._heartbeat: asyncio.Task[None] | None = None
        # What this process put into Redis (re-seeded after a restart or an outage), and per
        # key the ledger of its own units (admits while Redis is away).
        self._mirror = Mirror()
        self._epoch: str | None = None
        self._needs_restore = False
        self._restore_lock = asyncio.Lock()
        self._max_period = 0.0  # the longest period acquired (the epoch marker outlives it)
        # Redis unreachable since this loop time (None: reachable as far as we know).
        self._down_since: float | None = None

    # -- what the store provides -------------------------------------------------------------

    def _wake_all(self) -> None:
        """Wake every queued acquire (Redis answers again)."""

    def _busy_keys(self) -> Collection[str]:
        """Keys that acquires wait on (their ledgers are kept)."""
        return ()

    @property
    def _redis(self) -> aioredis.Redis | RedisCluster:
        """The client in use (a cluster client after a ``MOVED`` upgrade)."""
        return self._conn.client

    @property
    def _give_backs(self) -> dict[str, RedisLease]:
        return self._mirror.give_backs

    # -- clock ----------------------------------------------------------------------------------

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _loop_time(self) -> float:
        return self._get_loop().time()

    # -- reachability -------------------------------------------------------------------------

    def _mark_down(self, exc: Unavailable) -> None:
        self._needs_restore = True
        if self._down_since is None:
            self._down_since = exc.started
            if self._fallback == "memory":
                then = (
                    "admitting with in-process budgets (this process's own units, pauses "
                    "and holds) until it answers again"
                )
            else:
                then = f"acquires wait for it, then raise after {self._unavailable_timeout:.1f} s"
            logger.warning(
                "Redis unreachable (%s); %s: other processes' spending is not counted",
                exc,
                then,
            )
        self._ensure_heartbeat()

    def _mark_up(self) -> None:
        if self._down_since is not None:
            logger.warning(
                "Redis reachable again after %.1f s; budgets are shared again",
                self._clock() - self._down_since,
            )
            self._down_since = None
            self._wake_all()

    # -- Redis calls ----------------------------------------------------------------------------

    def _header(self) -> _scripts.Header:
        ttl = max(
            self._marker_ttl, self._max_period + self._inflight_timeout + self._recovery_grace
        )
        return _scripts.Header(
            new_epoch=secrets.token_hex(8),
            grace_ms=self._grace_ms,
            marker_ms=str(math.ceil(ttl * 1000)),
            inflight_ms=self._inflight_ms,
        )

    async def _eval(self, call: Call[R]) -> R:
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
        try:
            res = await self._conn.run(call.op, keys, call.argv(self._header()), self._clock())
        except Unavailable:
            self._needs_restore = True
            raise
        self._mark_up()
        reply = call.decode(res)
        if self._epoch is None:
            self._epoch = reply.epoch
        elif reply.epoch != self._epoch:
            logger.warning(
                "Redis lost the shared budget state (restart?); re-seeding this process's "
                "requests and admitting nothing for %.1f s while the others do",
                self._recovery_grace,
            )
            self._epoch = reply.epoch
            self._needs_restore = True
            if call.op != "restore":
                self._spawn(self._restore_quiet())
        return reply

    def _write_later(self, call: Call[Any]) -> None:
        """A sync or pause: written in a task, or kept in the mirror for the re-seed."""
        if self._down_since is not None:
            self._needs_restore = True
            return
        self._spawn(self._call_quiet(call))

    async def _call_quiet(self, call: Call[Any]) -> None:
        """A fire-and-forget call (sync, pause): the mirror keeps it for a re-seed on failure."""
        try:
            await self._eval(call)
        except Unavailable as exc:
            logger.debug("budget %s not written to Redis (%s); kept for re-seeding", call.op, exc)
            self._mark_down(exc)
        except Exception:
            logger.exception("budget %s failed in Redis", call.op)
        self._ensure_heartbeat()

    async def _release_remote(self, lease: RedisLease, *, give_back: bool) -> None:
        # The units count from one period after the answer, not after this script runs: the
        # script subtracts how long ago the answer arrived, measured now, before the call is
        # sent (so short of the true age by the trip to Redis: the safe side). Capped: a
        # stalled loop's release is stamped late rather than trust a long local interval.
        age = 0.0
        if not give_back and lease.released_at is not None:
            age = min(max(self._clock() - lease.released_at, 0.0), _MAX_RELEASE_AGE)
        try:
            await self._eval(_scripts.release(lease.id, lease._parts, give_back=give_back, age=age))
        except Unavailable as exc:
            logger.debug("release not written to Redis (%s); kept for re-seeding", exc)
            if give_back:
                self._mirror.give_backs[lease.id] = lease
            self._mark_down(exc)
        except Exception:
            logger.exception("budget release failed in Redis")
        else:
            # A waiter of this process that asked while this release was on its way heard
            # "in flight, ask again later": the units are now counted as released, ask now.
            self._wake_all()
        self._ensure_heartbeat()

    async def _restore_quiet(self) -> None:
        try:
            await self._restore()
        except Unavailable as exc:
            self._mark_down(exc)

    async def _restore(self) -> None:
        """Re-seed Redis with this process's mirror (idempotent; see the package docstring)."""
        async with self._restore_lock:
            if not self._needs_restore:
                return
            self._needs_restore = False
            now = self._clock()
            self._prune(now)
            given = dict(self._mirror.give_backs)
            seeds = self._mirror.seeds(now)
            try:
                await self._eval(_scripts.restore(seeds))
            except BaseException:
                self._needs_restore = True
                raise
            for lease_id in given:
                self._mirror.give_backs.pop(lease_id, None)
            if seeds:
                logger.info("re-seeded %d budget keys in Redis", len(seeds))

    # -- mirror, heartbeat, tasks ------------------------------------------------------------------

    def _prune(self, now: float) -> None:
        self._mirror.prune(now, self._busy_keys())

    def _ensure_heartbeat(self) -> None:
        if self._closed or (self._heartbeat is not None and not self._heartbeat.done()):
            return
        self._heartbeat = self._get_loop().create_task(self._heartbeat_loop())

    async def _heartbeat_loop(self) -> None:
        """While this process has state in Redis: keep its in-flight requests alive and
        notice a restart (then re-seed). While Redis is unreachable: probe it (a re-seed)."""
        while not self._closed:
            down = self._down_since is not None
            await asyncio.sleep(self._probe_interval if down else self._heartbeat_interval)
            self._prune(self._clock())
            down = self._down_since is not None
            if not down and self._mirror.empty() and not self._needs_restore:
                return
            try:
                if down or self._needs_restore:
                    self._needs_restore = True
                    await self._restore()
                    continue
                await self._eval(_scripts.heartbeat(self._mirror.heartbeat_members()))
            except Unavailable as exc:
                logger.debug("budget heartbeat: Redis unreachable (%s)", exc)
                self._mark_down(exc)
            except Exception:
                logger.exception("budget heartbeat failed")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._get_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
