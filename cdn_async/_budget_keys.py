"""The keys of the in-memory store over time: made on first use, looked at again by loop
timers, forgotten when idle.

``KeyTable`` is the base of ``MemoryBudgetStore`` (``_budgets.py``), which adds the public
methods and admission. It owns everything that is scheduled on the event loop:

* the clock: the running loop's ``loop.time`` unless one is given, so tests can run the store
  in virtual time;
* one timer per key, armed only while the key has blocked waiters, for when the first of them
  could fit (``_arm``); a key whose head waits for an answer has none (``release`` arms it);
* the idle sweep: one timer for all keys, which drops a key once nothing is counted, paused or
  waiting on it. Endpoint-scoped budgets make a key per endpoint: 100,000 endpoints purged
  once must not stay in memory for ever.

The timers call bound methods of the store itself (``_on_timer``, ``_on_gc``), so they are the
store's to cancel on ``aclose``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable

from ._budget_queue import BudgetKey

__all__ = ["KeyTable"]

# asyncio may run a timer up to its clock resolution early, and looptime rounds its virtual
# clock to 1 us. A timer that finds nothing due yet re-arms at least this far ahead, so it can
# never spin at one instant; it delays an admission by at most this much.
_MIN_DELAY = 1e-6


class KeyTable:
    """The store's budget keys by name, its clock, and the loop timers that visit the keys.

    Args:
        clock: Monotonic seconds. Default: the running loop's ``loop.time``.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock: Callable[[], float] = clock if clock is not None else self._first_loop_time
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keys: dict[str, BudgetKey] = {}
        # Keys the server's headers have described: a key dropped while idle and made again
        # has forgotten what it knew of other clients, and probes until it hears again.
        self._described: set[str] = set()
        self._closed = False
        # Idle sweep: (when, seq, key) for keys that may be idle at `when`; one timer for all.
        self._gc_heap: list[tuple[float, int, BudgetKey]] = []
        self._gc_seq = itertools.count()
        self._gc_timer: asyncio.TimerHandle | None = None
        self._gc_timer_at = math.inf

    def _new_key(self, key: str, limit: int, period: float, budget: str) -> BudgetKey:
        """Make and register the key ``key`` (a new one, or one dropped while idle)."""
        k = self._keys[key] = BudgetKey(key, limit, period, budget)
        if key in self._described:
            k.heard_at = math.inf  # stale: probing until its next answer
        return k

    def _dispatch(self, keys: list[BudgetKey]) -> None:
        """Move the frontier of every key in ``keys``: the store's (``MemoryBudgetStore``)."""
        raise NotImplementedError

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

    # -- a key's timer ------------------------------------------------------------------------

    def _arm(self, k: BudgetKey, now: float) -> None:
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
        k.timer = self._get_loop().call_later(max(delay, _MIN_DELAY), self._on_timer, k)

    def _on_timer(self, k: BudgetKey) -> None:
        k.timer = None
        k.timer_at = math.inf
        self._dispatch([k])

    # -- idle keys -------------------------------------------------------------------------

    def _check_idle(self, k: BudgetKey, now: float) -> bool:
        """Drop ``k`` if idle; else make sure the sweep looks at it again. True if dropped."""
        if k.unused(now) and self._keys.get(k.key) is k:
            k.stop_timer()
            del self._keys[k.key]
            return True
        if k.gc_at is None and not self._closed:
            at = k.quiet_at()
            if at > now:
                self._schedule_gc(k, at)
            # else: only in-flight units or waiters keep it; a release or removal re-checks.
        return False

    def _schedule_gc(self, k: BudgetKey, at: float) -> None:
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

    def _close_timers(self) -> None:
        """Cancel every timer: each key's and the sweep's."""
        for k in self._keys.values():
            k.stop_timer()
        if self._gc_timer is not None:
            self._gc_timer.cancel()
            self._gc_timer = None
