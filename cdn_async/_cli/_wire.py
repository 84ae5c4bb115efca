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
from ._output import err
from ._signals import Stop


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


#: The longest a stopped purge waits for the batch on the wire (its retries included): the
#: report comes well before a SIGKILL (docker stop sends it 10 s after SIGTERM, Kubernetes
#: 30 s).
STOP_WAIT = 5.0


async def wait_for_the_wire(wire: Wire, stop: Stop, *, shared: bool) -> bool:
    """After a stop signal cancelled the purge call (nothing more is sent): absorb the
    cancellation, say so, and wait up to ``STOP_WAIT`` for this process's purge requests on
    the wire to finish, their retries included; a second signal ends the wait (its
    cancellation is absorbed too). Says so when the wait runs out.

    Returns whether every batch sealed has settled, so the paths still open never left
    (never with ``shared``: the shared queue's drainer seals its batches apart)."""
    task = asyncio.current_task()
    assert task is not None
    task.uncancel()
    err(f"{stop.name or 'Interrupted'}: stopping; waiting for the batch on the wire...")
    try:
        async with asyncio.timeout(STOP_WAIT):
            if shared:
                await wire.until(lambda: wire.live <= 0)
                return False
            await wire.until(lambda: wire.settled >= wire.sealed)
            return True
    except asyncio.CancelledError:  # a second signal
        task.uncancel()
        return False
    except TimeoutError:
        err(f"The batch on the wire did not finish within {STOP_WAIT:g} s; not waiting.")
        return False
