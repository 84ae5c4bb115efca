"""One budget key of the in-memory store: its window ledger and the calls waiting on it, in
order, split at the *frontier*.

* ``BudgetKey``: a ``WindowLedger`` (``_ledger.py``: the units the key counts at a time
  ``now``) plus its queue. ``passing`` holds the waiters whose units fit on this key after every
  earlier waiter's, ``blocked`` holds the rest; the boundary between them is the frontier. A
  waiter in ``passing`` of some keys but not all has *reserved* its units there; the first
  waiter in ``blocked`` *blocks* the key for everyone behind it.
* ``Waiter``: one ``acquire`` call that could not be admitted at once, queued on every key it
  claims (what an admitted call then holds until its answer is a ``BudgetLease``,
  ``_budget_lease.py``).

Order. Every queue is in *virtual arrival time* order: the arrival time, the lead
(``_limits.priority_lead``: 3 periods of the shortest budget claimed) earlier for ``"high"``
and later for ``"low"``. Like plain arrival order it is
one total order over all keys, so two keys never disagree about who comes first; that is what
keeps stacked claims atomic and the argument below whole. A call that arrives with an earlier
virtual time than waiters already queued *overtakes* them: reserved ones step back behind it.

Why the frontier gives the scan rule of docs/design.md ("dispatch in arrival order; a waiter that
fits everywhere is admitted; one that does not reserves where it fits and blocks where it does
not") without scanning: on one key the frontier is the longest prefix of its queue whose units
fit, so it is exactly the set of waiters the scan would not block there. Admitting a waiter
moves its units from "reserved" to "in flight" on each of its keys, which leaves every key's
room for the others unchanged, so admissions never cascade. A key's frontier moves only when
its own room changes (an expiry, a hold or pause ending, a cancellation, a server sync), and
each move touches only the waiters that cross it: dispatch costs O(keys per waiter) per
admission, amortised, however many waiters are queued.

Nothing here knows the event loop's timers or the store: the store (``_budgets.py``) decides
when a key is settled and what admitting a waiter hands out.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from ._ledger import WindowLedger
from ._limits import Claim

__all__ = ["ADMITTED", "GONE", "WAITING", "BudgetKey", "Place", "Waiter"]

# Waiter states. A waiter leaves WAITING exactly once.
WAITING = 0
ADMITTED = 1
GONE = 2

#: Where ``BudgetKey.enqueue`` put a waiter: within the frontier; first beyond it (the key now
#: needs a timer); beyond it behind others; or ahead of waiters of a later virtual time (the
#: key's frontier must be settled again).
Place = Literal["passing", "head", "behind", "overtook"]


class Waiter:
    """One ``acquire`` call that could not be admitted at once."""

    __slots__ = ("claims", "fut", "max_wait", "parts", "pending", "state", "vt")

    def __init__(
        self,
        claims: tuple[Claim, ...],
        # Its BudgetLease once admitted (``_budget_lease.py`` imports this module, not back).
        fut: asyncio.Future[Any],
        parts: list[tuple[BudgetKey, int]],
        max_wait: float | None,
        vt: float,
    ) -> None:
        self.claims = claims
        self.vt = vt  # virtual arrival time: every queue is in this order
        self.fut = fut
        self.parts = parts  # (key, units) with each key once
        self.max_wait = max_wait
        self.pending = 0  # how many of its keys it is blocked on
        self.state = WAITING

    def withdraw(self) -> list[BudgetKey]:
        """Take a waiting call out of every queue; returns the keys whose room grew."""
        if self.state != WAITING:
            return []
        self.state = GONE
        for k, u in self.parts:
            k.drop(self, u)
        return [k for k, _ in self.parts]


class BudgetKey(WindowLedger):
    """A window ledger plus its waiter queue, split at the frontier, and its timer."""

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
        # Waiters within the frontier, in queue order, with their units on this key. A dict
        # gives O(1) removal from the middle (admission or cancellation of any of them).
        self.passing: dict[Waiter, int] = {}
        self.passing_units = 0
        # Waiters beyond the frontier, in queue order. Cancelled ones stay as tombstones
        # (skipped when reached, compacted when they outnumber the live ones). None while
        # nobody is blocked: most keys never queue anyone, and a deque costs ~600 bytes.
        self.blocked: deque[tuple[Waiter, int]] | None = None
        self.blocked_live = 0
        # The store's one timer for this key: armed only while someone is blocked.
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf
        self.gc_at: float | None = None  # when the idle sweep will look at this key

    # -- the queue ----------------------------------------------------------------------------

    def fits(self, u: int, now: float) -> bool:
        """Whether ``u`` more units pass now behind those already passing: not paused, room
        in the window, and no probe to wait for. Only with nobody blocked (the caller's
        business: a blocked head goes first)."""
        ex = self.expiries
        if (ex and ex[0] <= now) or self.held:  # the common case needs no expire call
            self.expire(now)
        return (
            self.paused_until <= now
            and self.in_flight + self.unexpired + self.held + self.passing_units + u <= self.limit
            and not self.waits_for_probe(self.passing_units, now)
        )

    def enqueue(self, w: Waiter, u: int, now: float) -> Place:
        """Put ``w`` (``u`` units) in this key's queue at its virtual time."""
        if self.passing and next(reversed(self.passing)).vt > w.vt:
            self._overtake(w, u)
            return "overtook"
        if self.blocked_live and self.blocked is not None and self.blocked[-1][0].vt > w.vt:
            self._overtake(w, u)
            return "overtook"
        if not self.blocked_live:
            self.blocked = None  # only tombstones left, if anything
            if self.fits(u, now):
                self.passing[w] = u
                self.passing_units += u
                return "passing"
            self.blocked = deque(((w, u),))
            self.blocked_live = 1
            w.pending += 1
            return "head"
        assert self.blocked is not None
        self.blocked.append((w, u))
        self.blocked_live += 1
        w.pending += 1
        return "behind"

    def _overtake(self, w: Waiter, u: int) -> None:
        """Put ``w`` at its virtual time, ahead of later waiters: reserved ones step back."""
        passing = self.passing
        back: list[tuple[Waiter, int]] = []
        while passing and next(reversed(passing)).vt > w.vt:
            other, units = passing.popitem()
            self.passing_units -= units
            other.pending += 1
            back.append((other, units))
        blocked = self.blocked if self.blocked is not None else deque()
        self.blocked = blocked
        blocked.extendleft(back)  # popped last-first: extendleft restores their order
        i = len(blocked)
        while i > 0 and blocked[i - 1][0].vt > w.vt:
            i -= 1
        blocked.insert(i, (w, u))
        self.blocked_live += 1 + len(back)
        w.pending += 1

    def drop(self, w: Waiter, u: int) -> None:
        """Forget ``w`` (no longer waiting), wherever it stands in this queue."""
        if self.passing.pop(w, None) is not None:
            self.passing_units -= u
        else:
            self.blocked_live -= 1
            if self.blocked is not None and len(self.blocked) > 2 * self.blocked_live + 16:
                # Mass cancellation: drop tombstones so the queue stays O(live waiters).
                self.blocked = deque(e for e in self.blocked if e[0].state == WAITING)

    def admit(self, w: Waiter, u: int) -> None:
        """``w`` passed on all its keys: its reserved units here become in-flight ones."""
        del self.passing[w]
        self.passing_units -= u
        self.take(u)

    def settle(self, now: float, admit: Callable[[Waiter, str], None]) -> None:
        """Put the frontier where the key's room says; ``admit`` each waiter that thereby
        passes on all its keys (it leaves ``in_flight + passing_units`` unchanged on every
        key, so it never moves another frontier)."""
        self.expire(now)
        # Units the queue may take on top of what is in flight. A paused key takes nothing.
        cap = self.limit - self.unexpired - self.held if self.paused_until <= now else 0
        passing = self.passing
        # One request at a time while probing: all but the first in the queue step back.
        probing = self.probing(now)
        one = 0 if self.in_flight else 1
        # Shrink (a sync hold or a pause took room away): the latest in the queue step back.
        while passing and (
            self.in_flight + self.passing_units > cap or (probing and len(passing) > one)
        ):
            w, u = passing.popitem()
            self.passing_units -= u
            if self.blocked is None:
                self.blocked = deque()
            self.blocked.appendleft((w, u))
            self.blocked_live += 1
            w.pending += 1
        # Advance: blocked waiters cross in queue order while their units fit.
        blocked = self.blocked
        while blocked:
            w, u = blocked[0]
            if w.state != WAITING:
                blocked.popleft()  # tombstone
                continue
            if self.in_flight + self.passing_units + u > cap or (
                probing and (self.in_flight or passing)
            ):
                break
            blocked.popleft()
            self.blocked_live -= 1
            passing[w] = u
            self.passing_units += u
            w.pending -= 1
            if w.pending == 0:
                admit(w, self.budget)
        if blocked is not None and not blocked:
            self.blocked = None

    # -- what the store asks of it --------------------------------------------------------------

    def head_delay(self, now: float) -> float:
        """Seconds until the first blocked waiter could fit (``inf``: only an answer can make
        room). Someone must be blocked."""
        blocked = self.blocked
        assert blocked is not None  # blocked_live > 0
        while blocked[0][0].state != WAITING:
            blocked.popleft()
        if self.waits_for_probe(self.passing_units, now):
            return math.inf  # the probe's answer makes room, or not
        return self.fit_delay(self.passing_units + blocked[0][1], now)

    def waiters(self) -> list[Waiter]:
        """Every live waiter on this key, in queue order."""
        queued = list(self.passing)
        queued.extend(w for w, _ in self.blocked or () if w.state == WAITING)
        return queued

    def units_ahead(self, vt: float) -> int:
        """Units the live waiters that go before a newcomer of virtual time ``vt`` claim here
        (those of a later virtual time step back behind it)."""
        ahead = sum(u for w, u in self.passing.items() if w.vt <= vt)
        return ahead + sum(u for w, u in self.blocked or () if w.state == WAITING and w.vt <= vt)

    def unused(self, now: float) -> bool:
        """Nothing counted, paused or waiting: the store may forget this key."""
        return self.is_idle(now) and not self.passing and not self.blocked_live

    def stop_timer(self) -> None:
        """Cancel the key's timer, if set."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
