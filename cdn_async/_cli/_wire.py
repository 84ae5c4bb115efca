"""``Wire``: an event hook that tells a purge command what its requests are doing, so that a
stopped purge knows when the batch on the wire has settled and what the server accepted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..events import (
    BudgetWaited,
    Event,
    PurgeBatchSent,
    RateLimitPaused,
    RequestSent,
    ResponseReceived,
    RetryScheduled,
)


def _is_purge(path: str) -> bool:
    return path.endswith("/cache")


class Wire:
    """An event hook on this process's purge requests: how many are live (sent, and not
    finished: a retry's backoff or 429 pause included), for how long any was on the wire, its
    sealed batches not yet settled (the engine's ``PurgeBatchSent`` comes after the callers
    heard the outcome), and every second its requests waited for their budgets."""

    def __init__(self) -> None:
        #: Purge requests sent and not finished. A retry is announced (``RetryScheduled``,
        #: ``RateLimitPaused``) in the same step as the answer before it, so the count never
        #: reads 0 between two attempts of one request.
        self.live = 0
        self.on_wire = 0
        self.sealed = 0
        self.settled = 0
        #: Paths of every batch the server accepted (``PurgeBatchSent``).
        self.accepted: set[str] = set()
        self.waited = 0.0
        #: Seconds with at least one purge request of this process on the wire.
        self.wire_time = 0.0
        self._since = 0.0
        self._changed = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self._changed.set()
        if isinstance(event, BudgetWaited):
            self.waited += event.wait_s
        elif not _is_purge(getattr(event, "path", "")):
            if isinstance(event, PurgeBatchSent):
                self.settled += 1
                if event.ok:
                    self.accepted.update(event.paths)
        elif isinstance(event, RequestSent):
            if self.on_wire == 0:
                self._since = time.monotonic()
            self.on_wire += 1
            if event.attempt == 1:
                self.sealed += 1
                self.live += 1
        elif isinstance(event, ResponseReceived):
            self.on_wire -= 1
            self.live -= 1
            if self.on_wire == 0:
                self.wire_time += time.monotonic() - self._since
        elif isinstance(event, RetryScheduled | RateLimitPaused):
            self.live += 1

    async def until(self, done: Callable[[], bool]) -> None:
        """Wait until ``done()`` holds (checked after each event)."""
        while not done():
            self._changed.clear()
            await self._changed.wait()
