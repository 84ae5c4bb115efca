"""The local queue of a shared store's acquires on one key set: only its head asks the shared
state (Redis, the SQLite file), and it naps between attempts until the time the store named,
or until this process gets an answer. The queue is in virtual-arrival-time order, as the
in-process store's (``priority``: see ``MemoryBudgetStore.acquire``), so priorities hold among
this process's calls for the same budgets: a call that arrives with an earlier virtual time
than the head's wakes the head, which steps back behind it before it asks again (the head
holds nothing between attempts, so stepping back costs nothing; ``Group.enter``,
``PriorityLock.passed``). Used by ``RedisBudgetStore`` and ``SQLiteBudgetStore``; it imports
nothing of either."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from ._ledger import WindowLedger
from ._limits import Claim

_T = TypeVar("_T")


class StepBack(Exception):
    """The head steps back: a call of an earlier virtual time queued behind it."""


class PriorityLock:
    """A lock handed to waiters in ``(virtual time, arrival)`` order."""

    __slots__ = ("_locked", "_seq", "_waiters", "holder_vt")

    def __init__(self) -> None:
        self._locked = False
        self._seq = itertools.count()
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        #: The virtual time of the holder (the head).
        self.holder_vt = 0.0

    def passed(self) -> bool:
        """Whether a waiter of an earlier virtual time than the holder's is queued."""
        return bool(self._waiters) and self._waiters[0][0] < self.holder_vt

    async def acquire(self, vt: float) -> None:
        if not self._locked and not self._waiters:
            self._locked = True
            self.holder_vt = vt
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
            vt, _, fut = heapq.heappop(waiters)
            if not fut.done():  # skip the cancelled
                fut.set_result(None)  # handed over: the lock stays held
                self.holder_vt = vt
                return
        self._locked = False


class Group:
    """Acquires queued on one key set."""

    __slots__ = ("count", "line", "lock", "ready_at", "sleeper")

    def __init__(self) -> None:
        self.lock = PriorityLock()
        self.count = 0
        self.sleeper: asyncio.Future[None] | None = None
        #: Each queued acquire's virtual time and units per key (for ``admission_delay``).
        self.line: dict[object, tuple[float, dict[str, int]]] = {}
        #: When the shared state last said the head's units could fit, at the soonest.
        self.ready_at = 0.0

    async def run(self, vt: float, units: dict[str, int], head: Callable[[], Awaitable[_T]]) -> _T:
        """Queue at virtual time ``vt`` (``units`` per key, for estimates), then, as the head,
        run ``head`` (the store's attempts). A call that queues with an earlier virtual time
        wakes the head; ``head`` raises ``StepBack`` (``check_passed``) before its next
        attempt, and queues again behind that call."""
        me = object()
        self.line[me] = (vt, units)
        try:
            while True:
                if self.lock.holder_vt > vt:
                    self.wake()  # the head goes after this call: it steps back
                await self.lock.acquire(vt)
                try:
                    return await head()
                except StepBack:
                    continue
                finally:
                    self.lock.release()
        finally:
            del self.line[me]

    def check_passed(self) -> None:
        """Raise ``StepBack`` if a call of an earlier virtual time than the head's queued."""
        if self.lock.passed():
            raise StepBack

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


class LocalQueue:
    """A shared store's queued acquires, one ``Group`` per key set (made on the first call,
    dropped when its last call leaves): what ``RedisBudgetStore`` and ``SQLiteBudgetStore``
    both keep of their own process's calls."""

    __slots__ = ("groups",)

    def __init__(self) -> None:
        self.groups: dict[tuple[str, ...], Group] = {}

    async def run(
        self,
        keyset: tuple[str, ...],
        vt: float,
        units: dict[str, int],
        head: Callable[[Group], Awaitable[_T]],
    ) -> _T:
        """``Group.run`` in the group of ``keyset``; ``head`` is given that group."""
        group = self.groups.get(keyset)
        if group is None:
            group = self.groups[keyset] = Group()
        group.count += 1
        try:
            return await group.run(vt, units, lambda: head(group))
        finally:
            group.count -= 1
            if group.count == 0 and self.groups.get(keyset) is group:
                del self.groups[keyset]

    def wake_all(self) -> None:
        """Wake every head: room may have freed (an answer, a pause, a closed store)."""
        for group in self.groups.values():
            group.wake()

    def waiters(self) -> dict[str, int]:
        """Queued calls per key (a call counts on every key of its set)."""
        waiters: dict[str, int] = {}
        for keyset, group in self.groups.items():
            for key in keyset:
                waiters[key] = waiters.get(key, 0) + group.count
        return waiters


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def line_estimate(
    groups: Mapping[tuple[str, ...], Group],
    parts: Sequence[tuple[Claim, int]],
    vt: float,
    lock_now: float,
    now: float,
    ledger: Callable[[Claim], WindowLedger | None],
) -> tuple[float, str]:
    """A shared store's ``admission_delay``, from what its process knows without asking the
    shared state: per key, the units of this process's queued calls that go before a call of
    virtual time ``vt`` (every group: key sets overlap), fitted into what the process's own
    ledger of the key counts (``ledger``; None: nothing known, an empty window); and no
    sooner than the shared state last said the head of the same key set could fit, when that
    head goes before the call. Other processes' units can only make the wait longer: a lower
    bound. ``lock_now`` is the clock of ``vt`` and ``Group.ready_at``, ``now`` the ledgers'.
    """
    worst, budget = 0.0, ""
    for c, units in parts:
        ahead = sum(
            line_units.get(c.key, 0)
            for group in groups.values()
            for other_vt, line_units in group.line.values()
            if other_vt <= vt
        )
        led = ledger(c) or WindowLedger(c.limit, c.period)
        delay = led.queue_delay(ahead, units, now)
        if delay > worst:
            worst, budget = delay, c.budget
    group = groups.get(tuple(c.key for c, _ in parts))
    if group is not None and group.lock.holder_vt <= vt and group.ready_at - lock_now > worst:
        worst, budget = group.ready_at - lock_now, parts[0][0].budget
    return worst, budget
