"""Exact sliding-window budgets, as the fake server enforces them.

Every counted request (or purged path) keeps its own timer: it counts for exactly ``period``
seconds after it was stamped, then leaves the window. This is how DigitalOcean documents its
rate limits ("each request instead has its own timer"), and it is stricter than a token bucket,
which lets up to twice the limit through one window.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from typing import Literal

import attrs

Unit = Literal["request", "file"]


@attrs.frozen
class BudgetSpec:
    """One budget: at most ``limit`` units in any window of ``period`` seconds.

    Args:
        name: The budget's name (``"hourly"``, ``"minute"``, ``"cdn"``, ``"purge_files"``).
        limit: Units admitted in any sliding window of ``period`` seconds.
        period: The window length in seconds, before the server's ``time_scale`` applies.
        unit: ``"request"``: every request costs 1. ``"file"``: a purge costs its number of
            paths (a wildcard path is one); other requests cost nothing.
    """

    name: str
    limit: int
    period: float
    unit: Unit = "request"

    def cost(self, files: int) -> int:
        """Units a request carrying ``files`` purge paths takes from this budget.

        Args:
            files: The number of paths in the purge body (0 for any other request).

        Returns:
            The units to count.
        """
        return 1 if self.unit == "request" else files


#: DigitalOcean's documented budgets, in the order the server checks them.
DOCUMENTED_BUDGETS: tuple[BudgetSpec, ...] = (
    BudgetSpec("hourly", 5000, 3600.0),
    BudgetSpec("minute", 250, 60.0),
    BudgetSpec("cdn", 5, 10.0),
    BudgetSpec("purge_files", 50, 20.0, unit="file"),
)


class SlidingWindow:
    """The ledger of one budget key: ``(expiry, units)`` entries in stamping order.

    Entries are appended with ``now + period`` and the clock never goes back, so the deque stays
    sorted by expiry and expiring is a pop from the left. An entry stamped at ``t`` counts in
    ``[t, t + period)``.

    Args:
        limit: Units admitted in any window.
        period: Window length in (already scaled) seconds.
    """

    __slots__ = ("_entries", "_used", "limit", "period")

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self._entries: deque[tuple[float, int]] = deque()
        self._used = 0

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries and entries[0][0] <= now:
            self._used -= entries.popleft()[1]

    def used(self, now: float) -> int:
        """Units counted in the window ending at ``now``.

        Args:
            now: The current clock reading.

        Returns:
            The sum of the units of every unexpired entry.
        """
        self._expire(now)
        return self._used

    def remaining(self, now: float) -> int:
        """Units still admissible now (never negative, even after phantom spending).

        Args:
            now: The current clock reading.

        Returns:
            ``max(0, limit - used)``.
        """
        return max(0, self.limit - self.used(now))

    def fits(self, units: int, now: float) -> bool:
        """Whether ``units`` more would stay within the limit.

        Args:
            units: The cost of the request being considered.
            now: The current clock reading.

        Returns:
            True if admitting the request keeps the window at or under ``limit``.
        """
        return self.used(now) + units <= self.limit

    def add(self, units: int, now: float) -> None:
        """Count ``units`` stamped at ``now`` (no limit check: callers check first).

        Args:
            units: Units to count; zero or less is ignored.
            now: The stamp.
        """
        if units > 0:
            self._entries.append((now + self.period, units))
            self._used += units

    def oldest_expiry(self, now: float) -> float | None:
        """When the oldest counted entry leaves the window.

        Args:
            now: The current clock reading.

        Returns:
            That clock reading, or None when the window is empty.
        """
        self._expire(now)
        return self._entries[0][0] if self._entries else None

    def time_until_fits(self, units: int, now: float) -> float:
        """Seconds until a request of ``units`` would fit.

        Args:
            units: The cost of the request.
            now: The current clock reading.

        Returns:
            0 if it fits now; ``math.inf`` if it can never fit (``units > limit``); otherwise
            the delay until enough entries have expired.
        """
        if units > self.limit:
            return math.inf
        excess = self.used(now) + units - self.limit
        if excess <= 0:
            return 0.0
        for expiry, entry_units in self._entries:
            excess -= entry_units
            if excess <= 0:
                return expiry - now
        return math.inf  # pragma: no cover - unreachable: all entries expiring frees everything

    def __iter__(self) -> Iterator[tuple[float, int]]:
        return iter(self._entries)

    def __repr__(self) -> str:
        return f"SlidingWindow(limit={self.limit}, period={self.period}, used={self._used})"
