"""``PurgeHandle``: a purge the client runs in the background for a caller that returns at once.

A web handler that answers 202 hands its paths to the client (``purge_in_background``) and
gets this handle. The purge is a task of the client, not of the handler: cancelling the
handler (a client that hung up, a handler timeout) does not cancel it, and awaiting the
handle from a task that is then cancelled leaves it running (the wait is shielded). The
handle may be dropped: its outcome is logged, and ``CDNClient.close()`` returns the report of
every background purge it cut short.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

from ._models import PurgeReport


class PurgeHandle:
    """A purge running in the background (``cdn.endpoints.purge_in_background``).

    ``await handle`` waits for it (without cancelling it if the waiter is cancelled) and
    returns its ``PurgeReport``, or raises what ``purge`` raises (``PurgeError``, whose report
    says which paths were purged and which failed).

    Attributes:
        endpoint_id: The endpoint purged.
        paths: The paths handed over (normalised).
    """

    __slots__ = ("_task", "endpoint_id", "paths")

    def __init__(
        self, endpoint_id: str, paths: tuple[str, ...], task: asyncio.Task[PurgeReport]
    ) -> None:
        self.endpoint_id = endpoint_id
        self.paths = paths
        self._task = task

    def __repr__(self) -> str:
        state = "done" if self._task.done() else "running"
        return f"<PurgeHandle {self.endpoint_id} paths={len(self.paths)} {state}>"

    def done(self) -> bool:
        """Whether the purge has ended (every path purged or failed)."""
        return self._task.done()

    def __await__(self) -> Generator[Any, None, PurgeReport]:
        return asyncio.shield(self._task).__await__()
