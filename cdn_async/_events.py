"""What the client tells its observers: typed events for hooks, and the raw answers of a call.

The session layer reports each step of a call here once; hooks (``CDNClient(event_hooks=...)``)
get the events, and a hook that raises is logged and never breaks the call. With no hook the
session builds no event at all, so observing costs nothing when nobody observes.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import attrs

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
    """

    method: str
    path: str
    attempt: int
    budget: str | None
    wait_s: float


@attrs.frozen
class RequestSent:
    """An attempt was handed to the connection pool (its budgets admitted it)."""

    method: str
    path: str
    attempt: int


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
    """

    method: str
    path: str
    attempt: int
    status: int | None
    error: str | None
    elapsed_ms: float
    request_id: str | None
    rate_limit: RateLimitInfo | None


@attrs.frozen
class RetryScheduled:
    """The call will be sent again after ``delay_s`` seconds (``reason``: a status or error)."""

    method: str
    path: str
    retry: int
    reason: str
    delay_s: float


@attrs.frozen
class RateLimitPaused:
    """A 429 paused a budget (``budget``: its name, None when the answer did not say)."""

    method: str
    path: str
    budget: str | None
    pause_s: float


@attrs.frozen
class PurgeBatchSent:
    """A purge request went out for one batch of an endpoint's pending paths.

    Args:
        endpoint_id: The endpoint.
        paths: The paths the request carried.
        callers: How many ``purge`` calls it served (a batch is shared).
        ok: Whether the server confirmed it.
        request_id: The answer's request id (of the error, when it failed), if any.
    """

    endpoint_id: str
    paths: tuple[str, ...]
    callers: int
    ok: bool
    request_id: str | None


#: Every event a hook may receive.
Event = (
    BudgetWaited
    | RequestSent
    | ResponseReceived
    | RetryScheduled
    | RateLimitPaused
    | PurgeBatchSent
)
#: A hook: called with each event, synchronously, on the event loop; keep it quick.
EventHook = Callable[[Event], None]


class Telemetry(Protocol):
    """What ``CDNClient(telemetry=...)`` takes (``cdn_async.otel.OpenTelemetry`` is one)."""

    def call(self, method: str, path: str) -> AbstractContextManager[None]:
        """Wraps one logical call; the call's events are delivered inside it."""
        ...

    def __call__(self, event: Event) -> None:
        """Receives every event, as a hook does."""
        ...

    def bind(self, queue_depth: Callable[[], int]) -> None:
        """Tells where to read how many calls wait for their budgets."""
        ...

    def capture(self) -> object | None:
        """The current span's context, to link to later (None outside a span)."""
        ...

    def link(self, contexts: Sequence[object]) -> None:
        """Add links from the current span to the spans of ``contexts``."""
        ...


class Emitter:
    """Calls the hooks with each event; a hook that raises is logged and skipped."""

    __slots__ = ("hooks",)

    def __init__(self, hooks: Sequence[EventHook]) -> None:
        if not all(callable(h) for h in hooks):
            raise TypeError("event_hooks must be callables taking one event")
        self.hooks = tuple(hooks)

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def emit(self, event: Event) -> None:
        for hook in self.hooks:
            try:
                hook(event)
            except Exception:
                logger.exception("event hook %r failed on %s", hook, type(event).__name__)


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
