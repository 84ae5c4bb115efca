"""The keys of the in-memory store over time: made on first use, looked at again by loop
timers, forgotten when idle.

``MemoryBudgetStore`` (``_budgets.py``), which has the public methods and admission, holds one
``KeyTable``. The table owns everything that is scheduled on the event loop:

* the clock: the running loop's ``loop.time`` unless one is given, so tests can run the store
  in virtual time;
* one timer per key, armed only while the key has blocked waiters, for when the first of them
  could fit (``arm``); a key whose head waits for an answer has none (``release`` arms it);
* the idle sweep: one timer for all keys, which drops a key once nothing is counted, paused or
  waiting on it. Endpoint-scoped budgets make a key per endpoint: 100,000 endpoints purged
  once must not stay in memory for ever.

A key's timer hands the key to the store's ``dispatch`` (given to the table when it is made):
the store moves the key's frontier. ``close`` cancels every timer (the store's ``aclose``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable

from ._budget_key import BudgetKey

__all__ = ["KeyTable"]

# asyncio may run a timer up to its clock resolution early, and looptime rounds its virtual
# clock to 1 us. A timer that finds nothing due yet re-arms at least this far ahead, so it can
# never spin at one instant; it delays an admission by at most this much.
_MIN_DELAY = 1e-6


class KeyTable:
    """The store's budget keys by name, its clock, and the loop timers that visit the keys.

    Args:
        dispatch: Moves the frontier of the keys it is given (the store's): called when a
            key's timer fires.
        clock: Monotonic seconds. Default: the running loop's ``loop.time``.
    """

    def __init__(
        self,
        dispatch: Callable[[list[BudgetKey]], None],
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._dispatch = dispatch
        #: Monotonic seconds now.
        self.clock: Callable[[], float] = clock if clock is not None else self._first_loop_time
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The live keys by name.
        self.keys: dict[str, BudgetKey] = {}
        #: Keys the server's headers have described: a key dropped while idle and made again
        #: has forgotten what it knew of other clients, and probes until it hears again.
        self.described: set[str] = set()
        self._closed = False
        #: Idle sweep: (when, seq, key) for keys that may be idle at `when`; one timer for all.
        self.gc_heap: list[tuple[float, int, BudgetKey]] = []
        self._gc_seq = itertools.count()
        self._gc_timer: asyncio.TimerHandle | None = None
        self._gc_timer_at = math.inf

    def new_key(self, key: str, limit: int, period: float, budget: str) -> BudgetKey:
        """Make and register the key ``key`` (a new one, or one dropped while idle)."""
        k = self.keys[key] = BudgetKey(key, limit, period, budget)
        if key in self.described:
            k.heard_at = math.inf  # stale: probing until its next answer
        return k

    # -- clock and loop ---------------------------------------------------------------------

    def _first_loop_time(self) -> float:
        # Bind to the running loop's clock on first use; later calls go straight to loop.time.
        loop = self.loop()
        self.clock = loop.time
        return loop.time()

    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the table's timers run on: the running one, on first use."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    # -- a key's timer ------------------------------------------------------------------------

    def arm(self, k: BudgetKey, now: float) -> None:
        """Keep ``k``'s one timer set for when its first blocked waiter could fit."""
        if not k.blocked_live or self._closed:
            k.stop_timer()
            return
        delay = k.head_delay(now)
        if delay == math.inf:
            # Only an answer can make room; release() arms the timer then.
            k.stop_timer()
            return
        at = now + delay
        if k.timer is not None:
            if k.timer_at <= at:
                return  # fires first and re-arms
            k.timer.cancel()
        k.timer_at = at
        k.timer = self.loop().call_later(max(delay, _MIN_DELAY), self._on_timer, k)

    def _on_timer(self, k: BudgetKey) -> None:
        k.timer = None
        k.timer_at = math.inf
        self._dispatch([k])

    # -- idle keys -------------------------------------------------------------------------

    def check_idle(self, k: BudgetKey, now: float) -> bool:
        """Drop ``k`` if idle; else make sure the sweep looks at it again. True if dropped."""
        if k.unused(now) and self.keys.get(k.key) is k:
            k.stop_timer()
            del self.keys[k.key]
            return True
        if k.gc_at is None and not self._closed:
            at = k.quiet_at()
            if at > now:
                self.schedule_gc(k, at)
            # else: only in-flight units or waiters keep it; a release or removal re-checks.
        return False

    def schedule_gc(self, k: BudgetKey, at: float) -> None:
        k.gc_at = at
        heapq.heappush(self.gc_heap, (at, next(self._gc_seq), k))
        if at < self._gc_timer_at:
            if self._gc_timer is not None:
                self._gc_timer.cancel()
            self._gc_timer_at = at
            delay = max(at - self.clock(), _MIN_DELAY)
            self._gc_timer = self.loop().call_later(delay, self._on_gc)

    def _on_gc(self) -> None:
        self._gc_timer = None
        self._gc_timer_at = math.inf
        now = self.clock()
        heap = self.gc_heap
        before = len(self.keys)
        while heap and heap[0][0] <= now:
            _, _, k = heapq.heappop(heap)
            k.gc_at = None
            if self.keys.get(k.key) is k:
                self.check_idle(k, now)
        if len(self.keys) * 2 < before:
            # A dict never shrinks its table on deletion; copy it after a mass drop so
            # 100,000 idle endpoint keys give their memory back.
            self.keys = dict(self.keys)
        if heap and not self._closed:
            # The sweep may have armed a timer already (check_idle -> schedule_gc);
            # replace it rather than orphan it, or the timers multiply with every sweep.
            if self._gc_timer is not None:
                self._gc_timer.cancel()
            at = heap[0][0]
            self._gc_timer_at = at
            self._gc_timer = self.loop().call_later(max(at - now, _MIN_DELAY), self._on_gc)

    def close(self) -> None:
        """Cancel every timer (each key's and the sweep's) and set none from now on."""
        self._closed = True
        for k in self.keys.values():
            k.stop_timer()
        if self._gc_timer is not None:
            self._gc_timer.cancel()
            self._gc_timer = None
