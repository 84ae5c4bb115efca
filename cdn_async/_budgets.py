"""The in-memory ``BudgetStore``: exact sliding windows, stacked atomically, FIFO per key.

Three parts, one job each:

* ``WindowLedger`` (``_ledger.py``): the units one key counts at a time ``now``.
* ``_Key``: a ledger plus that key's waiter queue, split at the *frontier*: ``passing`` holds
  the waiters (in arrival order) whose units fit on this key after every earlier waiter's,
  ``blocked`` holds the rest. A waiter in ``passing`` of some keys but not all has *reserved*
  its units there; the first waiter in ``blocked`` *blocks* the key for everyone behind it.
* ``MemoryBudgetStore``: admits a waiter the moment it is in ``passing`` on all of its keys,
  runs one timer per key (armed only while the key has blocked waiters), and drops idle keys.

Why the frontier gives the scan rule of docs/design.md ("dispatch in arrival order; a waiter that
fits everywhere is admitted; one that does not reserves where it fits and blocks where it does
not") without scanning: on one key the frontier is the longest prefix of its queue whose units
fit, so it is exactly the set of waiters the scan would not block there. Admitting a waiter
moves its units from "reserved" to "in flight" on each of its keys, which leaves every key's
room for the others unchanged, so admissions never cascade. A key's frontier moves only when
its own room changes (an expiry, a hold or pause ending, a cancellation, a server sync), and
each move touches only the waiters that cross it: dispatch costs O(keys per waiter) per
admission, amortised, however many waiters are queued.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ._ledger import WindowLedger
from ._limits import PRIORITY_LEADS, BudgetState, Claim, Lease, Priority, merge_claims
from .errors import CDNError, RateLimitedError, ValidationError

if TYPE_CHECKING:
    from ._limits import BudgetStore

__all__ = ["BudgetLease", "MemoryBudgetStore"]

# Waiter states. A waiter leaves _WAITING exactly once.
_WAITING = 0
_ADMITTED = 1
_GONE = 2

# asyncio may run a timer up to its clock resolution early, and looptime rounds its virtual
# clock to 1 us. A timer that finds nothing due yet re-arms at least this far ahead, so it can
# never spin at one instant; it delays an admission by at most this much.
_MIN_DELAY = 1e-6


class _Waiter:
    """One ``acquire`` call that could not be admitted at once."""

    __slots__ = ("claims", "fut", "max_wait", "parts", "pending", "state", "vt")

    def __init__(
        self,
        claims: tuple[Claim, ...],
        fut: asyncio.Future[BudgetLease],
        parts: list[tuple[_Key, int]],
        max_wait: float | None,
        vt: float,
    ) -> None:
        self.claims = claims
        self.vt = vt  # virtual arrival time: every queue is in this order (see _wait)
        self.fut = fut
        self.parts = parts  # (key, units) with each key once
        self.max_wait = max_wait
        self.pending = 0  # how many of its keys it is blocked on
        self.state = _WAITING


class _Key(WindowLedger):
    """A window ledger plus its FIFO waiter queue, split at the frontier, and its timer."""

    __slots__ = (
        "blocked",
        "blocked_live",
        "budget",
        "gc_at",
        "key",
        "passing",
        "passing_units",
        "timer",
        "timer_at",
    )

    def __init__(self, key: str, limit: int, period: float, budget: str) -> None:
        super().__init__(limit, period)
        self.key = key
        self.budget = budget
        # Waiters within the frontier, in arrival order, with their units on this key. A dict
        # gives O(1) removal from the middle (admission or cancellation of any of them).
        self.passing: dict[_Waiter, int] = {}
        self.passing_units = 0
        # Waiters beyond the frontier, in arrival order. Cancelled ones stay as tombstones
        # (skipped when reached, compacted when they outnumber the live ones). None while
        # nobody is blocked: most keys never queue anyone, and a deque costs ~600 bytes.
        self.blocked: deque[tuple[_Waiter, int]] | None = None
        self.blocked_live = 0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf
        self.gc_at: float | None = None  # when the idle sweep will look at this key


class BudgetLease:
    """What ``MemoryBudgetStore.acquire`` hands out; give it back to ``release``.

    Attributes:
        claims: The claims the request was admitted with.
        waited_on: The budget the request waited for last (None if it did not wait).
    """

    __slots__ = ("_parts", "_store", "claims", "waited_on")

    def __init__(
        self,
        claims: tuple[Claim, ...],
        parts: list[tuple[_Key, int]],
        store: MemoryBudgetStore,
        waited_on: str | None = None,
    ) -> None:
        self.claims = claims
        #: The budget whose room admitted the request last, when it had to wait (else None).
        self.waited_on = waited_on
        self._parts: list[tuple[_Key, int]] | None = parts
        self._store = store

    @property
    def released(self) -> bool:
        """True once the lease was released (or given back)."""
        return self._parts is None

    def __repr__(self) -> str:
        keys = ", ".join(f"{c.key}={c.units}" for c in self.claims)
        return f"<BudgetLease {keys}{' released' if self._parts is None else ''}>"


class MemoryBudgetStore:
    """Budget windows kept in this process; see the module docstring for the algorithm.

    Use it from one event loop. Every time it uses comes from ``clock`` and every wait is a
    loop timer scheduled from it, so tests can run it in virtual time.

    Args:
        clock: Monotonic seconds. Default: the running loop's ``loop.time``.
        wall_clock: Epoch seconds, only to report ``RateLimitedError.reset_at``. Default
            ``time.time``.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock: Callable[[], float] = clock if clock is not None else self._first_loop_time
        self._wall_clock = wall_clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keys: dict[str, _Key] = {}
        self._closed = False
        # Keys whose frontier must be recomputed during the current dispatch.
        self._todo: list[_Key] = []
        # Idle sweep: (when, seq, key) for keys that may be idle at `when`; one timer for all.
        self._gc_heap: list[tuple[float, int, _Key]] = []
        self._gc_seq = itertools.count()
        self._gc_timer: asyncio.TimerHandle | None = None
        self._gc_timer_at = math.inf

    # -- clock and loop ---------------------------------------------------------------------

    def _first_loop_time(self) -> float:
        # Bind to the running loop's clock on first use; later calls go straight to loop.time.
        loop = self._get_loop()
        self._clock = loop.time
        return loop.time()

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    # -- public API ---------------------------------------------------------------------------

    async def acquire(
        self,
        claims: Sequence[Claim],
        *,
        max_wait: float | None = None,
        priority: Priority = "normal",
    ) -> BudgetLease:
        """Wait until every claim fits, then take them all at once.

        Args:
            claims: What the request takes, one claim per budget key (repeated keys add up).
            max_wait: The longest the caller will wait for a key paused by a 429; None: any.
                Ordinary budget waits never raise, whatever ``max_wait`` says.
            priority: Queues are ordered by a *virtual arrival time*: the arrival time plus
                ``PRIORITY_LEAD`` s for ``"low"``, minus it for ``"high"``. So higher calls go
                first, calls of one level in arrival order, and a call is passed only by
                higher ones that arrive less than ``PRIORITY_LEAD`` (one level up) or twice
                that (two levels) after it: none waits forever. Like arrival order, the
                virtual time is one total order over every key, so stacking stays atomic.

        Returns:
            The lease to hand to ``release`` when the answer (or failure) arrives.

        Raises:
            RateLimitedError: A key is paused for longer than ``max_wait`` (at once, or while
                queued when a longer pause arrives).
            ValidationError: A claim has fewer than 1 unit or more than its limit (it could
                never fit).
            CDNError: The store is closed (or was closed while waiting).
        """
        if self._closed:
            raise CDNError("budget store closed")
        now = self._clock()
        keys = self._keys
        parts: list[tuple[_Key, int]] = []
        # Fast path: nobody queued, everything fits. Take as we go (so repeated keys add up)
        # and put back on the first miss; nothing awaits, so nobody can see the partial take.
        for c in claims:
            k = keys.get(c.key)
            if k is None:
                k = keys[c.key] = _Key(c.key, c.limit, c.period, c.budget)
            u = c.units
            if (
                k.blocked_live
                or k.paused_until > now
                or u < 1
                or k.limit != c.limit
                or k.period != c.period
            ):
                break
            ex = k.expiries
            if (ex and ex[0] <= now) or k.held:
                k.expire(now)
            if k.in_flight + k.unexpired + k.held + k.passing_units + u > k.limit:
                break
            k.take(u)
            parts.append((k, u))
        else:
            return BudgetLease(tuple(claims), parts, self)
        for k, u in parts:
            k.give_back(u)
        return await self._wait(tuple(claims), max_wait, now, now - PRIORITY_LEADS[priority])

    def release(self, lease: Lease) -> None:
        """The request's answer (or failure) arrived: its units free ``period`` s from now.

        Idempotent: a second call (or a call for a lease given back on cancellation) does
        nothing.

        Args:
            lease: A lease this store returned from ``acquire``.

        Raises:
            ValueError: ``lease`` did not come from this store.
        """
        own = self._own(lease)
        parts = own._parts
        if parts is None:
            return
        own._parts = None
        now = self._clock()
        if self._closed:
            return
        for k, u in parts:
            expiry = k.release(u, now)
            # In-flight units just became expiring ones: a head that was waiting for an answer
            # (so had no timer) now has a time to wait for.
            if k.blocked_live and k.timer is None:
                self._arm(k, now)
            if k.gc_at is None:
                self._schedule_gc(k, expiry)

    def give_back(self, lease: Lease) -> None:
        """The request never reached the server, or the server refused it without counting
        it (a 429): its units are uncounted at once, not one period from now.

        Idempotent, and a no-op for a lease already released.

        Args:
            lease: A lease this store returned from ``acquire``.

        Raises:
            ValueError: ``lease`` did not come from this store.
        """
        self._give_back(self._own(lease))

    def _own(self, lease: Lease) -> BudgetLease:
        if not isinstance(lease, BudgetLease) or lease._store is not self:
            raise ValueError(f"not a lease of this store: {lease!r}")
        return lease

    def sync(self, claim: Claim, remaining: int, reset_after: float) -> None:
        """Apply server headers: until ``reset_after`` s from now, admit at most ``remaining``
        more units on ``claim.key``.

        If the server counts more than this store does (``limit - remaining`` > units in
        flight + unexpired), another client spent the difference: that many phantom units are
        held for ``reset_after`` s. A live hold is raised by a later sync, never lowered
        (answers arrive out of order; an older one must not clear what a newer one saw).

        Args:
            claim: The claim the headers describe (its key, limit and period).
            remaining: ``ratelimit-remaining``.
            reset_after: Seconds from now until ``ratelimit-reset``.
        """
        if self._closed:
            return
        now = self._clock()
        k = self._keys.get(claim.key)
        if k is None:
            if remaining >= claim.limit or reset_after <= 0:
                return  # nothing to hold; do not create a key just to forget it
            k = self._keys[claim.key] = _Key(claim.key, claim.limit, claim.period, claim.budget)
        # Every answer syncs; most change nothing (a lone client never holds), so only a
        # changed hold re-dispatches. Expiries are the key's timer's business.
        if k.sync(remaining, reset_after, now):
            self._dispatch([k])
            self._check_idle(k, now)

    def pause(self, claim: Claim, resume_after: float) -> None:
        """The server answered 429 for this key: admit nothing on it for ``resume_after`` s.

        Extends, never shortens, a pause. A pause is capped at ``claim.period``: a period after
        now every unit in any window has expired, so no answer justifies waiting longer (a
        wrong ``ratelimit-reset`` or clock must not stall the key for an hour). Queued waiters
        whose ``max_wait`` is shorter than the pause fail at once with ``RateLimitedError``.

        Args:
            claim: The claim whose key the 429 concerns.
            resume_after: Seconds from now (``ratelimit-reset`` or ``Retry-After``).
        """
        resume_after = min(resume_after, claim.period)
        if self._closed or resume_after <= 0:
            return
        now = self._clock()
        k = self._keys.get(claim.key)
        if k is None:
            k = self._keys[claim.key] = _Key(claim.key, claim.limit, claim.period, claim.budget)
        k.pause(resume_after, now)
        paused_for = k.paused_until - now
        queued = list(k.passing)
        queued.extend(w for w, _ in k.blocked or () if w.state == _WAITING)
        touched: list[_Key] = [k]
        for w in queued:
            if w.max_wait is not None and paused_for > w.max_wait:
                touched.extend(self._remove(w))
                # A waiter cancelled in this same tick already has a done future.
                if not w.fut.done():
                    w.fut.set_exception(self._paused_error(claim.budget, k.key, paused_for))
        self._dispatch(touched)
        for t in touched:
            self._check_idle(t, now)

    def admission_delay(self, claims: Sequence[Claim]) -> tuple[float, str]:
        """How long, at least, a call with ``claims`` queued now would wait, and on which budget.

        Each key admits in arrival order, so the units of every waiter already queued on it
        come first; released units free at their expiry, held ones at the hold's end, and units
        in flight no sooner than one period from now (their answers are still to come). The
        longest of those waits over the call's keys is the estimate: a lower bound, exact
        when nobody ahead gives up and no answer or sync changes the picture.

        Returns:
            ``(seconds, budget name)``; ``(0.0, "")`` when it would be admitted at once.
        """
        now = self._clock()
        worst, budget = 0.0, ""
        for c in claims:
            k = self._keys.get(c.key)
            if k is None:
                continue
            ahead = k.passing_units + sum(u for w, u in k.blocked or () if w.state == _WAITING)
            need = ahead + c.units
            delay = k.fit_delay(need, now)
            if delay == math.inf:
                # Only answers still to come can make room: none frees before a period; and
                # a window admits at most `limit`, so `need` units span that many periods.
                windows = math.ceil(need / k.limit) - 1
                delay = max(k.period, windows * k.period, k.paused_until - now)
            if delay > worst:
                worst, budget = delay, k.budget
        return worst, budget

    def snapshot(self) -> dict[str, BudgetState]:
        """The state of every live key (idle keys are dropped, not listed).

        Returns:
            ``{key: BudgetState}``. ``next_free_in`` is ``inf`` when every counted unit is in
            flight (it frees only when an answer arrives).
        """
        now = self._clock()
        out: dict[str, BudgetState] = {}
        for key, k in list(self._keys.items()):
            if self._check_idle(k, now):
                continue
            used = k.used(now)
            out[key] = BudgetState(
                key=key,
                limit=k.limit,
                used=used,
                remaining=max(0, k.limit - used),
                next_free_in=k.next_free_in(now),
                waiters=len(k.passing) + k.blocked_live,
                paused_for=k.paused_for(now),
            )
        return out

    async def aclose(self) -> None:
        """Cancel every timer and fail every queued waiter with ``CDNError``.

        Later ``acquire`` calls raise ``CDNError("budget store closed")``; ``release``,
        ``sync`` and ``pause`` become no-ops.
        """
        self._closed = True
        waiters: dict[_Waiter, None] = {}
        for k in self._keys.values():
            if k.timer is not None:
                k.timer.cancel()
                k.timer = None
            waiters.update(dict.fromkeys(k.passing))
            waiters.update((w, None) for w, _ in k.blocked or () if w.state == _WAITING)
        if self._gc_timer is not None:
            self._gc_timer.cancel()
            self._gc_timer = None
        for w in waiters:
            w.state = _GONE
            if not w.fut.done():
                w.fut.set_exception(CDNError("budget store closed"))
        self._keys.clear()
        self._gc_heap.clear()

    # -- waiting --------------------------------------------------------------------------------

    async def _wait(
        self, claims: tuple[Claim, ...], max_wait: float | None, now: float, vt: float
    ) -> BudgetLease:
        """The slow path: validate, queue on every key, and wait for admission."""
        try:
            merged = merge_claims(claims)
        except ValidationError:
            self._drop_if_idle(claims, now)
            raise
        parts: list[tuple[_Key, int]] = []
        for c, units in merged:
            key = c.key
            k = self._keys.get(key)
            if k is None:
                k = self._keys[key] = _Key(key, c.limit, c.period, c.budget)
            elif k.limit != c.limit or k.period != c.period:
                # The budget's policy changed: the newest claim wins. Re-fit the queue.
                k.limit, k.period = c.limit, c.period
                self._dispatch([k])
            parts.append((k, units))
        if max_wait is not None:
            for k, _ in parts:
                paused_for = k.paused_until - now
                if paused_for > max_wait:
                    self._drop_if_idle(claims, now)
                    raise self._paused_error(k.budget, k.key, paused_for)

        w = _Waiter(claims, self._get_loop().create_future(), parts, max_wait, vt)
        reordered: list[_Key] = []
        for k, u in parts:
            if k.passing and next(reversed(k.passing)).vt > vt:
                # A higher call overtakes reserved waiters that came later in queue order:
                # they step back behind it, and the key's frontier is settled again below.
                self._queue_behind(k, w, u)
                reordered.append(k)
                continue
            if k.blocked_live and k.blocked is not None and k.blocked[-1][0].vt > vt:
                self._queue_behind(k, w, u)
                reordered.append(k)
                continue
            if not k.blocked_live:
                k.blocked = None  # only tombstones left, if anything
                k.expire(now)
                if k.paused_until <= now and (
                    k.in_flight + k.unexpired + k.held + k.passing_units + u <= k.limit
                ):
                    k.passing[w] = u
                    k.passing_units += u
                    continue
                k.blocked = deque(((w, u),))
                k.blocked_live = 1
                w.pending += 1
                self._arm(k, now)  # w is the head: the key needs a timer now
            else:
                assert k.blocked is not None
                k.blocked.append((w, u))
                k.blocked_live += 1
                w.pending += 1
        if w.pending == 0:
            # Fits everywhere (the fast path declined only for a policy change or repeats).
            self._admit(w)
            self._run_todo(now)
        if reordered:
            self._dispatch(reordered)

        try:
            return await w.fut
        except asyncio.CancelledError:
            if w.state == _ADMITTED:
                # Admitted in the same instant as cancelled: the request was never sent, so
                # its units cannot be in any server window. Give them back.
                lease = w.fut.result()
                self._give_back(lease)
            elif w.state == _WAITING:
                touched = self._remove(w)
                self._dispatch(touched)
                now = self._clock()
                for k in touched:
                    self._check_idle(k, now)
            elif w.fut.done() and not w.fut.cancelled():
                w.fut.exception()  # failed and cancelled at once: mark the error as seen
            raise

    def _queue_behind(self, k: _Key, w: _Waiter, u: int) -> None:
        """Put ``w`` in ``k``'s queue at its virtual time, ahead of later reserved waiters."""
        passing = k.passing
        back: list[tuple[_Waiter, int]] = []
        while passing and next(reversed(passing)).vt > w.vt:
            other, units = passing.popitem()
            k.passing_units -= units
            other.pending += 1
            back.append((other, units))
        blocked = k.blocked if k.blocked is not None else deque()
        k.blocked = blocked
        blocked.extendleft(back)  # popped last-first: extendleft restores their order
        i = len(blocked)
        while i > 0 and blocked[i - 1][0].vt > w.vt:
            i -= 1
        blocked.insert(i, (w, u))
        k.blocked_live += 1 + len(back)
        w.pending += 1

    def _paused_error(self, budget: str, key: str, paused_for: float) -> RateLimitedError:
        return RateLimitedError.paused(budget, key, paused_for, self._wall_clock())

    def _drop_if_idle(self, claims: Sequence[Claim], now: float) -> None:
        # The fast path may have created keys for a request that then failed validation.
        for c in claims:
            k = self._keys.get(c.key)
            if k is not None:
                self._check_idle(k, now)

    # -- dispatch ---------------------------------------------------------------------------

    def _admit(self, w: _Waiter, waited_on: str | None = None) -> None:
        """Turn ``w``'s reservations into in-flight units on all its keys at once."""
        if w.fut.done():
            # Its task was cancelled and has not run its handler yet: drop it instead.
            self._todo.extend(self._remove(w))
            return
        w.state = _ADMITTED
        for k, u in w.parts:
            del k.passing[w]
            k.passing_units -= u
            k.take(u)
        w.fut.set_result(BudgetLease(w.claims, w.parts, self, waited_on))

    def _remove(self, w: _Waiter) -> list[_Key]:
        """Take a waiting ``w`` out of every queue; returns the keys whose room grew."""
        if w.state != _WAITING:
            return []
        w.state = _GONE
        for k, u in w.parts:
            if k.passing.pop(w, None) is not None:
                k.passing_units -= u
            else:
                k.blocked_live -= 1
                if k.blocked is not None and len(k.blocked) > 2 * k.blocked_live + 16:
                    # Mass cancellation: drop tombstones so the queue stays O(live waiters).
                    k.blocked = deque(e for e in k.blocked if e[0].state == _WAITING)
        return [k for k, _ in w.parts]

    def _give_back(self, lease: BudgetLease) -> None:
        """Uncount a lease's units that were taken but never sent, and re-dispatch."""
        parts = lease._parts
        if parts is None:
            return
        lease._parts = None
        for k, u in parts:
            k.give_back(u)
        if not self._closed:
            touched = [k for k, _ in parts]
            self._dispatch(touched)
            now = self._clock()
            for k in touched:
                self._check_idle(k, now)

    def _dispatch(self, keys: list[_Key]) -> None:
        """Move the frontier of every key in ``keys`` (and of keys that change meanwhile)."""
        if self._closed:
            return
        self._todo.extend(keys)
        self._run_todo(self._clock())

    def _run_todo(self, now: float) -> None:
        todo = self._todo
        i = 0
        while i < len(todo):
            self._settle(todo[i], now)
            i += 1
        todo.clear()

    def _settle(self, k: _Key, now: float) -> None:
        """Put ``k``'s frontier where its room says, admitting waiters that pass everywhere."""
        k.expire(now)
        # Units the queue may take on top of what is in flight. A paused key takes nothing.
        cap = k.limit - k.unexpired - k.held if k.paused_until <= now else 0
        passing = k.passing
        # Shrink (a sync hold or a pause took room away): the latest arrivals step back.
        while passing and k.in_flight + k.passing_units > cap:
            w, u = passing.popitem()
            k.passing_units -= u
            if k.blocked is None:
                k.blocked = deque()
            k.blocked.appendleft((w, u))
            k.blocked_live += 1
            w.pending += 1
        # Advance: blocked waiters cross in arrival order while their units fit.
        blocked = k.blocked
        while blocked:
            w, u = blocked[0]
            if w.state != _WAITING:
                blocked.popleft()  # tombstone
                continue
            if k.in_flight + k.passing_units + u > cap:
                break
            blocked.popleft()
            k.blocked_live -= 1
            passing[w] = u
            k.passing_units += u
            w.pending -= 1
            if w.pending == 0:
                # Leaves in_flight + passing_units unchanged on every key: no cascade.
                self._admit(w, k.budget)
        if blocked is not None and not blocked:
            k.blocked = None
        self._arm(k, now)

    # -- timers ------------------------------------------------------------------------------

    def _arm(self, k: _Key, now: float) -> None:
        """Keep ``k``'s one timer set for when its first blocked waiter could fit."""
        if not k.blocked_live or self._closed:
            if k.timer is not None:
                k.timer.cancel()
                k.timer = None
            return
        blocked = k.blocked
        assert blocked is not None  # blocked_live > 0
        while blocked[0][0].state != _WAITING:
            blocked.popleft()
        delay = k.fit_delay(k.passing_units + blocked[0][1], now)
        if delay == math.inf:
            # Only an answer can make room; release() arms the timer then.
            if k.timer is not None:
                k.timer.cancel()
                k.timer = None
            return
        at = now + delay
        if k.timer is not None:
            if k.timer_at <= at:
                return  # fires first and re-arms
            k.timer.cancel()
        k.timer_at = at
        k.timer = self._get_loop().call_later(max(delay, _MIN_DELAY), self._on_timer, k)

    def _on_timer(self, k: _Key) -> None:
        k.timer = None
        k.timer_at = math.inf
        self._dispatch([k])

    # -- idle keys -------------------------------------------------------------------------

    def _check_idle(self, k: _Key, now: float) -> bool:
        """Drop ``k`` if idle; else make sure the sweep looks at it again. True if dropped."""
        if k.is_idle(now) and not k.passing and not k.blocked_live and self._keys.get(k.key) is k:
            if k.timer is not None:
                k.timer.cancel()
                k.timer = None
            del self._keys[k.key]
            return True
        if k.gc_at is None and not self._closed:
            at = k.quiet_at()
            if at > now:
                self._schedule_gc(k, at)
            # else: only in-flight units or waiters keep it; a release or removal re-checks.
        return False

    def _schedule_gc(self, k: _Key, at: float) -> None:
        k.gc_at = at
        heapq.heappush(self._gc_heap, (at, next(self._gc_seq), k))
        if at < self._gc_timer_at:
            if self._gc_timer is not None:
                self._gc_timer.cancel()
            self._gc_timer_at = at
            delay = max(at - self._clock(), _MIN_DELAY)
            self._gc_timer = self._get_loop().call_later(delay, self._on_gc)

    def _on_gc(self) -> None:
        self._gc_timer = None
        self._gc_timer_at = math.inf
        now = self._clock()
        heap = self._gc_heap
        before = len(self._keys)
        while heap and heap[0][0] <= now:
            _, _, k = heapq.heappop(heap)
            k.gc_at = None
            if self._keys.get(k.key) is k:
                self._check_idle(k, now)
        if len(self._keys) * 2 < before:
            # A dict never shrinks its table on deletion; copy it after a mass drop so
            # 100,000 idle endpoint keys give their memory back.
            self._keys = dict(self._keys)
        if heap and not self._closed:
            # The sweep may have armed a timer already (_check_idle -> _schedule_gc);
            # replace it rather than orphan it, or the timers multiply with every sweep.
            if self._gc_timer is not None:
                self._gc_timer.cancel()
            at = heap[0][0]
            self._gc_timer_at = at
            self._gc_timer = self._get_loop().call_later(max(at - now, _MIN_DELAY), self._on_gc)


if TYPE_CHECKING:

    def _conforms(store: MemoryBudgetStore) -> BudgetStore:
        return store
