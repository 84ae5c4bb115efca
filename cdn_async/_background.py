"""The background purges of one client (and its copies): started, watched, and cut short by
``close()``, which returns what each left undone."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any

from ._call import CALL
from ._logs import logger
from ._models import PurgeReport
from ._purge_handle import PurgeHandle
from ._purge_plan import PurgeProgress
from .errors import CDNError, PurgeError

#: Why a background purge's path failed when the client closed before it was confirmed.
_LEFT = "the client was closed before this path was confirmed purged"


class Background:
    """Runs purges as tasks the client owns; see ``Endpoints.purge_in_background``."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[PurgeReport]] = set()
        #: Set when the client starts closing: purges that fail from then on were cut short.
        self.closing = False
        self._left: list[PurgeReport] = []

    def start(
        self,
        endpoint_id: str,
        paths: list[str],
        purge: Callable[[Callable[[PurgeProgress], None]], Coroutine[Any, Any, PurgeReport]],
    ) -> PurgeHandle:
        """Run ``purge(on_batch)`` as a task of the client; ``on_batch`` must be passed on."""
        confirmed: list[str] = []

        async def run() -> PurgeReport:
            try:
                return await purge(lambda p: confirmed.extend(p.confirmed))
            except asyncio.CancelledError:
                # Cancelled only by close(), when the purge backend did not answer first: the
                # paths not confirmed are reported, never dropped.
                done = set(confirmed)
                rest = {p: CDNError(_LEFT) for p in dict.fromkeys(paths) if p not in done}
                raise PurgeError(PurgeReport(endpoint_id, tuple(confirmed), rest, 0, 0.0)) from None

        # A call of its own, not part of the caller's (its records carry their own call id).
        context = contextvars.copy_context()
        context.run(CALL.set, None)
        task = asyncio.get_running_loop().create_task(run(), context=context)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return PurgeHandle(endpoint_id, tuple(paths), task)

    def _finished(self, task: asyncio.Task[PurgeReport]) -> None:
        self._tasks.discard(task)
        exc = task.exception()  # retrieved here, so a dropped handle never warns
        if exc is None:
            report = task.result()
            logger.info(
                "background purge of %s: %d path(s) purged in %d request(s)",
                report.endpoint_id,
                len(report.purged),
                report.requests,
                extra={"endpoint_id": report.endpoint_id},
            )
        elif isinstance(exc, PurgeError):
            report = exc.report
            logger.warning(
                "background purge of %s: %d path(s) purged, %d failed: %s",
                report.endpoint_id,
                len(report.purged),
                len(report.failed),
                exc,
                extra={"endpoint_id": report.endpoint_id},
            )
            if self.closing:
                self._left.append(report)
        else:
            logger.error("background purge failed: %s: %s", type(exc).__name__, exc)

    async def aclose(self) -> list[PurgeReport]:
        """End every background purge (``closing`` set, the client stopped sending and its purge
        backend closed: they end at once) and return the reports of those the close cut short:
        what each purged, and each path left, failed."""
        self.closing = True
        tasks = list(self._tasks)
        await asyncio.sleep(0)  # let purges the backend just answered finish on their own
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        left, self._left = self._left, []
        if left:
            logger.warning(
                "close(): %d background purge(s) cut short; %d path(s) not confirmed purged",
                len(left),
                sum(len(r.failed) for r in left),
            )
        return left
