"""A ``FakeCDNServer`` on an event loop of its own, in a thread: for sync tests and fixtures of
any scope.

The ``fake_cdn`` fixture runs the fake on the test's event loop. A sync test that blocks that
loop (FastAPI's ``TestClient`` runs the app on a loop of its own and waits for it) then starves
the fake: the app's client gets no answer. On a thread of its own the fake answers whatever the
test's loops do, and outlives any one of them (a module- or session-scoped fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from ._server import FakeCDNServer


@contextlib.contextmanager
def fake_cdn_in_thread(**options: Any) -> Iterator[FakeCDNServer]:
    """Run a ``FakeCDNServer(**options)`` in a daemon thread until the block ends::

        with fake_cdn_in_thread(time_scale=0.01) as fake:
            ...  # fake.url, fake.token, fake.client(), fake.journal

    Its setup methods (``add_endpoint``, ``faults``...) may be called from the test's thread
    between requests; its journal read at any time.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-cdn", daemon=True)
    thread.start()

    async def start() -> FakeCDNServer:
        server = FakeCDNServer(**options)
        await server.start()
        return server

    async def stop(server: FakeCDNServer) -> None:
        await server.close()
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    try:
        server = asyncio.run_coroutine_threadsafe(start(), loop).result()
        try:
            yield server
        finally:
            asyncio.run_coroutine_threadsafe(stop(server), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
