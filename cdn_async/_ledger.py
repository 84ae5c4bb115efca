"""The exact sliding window of one budget key, as plain arithmetic on times given to it.

``WindowLedger`` knows nothing of asyncio, waiters or clocks: every method takes ``now``. That
keeps the window rules in one place that is cheap to test alone and easy to mirror in another
store (the Redis Lua script keeps the same fields).

The rule (docs/design.md, "Budgets", 1): a request counts from the moment it is sent
(``take``) until ``period`` seconds after its answer arrives (``release``). The server stamps a
request somewhere between send and answer, so a unit this ledger has stopped counting can no
longer be inside any server window that a new request could share.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from collections.abc import Iterator

__all__ = ["WindowLedger"]


class WindowLedger:
    """Units counted in one budget window: in flight, released-but-unexpired, and held.

    Args:
        limit: Units allowed in any window of ``period`` seconds.
        period: The window length in seconds.

    Attributes:
        in_flight: Units admitted whose answer has not arrived yet.
        unexpired: Units released whose expiry (release time + period) is still ahead.
        held: Phantom units another client spent, per the server's headers (until ``hold_until``).
        hold_until: When ``held`` stops counting (``-inf`` when nothing is held).
        paused_until: Admit nothing before this time (after a 429; ``-inf`` when not paused).
    """

    __slots__ = (
        "expiries",
        "heard_at",
        "held",
        "hold_until",
        "in_flight",
        "later_holds",
        "limit",
        "paused_until",
        "period",
        "refused",
        "unexpired",
    )

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self.in_flight = 0
        # Released units and when they expire, flat in release order: time, units, time,
        # units... One deque (a deque costs ~600 bytes; 100,000 endpoint keys add up) and no
        # allocation per release. With one period per key, release order is expiry order, so
        # expiring is a popleft loop; releases at the same instant share one entry.
        self.expiries: deque[float] = deque()
        self.unexpired = 0
        self.held = 0
        self.hold_until = -math.inf
        # Steps of the hold after ``hold_until``: (until, units), until rising, units falling.
        self.later_holds: list[tuple[float, int]] = []
        self.paused_until = -math.inf
        self.refused = False
        # The first answer that synced this ledger (+inf: its store had heard of the key before
        # but forgot it while idle; probing until it hears again).
        self.heard_at = -math.inf

    def expire(self, now: float) -> None:
        """Drop every released entry and hold whose time has come (``expiry <= now``)."""
        ex = self.expiries
        while ex and ex[0] <= now:
            ex.popleft()
            self.unexpired -= int(ex.popleft())
        while self.held and self.hold_until <= now:
            later = self.later_holds
            if later:
                self.hold_until, self.held = later.pop(0)
            else:
                self.held = 0

    def used(self, now: float) -> int:
        """Units counted at ``now``: in flight + unexpired + held."""
        self.expire(now)
        return self.in_flight + self.unexpired + self.held

    def paused_for(self, now: float) -> float:
        """Seconds of pause left at ``now`` (0.0 when not paused)."""
        return max(0.0, self.paused_until - now)

    def take(self, units: int) -> None:
        """Count ``units`` as sent now (in flight)."""
        self.in_flight += units

    def give_back(self, units: int) -> None:
        """Uncount ``units`` that were taken but never sent (they cannot be in any window)."""
        self.in_flight -= units

    def release(self, units: int, now: float) -> float:
        """The answer for ``units`` in flight arrived at ``now``: they expire at ``now + period``.

        Returns:
            The expiry time.
        """
        self.in_flight -= units
        self.unexpired += units
        expiry = now + self.period
        ex = self.expiries
        if ex and ex[-2] == expiry:
            ex[-1] += units
        else:
            ex.append(expiry)
            ex.append(units)
        return expiry

    def sync(self, remaining: int, reset_after: float, now: float, refused: bool = False) -> bool:
        """Apply the server's view: only ``remaining`` units are left, per an answer at ``now``.

        If the server counts more than this ledger does, another client spent the difference:
        that many phantom units are held until ``now + reset_after``. The hold is the most
        any answer saw within its own memory, a staircase that steps down as observations age
        (a single high reading is not kept alive by later lower ones, and answers arriving out
        of order cannot lower what a newer one saw). It is never negative: when this ledger
        counts more, the server has not stamped ours yet or has already expired some; either
        way counting more is the safe side.

        Args:
            remaining: ``ratelimit-remaining`` as the server sent it (``limit`` is the
                capacity, net of any reserve: others' units come out of the reserve first).
            reset_after: How long what this answer saw is kept, in seconds.
            now: The answer's arrival.
            refused: The answer was a 429: the ledger probes (``probing``) until an answer
                that was not.

        Returns:
            Whether the hold or the probing state changed (else nothing to re-dispatch).
        """
        self.expire(now)
        changed = self.refused != refused
        self.refused = refused
        if math.isinf(self.heard_at):
            self.heard_at = now
        remaining = min(max(remaining, 0), self.limit)
        phantom = (self.limit - remaining) - (self.in_flight + self.unexpired)
        if phantom <= 0 or reset_after <= 0:
            return changed
        return self._hold(phantom, now + reset_after) or changed

    def _hold(self, units: int, until: float) -> bool:
        """Raise the hold to at least ``units`` until ``until``; True if it changed."""
        steps = [(self.hold_until, self.held), *self.later_holds] if self.held else []
        out: list[tuple[float, int]] = []
        start_covered = False
        for step_until, step_units in steps:
            if step_until <= until:
                out.append((step_until, max(step_units, units)))
            else:
                if not start_covered and step_units < units:
                    out.append((until, units))
                out.append((step_until, step_units))
                start_covered = True
        if not start_covered and not (out and out[-1][0] >= until):
            out.append((until, units))
        merged: list[tuple[float, int]] = []
        for step in out:  # a step no higher than the next one is covered by it
            while merged and merged[-1][1] <= step[1]:
                merged.pop()
            merged.append(step)
        if merged == steps:
            return False
        self.hold_until, self.held = merged[0]
        self.later_holds = merged[1:]
        return True

    def probing(self, now: float) -> bool:
        """Whether requests go one at a time (docs/design.md, "Budgets", 6).

        A reading of the server's count says what others spent only when none of our own
        requests was in flight beside it (one sent after the answered one was stamped makes
        theirs look like ours). So on a key the server's headers describe, one request at a
        time while that matters: in the first period after its first answer, while another
        client's units are held, after a refusal (until an answer that was not), and on a
        key the store forgot while it was idle, until it hears again. It costs no
        throughput: at most ``limit`` requests per period fit anyway, one round trip apart.
        """
        self.expire(now)
        return self.refused or self.held > 0 or now < self.heard_at + self.period

    def waits_for_probe(self, queued: int, now: float) -> bool:
        """Whether one more request must wait for the request already out (or ``queued``
        units already let through) because the ledger is probing."""
        return bool(self.in_flight or queued) and self.probing(now)

    def pause(self, resume_after: float, now: float) -> None:
        """Admit nothing until ``now + resume_after``; extends, never shortens, a pause."""
        self.paused_until = max(self.paused_until, now + resume_after)

    def fit_delay(self, units: int, now: float) -> float:
        """Seconds from ``now`` until ``units`` more would fit, assuming nothing else changes.

        ``units`` may include units reserved by earlier waiters. The answer accounts for
        expiries, the end of a hold and the end of a pause, all in time order.

        Returns:
            0.0 if they fit now, ``math.inf`` if they can only fit after some in-flight units are
            released (a release is not a time event this ledger can foresee).
        """
        self.expire(now)
        excess = self.in_flight + self.unexpired + self.held + units - self.limit
        at = now
        if excess > 0:
            if self.in_flight + units > self.limit:
                return math.inf
            # The in-flight check above says the expiries and the hold's end free enough.
            for when, freed in self._frees():
                excess -= freed
                if excess <= 0:
                    at = when
                    break
        at = max(at, self.paused_until)
        return at - now

    def queue_delay(self, ahead: int, units: int, now: float) -> float:
        """Seconds from ``now`` until ``units`` more fit behind ``ahead`` units admitted first
        (the waiters ahead, in order), at least: exact while nothing but time changes, as
        ``fit_delay`` is, when those units fit in what frees without answers; else a lower
        bound from the window rule (every unit holds a slot of ``limit`` for at least
        ``period``: one admitted at ``t`` frees no sooner than ``t + period``, and one in
        flight no sooner than ``now + period``). A window admits at most ``limit`` units, so
        a line longer than that waits one more period per ``limit`` units.
        """
        delay = self.fit_delay(ahead + units, now)
        if delay != math.inf:
            return delay
        start = max(now, self.paused_until)
        period = self.period
        free = self.limit - (self.in_flight + self.unexpired + self.held)
        # When each slot of the window frees first, as (time, slots), in time order.
        slots: list[tuple[float, int]] = [(start, free)] if free > 0 else []
        skip = max(0, -free)  # more counted than the limit: the first frees open no slot
        for when, n in self._frees():
            taken = min(skip, n)
            skip -= taken
            if n > taken:
                slots.append((max(when, start), n - taken))
        if self.in_flight:
            slots.append((max(now + period, start), self.in_flight))
        slots.sort()
        # The k-th unit of the line (0-based) takes the k-th slot time in the order slots free
        # and free again a period after each use. Once every slot frees within one period of
        # the first, that order repeats every period: skip whole rounds.
        k = ahead + units - 1
        while slots and slots[-1][0] - slots[0][0] > period:
            at, n = slots.pop(0)
            if k < n:
                return at - now
            k -= n
            bisect.insort(slots, (at + period, n))
        total = sum(n for _, n in slots)
        if not total:
            return math.inf
        rounds, k = divmod(k, total)
        for at, n in slots:
            if k < n:
                return at + rounds * period - now
            k -= n
        raise AssertionError("unreachable: k < total")

    def _frees(self) -> Iterator[tuple[float, int]]:
        """What frees when, in time order: released units at their expiry, held units as the
        hold steps down."""
        ex = self.expiries
        ours = ((ex[i], int(ex[i + 1])) for i in range(0, len(ex), 2))
        steps = [(self.hold_until, self.held), *self.later_holds] if self.held else []
        lower = [units for _, units in steps[1:]] + [0] if steps else []
        theirs = (
            (until, units - below) for (until, units), below in zip(steps, lower, strict=True)
        )
        return heapq.merge(ours, theirs)

    def next_free_in(self, now: float) -> float:
        """Seconds until a counted unit frees (0.0 if some are free now, inf if all in flight)."""
        self.expire(now)
        if self.in_flight + self.unexpired + self.held < self.limit:
            return 0.0
        candidates: list[float] = []
        if self.expiries:
            candidates.append(self.expiries[0])
        if self.held:
            candidates.append(self.hold_until)
        return min(candidates) - now if candidates else math.inf

    def quiet_at(self) -> float:
        """The time after which only in-flight units can still be counted (maybe in the past)."""
        last = self.expiries[-2] if self.expiries else -math.inf
        held = self.later_holds[-1][0] if self.later_holds else self.hold_until
        return max(last, held if self.held else -math.inf, self.paused_until)

    def is_idle(self, now: float) -> bool:
        """True when nothing is counted and nothing is paused: the ledger can be forgotten."""
        self.expire(now)
        return not (self.in_flight or self.unexpired or self.held) and self.paused_until <= now
