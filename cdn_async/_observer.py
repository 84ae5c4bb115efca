"""What a session tells about its calls: log records with their fields as ``extra``, events for
the hooks, and telemetry spans. With no hook, no telemetry and logging off, it builds nothing
but the call's identity (``_call.Call``), which every record, event and span of the call names.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext

from ._call import CALL, Call
from ._events import (
    BudgetWaited,
    Emitter,
    Event,
    PurgeBatchSent,
    RateLimitPaused,
    RequestSent,
    ResponseReceived,
    RetryScheduled,
    Telemetry,
)
from ._logs import logger
from ._models import RateLimitInfo


class Observer:
    """One client's observers: the hooks (``events``) and the telemetry, if any, and the
    client's ``name`` that its calls carry."""

    __slots__ = ("events", "name", "others_seen", "telemetry")

    def __init__(self, events: Emitter, telemetry: Telemetry | None) -> None:
        self.events = events
        self.telemetry = telemetry
        #: The client's name (``CDNClient(name=...)``), on every record, event and span.
        self.name: str | None = None
        #: Another client was seen spending this token's budgets (warned once).
        self.others_seen = False

    def another_client(self, evidence: str) -> None:
        """Say once, at WARNING, that another client spends this token's budgets, and the
        fix: only a store shared by every process keeps them all exact."""
        if self.others_seen:
            return
        self.others_seen = True
        logger.warning(
            "another client is spending this API token's budgets (%s): share the budgets "
            "between processes with CDNClient(budget_store=SQLiteBudgetStore(path)) on one "
            "host or cdn_async.redis.RedisBudgetStore across hosts; for other tools (doctl, "
            "Terraform) leave them room with CDNClient(reserve=0.2)",
            evidence,
        )

    def call(self, *, new: bool = False) -> AbstractContextManager[Call]:
        """The current logical call: the one already running in this task (a request made by
        a larger call, such as a create's origin lookup, is part of it), else a new one.
        ``new``: always a new one (a purge batch serves several callers: it is a call of its
        own, which its ``PurgeBatchSent`` event ties to theirs)."""
        call = None if new else CALL.get()
        return nullcontext(call) if call is not None else Call(self.name)

    def span(self, method: str, path: str) -> AbstractContextManager[object]:
        """A logical call (see ``call``) and its telemetry span, if any. ``method``: the HTTP
        method, or ``"purge"`` for a purge, whose requests are calls of their own."""
        if self.telemetry is None:
            return self.call()
        return self._traced(method, path, self.telemetry)

    @contextmanager
    def _traced(self, method: str, path: str, telemetry: Telemetry) -> Iterator[None]:
        with self.call(), telemetry.call(method, path):
            yield

    @staticmethod
    def call_id() -> str | None:
        """The current call's id (None outside a call)."""
        call = CALL.get()
        return call.id if call is not None else None

    async def aclose(self) -> None:
        """Let async hooks finish the events given to them."""
        await self.events.aclose()

    def sent(self, method: str, path: str, attempt: int) -> None:
        if self.events:
            call = _current()
            self.events.emit(RequestSent(method, path, attempt, call.id, call.client))

    def retry(self, method: str, path: str, retry: int, why: str, delay: float) -> None:
        call = _current()
        if logger.isEnabledFor(logging.INFO):  # the fields are built only for a record
            logger.info(
                "%s %s: %s; retry %d in %.3f s",
                method,
                path,
                why,
                retry,
                delay,
                extra={
                    "method": method,
                    "path": path,
                    "attempt": retry + 1,
                    "reason": why,
                    "wait_s": delay,
                },
            )
        if self.events:
            self.events.emit(
                RetryScheduled(
                    method, path, retry, why, delay, call.request_id, call.id, call.client
                )
            )

    def paused(
        self, method: str, path: str, attempt: int, budget: str | None, wait: float, retry: int
    ) -> None:
        """A 429 paused ``budget`` for ``wait`` seconds, and the call will be sent again once
        it ends: retry number ``retry``, a retry like any other for hooks and metrics."""
        call = _current()
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "%s %s got 429; budget %s paused %.3f s, then retried (retry %d)",
                method,
                path,
                budget,
                wait,
                retry,
                extra={
                    "method": method,
                    "path": path,
                    "status": 429,
                    "budget": budget,
                    "wait_s": wait,
                    "attempt": attempt,
                    "reason": "429",
                },
            )
        if self.events:
            rid = call.request_id
            self.events.emit(RateLimitPaused(method, path, budget, wait, rid, call.id, call.client))
            self.events.emit(
                RetryScheduled(method, path, retry, "429", wait, rid, call.id, call.client)
            )

    def emit(self, event: Event) -> None:
        """Hand an event to the hooks."""
        if self.events:
            self.events.emit(event)

    def batch_sent(self, event: PurgeBatchSent) -> None:
        """A purge batch was answered: its record names the calls it served, so their lines
        join up with the batch's own (its wait, its answer)."""
        if logger.isEnabledFor(logging.INFO):  # the caller ids are joined only for a record
            logger.info(
                "purge of %d path(s) of %s for %d call(s) %s: %s",
                len(event.paths),
                event.endpoint_id,
                event.callers,
                ", ".join(event.caller_ids),
                "ok" if event.ok else "failed",
                extra={
                    "endpoint_id": event.endpoint_id,
                    "caller_ids": event.caller_ids,
                    "files": len(event.paths),
                    "ok": event.ok,
                },
            )
        self.emit(event)

    def trace_context(self) -> object | None:
        """The telemetry's current span context (to link to later), or None."""
        return self.telemetry.capture() if self.telemetry is not None else None

    def link(self, contexts: list[object]) -> None:
        """Link the current call's span to other spans (a shared purge batch's callers)."""
        if self.telemetry is not None and contexts:
            self.telemetry.link(contexts)

    def waited(self, method: str, path: str, attempt: int, budget: str | None, wait: float) -> None:
        call = _current()
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "%s %s waited %.3f s for rate budget %s",
                method,
                path,
                wait,
                budget or "(unknown)",
                extra={
                    "method": method,
                    "path": path,
                    "attempt": attempt,
                    "budget": budget,
                    "wait_s": wait,
                },
            )
        if self.events:
            self.events.emit(
                BudgetWaited(method, path, attempt, budget, wait, call.id, call.client)
            )

    def answered(
        self,
        method: str,
        path: str,
        attempt: int,
        status: int,
        error: BaseException | None,
        elapsed: float,
        headers: Mapping[str, str],
        info: RateLimitInfo | None,
    ) -> None:
        call = _current()
        request_id = headers.get("x-request-id")
        # Later records of the call (a retry, a pause) name the request that led to them.
        call.request_id = request_id
        if not self.events and not logger.isEnabledFor(logging.DEBUG):
            return
        elapsed_ms = elapsed * 1000
        logger.debug(
            "%s %s -> %s in %.1f ms (request_id=%s, attempt %d)",
            method,
            path,
            status or type(error).__name__,
            elapsed_ms,
            request_id,
            attempt,
            extra={
                "method": method,
                "path": path,
                "status": status or None,
                "error": type(error).__name__ if error is not None else None,
                "attempt": attempt,
                "request_id": request_id,
                "elapsed_ms": elapsed_ms,
            },
        )
        if self.events:
            self.events.emit(
                ResponseReceived(
                    method,
                    path,
                    attempt,
                    status or None,
                    type(error).__name__ if error is not None else None,
                    elapsed_ms,
                    request_id,
                    info,
                    call.id,
                    call.client,
                )
            )


def _current() -> Call:
    # Outside any call (a session used directly, in tests): a call of its own.
    call = CALL.get()
    return call if call is not None else Call(None)
