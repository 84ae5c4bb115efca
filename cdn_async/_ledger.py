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

import math
from collections import deque

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
        "held",
        "hold_until",
        "in_flight",
        "limit",
        "paused_until",
        "period",
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
        self.paused_until = -math.inf

    def expire(self, now: float) -> None:
        """Drop every released entry and hold whose time has come (``expiry <= now``)."""
        ex = self.expiries
        while ex and ex[0] <= now:
            ex.popleft()
            self.unexpired -= int(ex.popleft())
        if self.held and self.hold_until <= now:
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

    def sync(self, remaining: int, reset_after: float, now: float) -> bool:
        """Apply the server's view: only ``remaining`` units are left until ``now + reset_after``.

        If the server counts more than this ledger does, another client spent the difference:
        hold that many phantom units until ``now + reset_after``. Answers can arrive out of
        order, so an unexpired hold is only ever raised, never lowered, by a later answer (an
        older answer would otherwise clear what a newer one saw). The hold is never negative:
        when this ledger counts more, the server has not stamped ours yet or has already
        expired some; either way counting more is the safe side.

        Returns:
            Whether the hold changed (else there is nothing to re-dispatch).
        """
        self.expire(now)
        remaining = min(max(remaining, 0), self.limit)
        phantom = (self.limit - remaining) - (self.in_flight + self.unexpired)
        if phantom <= 0 or reset_after <= 0:
            return False
        if self.held and self.hold_until > now:
            if phantom <= self.held and now + reset_after <= self.hold_until:
                return False
            self.held = max(self.held, phantom)
            self.hold_until = max(self.hold_until, now + reset_after)
        else:
            self.held = phantom
            self.hold_until = now + reset_after
        return True

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
            held = self.held
            hold_until = self.hold_until
            found = False
            ex = self.expiries
            for i in range(0, len(ex), 2):
                expiry, freed = ex[i], int(ex[i + 1])
                if held and hold_until <= expiry:
                    excess -= held
                    held = 0
                    if excess <= 0:
                        at, found = hold_until, True
                        break
                excess -= freed
                if excess <= 0:
                    at, found = expiry, True
                    break
            if not found:
                # Only the hold is left to end; the in-flight check above says that suffices.
                at = hold_until
        at = max(at, self.paused_until)
        return at - now

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
        return max(last, self.hold_until if self.held else -math.inf, self.paused_until)

    def is_idle(self, now: float) -> bool:
        """True when nothing is counted and nothing is paused: the ledger can be forgotten."""
        self.expire(now)
        return not (self.in_flight or self.unexpired or self.held) and self.paused_until <= now
