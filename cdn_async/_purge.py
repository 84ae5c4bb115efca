"""The purge engine: one logical purge of any size, each path purged once.

A purge is planned (duplicates and covered paths dropped), then its paths join the endpoint's
*pending set*: paths waiting to be sent. One sender per endpoint takes up to a batch (the
file budget's limit) from the front of that set when the budgets admit it, so paths that
other callers add while it waits join the same request. A path already pending, or covered
by a pending wildcard, is shared rather than sent twice; a path already *sent* is never
joined (content changed after the request went out would stay cached). Sending one batch at
a time per endpoint also means two identical purges are never in flight together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from ._logs import logger
from .errors import (
    AuthenticationError,
    CDNError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    PurgeError,
)

if TYPE_CHECKING:
    from ._session import Session

#: Answers after which every later batch of the endpoint would fail the same way.
_FATAL = (AuthenticationError, PermissionDeniedError, NotFoundError)


@attrs.frozen
class PurgeReport:
    """What one ``purge`` call achieved.

    Args:
        endpoint_id: The endpoint purged.
        purged: Every path of the call (normalised, once each) that was purged, including
            paths purged by a wildcard that covers them.
        failed: Path -> the error that made it fail, for every path that was not purged.
        requests: Purge requests that carried this call's paths (shared ones included).
        budget_wait: Seconds those requests spent waiting on rate budgets.
    """

    endpoint_id: str
    purged: tuple[str, ...]
    failed: Mapping[str, CDNError]
    requests: int
    budget_wait: float

    @property
    def ok(self) -> bool:
        """True when every path was purged."""
        return not self.failed


def plan(paths: Sequence[str]) -> dict[str, str]:
    """Map each (normalised) path to the path that will actually be sent for it.

    ``"*"`` covers everything; ``dir/*`` covers every path that starts with ``dir/``; other
    paths stand for themselves. Order of first appearance is kept.
    """
    unique = list(dict.fromkeys(paths))
    if "*" in unique:
        return {p: "*" for p in unique}
    prefixes = sorted({p[:-1] for p in unique if p.endswith("/*")}, key=len)
    mapping: dict[str, str] = {}
    for p in unique:
        mapping[p] = _cover(p, prefixes) or p
    return mapping


def _cover(path: str, prefixes: Sequence[str]) -> str | None:
    """The shortest wildcard among ``prefixes`` (each ``dir/``) that covers ``path``."""
    for prefix in prefixes:
        if path.startswith(prefix) and path != prefix + "*":
            return prefix + "*"
    return None


class _Call:
    """One ``purge`` caller's tally."""

    def __init__(
        self, cdn_id: str, paths: Sequence[str], on_progress: Callable[[int, int], None] | None
    ) -> None:
        self.cdn_id = cdn_id
        self.total = len(paths)
        self.purged: list[str] = []
        self.failed: dict[str, CDNError] = {}
        self.requests = 0
        self.budget_wait = 0.0
        self.on_progress = on_progress
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def batch_done(
        self, purged: list[str], failed: list[tuple[str, CDNError]], wait: float, sent: bool
    ) -> None:
        self.purged.extend(purged)
        self.failed.update(failed)
        if sent:
            self.requests += 1
            self.budget_wait += wait
        done = len(self.purged) + len(self.failed)
        if self.on_progress is not None:
            try:
                self.on_progress(done, self.total)
            except Exception:  # a broken callback must not lose the purge's results
                logger.exception("on_progress callback failed")
        if done >= self.total and not self.finished.done():
            self.finished.set_result(None)

    def report(self) -> PurgeReport:
        return PurgeReport(
            self.cdn_id, tuple(self.purged), dict(self.failed), self.requests, self.budget_wait
        )


class _Entry:
    """A pending path and the callers (with their own path it stands for) waiting on it."""

    __slots__ = ("waiters",)

    def __init__(self) -> None:
        self.waiters: list[tuple[_Call, str]] = []


class _Lane:
    """One endpoint's pending set and its sender task."""

    def __init__(self) -> None:
        self.pending: dict[str, _Entry] = {}
        self.task: asyncio.Task[None] | None = None

    def covering(self, path: str) -> _Entry | None:
        entry = self.pending.get(path)
        if entry is not None:
            return entry
        if "*" in self.pending:
            return self.pending["*"]
        # Walk the path's parent directories: "a/b/c.png" may be covered by "a/*" or "a/b/*".
        cut = path.find("/")
        while cut != -1:
            entry = self.pending.get(path[: cut + 1] + "*")
            if entry is not None and path != path[: cut + 1] + "*":
                return entry
            cut = path.find("/", cut + 1)
        return None


class _NothingToSend(Exception):
    """Raised by a batch's seal when every path it was to carry was abandoned."""


def _abandon(lane: _Lane, call: _Call, joined: Iterable[tuple[str, _Entry]]) -> None:
    """A cancelled caller leaves the paths it waits on that are not yet sent; a path no one
    else waits on is not sent at all (an already-sealed batch goes out regardless)."""
    for key, entry in joined:
        if lane.pending.get(key) is not entry:
            continue  # sealed (on the wire or done): it stays shared
        entry.waiters = [(c, own) for c, own in entry.waiters if c is not call]
        if not entry.waiters:
            del lane.pending[key]


class PurgeEngine:
    """Coalesces, batches and sends purges for one client (and its copies)."""

    def __init__(self) -> None:
        self._lanes: dict[str, _Lane] = {}

    async def purge(
        self,
        session: Session,
        cdn_id: str,
        paths: Sequence[str],
        *,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> PurgeReport:
        """Purge ``paths`` (already validated and normalised) of ``cdn_id``; see ``Endpoints.purge``.

        A batch shared by callers of several client copies is sent with the options (retries,
        timeout) of the caller that opened the endpoint's lane.
        """
        mapping = plan(paths)
        call = _Call(cdn_id, list(mapping), on_progress)
        lane = self._lanes.setdefault(cdn_id, _Lane())
        joined: dict[int, tuple[str, _Entry]] = {}
        for own, target in mapping.items():
            entry = lane.covering(target)
            if entry is None:
                entry = lane.pending[target] = _Entry()
            entry.waiters.append((call, own))
            joined[id(entry)] = (target, entry)
        if lane.task is None or lane.task.done():
            lane.task = asyncio.get_running_loop().create_task(
                self._send_lane(session, cdn_id, lane)
            )
        try:
            # Cancelling this caller cancels only its own future, never the shared sender.
            await call.finished
        except asyncio.CancelledError:
            _abandon(lane, call, joined.values())
            raise
        report = call.report()
        if report.failed:
            raise PurgeError(report)
        return report

    async def _send_lane(self, session: Session, cdn_id: str, lane: _Lane) -> None:
        try:
            while lane.pending:
                await self._send_batch(session, cdn_id, lane)
        except BaseException as exc:
            # Whatever stops the sender, every caller still gets an answer for every path.
            why = (
                "the client was closed before these paths were purged"
                if isinstance(exc, asyncio.CancelledError)
                else f"the purge sender stopped: {type(exc).__name__}"
            )
            self._fail_all(lane, CDNError(why))
            raise
        finally:
            if not lane.pending and self._lanes.get(cdn_id) is lane:
                del self._lanes[cdn_id]

    async def _send_batch(self, session: Session, cdn_id: str, lane: _Lane) -> None:
        # The size is fixed now, so the file budget is claimed exactly; paths that arrive
        # while this batch waits for its budget go in the next one.
        size = min(session.limits.purge_batch_size, len(lane.pending))
        batch: list[tuple[str, _Entry]] = []

        def seal() -> dict[str, list[str]]:
            # Runs when the budgets first admit the request: from here on no caller may join.
            if not batch:
                for path in list(lane.pending)[:size]:
                    batch.append((path, lane.pending.pop(path)))
            if not batch:  # every caller of these paths was cancelled while it waited
                raise _NothingToSend
            return {"files": [path for path, _ in batch]}

        path = f"/v2/cdn/endpoints/{cdn_id}/cache"
        error: CDNError | None = None
        wait = 0.0
        retries = session.options.max_retries
        try:
            for attempt in range(retries + 1):
                try:
                    resp = await session.request(
                        "DELETE", path, endpoint_id=cdn_id, files=size, json=seal
                    )
                except ConflictError as exc:
                    # An identical purge (another process's) is in progress: wait, send again.
                    error = exc
                    if attempt < retries:
                        await session.backoff("DELETE", path, attempt + 1, "409 conflict")
                    continue
                except _NothingToSend:
                    return
                except CDNError as exc:
                    error = exc
                except Exception as exc:  # a bug or a misused session: still report the paths
                    error = CDNError(f"purge request failed: {type(exc).__name__}: {exc}")
                else:
                    error, wait = None, resp.budget_wait
                break
        except asyncio.CancelledError:
            sent = bool(batch)
            if lane.pending or batch:
                seal()  # the sealed paths are reported, never dropped
            self._resolve(
                batch,
                CDNError("the client was closed while these paths were purged"),
                0.0,
                sent=sent,
            )
            raise
        sent = bool(batch)  # empty when it failed before the budgets admitted it
        if not sent and lane.pending:
            seal()
        self._resolve(batch, error, wait, sent=sent)
        if isinstance(error, _FATAL):
            self._fail_all(lane, error)

    def _fail_all(self, lane: _Lane, error: CDNError) -> None:
        batch = list(lane.pending.items())
        lane.pending.clear()
        self._resolve(batch, error, 0.0, sent=False)

    @staticmethod
    def _resolve(
        batch: list[tuple[str, _Entry]], error: CDNError | None, wait: float, sent: bool
    ) -> None:
        outcomes: dict[_Call, tuple[list[str], list[tuple[str, CDNError]]]] = {}
        for _, entry in batch:
            for call, own in entry.waiters:
                purged, failed = outcomes.setdefault(call, ([], []))
                if error is None:
                    purged.append(own)
                else:
                    failed.append((own, error))
        for call, (purged, failed) in outcomes.items():
            call.batch_done(purged, failed, wait, sent)

    async def aclose(self) -> None:
        """Cancel the senders; paths not yet purged are reported failed to their callers."""
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
