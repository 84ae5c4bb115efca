"""What a session tells about its calls: log records with their fields as ``extra``, events for
the hooks, and telemetry spans. With no hook, no telemetry and logging off, it builds nothing."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext

from ._events import (
    BudgetWaited,
    Emitter,
    Event,
    RateLimitPaused,
    RequestSent,
    ResponseReceived,
    RetryScheduled,
    Telemetry,
)
from ._logs import logger
from ._models import RateLimitInfo


class Observer:
    """One client's observers: the hooks (``events``) and the telemetry, if any."""

    __slots__ = ("events", "telemetry")

    def __init__(self, events: Emitter, telemetry: Telemetry | None) -> None:
        self.events = events
        self.telemetry = telemetry

    def sent(self, method: str, path: str, attempt: int) -> None:
        if self.events:
            self.events.emit(RequestSent(method, path, attempt))

    def retry(self, method: str, path: str, retry: int, why: str, delay: float) -> None:
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
            self.events.emit(RetryScheduled(method, path, retry, why, delay))

    def paused(self, method: str, path: str, attempt: int, budget: str | None, wait: float) -> None:
        logger.info(
            "%s %s got 429; budget %s paused %.3f s, then retried",
            method,
            path,
            budget,
            wait,
            extra={
                "method": method,
                "path": path,
                "status": 429,
                "budget": budget,
                "wait_s": wait,
                "attempt": attempt,
            },
        )
        if self.events:
            self.events.emit(RateLimitPaused(method, path, budget, wait))

    def emit(self, event: Event) -> None:
        """Hand an event to the hooks (the purge engine's batches too)."""
        if self.events:
            self.events.emit(event)

    def span(self, method: str, path: str) -> AbstractContextManager[None]:
        """A telemetry span around a call of a layer above (a purge); a no-op without one."""
        if self.telemetry is None:
            return nullcontext()
        return self.telemetry.call(method, path)

    def trace_context(self) -> object | None:
        """The telemetry's current span context (to link to later), or None."""
        return self.telemetry.capture() if self.telemetry is not None else None

    def link(self, contexts: list[object]) -> None:
        """Link the current call's span to other spans (a shared purge batch's callers)."""
        if self.telemetry is not None and contexts:
            self.telemetry.link(contexts)

    def waited(self, method: str, path: str, attempt: int, budget: str | None, wait: float) -> None:
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
            self.events.emit(BudgetWaited(method, path, attempt, budget, wait))

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
        if not self.events and not logger.isEnabledFor(logging.DEBUG):
            return
        request_id = headers.get("x-request-id")
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
                )
            )
