"""A purge that meets a deadline: ``cdn.endpoints.purge(..., manifest=, deadline=)``.

Plans with the wildcard planner (``_purge_plan.plan_purge_steps``) a few ms at a time,
handing the event loop back in between; refuses a plan that cannot meet the deadline before
anything is sent; sends the wildcards chosen with the changed paths through the client's
purge backend (which maps each changed path to the wildcard that covers it); and reports in
terms of the changed paths (``_ChangedProgress``, ``_changed_report``): progress counts them,
the report names each wildcard purged and the changed paths it covered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from ._logs import logger
from ._models import PurgeReport
from ._purge import PurgeEngine
from ._purge_deadline import refuse_if_too_slow
from ._purge_plan import PurgeBackend, PurgePlan, PurgeProgress, entries_within, plan_purge_steps
from ._wildcards import Manifest
from .errors import PurgeError, ValidationError

if TYPE_CHECKING:
    from ._limits import Priority
    from ._session import Session

#: Seconds of planning between two yields to the event loop.
_SLICE = 0.005


async def _run(steps: Iterator[None]) -> None:
    """Run ``steps``, handing the loop back after every ``_SLICE`` of work."""
    clock = time.perf_counter
    started = clock()
    for _ in steps:
        if clock() - started > _SLICE:
            await asyncio.sleep(0)
            started = clock()


def in_use(session: Session, backend: PurgeBackend) -> int:
    """File-budget units a new purge finds ahead of it: counted in the file budget's window
    now, and paths this client's engine has yet to send."""
    files = {b.name for b in session.limits.budgets if b.unit == "file" and b.scope == "token"}
    states = session.store.snapshot()
    used = max((states[k].used for k in files if k in states), default=0)
    pending = backend.pending_files() if isinstance(backend, PurgeEngine) else 0
    return used + pending


async def plan_for(
    session: Session,
    backend: PurgeBackend,
    paths: Sequence[str],
    *,
    manifest: Iterable[str] | None,
    deadline: float | timedelta | None,
    allow_all: bool,
) -> PurgePlan:
    """The plan of a purge with a deadline, made now; the time planning takes counts
    against the deadline (the first request goes only once it is done)."""
    started = session.now()
    site: Manifest | None = None
    if manifest is not None:
        site = Manifest()
        await _run(site.read(manifest))
    busy = in_use(session, backend)
    seconds = deadline.total_seconds() if isinstance(deadline, timedelta) else deadline

    async def plan(within: float | None) -> PurgePlan:
        out: list[PurgePlan] = []
        await _run(
            plan_purge_steps(
                paths,
                session.limits,
                manifest=site,
                deadline=within,
                allow_all=allow_all,
                in_use=busy,
                out=out,
            )
        )
        return out[0]

    planned = await plan(seconds)
    spent = session.now() - started
    if seconds is not None and spent > 0 and planned.allowed is not None:
        # Planning again takes about as long: the deadline left after both.
        left = max(0.0, seconds - 2 * spent)
        if entries_within(session.limits, left, busy) < planned.allowed:
            planned = await plan(left)
    return planned


async def purge_planned(
    session: Session,
    backend: PurgeBackend,
    cdn_id: str,
    paths: Sequence[str],
    *,
    manifest: Iterable[str] | None,
    deadline: float | timedelta | None,
    allow_all: bool,
    on_progress: Callable[[int, int], None] | None,
    on_batch: Callable[[PurgeProgress], None] | None,
    priority: Priority | None,
) -> PurgeReport:
    """Plan, check, send and report a purge of changed ``paths`` (checked, normalised)."""
    planned = await plan_for(
        session, backend, paths, manifest=manifest, deadline=deadline, allow_all=allow_all
    )
    _refuse_if_late(planned, with_manifest=manifest is not None)
    if session.options.max_budget_wait is not None and not isinstance(backend, PurgeEngine):
        # All or nothing through a shared queue, as Endpoints.purge: the plan's entries alone
        # (the engine checks its own, with its pending paths).
        level = priority or session.options.priority
        refuse_if_too_slow(session, cdn_id, len(planned.paths), 0, level, plan_only=True)
    chosen = planned.unchanged_by  # the planner's wildcards (not paths of the call)
    progress = _ChangedProgress(chosen, len(dict.fromkeys(paths)), on_progress, on_batch)
    error: PurgeError | None = None
    try:
        report = await backend.purge(
            session, cdn_id, [*chosen, *paths], on_batch=progress.batch, priority=priority
        )
    except PurgeError as exc:
        report, error = exc.report, exc
    result = _changed_report(report, planned)
    if error is not None:
        raise PurgeError(result) from error.__cause__
    return result


def _refuse_if_late(planned: PurgePlan, *, with_manifest: bool) -> None:
    """``ValidationError`` (nothing sent) when the plan cannot meet its deadline."""
    if planned.fits:
        return
    hint = (
        "even with paths collapsed into wildcards; allow '*' or a later deadline"
        if with_manifest
        else "give a manifest so that paths can be collapsed into wildcards"
    )
    raise ValidationError(
        f"the purge cannot meet its deadline: it needs {len(planned.paths)} entries "
        f"({planned.requests} requests, the last {planned.seconds:.0f} s from now) and the "
        f"deadline allows {planned.allowed}; it would miss it by {planned.late_by:.0f} s "
        f"({hint}). Nothing was sent."
    )


class _ChangedProgress:
    """The backend's progress on the paths sent, told to the caller in changed paths: the
    planner's wildcards (``chosen``), which are not paths of the call, left out."""

    def __init__(
        self,
        chosen: Mapping[str, int],
        total: int,
        on_progress: Callable[[int, int], None] | None,
        on_batch: Callable[[PurgeProgress], None] | None,
    ) -> None:
        self.chosen = chosen
        self.total = total
        self.done = 0
        self.on_progress = on_progress
        self.on_batch = on_batch

    def batch(self, progress: PurgeProgress) -> None:
        chosen = self.chosen
        confirmed = tuple(p for p in progress.confirmed if p not in chosen)
        failed = {p: e for p, e in progress.failed.items() if p not in chosen}
        self.done += len(confirmed) + len(failed)
        if self.on_progress is not None:
            try:
                self.on_progress(self.done, self.total)
            except Exception:  # a broken callback must not lose the purge's results
                logger.exception("on_progress callback failed")
        if self.on_batch is not None:
            try:
                self.on_batch(PurgeProgress(self.done, self.total, confirmed, failed))
            except Exception:
                logger.exception("on_batch callback failed")


def _changed_report(report: PurgeReport, planned: PurgePlan) -> PurgeReport:
    """The backend's report in changed paths, with each wildcard purged, the changed paths it
    covered and the unchanged files it purged with them."""
    chosen = planned.unchanged_by
    purged = set(report.purged)
    return PurgeReport(
        report.endpoint_id,
        tuple(p for p in report.purged if p not in chosen),
        {p: e for p, e in report.failed.items() if p not in chosen},
        report.requests,
        report.budget_wait,
        report.request_ids,
        {w: covered for w, covered in planned.wildcards.items() if w in purged},
        sum(n for w, n in chosen.items() if w in purged),
        planned.unlisted,
    )
