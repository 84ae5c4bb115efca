"""``PurgeTicket`` (a submission, in the submitting process) and how a batch's outcome is
stored in Redis and read back: the outcome JSON, errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._logs import logger
from .._purge import PurgeProgress, PurgeReport
from ..errors import (
    APIConnectionError,
    APIError,
    APIResponseError,
    APITimeoutError,
    CDNError,
    RateLimitedError,
    error_class_for,
)

if TYPE_CHECKING:
    from .._session import Session


class Part:
    """One Redis ticket of a submission: its id and who waits on which entry."""

    __slots__ = ("id", "offset", "owners")

    def __init__(self, ticket_id: str) -> None:
        self.id = ticket_id
        #: Entry (sequence number) -> the submission's own paths it stands for.
        self.owners: dict[int, list[str]] = {}
        #: Results read so far (entry 0 is the header).
        self.offset = 1


class PurgeTicket:
    """A submission to a ``RedisPurgeQueue``: what ``submit`` returns, for ``wait``.

    Holds, in the submitting process, which entries of the queue its paths joined; the paths
    themselves are in Redis. Read ``endpoint_id``, ``total`` (paths, normalised, once each),
    ``done`` (paths with an outcome so far) and ``high`` (submitted at priority "high").
    """

    def __init__(self, endpoint_id: str, mapping: dict[str, str], *, high: bool = False) -> None:
        self.endpoint_id = endpoint_id
        self._mapping = mapping
        self._purged: set[str] = set()
        self._failed: dict[str, CDNError] = {}
        self._parts: list[Part] = []
        self._requests = 0
        self._budget_wait = 0.0
        self._on_progress: Callable[[int, int], None] | None = None
        self._on_batch: Callable[[PurgeProgress], None] | None = None
        self._finished: asyncio.Future[None] | None = None
        self._session: Session | None = None
        #: Submitted at priority "high" (its paths go to the front of the line).
        self.high = high

    def __repr__(self) -> str:
        return f"<PurgeTicket {self.endpoint_id} {self.done}/{self.total}>"

    @property
    def total(self) -> int:
        """Paths of the submission (normalised, once each)."""
        return len(self._mapping)

    @property
    def done(self) -> int:
        """Paths with an outcome so far (purged or failed)."""
        return len(self._purged) + len(self._failed)

    def _report(self) -> PurgeReport:
        return PurgeReport(
            self.endpoint_id,
            tuple(p for p in self._mapping if p in self._purged),
            {p: self._failed[p] for p in self._mapping if p in self._failed},
            self._requests,
            self._budget_wait,
        )

    def _unresolved(self, part: Part) -> list[str]:
        return [
            own
            for owns in part.owners.values()
            for own in owns
            if own not in self._purged and own not in self._failed
        ]

    def _apply(self, part: Part, entry: str) -> None:
        head, _, tail = entry.partition("\n")
        outcome = json.loads(head)
        error = _error_from(outcome["e"]) if "e" in outcome else None
        confirmed: list[str] = []
        failed: dict[str, CDNError] = {}
        for word in tail.split():
            for own in part.owners.pop(int(word), ()):
                if own in self._purged or own in self._failed:
                    continue
                if error is None:
                    self._purged.add(own)
                    confirmed.append(own)
                else:
                    self._failed[own] = failed[own] = error
        if (confirmed or failed) and outcome.get("s"):
            self._requests += 1
            self._budget_wait += float(outcome.get("w", 0.0))
        if confirmed or failed:
            self._progress(confirmed, failed)

    def _fail_rest(self, error: CDNError) -> None:
        failed = {
            own: error
            for own in self._mapping
            if own not in self._purged and own not in self._failed
        }
        self._failed.update(failed)
        if failed:
            self._progress([], failed)
        self._finish()

    def _progress(self, confirmed: list[str], failed: dict[str, CDNError]) -> None:
        """Tell the callbacks what one batch settled (each path once, as the engine does)."""
        if self._on_batch is not None:
            try:
                self._on_batch(PurgeProgress(self.done, self.total, tuple(confirmed), failed))
            except Exception:  # a broken callback must not lose the purge's results
                logger.exception("on_batch callback failed")
        if self._on_progress is not None:
            try:
                self._on_progress(self.done, self.total)
            except Exception:
                logger.exception("on_progress callback failed")
        if self.done >= self.total:
            self._finish()

    def _finish(self) -> None:
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)


class Outcome:
    """A batch's outcome, as stored in Redis."""

    __slots__ = ("error", "sent", "wait")

    def __init__(self, error: CDNError | None, sent: bool, wait: float = 0.0) -> None:
        self.error = error
        self.sent = sent
        self.wait = wait

    def to_json(self) -> str:
        data: dict[str, Any] = {"s": 1 if self.sent else 0, "w": round(self.wait, 6)}
        if self.error is not None:
            data["e"] = _error_json(self.error)
        return json.dumps(data, separators=(",", ":"))


def _error_json(exc: CDNError) -> dict[str, Any]:
    data: dict[str, Any] = {"t": type(exc).__name__, "m": str(exc)}
    if isinstance(exc, APIError):
        data.update(
            m=exc.message,
            st=exc.status,
            id=exc.error_id,
            r=exc.request_id,
            a=exc.attempts,
            mt=exc.method,
            p=exc.path,
        )
    elif isinstance(exc, APIResponseError):
        data.update(m=exc.message, st=exc.status)
    elif isinstance(exc, APIConnectionError):
        data.update(m=exc.message, a=exc.attempts, mt=exc.method, p=exc.path)
    elif isinstance(exc, RateLimitedError):
        data.update(m=exc.message, b=exc.budget, ra=exc.reset_at)
    return data


def _error_from(data: Mapping[str, Any]) -> CDNError:
    """The error another process recorded for a batch, as the same class where it can be."""
    kind, message = data.get("t"), str(data.get("m", ""))
    if kind == "APIResponseError":
        return APIResponseError(message, status=int(data.get("st") or 0))
    status = data.get("st")
    if isinstance(status, int) and status >= 400:
        return error_class_for(status)(
            message,
            status=status,
            error_id=data.get("id"),
            request_id=data.get("r"),
            attempts=int(data.get("a") or 1),
            method=str(data.get("mt") or ""),
            path=str(data.get("p") or ""),
        )
    if kind in ("APIConnectionError", "APITimeoutError"):
        cls = APITimeoutError if kind == "APITimeoutError" else APIConnectionError
        return cls(
            message,
            method=str(data.get("mt") or ""),
            path=str(data.get("p") or ""),
            attempts=int(data.get("a") or 1),
        )
    if kind == "RateLimitedError":
        return RateLimitedError(message, reset_at=data.get("ra"), budget=data.get("b"))
    return CDNError(message)
