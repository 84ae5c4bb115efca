"""What the client tells its observers: typed events for hooks, and the raw answers of a call.

The session layer reports each step of a call here once; hooks (``CDNClient(event_hooks=...)``)
get the events, and a hook that raises is logged and never breaks the call. With no hook the
session builds no event at all, so observing costs nothing when nobody observes.

Every event names its logical call (``call_id``: the same on every event, log record and span
of one call) and the client (``client``: its ``name``, None when unnamed).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import inspect
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import attrs

from ._call import CALL
from ._logs import logger
from ._models import RateLimitInfo


@attrs.frozen
class BudgetWaited:
    """A call waited for its budgets before an attempt was sent.

    Args:
        method: The HTTP method.
        path: The URL path.
        attempt: The attempt about to be sent (1 for the first).
        budget: The budget that held it back last, when the store can tell (else None).
        wait_s: Seconds waited.
        call_id: The logical call's id.
        client: The client's ``name``.
    """

    method: str
    path: str
    attempt: int
    budget: str | None
    wait_s: float
    call_id: str | None = None
    client: str | None = None


@attrs.frozen
class RequestSent:
    """An attempt was handed to the connection pool (its budgets admitted it)."""

    method: str
    path: str
    attempt: int
    call_id: str | None = None
    client: str | None = None


@attrs.frozen
class ResponseReceived:
    """An attempt ended: with an answer (``status``), or without one (``error``).

    Args:
        method: The HTTP method.
        path: The URL path.
        attempt: The attempt (1 for the first).
        status: The answer's status, or None when none came.
        error: Why no answer came (an exception's type name), or None.
        elapsed_ms: Milliseconds from send to answer (or failure).
        request_id: The answer's ``x-request-id``, when given.
        rate_limit: The answer's rate-limit headers (None without an answer).
        call_id: The logical call's id.
        client: The client's ``name``.
    """

    method: str
    path: str
    attempt: int
    status: int | None
    error: str | None
    elapsed_ms: float
    request_id: str | None
    rate_limit: RateLimitInfo | None
    call_id: str | None = None
    client: str | None = None


@attrs.frozen
class RetryScheduled:
    """The call will be sent again after ``delay_s`` seconds.

    ``reason`` is the status (``"503"``, ``"429"``...) or the error (``"ClientOSError"``) that
    failed the attempt; a 429's retry follows its ``RateLimitPaused``, and ``delay_s`` is then the
    pause. ``request_id`` is the failed attempt's, when it got an answer that carried one.
    """

    method: str
    path: str
    retry: int
    reason: str
    delay_s: float
    request_id: str | None = None
    call_id: str | None = None
    client: str | None = None


@attrs.frozen
class RateLimitPaused:
    """A 429 paused a budget (``budget``: its name, None when the answer did not say)."""

    method: str
    path: str
    budget: str | None
    pause_s: float
    request_id: str | None = None
    call_id: str | None = None
    client: str | None = None


@attrs.frozen
class PurgeBatchSent:
    """A purge request went out for one batch of an endpoint's pending paths.

    Args:
        endpoint_id: The endpoint.
        paths: The paths the request carried.
        callers: How many ``purge`` calls it served (a batch is shared).
        ok: Whether the server confirmed it.
        request_id: The answer's request id (of the error, when it failed), if any.
        call_id: The id of the batch's own call (its request's events and records carry it).
        caller_ids: The call ids of the ``purge`` calls it served.
        client: The client's ``name``.
    """

    endpoint_id: str
    paths: tuple[str, ...]
    callers: int
    ok: bool
    request_id: str | None
    call_id: str | None = None
    caller_ids: tuple[str, ...] = ()
    client: str | None = None


#: Every event a hook may receive.
Event = (
    BudgetWaited
    | RequestSent
    | ResponseReceived
    | RetryScheduled
    | RateLimitPaused
    | PurgeBatchSent
)
#: A hook: called with each event, on the event loop. A plain function runs at once (keep it
#: quick); an ``async def`` one is awaited later by a task of its own, in order, so it never
#: holds up the call (nor its budgets).
EventHook = Callable[[Event], None] | Callable[[Event], Awaitable[None]]

#: Seconds ``close()`` waits for async hooks to finish the events already given to them.
HOOK_DRAIN_TIMEOUT = 5.0


class Telemetry(Protocol):
    """What ``CDNClient(telemetry=...)`` takes (``cdn_async.otel.OpenTelemetry`` is one)."""

    def call(self, method: str, path: str) -> AbstractContextManager[None]:
        """Wraps one logical call; the call's events are delivered inside it. ``method``: the
        HTTP method of a request, or ``"purge"`` for a purge call (its requests are calls of
        their own, each in a ``call`` of its own)."""
        ...

    def __call__(self, event: Event) -> None:
        """Receives every event, as a hook does."""
        ...

    def bind(self, queue_depth: Callable[[], int], base_url: str | None = None) -> None:
        """Tells where to read how many calls wait for their budgets, and the API's address."""
        ...

    def capture(self) -> object | None:
        """The current span's context, to link to later (None outside a span)."""
        ...

    def link(self, contexts: Sequence[object]) -> None:
        """Add links from the current span to the spans of ``contexts``."""
        ...


class Emitter:
    """Calls the hooks with each event; a hook that raises is logged and skipped.

    A hook that returns an awaitable (an ``async def`` hook) has it awaited by one runner
    task, in the order the events came, off the call's path: the call goes on (and its budget
    units are used) while the hook works. ``aclose`` lets the runner finish.
    """

    __slots__ = ("_later", "_runner", "hooks")

    def __init__(self, hooks: Sequence[EventHook]) -> None:
        if not all(callable(h) for h in hooks):
            raise TypeError("event_hooks must be callables taking one event")
        self.hooks = tuple(hooks)
        self._later: collections.deque[tuple[object, Event, Awaitable[object]]] = (
            collections.deque()
        )
        self._runner: asyncio.Task[None] | None = None

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def emit(self, event: Event) -> None:
        for hook in self.hooks:
            try:
                result = hook(event)
            except Exception:
                logger.exception("event hook %r failed on %s", hook, type(event).__name__)
                continue
            if result is not None and inspect.isawaitable(result):
                self._await_later(hook, event, result)

    def _await_later(self, hook: object, event: Event, result: Awaitable[object]) -> None:
        self._later.append((hook, event, result))
        if self._runner is None or self._runner.done():
            # Not inside the emitting call: calls a hook makes are calls of their own.
            context = contextvars.copy_context()
            context.run(CALL.set, None)
            self._runner = asyncio.get_running_loop().create_task(self._run(), context=context)

    async def _run(self) -> None:
        while self._later:
            hook, event, result = self._later.popleft()
            try:
                await result
            except Exception:
                logger.exception("event hook %r failed on %s", hook, type(event).__name__)

    async def aclose(self) -> None:
        """Wait (up to ``HOOK_DRAIN_TIMEOUT`` seconds) for the async hooks to handle every event
        given to them, then cancel what is left."""
        patience = HOOK_DRAIN_TIMEOUT
        runner = self._runner
        if runner is not None and not runner.done():
            done, _ = await asyncio.wait((runner,), timeout=patience)
            if not done:
                logger.warning(
                    "async event hooks still busy after %.1f s at close; %d event(s) dropped",
                    patience,
                    len(self._later) + 1,
                )
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)
        while self._later:
            _, _, result = self._later.popleft()
            if inspect.iscoroutine(result):
                result.close()  # never started: no "coroutine was never awaited" warning


@attrs.frozen
class ResponseMeta:
    """What one successful request of a call answered (see ``CDNClient.with_raw_response``).

    Args:
        status: The HTTP status.
        request_id: The answer's ``x-request-id``.
        rate_limit: The answer's rate-limit headers.
        attempts: Attempts the request took.
        budget_wait: Seconds it waited for its budgets.
    """

    status: int
    request_id: str | None
    rate_limit: RateLimitInfo
    attempts: int
    budget_wait: float


#: Set by ``with_raw_response`` around one call; the session appends each answer's metadata.
CAPTURE: contextvars.ContextVar[list[ResponseMeta] | None] = contextvars.ContextVar(
    "cdn_async_capture", default=None
)
