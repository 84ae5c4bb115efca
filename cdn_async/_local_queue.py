"""The local queue of a shared store's acquires on one key set: only its head asks the shared
state (Redis, the SQLite file), and it naps between attempts until the time the store named,
or until this process gets an answer. The queue is in virtual-arrival-time order, as the
in-process store's (``priority``: see ``MemoryBudgetStore.acquire``), so priorities hold among
this process's calls for the same budgets. Used by ``RedisBudgetStore`` and
``SQLiteBudgetStore``; it imports nothing of either."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class PriorityLock:
    """A lock handed to waiters in ``(virtual time, arrival)`` order."""

    __slots__ = ("_locked", "_seq", "_waiters")

    def __init__(self) -> None:
        self._locked = False
        self._seq = itertools.count()
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []

    async def acquire(self, vt: float) -> None:
        if not self._locked and not self._waiters:
            self._locked = True
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (vt, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed the lock in the same tick as cancelled: pass it on
            raise

    def release(self) -> None:
        waiters = self._waiters
        while waiters:
            _, _, fut = heapq.heappop(waiters)
            if not fut.done():  # skip the cancelled
                fut.set_result(None)  # handed over: the lock stays held
                return
        self._locked = False


class Group:
    """Acquires queued on one key set."""

    __slots__ = ("count", "lock", "sleeper")

    def __init__(self) -> None:
        self.lock = PriorityLock()
        self.count = 0
        self.sleeper: asyncio.Future[None] | None = None

    async def nap(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        """Sleep ``delay`` s, or less if ``wake`` is called (a slot may be free)."""
        fut: asyncio.Future[None] = loop.create_future()
        self.sleeper = fut
        handle = loop.call_later(delay, _resolve, fut)
        try:
            await fut
        finally:
            handle.cancel()
            self.sleeper = None

    def wake(self) -> None:
        if self.sleeper is not None:
            _resolve(self.sleeper)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
