"""The local FIFO of acquires on one key set: only its head asks Redis, and it naps between
attempts until the time the script named, or until this process gets an answer."""

from __future__ import annotations

import asyncio


class Group:
    """Acquires queued on one key set."""

    __slots__ = ("count", "lock", "sleeper")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()  # FIFO: asyncio.Lock wakes waiters in arrival order
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
