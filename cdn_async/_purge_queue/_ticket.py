"""A submission in the submitting process (``Submission``, the queue's bookkeeping, and
``PurgeTicket``, the user's handle on it) and how a batch's outcome is stored in Redis and read
back: the outcome JSON, errors."""

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


class Submission:
    """A submission, in the process that made it: which entries of the queue its paths joined
    (its parts; the paths themselves are in Redis), the outcomes read so far, and the call
    waiting on it (its callbacks, its session). The queue and its drainers keep it;
    ``PurgeTicket`` is the user's handle on it.
    """

    def __init__(self, endpoint_id: str, mapping: dict[str, str], *, high: bool = False) -> None:
        self.endpoint_id = endpoint_id
        #: Own path -> the path sent for it (the plan: normalised, once each).
        self.mapping = mapping
        #: Submitted at priority "high" (its paths go to the front of the line).
        self.high = high
        #: Its Redis tickets, one per time its paths were queued (again after a loss).
        self.parts: list[Part] = []
        #: The session of the call waiting on it (a drainer may send with it), if any.
        self.session: Session | None = None
        self._purged: set[str] = set()
        self._failed: dict[str, CDNError] = {}
        self._requests = 0
        self._budget_wait = 0.0
        self._on_progress: Callable[[int, int], None] | None = None
        self._on_batch: Callable[[PurgeProgress], None] | None = None
        self._finished: asyncio.Future[None] | None = None

    @property
    def total(self) -> int:
        """Paths of the submission (normalised, once each)."""
        return len(self.mapping)

    @property
    def done(self) -> int:
        """Paths with an outcome so far (purged or failed)."""
        return len(self._purged) + len(self._failed)

    def begin_wait(
        self,
        session: Session | None,
        on_progress: Callable[[int, int], None] | None,
        on_batch: Callable[[PurgeProgress], None] | None,
    ) -> asyncio.Future[None]:
        """A call starts waiting: what resolves once every path has an outcome."""
        self._on_progress = on_progress
        self._on_batch = on_batch
        if self._finished is None or self._finished.done():
            self._finished = asyncio.get_running_loop().create_future()
        if self.done >= self.total:
            self.finish()
        self.session = session
        return self._finished

    def end_wait(self) -> None:
        """The waiting call has ended: none of its callbacks runs any more."""
        self._on_batch = self._on_progress = None

    def report(self) -> PurgeReport:
        """The outcomes so far, as ``endpoints.purge`` reports them."""
        return PurgeReport(
            self.endpoint_id,
            tuple(p for p in self.mapping if p in self._purged),
            {p: self._failed[p] for p in self.mapping if p in self._failed},
            self._requests,
            self._budget_wait,
        )

    def unresolved(self, part: Part) -> list[str]:
        """Own paths of ``part`` with no outcome yet."""
        return [
            own
            for owns in part.owners.values()
            for own in owns
            if own not in self._purged and own not in self._failed
        ]

    def apply(self, part: Part, entry: str) -> None:
        """Take in one result entry of ``part`` (a batch's outcome and its entries)."""
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

    def fail_rest(self, error: CDNError) -> None:
        """Fail every path with no outcome yet with ``error``, and end the wait."""
        failed = {
            own: error
            for own in self.mapping
            if own not in self._purged and own not in self._failed
        }
        self._failed.update(failed)
        if failed:
            self._progress([], failed)
        self.finish()

    def finish(self) -> None:
        """Wake the waiting call (every path has an outcome, or the rest failed)."""
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)

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
            self.finish()


class PurgeTicket:
    """A submission to a ``RedisPurgeQueue``: what ``submit`` returns, for ``wait``.

    Holds, in the submitting process, which entries of the queue its paths joined; the paths
    themselves are in Redis. Read ``endpoint_id``, ``total`` (paths, normalised, once each),
    ``done`` (paths with an outcome so far) and ``high`` (submitted at priority "high").
    """

    def __init__(self, submission: Submission) -> None:
        # The queue's bookkeeping; the ticket only reads it (``submission_of`` hands it to
        # the queue when the ticket comes back to ``wait``).
        self._submission = submission

    def __repr__(self) -> str:
        return f"<PurgeTicket {self.endpoint_id} {self.done}/{self.total}>"

    @property
    def endpoint_id(self) -> str:
        """The endpoint whose paths were submitted."""
        return self._submission.endpoint_id

    @property
    def high(self) -> bool:
        """Submitted at priority "high" (its paths go to the front of the line)."""
        return self._submission.high

    @property
    def total(self) -> int:
        """Paths of the submission (normalised, once each)."""
        return self._submission.total

    @property
    def done(self) -> int:
        """Paths with an outcome so far (purged or failed)."""
        return self._submission.done


def submission_of(ticket: PurgeTicket) -> Submission:
    """The queue's bookkeeping behind a ticket, for the queue's own modules; not public API."""
    return ticket._submission


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
