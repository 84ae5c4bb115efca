"""The in-memory ``BudgetStore``: exact sliding windows, stacked atomically, FIFO per key.

Five modules, one concept each:

* ``WindowLedger`` (``_ledger.py``): the units one key counts at a time ``now``.
* ``BudgetKey`` (``_budget_key.py``): a ledger plus the calls waiting on that key (``Waiter``),
  in virtual arrival order, split at the *frontier*; its docstring argues why the frontier
  gives the scan rule of docs/design.md without scanning.
* ``BudgetLease`` (``_budget_lease.py``): what an admitted call holds until its answer.
* ``KeyTable`` (``_key_table.py``): the keys by name, the clock, one timer per key with
  blocked waiters, and the sweep that drops idle keys; the store holds one.
* ``MemoryBudgetStore`` (here): the ``BudgetStore`` methods, and admission: a call that does
  not fit at once is queued on every key it claims, each key's frontier is moved when its room
  changes (*dispatch*), and a call is admitted the moment it passes on all of its keys.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ._budget_key import ADMITTED, GONE, WAITING, BudgetKey, Waiter
from ._budget_lease import BudgetLease
from ._key_table import KeyTable
from ._limits import BudgetState, Claim, Lease, Priority, merge_claims, priority_lead
from .errors import CDNError, RateLimitedError, ValidationError

if TYPE_CHECKING:
    from ._limits import BudgetStore

__all__ = ["BudgetLease", "MemoryBudgetStore"]


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
        self._table = KeyTable(self._dispatch, clock)
        self._closed = False
        self._wall_clock = wall_clock
        # Keys whose frontier must be recomputed during the current dispatch.
        self._todo: list[BudgetKey] = []

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
                the lead for ``"low"``, minus it for ``"high"`` (``priority_lead``: 3 periods
                of the shortest budget claimed, 30 s with the documented budgets). So higher
                calls go first, calls of one level in arrival order, and a call is passed only
                by higher ones that arrive less than one lead (one level up) or two (two
                levels) after it: none waits forever. Like arrival order, the
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
        now = self._table.clock()
        lease = self._take_at_once(claims, now)
        if lease is not None:
            return lease
        return await self._wait(tuple(claims), max_wait, now, now - priority_lead(claims, priority))

    def _take_at_once(self, claims: Sequence[Claim], now: float) -> BudgetLease | None:
        """The fast path: nobody queued and everything fits. Takes as it goes (so repeated
        keys add up) and puts back on the first miss; nothing awaits, so nobody can see the
        partial take. None: the call must queue (or fails validation in ``_wait``)."""
        keys = self._table.keys
        parts: list[tuple[BudgetKey, int]] = []
        for c in claims:
            k = keys.get(c.key)
            if k is None:
                k = self._table.new_key(c.key, c.limit, c.period, c.budget)
            u = c.units
            if (
                k.blocked_live
                or u < 1
                or k.limit != c.limit
                or k.period != c.period
                or not k.fits(u, now)
            ):
                break
            k.take(u)
            parts.append((k, u))
        else:
            return BudgetLease(tuple(claims), parts, self)
        for k, u in parts:
            k.give_back(u)
        return None

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
        parts = own.end()
        if parts is None:
            return
        now = self._table.clock()
        if self._closed:
            return
        for k, u in parts:
            expiry = k.release(u, now)
            # In-flight units just became expiring ones: a head that was waiting for an answer
            # (so had no timer) now has a time to wait for.
            if k.blocked_live and k.timer is None:
                self._table.arm(k, now)
            if k.gc_at is None:
                self._table.schedule_gc(k, expiry)

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
        if not isinstance(lease, BudgetLease) or not lease.issued_by(self):
            raise ValueError(f"not a lease of this store: {lease!r}")
        return lease

    def sync(self, claim: Claim, remaining: int, reset_after: float, refused: bool = False) -> None:
        """Apply server headers: ``remaining`` units were left on ``claim.key`` when the server
        stamped the answered request; what that says is kept for ``reset_after`` s.

        If the server counts more than this store does (``limit - remaining`` > units in
        flight + unexpired), another client spent the difference: that many phantom units are
        held for ``reset_after`` s (the hold is the most any answer saw within its own
        memory: a high reading is not kept alive by later lower ones, and an older answer
        arriving late cannot lower what a newer one saw). The key then sends one request at a
        time, as it does after a refusal (docs/design.md, "Budgets", 6).

        Args:
            claim: The claim the headers describe (its key, limit and period).
            remaining: ``ratelimit-remaining``.
            reset_after: Seconds to keep what the answer says.
            refused: The answer was a 429 (the server counted nothing).
        """
        if self._closed:
            return
        now = self._table.clock()
        k = self._table.keys.get(claim.key)
        if k is None:
            if (remaining >= claim.limit or reset_after <= 0) and not refused:
                self._table.described.add(claim.key)
                return  # nothing to hold; do not create a key just to forget it
            k = self._table.new_key(claim.key, claim.limit, claim.period, claim.budget)
        self._table.described.add(claim.key)
        # Every answer syncs; most change nothing (a lone client never holds), so only a
        # change re-dispatches. Expiries are the key's timer's business.
        if k.sync(remaining, reset_after, now, refused):
            self._redispatch([k])

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
        now = self._table.clock()
        k = self._table.keys.get(claim.key)
        if k is None:
            k = self._table.new_key(claim.key, claim.limit, claim.period, claim.budget)
        k.pause(resume_after, now)
        paused_for = k.paused_until - now
        touched: list[BudgetKey] = [k]
        for w in k.waiters():
            if w.max_wait is not None and paused_for > w.max_wait:
                touched.extend(w.withdraw())
                # A waiter cancelled in this same tick already has a done future.
                if not w.fut.done():
                    w.fut.set_exception(self._paused_error(claim.budget, k.key, paused_for))
        self._redispatch(touched)

    def admission_delay(
        self, claims: Sequence[Claim], priority: Priority = "normal"
    ) -> tuple[float, str]:
        """How long, at least, a call with ``claims`` queued now at ``priority`` would wait,
        and on which budget.

        Each key admits in virtual-time order, so the units of every waiter that goes before
        this call (not those it would pass: a lower level, or a higher one that came long
        enough before) come first; released units free at their expiry, held ones at the
        hold's end, and units in flight no sooner than one period from now (their answers are
        still to come). A line longer than a window waits a period more per window's worth of
        units (``WindowLedger.queue_delay``). The longest wait over the call's keys is the
        estimate: a lower bound, exact when nobody ahead gives up and no answer or sync
        changes the picture but for the answers' round trips.

        Returns:
            ``(seconds, budget name)``; ``(0.0, "")`` when it would be admitted at once.
        """
        now = self._table.clock()
        vt = now - priority_lead(claims, priority)
        worst, budget = 0.0, ""
        for c, units in merge_claims(claims, to_fit=False):
            k = self._table.keys.get(c.key)
            if k is None:
                continue
            delay = k.queue_delay(k.units_ahead(vt), units, now)
            if delay > worst:
                worst, budget = delay, k.budget
        return worst, budget

    def held_for_others(self, key: str) -> int:
        """Units on ``key`` that the server's headers showed another client spent, held now
        (``BudgetState.others`` of one key, without building a snapshot)."""
        k = self._table.keys.get(key)
        if k is None:
            return 0
        k.expire(self._table.clock())
        return k.held

    def snapshot(self) -> dict[str, BudgetState]:
        """The state of every live key (idle keys are dropped, not listed).

        Returns:
            ``{key: BudgetState}``. ``next_free_in`` is ``inf`` when every counted unit is in
            flight (it frees only when an answer arrives).
        """
        now = self._table.clock()
        out: dict[str, BudgetState] = {}
        for key, k in list(self._table.keys.items()):
            if self._table.check_idle(k, now):
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
                others=k.held,  # expired by used(now)
            )
        return out

    async def aclose(self) -> None:
        """Cancel every timer and fail every queued waiter with ``CDNError``.

        Later ``acquire`` calls raise ``CDNError("budget store closed")``; ``release``,
        ``sync`` and ``pause`` become no-ops.
        """
        self._closed = True
        waiters: dict[Waiter, None] = {}
        for k in self._table.keys.values():
            waiters.update(dict.fromkeys(k.waiters()))
        self._table.close()
        for w in waiters:
            w.state = GONE
            if not w.fut.done():
                w.fut.set_exception(CDNError("budget store closed"))
        self._table.keys.clear()
        self._table.gc_heap.clear()

    # -- waiting --------------------------------------------------------------------------------

    async def _wait(
        self, claims: tuple[Claim, ...], max_wait: float | None, now: float, vt: float
    ) -> BudgetLease:
        """The slow path: validate, queue on every key, and wait for admission."""
        w = self._enqueue(claims, max_wait, now, vt)
        try:
            lease: BudgetLease = await w.fut
            return lease
        except asyncio.CancelledError:
            if w.state == ADMITTED:
                # Admitted in the same instant as cancelled: the request was never sent, so
                # its units cannot be in any server window. Give them back.
                self._give_back(w.fut.result())
            elif w.state == WAITING:
                self._redispatch(w.withdraw())
            elif w.fut.done() and not w.fut.cancelled():
                w.fut.exception()  # failed and cancelled at once: mark the error as seen
            raise

    def _enqueue(
        self, claims: tuple[Claim, ...], max_wait: float | None, now: float, vt: float
    ) -> Waiter:
        """Validate, and queue a waiter on every key it claims (admitted at once if it fits
        everywhere: the fast path declines for a policy change or repeated keys too)."""
        try:
            merged = merge_claims(claims)
        except ValidationError:
            self._drop_if_idle(claims, now)
            raise
        parts: list[tuple[BudgetKey, int]] = []
        for c, units in merged:
            key = c.key
            k = self._table.keys.get(key)
            if k is None:
                k = self._table.new_key(key, c.limit, c.period, c.budget)
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

        w = Waiter(claims, self._table.loop().create_future(), parts, max_wait, vt)
        reordered: list[BudgetKey] = []
        for k, u in parts:
            place = k.enqueue(w, u, now)
            if place == "overtook":
                # A higher call overtook reserved waiters that came later in queue order: the
                # key's frontier is settled again below.
                reordered.append(k)
            elif place == "head":
                self._table.arm(k, now)  # w is the head: the key needs a timer now
        if w.pending == 0:
            # Fits everywhere (the fast path declined only for a policy change or repeats).
            self._admit(w)
            self._run_todo(now)
        if reordered:
            self._dispatch(reordered)
        return w

    def _paused_error(self, budget: str, key: str, paused_for: float) -> RateLimitedError:
        return RateLimitedError.paused(budget, key, paused_for, self._wall_clock())

    def _drop_if_idle(self, claims: Sequence[Claim], now: float) -> None:
        # The fast path may have created keys for a request that then failed validation.
        for c in claims:
            k = self._table.keys.get(c.key)
            if k is not None:
                self._table.check_idle(k, now)

    # -- dispatch ---------------------------------------------------------------------------

    def _admit(self, w: Waiter, waited_on: str | None = None) -> None:
        """Turn ``w``'s reservations into in-flight units on all its keys at once."""
        if w.fut.done():
            # Its task was cancelled and has not run its handler yet: drop it instead.
            self._todo.extend(w.withdraw())
            return
        w.state = ADMITTED
        for k, u in w.parts:
            k.admit(w, u)
        w.fut.set_result(BudgetLease(w.claims, w.parts, self, waited_on))

    def _give_back(self, lease: BudgetLease) -> None:
        """Uncount a lease's units that were taken but never sent, and re-dispatch."""
        parts = lease.end()
        if parts is None:
            return
        for k, u in parts:
            k.give_back(u)
        self._redispatch([k for k, _ in parts])

    def _dispatch(self, keys: list[BudgetKey]) -> None:
        """Move the frontier of every key in ``keys`` (and of keys that change meanwhile)."""
        if self._closed:
            return
        self._todo.extend(keys)
        self._run_todo(self._table.clock())

    def _redispatch(self, keys: list[BudgetKey]) -> None:
        """``_dispatch`` after units or waiters left ``keys``, then drop those left idle."""
        if self._closed:
            return
        now = self._table.clock()
        self._todo.extend(keys)
        self._run_todo(now)
        for k in keys:
            self._table.check_idle(k, now)

    def _run_todo(self, now: float) -> None:
        todo = self._todo
        i = 0
        while i < len(todo):
            k = todo[i]
            # Admitting a waiter that was cancelled meanwhile appends the keys it leaves.
            k.settle(now, self._admit)
            self._table.arm(k, now)
            i += 1
        todo.clear()


if TYPE_CHECKING:

    def _conforms(store: MemoryBudgetStore) -> BudgetStore:
        return store
