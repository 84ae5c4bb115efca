"""The purge engine: one logical purge of any size, each path purged once.

A purge is coalesced (duplicates and covered paths dropped), then its paths join the endpoint's
*pending set*: paths waiting to be sent. One sender per endpoint takes up to a batch (the
file budget's limit) from the front of that set when the budgets admit it, so paths that
other callers add while it waits join the same request. A path already pending, or covered
by a pending wildcard, is shared rather than sent twice; a path already *sent* is never
joined (content changed after the request went out would stay cached). Sending one batch at
a time per endpoint also means two identical purges are never in flight together.

Urgent paths (a ``priority="high"`` purge's) go to the front of the pending set: the next batch
the sender seals takes them first, and that batch waits for the budgets at ``"high"`` (one
already waiting at a lower priority, unsealed, leaves the queue and waits again at ``"high"``;
a store admits nothing to a waiter that leaves).

Planning and joining take ``CHUNK`` paths at a time and yield to the event loop in between,
so a 100,000-path purge never blocks it for long (the sender may start on the first chunk);
a path to be sent joins together with every path it stands for, so none of them can end up
behind a request already sent.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from ._events import PurgeBatchSent
from ._limits import Priority
from ._logs import logger
from ._models import PurgeReport
from ._purge_deadline import refuse_if_too_slow
from ._purge_plan import (
    Coalesced,
    PurgeBackend,
    PurgePlan,
    PurgeProgress,
    plan_purge,
    sent_for,
)
from ._validation import CHUNK
from .errors import (
    APIError,
    AuthenticationError,
    BudgetWaitTimeout,
    CDNError,
    NotFoundError,
    PermissionDeniedError,
    PurgeError,
)

if TYPE_CHECKING:
    from ._session import Response, Session

__all__ = [
    "PurgeBackend",
    "PurgeEngine",
    "PurgePlan",
    "PurgeProgress",
    "PurgeReport",
    "plan_purge",
    "sent_for",
]

#: Why paths of a purge failed when the client was closed first (sent or not, unanswered).
_CLOSED = "the client was closed: these paths were not confirmed purged"

#: Answers after which every later batch of the endpoint would fail the same way (the
#: purge engine and the shared queue's drainer both stop sending on them).
ENDPOINT_FATAL = (AuthenticationError, PermissionDeniedError, NotFoundError)


class _Call:
    """One ``purge`` caller's tally."""

    def __init__(
        self,
        cdn_id: str,
        total: int,
        on_progress: Callable[[int, int], None] | None,
        on_batch: Callable[[PurgeProgress], None] | None = None,
        priority: Priority | None = None,
    ) -> None:
        self.cdn_id = cdn_id
        self.on_batch = on_batch
        self.priority = priority
        self.total = total
        self.purged: list[str] = []
        self.failed: dict[str, CDNError] = {}
        self.requests = 0
        self.budget_wait = 0.0
        self.request_ids: list[str] = []
        #: The caller's telemetry span, which every batch that carries its paths links to.
        self.trace: object | None = None
        #: The caller's call id, which every batch that carries its paths names.
        self.call_id: str | None = None
        self.on_progress = on_progress
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: Set when the endpoint's sender met an error every later batch would meet too (or
        #: stopped): paths of this call not yet joined then fail with it, unsent.
        self.stopped: CDNError | None = None
        #: Set when the caller was cancelled: its paths not yet sent are never sent.
        self.left = False

    def batch_done(
        self,
        purged: list[str],
        failed: list[tuple[str, CDNError]],
        wait: float,
        sent: bool,
        request_id: str | None = None,
    ) -> None:
        self.purged.extend(purged)
        self.failed.update(failed)
        if sent:
            self.requests += 1
            self.budget_wait += wait
            if request_id:
                self.request_ids.append(request_id)
        done = len(self.purged) + len(self.failed)
        if self.on_progress is not None:
            try:
                self.on_progress(done, self.total)
            except Exception:  # a broken callback must not lose the purge's results
                logger.exception("on_progress callback failed")
        if self.on_batch is not None:
            try:
                self.on_batch(PurgeProgress(done, self.total, tuple(purged), dict(failed)))
            except Exception:
                logger.exception("on_batch callback failed")
        if done >= self.total and not self.finished.done():
            self.finished.set_result(None)

    def report(self) -> PurgeReport:
        return PurgeReport(
            self.cdn_id,
            tuple(self.purged),
            dict(self.failed),
            self.requests,
            self.budget_wait,
            tuple(self.request_ids),
        )


class _Entry(list["_Call | str"]):
    """The callers waiting on a pending path that more than one path or caller shares, each
    with its own path the pending one stands for, as one flat list: ``[call, own, ...]``."""

    __slots__ = ()

    def join(self, call: _Call, own: str) -> None:
        self += (call, own)

    def pairs(self) -> Iterator[tuple[_Call, str]]:
        """Each waiting ``(call, own path)``."""
        it = iter(self)
        return cast("Iterator[tuple[_Call, str]]", zip(it, it, strict=False))

    def leave(self, call: _Call) -> None:
        """Drop every path of ``call``."""
        self[:] = [x for c, own in self.pairs() if c is not call for x in (c, own)]


#: Who waits on a pending path: the one caller that stands only for the path itself (most
#: paths of a large purge: kept as the caller itself, so a pending path costs no object of
#: its own, and a 100,000-path purge leaves the garbage collector's full collections, its
#: longest pauses, nothing more to walk), or an ``_Entry`` of several.
_Waiting = _Call | _Entry


def _pairs(path: str, waiting: _Waiting) -> Iterable[tuple[_Call, str]]:
    return ((waiting, path),) if isinstance(waiting, _Call) else waiting.pairs()


class _EndpointSender:
    """One endpoint's sender: its pending set, and the task that sends it a batch at a time."""

    def __init__(self) -> None:
        self.pending: dict[str, _Waiting] = {}
        #: Pending paths a ``priority="high"`` caller waits on: sent first.
        self.urgent: dict[str, None] = {}
        self.task: asyncio.Task[None] | None = None
        #: While the next batch waits for its budgets at a priority below ``"high"``: set
        #: when an urgent path joins, so the batch waits again at ``"high"``.
        self.upgrade: asyncio.Future[None] | None = None

    def priority(self) -> Priority | None:
        """The priority the next batch waits at: ``"high"`` when an urgent path is pending,
        else that of the caller of the first pending path (None: the client's)."""
        if self.urgent:
            return "high"
        first = next(iter(self.pending.values()), None)
        if isinstance(first, _Entry):
            first = cast("_Call", first[0]) if first else None
        return first.priority if first is not None else None

    def put_back(self, paths: list[tuple[str, _Waiting]]) -> None:
        """Return paths of a refused batch (the server counted none) to the front, for the
        callers still waiting: a caller that left has reported them unsent."""
        back: dict[str, _Waiting] = {}
        for path, waiting in paths:
            if isinstance(waiting, _Entry):
                for call in {c for c, _ in waiting.pairs() if c.left}:
                    waiting.leave(call)
                if waiting:
                    back[path] = waiting
            elif not waiting.left:
                back[path] = waiting
        self.pending = {**back, **self.pending}

    def take(self, size: int) -> list[tuple[str, _Waiting]]:
        """Remove and return up to ``size`` pending paths, urgent ones first."""
        batch: list[tuple[str, _Waiting]] = []
        for key in list(itertools.islice(self.urgent, size)):
            del self.urgent[key]
            waiting = self.pending.pop(key, None)
            if waiting is not None:
                batch.append((key, waiting))
        for key in list(itertools.islice(self.pending, size - len(batch))):
            batch.append((key, self.pending.pop(key)))
            self.urgent.pop(key, None)
        return batch

    def covering(self, path: str) -> str | None:
        """The pending path that covers ``path``: itself, ``*`` or a parent's wildcard."""
        if path in self.pending:
            return path
        if "*" in self.pending:
            return "*"
        # Walk the path's parent directories: "a/b/c.png" may be covered by "a/*" or "a/b/*".
        cut = path.find("/")
        while cut != -1:
            wildcard = path[: cut + 1] + "*"
            if wildcard in self.pending and path != wildcard:
                return wildcard
            cut = path.find("/", cut + 1)
        return None

    def join(self, call: _Call, path: str, owns: Sequence[str] | None) -> str:
        """Make ``call`` wait on ``path`` for ``owns`` (None: for ``path`` itself only), sharing
        a pending path that covers it; returns the pending path it waits on."""
        key = self.covering(path)
        if key is None and owns is None:
            self.pending[path] = call
            return path
        if key is None:
            key, waiting = path, _Entry()
            self.pending[path] = waiting
        else:
            found = self.pending[key]
            if isinstance(found, _Call):  # shared from now on
                waiting = self.pending[key] = _Entry((found, key))
            else:
                waiting = found
        for own in owns or (path,):
            waiting.join(call, own)
        return key


class _NothingToSend(Exception):
    """Raised by a batch's seal when every path it was to carry was abandoned."""


def _abandon(sender: _EndpointSender, call: _Call, joined: Iterable[str]) -> None:
    """A cancelled caller leaves the paths it waits on that are not yet sent; a path no one
    else waits on is not sent at all (an already-sealed batch goes out regardless)."""
    for key in joined:
        waiting = sender.pending.get(key)  # absent: sealed (on the wire or done), stays shared
        if waiting is call:
            del sender.pending[key]
            sender.urgent.pop(key, None)
        elif isinstance(waiting, _Entry):  # it may be another caller's, which call is not in
            waiting.leave(call)
            if not waiting:
                del sender.pending[key]
                sender.urgent.pop(key, None)


class _Batch:
    """One purge request of an endpoint's sender, while it waits for its budgets and is sent: the paths it
    carries (cut and sealed only when the budgets admit it) and the priority it waits at."""

    def __init__(self, session: Session, cdn_id: str, sender: _EndpointSender) -> None:
        self.session = session
        self.cdn_id = cdn_id
        self.sender = sender
        self.path = f"/v2/cdn/endpoints/{cdn_id}/cache"
        # The size is fixed when the batch is sealed, so the file budget is claimed exactly;
        # paths that arrive while this batch waits for its budget go in the next one.
        # What a batch sealed now would take; cut() sets it again when the share has room.
        self.size = min(session.limits.purge_batch_size, len(sender.pending))
        self.priority = sender.priority()
        #: The sealed paths and who waits on each: empty until the budgets admit the batch.
        self.paths: list[tuple[str, _Waiting]] = []
        self.waited = 0.0  # on budgets, before a wait restarted at "high"

    def cut(self) -> int:
        """Before the first attempt, and after a 429: the size the client's file share
        allows now. A refused batch was counted by nobody: what is over it goes back to the
        front of the pending paths (paths that arrive meanwhile go in the next)."""
        sender, share = self.sender, self.session.file_share
        want = len(self.paths) or max(1, len(sender.pending))
        self.size = (
            share.batch_size(want)
            if share is not None
            else min(want, self.session.limits.purge_batch_size)
        )
        if len(self.paths) > self.size:
            sender.put_back(self.paths[self.size :])
            del self.paths[self.size :]
        return self.size

    def seal(self) -> dict[str, list[str]]:
        """The request's body. Runs when the budgets first admit the request: from here on
        no caller may join. Urgent paths that joined while it waited go first."""
        if not self.paths:
            self.paths.extend(self.sender.take(self.size))
            # The request's span links to the span of every caller it serves.
            callers = {c for p, w in self.paths for c, _ in _pairs(p, w) if c.trace is not None}
            self.session.observer.link([c.trace for c in callers])
        if not self.paths:  # every caller of these paths was cancelled while it waited
            raise _NothingToSend
        return {"files": [path for path, _ in self.paths]}

    async def send(self) -> Response:
        """Send the batch; a 409 (an identical purge, another process's, in progress) is
        retried by the session's policy like a 5xx (``retry_conflict``)."""
        sender, loop = self.sender, asyncio.get_running_loop()
        while self.priority != "high" and not self.paths:
            # Wait at this priority until admitted, or until an urgent path joins: then
            # (the batch still unsealed) leave the queue, taking nothing, and wait again
            # at "high".
            upgrade = sender.upgrade = loop.create_future()
            started = loop.time()
            request = loop.create_task(self._request())
            try:
                await asyncio.wait((request, upgrade), return_when=asyncio.FIRST_COMPLETED)
                if request.done() or self.paths:  # answered, or admitted and on the wire
                    return await request
            finally:
                # Left the queue for an urgent path, or this sender was cancelled.
                sender.upgrade = None
                request.cancel()
                await asyncio.gather(request, return_exceptions=True)
            if not request.cancelled():  # it ended on its own meanwhile
                return request.result()
            self.waited += loop.time() - started
            self.priority = "high"
        return await self._request()

    def _request(self) -> Coroutine[Any, Any, Response]:
        return self.session.request(
            "DELETE",
            self.path,
            endpoint_id=self.cdn_id,
            files=self.cut,
            seal=self.seal,
            retry_conflict=True,
            priority=self.priority,
        )


def _outcome(report: PurgeReport) -> PurgeReport:
    """A finished call's report, or what it raises: ``PurgeError`` when any path failed, and
    the ``BudgetWaitTimeout`` itself when nothing went out for want of budget within
    ``max_budget_wait`` (the same answer as a refusal up front: all or nothing)."""
    if not report.failed:
        return report
    timeouts = [e for e in report.failed.values() if isinstance(e, BudgetWaitTimeout)]
    if not report.purged and not report.requests and len(timeouts) == len(report.failed):
        raise max(timeouts, key=lambda e: e.retry_after or 0.0)
    raise PurgeError(report)


class PurgeEngine:
    """Coalesces, batches and sends purges for one client (and its copies)."""

    def __init__(self) -> None:
        self._senders: dict[str, _EndpointSender] = {}

    async def purge(
        self,
        session: Session,
        cdn_id: str,
        paths: Sequence[str],
        *,
        on_progress: Callable[[int, int], None] | None = None,
        on_batch: Callable[[PurgeProgress], None] | None = None,
        priority: Priority | None = None,
    ) -> PurgeReport:
        """Purge ``paths`` (already validated and normalised) of ``cdn_id``; see ``Endpoints.purge``.

        A batch shared by callers of several client copies is sent with the options (retries,
        timeout) of the caller that opened the endpoint's sender.
        """
        # Planning and joining yield to the loop every CHUNK paths: a purge of 100,000 paths
        # never blocks it for long. Until the last chunk has joined, the sender may already
        # send the first ones (it takes what is pending when the budgets admit each batch).
        coalesced = Coalesced()
        for _ in coalesced.steps(paths):
            await asyncio.sleep(0)
        if session.options.max_budget_wait is not None:
            # All or nothing: refused before anything is sent when the whole plan cannot be.
            level = priority or session.options.priority
            own, ahead = self._files_ahead(cdn_id, coalesced, level == "high")
            refuse_if_too_slow(session, cdn_id, own, ahead, level, plan_only=False)
        call = _Call(
            cdn_id,
            len(coalesced.mapping),
            on_progress,
            on_batch,
            priority or session.options.priority,
        )
        call.trace = session.observer.trace_context()
        call.call_id = session.observer.call_id()
        # The pending paths this call waits on, per sender.
        joined: dict[_EndpointSender, list[str]] = {}
        try:
            await self._join(session, cdn_id, call, coalesced, joined)
            # Cancelling this caller cancels only its own future, never the shared sender.
            await call.finished
        except asyncio.CancelledError:
            # The call has ended: its callbacks never run again, so a checkpoint written in
            # `except CancelledError` has seen every batch it will see (a batch on the wire
            # now was not confirmed when the caller left).
            call.on_batch = call.on_progress = None
            call.left = True
            for sender, keys in joined.items():
                _abandon(sender, call, keys)
            raise
        return _outcome(call.report())

    async def _join(
        self,
        session: Session,
        cdn_id: str,
        call: _Call,
        coalesced: Coalesced,
        joined: dict[_EndpointSender, list[str]],
    ) -> None:
        """Make ``call`` wait on the paths of ``coalesced`` to send, a chunk at a time (each
        pending key in ``joined``), starting the endpoint's sender when it is not running;
        once the sender met an error every later batch would meet, the rest fail with it."""
        targets, groups = iter(coalesced.targets), coalesced.groups
        while chunk := list(itertools.islice(targets, CHUNK)):
            if call.stopped is not None:
                rest = itertools.chain(chunk, targets)
                failed = [(own, call.stopped) for t in rest for own in groups.get(t) or (t,)]
                call.batch_done([], failed, 0.0, sent=False)
                return
            # Looked up again after every yield: the endpoint's sender may have emptied its
            # pending set and gone (a fatal error fails every pending path), and a new sender
            # then takes over.
            sender = self._senders.setdefault(cdn_id, _EndpointSender())
            mine = joined.setdefault(sender, [])
            for target in chunk:
                # A sent path joins with every path it stands for at once, so none of them
                # can join a request already sent for another.
                key = sender.join(call, target, groups.get(target))
                mine.append(key)
                if call.priority == "high":
                    sender.urgent[key] = None
                    if sender.upgrade is not None and not sender.upgrade.done():
                        sender.upgrade.set_result(None)
            if sender.task is None or sender.task.done():
                sender.task = asyncio.get_running_loop().create_task(
                    self._run_sender(session, cdn_id, sender)
                )
            await asyncio.sleep(0)

    def _files_ahead(self, cdn_id: str, coalesced: Coalesced, urgent: bool) -> tuple[int, int]:
        """The paths of ``coalesced`` to send (those not already pending), and the endpoint's
        pending paths that go before them (urgent ones only, for an urgent purge)."""
        sender = self._senders.get(cdn_id)
        if sender is None:
            return len(coalesced.targets), 0
        own = sum(1 for t in coalesced.targets if sender.covering(t) is None)
        return own, len(sender.urgent) if urgent else len(sender.pending)

    async def _run_sender(self, session: Session, cdn_id: str, sender: _EndpointSender) -> None:
        try:
            while sender.pending:
                # Each batch is a call of its own (it may serve several callers).
                with session.observer.call(new=True):
                    await self._send_batch(session, cdn_id, sender)
        except BaseException as exc:
            # Whatever stops the sender, every caller still gets an answer for every path.
            why = (
                _CLOSED
                if isinstance(exc, asyncio.CancelledError)
                else f"the purge sender stopped: {type(exc).__name__} (not confirmed)"
            )
            self._fail_all(sender, CDNError(why))
            raise
        finally:
            if not sender.pending and self._senders.get(cdn_id) is sender:
                del self._senders[cdn_id]

    async def _send_batch(self, session: Session, cdn_id: str, sender: _EndpointSender) -> None:
        batch = _Batch(session, cdn_id, sender)
        error: CDNError | None = None
        wait = 0.0
        request_id: str | None = None
        try:
            try:
                resp = await batch.send()
            except _NothingToSend:
                return
            except CDNError as exc:
                error = exc
            except Exception as exc:  # a bug or a misused session: still report the paths
                error = CDNError(f"purge request failed: {type(exc).__name__}: {exc}")
            else:
                error, wait = None, resp.budget_wait + batch.waited
                request_id = resp.request_id
        except asyncio.CancelledError:
            sent = bool(batch.paths)
            if sender.pending or batch.paths:
                batch.seal()  # the sealed paths are reported, never dropped
            self._resolve(batch.paths, CDNError(_CLOSED), 0.0, sent=sent, stop=True)
            raise
        sent = bool(batch.paths)  # empty when it failed before the budgets admitted it
        if not sent and sender.pending:
            batch.seal()
        if isinstance(error, APIError):
            request_id = error.request_id
        served = self._resolve(
            batch.paths,
            error,
            wait,
            sent=sent,
            stop=isinstance(error, ENDPOINT_FATAL),
            request_id=request_id,
        )
        if sent:
            paths = batch.paths
            callers = {c.call_id: None for p, w in paths for c, _ in _pairs(p, w) if c.call_id}
            session.observer.batch_sent(
                PurgeBatchSent(
                    cdn_id,
                    tuple(p for p, _ in paths),
                    served,
                    error is None,
                    request_id,
                    session.observer.call_id(),
                    tuple(callers),
                    session.observer.name,
                )
            )
        if isinstance(error, ENDPOINT_FATAL):
            self._fail_all(sender, error)

    def _fail_all(self, sender: _EndpointSender, error: CDNError) -> None:
        batch = list(sender.pending.items())
        sender.pending.clear()
        sender.urgent.clear()
        self._resolve(batch, error, 0.0, sent=False, stop=True)

    @staticmethod
    def _resolve(
        batch: list[tuple[str, _Waiting]],
        error: CDNError | None,
        wait: float,
        sent: bool,
        stop: bool = False,
        request_id: str | None = None,
    ) -> int:
        """Report ``batch``'s outcome to its callers (``stop``: ``error`` ends their purge);
        returns how many callers it served."""
        outcomes: dict[_Call, tuple[list[str], list[tuple[str, CDNError]]]] = {}
        for path, waiting in batch:
            for call, own in _pairs(path, waiting):
                purged, failed = outcomes.setdefault(call, ([], []))
                if error is None:
                    purged.append(own)
                else:
                    failed.append((own, error))
        for call, (purged, failed) in outcomes.items():
            if stop and error is not None:
                call.stopped = error
            call.batch_done(purged, failed, wait, sent, request_id)
        return len(outcomes)

    async def aclose(self) -> None:
        """Cancel the senders; paths not yet purged are reported failed to their callers."""
        tasks = [sender.task for sender in self._senders.values() if sender.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def pending_files(self) -> int:
        """Paths waiting to be sent, over every endpoint: file-budget units they will take
        (what a purge with a deadline counts ahead of itself)."""
        return sum(len(sender.pending) for sender in self._senders.values())
