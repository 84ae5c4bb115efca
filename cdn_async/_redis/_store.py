"""``RedisBudgetStore``: the ``BudgetStore`` protocol over the Lua operations, the mirror and
the connection (the package docstring has the design)."""

from __future__ import annotations

import asyncio
import itertools
import math
import secrets
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from .._limits import (
    BudgetState,
    Claim,
    Lease,
    Priority,
    RateLimits,
    merge_claims,
    priority_lead,
)
from .._local_queue import Group, LocalQueue, line_estimate
from .._logs import logger
from ..errors import CDNError
from . import _scripts
from ._connection import Connection
from ._errors import BudgetStoreUnavailableError, Unavailable, paused_error
from ._lease import RedisLease
from ._link import RedisLink

if TYPE_CHECKING:
    from .._limits import BudgetStore
    from ._scripts import AcquireReply


#: Seconds after which a request that is neither answered nor kept alive by its process's
#: heartbeat counts as answered (its process died); it then frees ``period`` later.
_DEFAULT_INFLIGHT_TIMEOUT = 60.0
#: How often a process with live state in Redis refreshes its in-flight deadlines and checks
#: that Redis did not lose its state.
_DEFAULT_HEARTBEAT_INTERVAL = 1.0
#: After Redis lost its state, how long nothing is admitted while processes re-seed theirs.
_DEFAULT_RECOVERY_GRACE = 3.0
#: How long Redis may be unreachable before ``acquire`` raises (``fallback="error"``).
_DEFAULT_UNAVAILABLE_TIMEOUT = 5.0
#: The longest one Redis call may take before Redis counts as unreachable.
_DEFAULT_CALL_TIMEOUT = 0.5
#: TTL of the epoch marker: an empty Redis younger than this is taken as a restart.
_DEFAULT_MARKER_TTL = 86400.0
#: How long a queued acquire sleeps, at least, before asking Redis again while only an answer
#: (maybe in another process) can free its slot.
_IN_FLIGHT_POLL_INTERVAL = 0.05
# A sleep never shorter than this (Redis time is in ms; avoid spinning on rounding).
_MIN_SLEEP = 0.0005
# A sleep never longer than this: a sync hold or pause may be replaced by a shorter one.
_MAX_SLEEP = 1.0


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


def _check_options(
    *,
    fallback: str,
    namespace: str,
    token_id: str | None,
    **numbers: float,
) -> None:
    """Refuse an option out of range (``RedisBudgetStore``'s arguments).

    Raises:
        ValueError: Which option, and why.
    """
    if fallback not in ("error", "memory"):
        raise ValueError(f"fallback must be 'error' or 'memory', got {fallback!r}")
    for name, value in numbers.items():
        zero_ok = name in ("recovery_grace", "unavailable_timeout")
        if not (math.isfinite(value) and (value >= 0 if zero_ok else value > 0)):
            what = "a number >= 0" if zero_ok else "a positive number"
            raise ValueError(f"{name} must be {what}, got {value!r}")
    if numbers["inflight_timeout"] <= numbers["heartbeat_interval"]:
        raise ValueError("inflight_timeout must exceed heartbeat_interval")
    if any(ch in (token_id or "") + namespace for ch in "{}"):
        raise ValueError("namespace and token_id must not contain braces")


class RedisBudgetStore:
    """Budget windows kept in Redis, shared by every process that uses one API token.

    Pass it to ``CDNClient(budget_store=...)`` in every process (web workers, purge workers,
    hosts) with the same Redis and ``token_id``; together they never exceed a budget::

        from cdn_async import CDNClient
        from cdn_async.redis import RedisBudgetStore, token_id_for

        store = RedisBudgetStore("redis://localhost:6379/0", token_id=token_id_for(token))
        async with CDNClient(token, budget_store=store) as cdn:
            ...

    Redis Cluster: pass the URL of any node (``cluster=True`` makes a cluster client at once;
    the default switches to one on the first ``MOVED``), or a
    ``redis.asyncio.cluster.RedisCluster``. A token's keys share one hash tag, so each script
    runs on one node; a failover or restart of that node is an outage like any other.

    Within a process, acquires on the same key set queue in arrival order and only the head
    polls Redis; across processes, the first to ask when the units fit is admitted. What
    happens when Redis restarts, stalls or cannot be reached is in the package docstring
    (``cdn_async._redis``): no budget is exceeded across a restart; a lone process is exact
    across an outage with ``fallback="memory"``, and ``N`` processes spend at most ``N`` times
    a budget while Redis is away.

    Args:
        redis: A URL (the store makes, and closes, its own client, with ``call_timeout``
            socket timeouts), a ``redis.asyncio.Redis`` or a
            ``redis.asyncio.cluster.RedisCluster`` client (not closed by the store; its calls
            are bounded by ``call_timeout`` too).
        namespace: Prefix of every key (``{<namespace>:<token_id>}:...``).
        token_id: Which token's budgets these are, when several tokens share one Redis. Use
            ``token_id_for(token)``; never the token itself.
        fallback: What to do when Redis cannot be reached: ``"error"`` (default) raises
            ``BudgetStoreUnavailableError`` once it has been unreachable for
            ``unavailable_timeout`` s; ``"memory"`` admits at once from this process's own
            record of its units, pauses and holds (the rules of ``MemoryBudgetStore``),
            logging a WARNING, until Redis answers again.
        cluster: With a URL: ``True`` makes a Redis Cluster client (the URL of any node);
            ``None`` (default) makes a plain client and switches to a cluster client the first
            time Redis answers ``MOVED``; ``False`` never does.
        limits: The budgets the clients on this token use (default
            ``RateLimits.documented()``). Only which budgets are token-wide and counted per
            request is read, to know which need no hold after a restart (package docstring).
        inflight_timeout: A request whose process stops heartbeating counts as answered this
            many seconds after its last heartbeat (its slot frees ``period`` after that).
            Must exceed ``heartbeat_interval``.
        heartbeat_interval: How often a process with state in Redis refreshes its in-flight
            deadlines and checks that Redis kept its state.
        recovery_grace: After Redis lost its state (restart), nothing is admitted for this
            long, so every process can re-seed its requests. Must exceed ``heartbeat_interval``
            plus a reconnect; 0 turns the wait off (then only processes that saw the outage
            re-seed before admitting).
        unavailable_timeout: How long Redis may be unreachable before ``acquire`` raises
            (``fallback="error"``).
        call_timeout: The longest one Redis call may take; a slower one counts as Redis being
            unreachable (a stalled server).
        clock: Monotonic seconds for this process's own waits and mirror; default the running
            loop's ``time``. Windows in Redis are stamped with Redis's clock.

    Raises:
        ValueError: An option is out of range.
    """

    # ``_restart_hold`` and ``_marker_ttl`` are for tests and a Redis known to be new, not
    # documented as options. After Redis lost its state, a budget that no other budget of the
    # request bounds admits nothing until one of its periods has passed since Redis started
    # (the units of processes that are gone are unknown); ``_restart_hold=False`` skips that,
    # so a restart may then admit a period's worth of requests twice. ``_marker_ttl``: how
    # long the epoch marker outlives its last use (an empty Redis within it is a restart).
    def __init__(
        self,
        redis: aioredis.Redis | RedisCluster | str,
        *,
        namespace: str = "cdn-async",
        token_id: str | None = None,
        fallback: Literal["error", "memory"] = "error",
        cluster: bool | None = None,
        limits: RateLimits | None = None,
        inflight_timeout: float = _DEFAULT_INFLIGHT_TIMEOUT,
        heartbeat_interval: float = _DEFAULT_HEARTBEAT_INTERVAL,
        recovery_grace: float = _DEFAULT_RECOVERY_GRACE,
        unavailable_timeout: float = _DEFAULT_UNAVAILABLE_TIMEOUT,
        call_timeout: float = _DEFAULT_CALL_TIMEOUT,
        clock: Callable[[], float] | None = None,
        _restart_hold: bool = True,
        _marker_ttl: float = _DEFAULT_MARKER_TTL,
    ) -> None:
        _check_options(
            fallback=fallback,
            namespace=namespace,
            token_id=token_id,
            inflight_timeout=inflight_timeout,
            heartbeat_interval=heartbeat_interval,
            recovery_grace=recovery_grace,
            unavailable_timeout=unavailable_timeout,
            call_timeout=call_timeout,
            marker_ttl=_marker_ttl,
        )
        self._fallback = fallback
        self._unavailable_timeout = unavailable_timeout
        self._clock: Callable[[], float] = clock if clock is not None else _loop_time
        self._closed = False
        self._prefix = f"{{{namespace}:{token_id if token_id is not None else 'default'}}}"
        self._queue = LocalQueue()
        self._link = RedisLink(
            Connection(
                redis, cluster=cluster, call_timeout=call_timeout, scripts=_scripts.sources()
            ),
            prefix=self._prefix,
            inflight_timeout=inflight_timeout,
            heartbeat_interval=heartbeat_interval,
            recovery_grace=recovery_grace,
            marker_ttl=_marker_ttl,
            clock=self._clock,
            wake=self._queue.wake_all,
            while_down=(
                "admitting with in-process budgets (this process's own units, pauses and holds)"
                " until it answers again"
                if fallback == "memory"
                else f"acquires wait for it, then raise after {unavailable_timeout:.1f} s"
            ),
        )
        self._mirror = self._link.mirror
        self._restart_holds = _scripts.RestartHolds(
            limits if limits is not None else RateLimits.documented(), _restart_hold
        )
        self._ids, self._id_prefix = itertools.count(), secrets.token_hex(6) + "-"
        self._lost_warned: str | None = None  # epoch whose restart hold was logged
        self._answered: dict[str, float] = {}  # key -> admission of the last settled (sync)

    def __repr__(self) -> str:
        # The prefix names the namespace and token id (a hash), never a password or token.
        return f"<RedisBudgetStore {self._prefix} fallback={self._fallback!r}>"

    # -- the BudgetStore protocol ----------------------------------------------------------------

    async def acquire(
        self,
        claims: Sequence[Claim],
        *,
        max_wait: float | None = None,
        priority: Priority = "normal",
    ) -> RedisLease:
        """Wait until every claim fits in Redis, then take them all at once.

        ``priority`` orders this process's calls for the same budgets, as in the in-process
        store (higher first, arrival order within a level, none starved); across processes,
        whichever asks first when units free is admitted (see docs/design.md).

        One script call (one round trip) per attempt. Acquires on the same key set queue
        locally in arrival order; only the head asks Redis, sleeping what the script says is
        left, counted from when it asked (at least 50 ms when only an answer can free the
        slot, and waking at once when this process gets an answer or its release reaches
        Redis).

        Args:
            claims: What the request takes, one claim per budget key (repeated keys add up).
            max_wait: The longest the caller will wait for a key paused by a 429; None: any.

        Returns:
            The lease to hand to ``release`` (or ``give_back``) when the attempt is over.

        Raises:
            RateLimitedError: A key is paused for longer than ``max_wait``.
            ValidationError: A claim has fewer than 1 unit or more than its limit.
            BudgetStoreUnavailableError: Redis has been unreachable for
                ``unavailable_timeout`` s (with ``fallback="error"``).
            CDNError: The store is closed.
        """
        if self._closed:
            raise CDNError("budget store closed")
        parts = merge_claims(claims)  # the same rule as the in-process store
        for c, _ in parts:
            self._mirror.ledger(c)
        self._check_local_pause(parts, max_wait)
        return await self._queue.run(
            tuple(c.key for c, _ in parts),
            asyncio.get_running_loop().time() - priority_lead(claims, priority),
            {c.key: u for c, u in parts},
            lambda group: self._acquire_head(tuple(claims), parts, max_wait, group),
        )

    def release(self, lease: Lease) -> None:
        """The request's answer (or failure) arrived: its units free ``period`` s from now.

        The Redis call runs in a task (``aclose`` waits for it) and takes the time since this
        call (up to 50 ms, measured before it is sent) off Redis's clock, so the units free a
        period after now, not after the script ran; this process's mirror records the release
        at once, so a restart or an outage cannot lose it. Idempotent, and a no-op after
        ``give_back``.

        Args:
            lease: A lease this store returned from ``acquire``.

        Raises:
            ValueError: ``lease`` did not come from this store.
        """
        self._finish(lease, give_back=False)

    def give_back(self, lease: Lease) -> None:
        """The request was never sent, or the server refused it with a 429 without counting
        it: its units are uncounted at once (here and in Redis), not one period from now.

        Idempotent, and a no-op after ``release``. Written to Redis in a task, like
        ``release``; while Redis is unreachable it waits in the mirror for the re-seed.

        Args:
            lease: A lease this store returned from ``acquire``.

        Raises:
            ValueError: ``lease`` did not come from this store.
        """
        self._finish(lease, give_back=True)

    def sync(self, claim: Claim, remaining: int, reset_after: float, refused: bool = False) -> None:
        """Apply server headers for every process: until ``reset_after`` s from now (at most
        ``claim.period``), admit at most ``remaining`` more units on ``claim.key``.

        As in ``MemoryBudgetStore``: when the server counts more than Redis holds (in flight
        and released, over all processes), the difference is held until the reset; a live
        hold is raised, never lowered. Unlike it, requests are not sent one at a time after a
        refusal or while others' units are held (``refused`` is accepted and not used):
        processes sharing Redis see each other's units exactly, so only clients outside the
        store can be misread.

        The server counted at its stamp, which came after the answered request was admitted;
        units that left the windows since that admission may have been in its count, so they
        are not taken for another client's (else one unit expiring during a round trip would
        hold a unit back for a whole period), as in ``SQLiteBudgetStore``. The answered request
        is the one this process released (or gave back) last on the key: the session settles
        a request, then applies its headers.

        Args:
            claim: The claim the headers describe.
            remaining: ``ratelimit-remaining``.
            reset_after: Seconds from now until ``ratelimit-reset``.
            refused: The answer was a 429.
        """
        since = self._answered.pop(claim.key, None)
        if self._closed:
            return
        reset_after = min(reset_after, claim.period)
        now = self._clock()
        self._mirror.sync(claim, remaining, reset_after, now)
        age = None if since is None else now - since
        self._link.write_later(_scripts.sync(claim, remaining, reset_after, age))

    def pause(self, claim: Claim, resume_after: float) -> None:
        """The server answered 429 for this key: every process admits nothing on it for
        ``resume_after`` s, capped at ``claim.period`` (extends, never shortens, a pause).

        Args:
            claim: The claim whose key the 429 concerns.
            resume_after: Seconds from now.
        """
        resume_after = min(resume_after, claim.period)
        if self._closed or resume_after <= 0:
            return
        self._mirror.pause(claim, resume_after, self._clock())
        self._queue.wake_all()
        self._link.write_later(_scripts.pause(claim, resume_after))

    def admission_delay(
        self, claims: Sequence[Claim], priority: Priority = "normal"
    ) -> tuple[float, str]:
        """How long, at least, a call with ``claims`` queued now at ``priority`` would wait,
        and on which budget (sync: it reads no Redis).

        Per key, as ``MemoryBudgetStore.admission_delay`` does, from what this process knows:
        its own units, the holds and pauses its answers set (its mirror), and the units of its
        own queued calls that go before this one; and no sooner than Redis last said the head
        of the same budgets could fit, when that head goes before this call. Other processes'
        units and calls can only make the wait longer: a lower bound, so a call is not
        refused early, and ``BudgetWaitTimeout.retry_after`` is never None.

        Returns:
            ``(seconds, budget name)``; ``(0.0, "")`` when it would be admitted at once.
        """
        loop_now = asyncio.get_running_loop().time()
        return line_estimate(
            self._queue.groups,
            merge_claims(claims, to_fit=False),
            loop_now - priority_lead(claims, priority),
            loop_now,
            self._clock(),
            lambda c: self._mirror.local.get(c.key),
        )

    def snapshot(self) -> dict[str, BudgetState]:
        """This process's view of its keys (sync: it reads no Redis).

        ``used`` counts this process's own units (in flight and unexpired) plus what its
        answers' headers said others spent (sync holds), ``waiters`` its own queued acquires
        and ``paused_for`` the pauses it knows of. Other processes' units are in Redis only.

        Returns:
            ``{key: BudgetState}`` for every key this process holds units on or waits for.
        """
        now = self._clock()
        self._mirror.prune(now)
        return self._mirror.snapshot(now, self._queue.waiters())

    async def aclose(self) -> None:
        """Finish pending Redis calls (each bounded by ``call_timeout``), stop the heartbeat,
        close the client if the store made it. Queued acquires fail with ``CDNError``; later
        calls raise or do nothing, as for ``MemoryBudgetStore``.
        """
        if self._closed:
            return
        self._closed = True
        self._queue.wake_all()
        await self._link.aclose()

    # -- acquiring --------------------------------------------------------------------------------

    def _finish(self, lease: Lease, *, give_back: bool) -> None:
        """``release`` or ``give_back``: in the mirror at once, in Redis in a task (or with
        the next re-seed while Redis is unreachable)."""
        if not isinstance(lease, RedisLease) or not lease.issued_by(self):
            raise ValueError(f"not a lease of this store: {lease!r}")
        parts = lease.end()
        if parts is None:
            return
        if self._closed:
            return
        if lease.admitted_at is not None:
            for c, _ in parts:
                self._answered[c.key] = lease.admitted_at
        if give_back:
            self._mirror.give_back(lease)
        else:
            lease.released_at = self._clock()
            self._mirror.release(lease, lease.released_at)
        self._queue.wake_all()
        self._link.send_release(lease, give_back=give_back)

    async def _acquire_head(
        self,
        claims: tuple[Claim, ...],
        parts: tuple[tuple[Claim, int], ...],
        max_wait: float | None,
        group: Group,
    ) -> RedisLease:
        while True:
            if self._closed:
                raise CDNError("budget store closed")
            group.check_passed()  # a call of an earlier virtual time goes first
            down = self._link.down_since
            if down is not None:
                if self._fallback == "memory":
                    got = await self._acquire_local(claims, parts, max_wait, group)
                    if got is not None:
                        return got
                    continue  # Redis answers again
                left = down + self._unavailable_timeout - self._clock()
                if left <= 0:
                    raise BudgetStoreUnavailableError(
                        f"Redis unreachable for {self._clock() - down:.1f} s; not admitting "
                        "requests, which could exceed a budget shared with other processes "
                        "(pass fallback='memory' to use in-process budgets)"
                    )
                await group.nap(
                    asyncio.get_running_loop(), min(left, _MAX_SLEEP)
                )  # woken when Redis answers
                continue
            lease = RedisLease(self._new_id(), claims, parts, self)
            loop = asyncio.get_running_loop()
            asked = loop.time()
            try:
                reply = await self._attempt(lease)
            except Unavailable as exc:
                self._link.mark_down(exc)
                continue
            if reply.admitted:
                return lease
            # Units in flight (``unknown``) free no sooner than a period after an answer that
            # had not come when the script ran.
            group.ready_at = asked + (
                max(reply.wait, min(c.period for c, _ in parts)) if reply.unknown else reply.wait
            )
            if max_wait is not None and reply.paused > max_wait:
                pidx = reply.paused_index
                raise paused_error(parts[pidx - 1][0] if pidx else parts[0][0], reply.paused)
            if reply.unknown:
                delay = max(reply.wait, _IN_FLIGHT_POLL_INTERVAL)
            else:
                # ``wait`` counts from when the script ran, after this call was sent: the units
                # free no sooner than ``asked + wait``. Asking again from then (the next call's
                # own trip out lands it just after) rather than ``wait`` after the reply saves
                # a round trip per wait; one that lands a little short is only refused again.
                delay = reply.wait - (loop.time() - asked)
            await group.nap(loop, min(max(delay, _MIN_SLEEP), _MAX_SLEEP))

    async def _attempt(self, lease: RedisLease) -> AcquireReply:
        """One acquire script call; the lease is in the mirror as soon as Redis may hold it."""
        task = asyncio.ensure_future(self._acquire_call(lease))
        try:
            reply = await asyncio.shield(task)
        except asyncio.CancelledError:
            # The script may still admit the lease: give it back, it was never sent.
            task.add_done_callback(lambda t: self._after_cancel(t, lease))
            raise
        if reply.admitted:
            self._admitted(lease)
        if reply.lost > 0 and self._lost_warned != self._link.epoch:
            self._lost_warned = self._link.epoch
            flags = self._restart_holds.flags(lease.parts)
            logger.warning(
                "Redis holds no budget history (it restarted, or is new): admitting nothing "
                "on %s for up to %.1f s more, in case processes that are gone spent it",
                ", ".join(c.key for (c, _), f in zip(lease.parts, flags, strict=True) if f == "1"),
                reply.lost,
            )
        return reply

    async def _acquire_call(self, lease: RedisLease) -> AcquireReply:
        flags = self._restart_holds.flags(lease.parts)
        self._link.max_period = max(self._link.max_period, *(c.period for c, _ in lease.parts))
        try:
            return await self._link.call(_scripts.acquire(lease.id, lease.parts, flags))
        except Unavailable as exc:
            if exc.sent:
                # It may still run when Redis wakes: give it back with the re-seed.
                self._mirror.give_backs[lease.id] = lease
            raise

    def _after_cancel(self, task: asyncio.Future[AcquireReply], lease: RedisLease) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        if task.result().admitted and not self._closed:
            lease.end()
            self._link.send_release(lease, give_back=True)

    def _admitted(self, lease: RedisLease) -> None:
        lease.admitted_at = self._clock()
        self._mirror.admitted(lease)
        self._link.ensure_heartbeat()

    async def _acquire_local(
        self,
        claims: tuple[Claim, ...],
        parts: tuple[tuple[Claim, int], ...],
        max_wait: float | None,
        group: Group,
    ) -> RedisLease | None:
        """Admit from this process's ledgers while Redis is unreachable (``fallback="memory"``).

        Returns None as soon as Redis answers again (the caller asks Redis then).
        """
        while self._link.down_since is not None:
            if self._closed:
                raise CDNError("budget store closed")
            self._check_local_pause(parts, max_wait)
            delay = self._mirror.fit_delay(parts, self._clock())
            if delay <= 0:
                lease = RedisLease(self._new_id(), claims, parts, self)
                self._admitted(lease)  # re-seeded into Redis when it answers
                return lease
            # inf: only an answer frees room; release() wakes this nap.
            await group.nap(asyncio.get_running_loop(), min(max(delay, _MIN_SLEEP), _MAX_SLEEP))
        return None

    def _check_local_pause(
        self, parts: tuple[tuple[Claim, int], ...], max_wait: float | None
    ) -> None:
        if max_wait is None:
            return
        paused = self._mirror.paused(parts, max_wait, self._clock())
        if paused is not None:
            raise paused_error(*paused)

    # -- Redis calls ----------------------------------------------------------------------------

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"


if TYPE_CHECKING:

    def _conforms(store: RedisBudgetStore) -> BudgetStore:
        return store
