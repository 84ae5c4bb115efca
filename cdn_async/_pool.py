"""The connection pool and the client's lifetime, shared by every copy of a client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from types import SimpleNamespace
from typing import Any, TypeVar

import aiohttp

from .errors import CDNError

_T = TypeVar("_T")


class Wire:
    """Whether an attempt's request may have been written to a connection yet.

    Set by a trace hook on the sessions the client creates; an attempt on a session we
    cannot trace starts as written (the safe side: its units then wait for its answer).
    """

    __slots__ = ("written",)

    def __init__(self, written: bool) -> None:
        self.written = written


async def on_headers_sent(
    session: aiohttp.ClientSession,
    ctx: SimpleNamespace,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    trace = ctx.trace_request_ctx
    wire = trace.get("wire") if isinstance(trace, Mapping) else None
    if isinstance(wire, Wire):
        wire.written = True


def consume(task: asyncio.Task[Any]) -> None:
    # A cancelled exchange may still end in an error; mark it seen (no "never retrieved").
    if not task.cancelled():
        task.exception()


class Pool:
    """The aiohttp session, made on first use, and the client's lifetime: shared by every
    copy of a client."""

    def __init__(self, http: aiohttp.ClientSession | None, owns: bool) -> None:
        self._http = http
        self._owns = owns
        #: Only sessions the client creates carry the trace hook that tells "written".
        self.traced = False
        self.closed = False
        #: Whether the server has answered yet, and the lock that sends requests one at a
        #: time until it has.
        self.heard = False
        self.first_answer = asyncio.Lock()
        #: Tasks waiting on a budget or a backoff (ended by ``shut``), and those of them
        #: that ``shut`` cancelled.
        self.waiting: set[asyncio.Task[Any]] = set()
        self.interrupted: set[asyncio.Task[Any]] = set()
        #: Exchanges still on the wire whose caller stopped waiting.
        self.detached: set[asyncio.Task[Any]] = set()
        #: The event loop of the first call: the aiohttp session, the budget waits and the
        #: locks all belong to it.
        self.loop: asyncio.AbstractEventLoop | None = None

    def check_open(self) -> None:
        if self.closed:
            raise CDNError("client closed")

    def check_loop(self) -> None:
        """Refuse a call from another event loop than the first call's, saying so (rather than
        aiohttp's "Timeout context manager should be used inside a task" or a hang)."""
        loop = asyncio.get_running_loop()
        if self.loop is None:
            self.loop = loop
        elif loop is not self.loop:
            raise CDNError(
                "this CDNClient is used from another event loop than the one it first ran on "
                "(its connections and budget waits belong to that loop): make one client per "
                "event loop, where it is used (an app's lifespan, a fixture with the test's "
                "loop scope)"
            )

    def get(self) -> aiohttp.ClientSession:
        self.check_open()
        if self._http is not None and self._http.closed:
            raise CDNError("the aiohttp session used by this client is closed")
        if self._http is None:
            trace = aiohttp.TraceConfig()
            trace.on_request_headers_sent.append(on_headers_sent)
            # Made lazily: an aiohttp session must be created inside the running loop.
            self._http = aiohttp.ClientSession(trace_configs=[trace])
            # aiohttp silently re-sends an idempotent request once when a kept-alive
            # connection drops; the server would count two requests where the budgets
            # counted one. Retries are the session layer's job, each through the budgets.
            self._http._retry_connection = False
            self._owns = True
            self.traced = True
        return self._http

    def shut(self) -> None:
        """From now on no request leaves: new calls and every wait end in "client closed"."""
        self.closed = True
        for task in list(self.waiting):
            if not task.done() and task not in self.interrupted:
                self.interrupted.add(task)
                task.cancel()

    async def aclose(self) -> None:
        self.shut()
        detached = list(self.detached)
        for task in detached:
            task.cancel()
        await asyncio.gather(*detached, return_exceptions=True)
        if self._http is not None and self._owns:
            await self._http.close()
            self._http = None

    async def while_open(self, aw: Awaitable[_T]) -> _T:
        """Await ``aw``; if the client is closed meanwhile, raise ``CDNError("client closed")``.

        Waits that may last (budget queues, backoff sleeps) are registered so ``shut`` can
        end them: after ``close()`` no request leaves, whatever store the budgets live in.
        """
        pool = self
        task = asyncio.current_task()
        assert task is not None
        pool.waiting.add(task)
        try:
            return await aw
        except asyncio.CancelledError:
            if task in pool.interrupted:
                pool.interrupted.discard(task)
                if task.uncancel() == 0:
                    raise CDNError("client closed") from None
            raise
        finally:
            pool.waiting.discard(task)
