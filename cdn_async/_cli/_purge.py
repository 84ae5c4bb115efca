"""``cdn-async purge`` and ``cdn-async purge-worker``.

``purge`` plans with ``plan_purge`` (what it announces) and makes one
``cdn.endpoints.purge`` call; the engine batches and paces it, and its ``on_batch`` progress
moves the bar and keeps what was confirmed, so that a Ctrl-C can report exactly which paths
were purged. With ``--redis`` the same call goes through the shared purge queue;
``--no-wait`` only queues, and ``purge-worker`` sends what was queued.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Collection
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit

import click

from .. import PurgeProgress, PurgeReport, plan_purge
from .. import _validation as check
from .._file_share import polite_start
from ..errors import CDNError, PurgeError
from ._app import (
    REDIS_ENV,
    ApiOptions,
    api_options,
    json_option,
    no_progress_option,
    read_paths,
    run_command,
)
from ._deadline import duration, planned_purge
from ._output import (
    EXIT_OK,
    EXIT_PARTIAL,
    distinct_errors,
    dump,
    err,
    error_line,
    n,
    out,
    purge_exit_code,
    report_json,
    status_of,
    stdout_console,
)
from ._progress import DEFAULT_HEARTBEAT, Display, progress_display
from ._settled import Settled
from ._signals import Stop
from ._wire import Wire, wait_for_the_wire

if TYPE_CHECKING:
    from .. import CDNClient
    from .._purge_queue import PurgeTicket
    from ..redis import RedisPurgeQueue


@click.command("purge")
@click.argument("endpoint_id")
@click.argument("paths", nargs=-1)
@click.option(
    "--from-file",
    "from_file",
    type=click.File("r"),
    help="Read paths from FILE, one a line ('-' for stdin; blank lines and # comments skipped).",
    metavar="FILE",
)
@click.option(
    "--all", "purge_all", is_flag=True, help="Purge everything cached ('*'). Never implied."
)
@no_progress_option
@click.option(
    "--no-wait",
    is_flag=True,
    help="With --redis: queue the paths in the shared purge queue and exit at once; a "
    "cdn-async purge-worker (or any process waiting on a purge) sends them.",
)
@click.option(
    "--heartbeat",
    type=click.FloatRange(min=0),
    default=DEFAULT_HEARTBEAT,
    show_default=True,
    envvar="CDN_ASYNC_HEARTBEAT",
    show_envvar=True,
    metavar="SECONDS",
    help="Without a terminal (CI logs), print a progress line this often; 0: never.",
)
@click.option(
    "--manifest",
    "manifest_file",
    type=click.File("r"),
    help="Every path the endpoint may cache, one a line (the build's output, a listing of "
    "the Space): the changed PATHS are collapsed into dir/* wildcards chosen from it to meet "
    "--deadline, purging the fewest unchanged files. With it, --all allows '*'.",
    metavar="FILE",
)
@click.option(
    "--deadline",
    callback=duration,
    help="Send the last request within this time (60s, 5m, 1h30m): the plan must fit the "
    "file budget's windows until then, or nothing is sent.",
    metavar="DURATION",
)
@click.option("--dry-run", is_flag=True, help="Print the plan (table or --json) and send nothing.")
@json_option
@api_options
# Over 60 lines for its 12 options and its docstring (purge --help); the body is 40.
def purge(
    api: ApiOptions,
    endpoint_id: str,
    paths: tuple[str, ...],
    from_file: TextIO | None,
    purge_all: bool,
    no_progress: bool,
    no_wait: bool,
    heartbeat: float,
    as_json: bool,
    manifest_file: TextIO | None = None,
    deadline: float | None = None,
    dry_run: bool = False,
) -> int:
    """Purge cached PATHS of the CDN endpoint ENDPOINT_ID.

    Any number of paths: duplicates and paths under a wildcard given too (css/*) are
    dropped, and the rest go out in batches of 50 as fast as the rate limits allow, with
    a progress bar on a terminal, and a progress line every 30 s in CI logs.

    Ctrl-C, SIGTERM or SIGHUP stops sending, waits for the batch on the wire, prints the
    report so far (purged, failed, and with --redis still queued) and exits 130, 143 or
    129. Exit 3 when some paths failed; see cdn-async --help for every exit code.

    Parallel jobs on one host share the rate budgets (a file per token; see
    --no-share-budgets). With --redis, jobs on any host share them and one purge queue: a
    path queued by several of them is sent once, and one batch per endpoint is in flight at
    a time.

    With --manifest and --deadline, the changed paths are covered by exact paths and
    dir/* wildcards chosen to meet the deadline, purging the fewest files that did not
    change; --dry-run prints that plan. Stopped, such a purge waits for the batch on the
    wire too, and reports the paths not confirmed failed (with --redis too).

    \b
    Examples:
      cdn-async purge ID img/logo.png 'css/*'
      git diff --name-only HEAD~1 | cdn-async purge ID --from-file -
      cdn-async purge ID --all
      cdn-async purge ID --from-file changed.txt --manifest all.txt --deadline 60s --dry-run
    """
    files = list(paths)
    if from_file is not None:
        files.extend(read_paths(from_file))
    if manifest_file is not None or deadline is not None or dry_run:
        if no_wait:
            raise click.UsageError("--no-wait only queues: it takes no --manifest or --deadline")
        return planned_purge(
            api,
            endpoint_id,
            files,
            manifest_file,
            deadline,
            dry_run=dry_run,
            allow_all=purge_all,
            as_json=as_json,
            no_progress=no_progress,
            heartbeat=heartbeat,
        )
    if purge_all:
        if files:
            raise click.UsageError("--all purges everything; give no paths with it")
        files = ["*"]
    if not files:
        raise click.UsageError("no paths to purge: give PATH..., --from-file FILE or --all")
    if no_wait:
        if not api.redis_url:
            raise click.UsageError(f"--no-wait needs a shared queue: --redis URL or ${REDIS_ENV}")
        return run_command(
            lambda stop: _submit(api, endpoint_id, files, as_json=as_json), as_json=as_json
        )
    return run_command(
        lambda stop: _purge(
            api,
            endpoint_id,
            files,
            as_json=as_json,
            no_progress=no_progress,
            heartbeat=heartbeat,
            stop=stop,
        ),
        as_json=as_json,
    )


@click.command("purge-worker", short_help="Send what other processes queued for purging.")
@click.option(
    "--endpoint",
    "endpoint_ids",
    multiple=True,
    metavar="ID",
    help="Only this endpoint (repeatable); default every endpoint with paths queued.",
)
@click.option("--until-idle", is_flag=True, help="Exit once nothing is queued or in flight.")
@api_options
def purge_worker(api: ApiOptions, endpoint_ids: tuple[str, ...], until_idle: bool) -> int:
    """Drain the shared purge queue in Redis, for processes that only queue paths.

    Web workers that queue purges (RedisPurgeQueue.submit) and jobs run with
    'cdn-async purge --no-wait' do not send anything themselves: run one or more of these
    next to them. Batches of 50 go out at the rate budgets' pace (shared through the same
    Redis), one per endpoint at a time across every worker; a worker killed mid-batch has
    its batch sent again by another. Runs until Ctrl-C or SIGTERM (or --until-idle).

    \b
    Example:
      CDN_ASYNC_REDIS_URL=redis://localhost:6379/0 cdn-async purge-worker
    """
    if not api.redis_url:
        raise click.UsageError(f"purge-worker needs the shared queue: --redis URL or ${REDIS_ENV}")
    return run_command(lambda stop: _work(api, list(endpoint_ids), until_idle=until_idle))


#: The longest an interrupted purge reads the shared queue to tell queued paths from purged
#: ones (normally one or two polls).
_SETTLE_TIMEOUT = 2.0


class _PurgeJob:
    """One ``cdn-async purge`` (no deadline) on a connected client, phase by phase: plan and
    announce, send (through the shared queue with ``--redis``), and, when a stop signal
    cancels it, stop: wait for the batch on the wire and account for every path.

    Args:
        cdn: The client, whose event hooks include ``wire``.
        queue: The shared purge queue, or None.
        cdn_id: The endpoint (checked).
        paths: The paths as given.
        wire: The hook on this process's purge requests.
        display: The progress display.
    """

    def __init__(
        self,
        cdn: CDNClient,
        queue: RedisPurgeQueue | None,
        cdn_id: str,
        paths: list[str],
        wire: Wire,
        display: Display,
    ) -> None:
        self.cdn = cdn
        self.queue = queue
        self.cdn_id = cdn_id
        self.paths = paths
        self.wire = wire
        self.display = display
        self.plan = plan_purge(paths, cdn.limits)
        self.settled = Settled(cdn_id, [*self.plan.paths, *self.plan.covered])
        #: The job's ticket in the shared queue, once submitted.
        self.ticket: PurgeTicket | None = None
        #: After a stop with ``--redis``: the open paths still in the shared queue.
        self.queued: set[str] = set()
        self.started = time.monotonic()

    def on_batch(self, progress: PurgeProgress) -> None:
        self.settled.add(progress)
        self.display.update(self.settled.done, self.settled.batches, len(self.settled.failed))

    async def run(self) -> PurgeReport:
        """Announce the plan and send it; the report (``CancelledError`` on a stop signal)."""
        async with self.display:
            self._announce()
            try:
                if self.queue is None:
                    return await self.cdn.endpoints.purge(
                        self.cdn_id, self.paths, on_batch=self.on_batch
                    )
                self.ticket = await self.queue.submit(self.cdn_id, self.paths)
                return await self.queue.wait(self.ticket, self.cdn, on_batch=self.on_batch)
            except PurgeError as exc:
                return exc.report

    def _announce(self) -> None:
        limits, plan, total = self.cdn.limits, self.plan, len(self.settled.paths)
        # A CLI purge is polite (room for jobs on other hosts): its first window costs a few
        # more requests and a quarter period.
        file_period = max(b.period for b in limits.budgets if b.unit == "file")
        extra, late = polite_start(limits.purge_batch_size, file_period, len(plan.paths))
        requests = plan.requests + extra
        self.display.announce(
            total,
            f"Purging {n(total, 'path')} of endpoint {self.cdn_id} ({len(plan.paths)} sent "
            f"in {n(requests, 'request')} of up to {limits.purge_batch_size})...",
            requests=requests,
            seconds=plan.seconds + late,
        )

    async def stop(self, stop: Stop) -> PurgeReport:
        """After a stop signal cancelled ``run``: nothing more is sent. Wait for the batch on
        the wire (its outcome is reported), unless a second signal says not to; then the
        report so far, every path in it purged, failed or (``--redis``) still queued."""
        unsent = await wait_for_the_wire(self.wire, stop, shared=self.queue is not None)
        if self.queue is None:
            self.settled.confirm_late(self.wire.accepted)
        else:
            try:
                self.queued = await self._still_queued(self.queue)
            except asyncio.CancelledError:  # a second signal
                task = asyncio.current_task()
                assert task is not None
                task.uncancel()
            # An outcome read while the queue was being asked wins: never purged and queued.
            self.queued &= set(self.settled.open_paths())
        return self.settled.report(self.queued, unsent=unsent)

    async def _still_queued(self, queue: RedisPurgeQueue) -> set[str]:
        """After a stop (no request of this process live): stop sending, read the ticket's
        last outcomes, and say which open paths are still in the shared queue. A batch
        completes atomically (its paths leave the queue as its outcome is written), so once
        every open path is found queued and none of them in a batch in flight, no outcome is
        missed (a batch this process sent completes within ms of its answer; another
        process's may take longer than ``_SETTLE_TIMEOUT``, and its paths are reported
        queued: they are, until that process completes it)."""
        reader = None
        if self.ticket is not None:
            # Waiting without a client sends nothing: it only reads outcomes as they come.
            # Let it take the ticket over before the client closes (a waiter whose own client
            # closed has its open paths failed).
            reader = asyncio.ensure_future(queue.wait(self.ticket, None, on_batch=self.on_batch))
            await asyncio.sleep(0)
        # Closed, the client sends nothing more: this process's drainer only records the
        # outcome of what it sent, and stops.
        await self.cdn.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _SETTLE_TIMEOUT
        try:
            while True:
                rest = self.settled.open_paths()
                if not rest:
                    return set()
                waiting = await queue.queued(self.cdn_id, rest, in_flight=False)
                if len(waiting) == len(rest):
                    return waiting
                if loop.time() > deadline:
                    return await queue.queued(self.cdn_id, rest)
                await asyncio.sleep(0.05)
        finally:
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)


async def _purge(
    api: ApiOptions,
    cdn_id: str,
    paths: list[str],
    *,
    as_json: bool,
    no_progress: bool,
    heartbeat: float,
    stop: Stop,
) -> int:
    wire = Wire()
    async with api.connect([wire], bulk=True) as (cdn, queue):
        display = progress_display(
            cdn, description="purging", no_progress=no_progress, heartbeat=heartbeat
        )
        job = _PurgeJob(cdn, queue, check.uuid_str("cdn_id", cdn_id), paths, wire, display)
        try:
            report = await job.run()
        except asyncio.CancelledError:
            report = await job.stop(stop)
    return _print_report(job, report, stop, as_json=as_json)


def _print_report(job: _PurgeJob, report: PurgeReport, stop: Stop, *, as_json: bool) -> int:
    """The summary (or what was done before the stop), the report, and the exit code."""
    elapsed = time.monotonic() - job.started
    # Every wait: the time the purge was not on the wire here. Its own requests' budget
    # waits (a new Redis's recovery grace included), and with --redis the batches of other
    # processes it waited behind (one per endpoint at a time), which may carry its paths.
    waited = max(elapsed - job.wire.wire_time, job.wire.waited, report.budget_wait)
    code = purge_exit_code(report, stop.exit_code)
    purged, total, queued = len(report.purged), len(job.settled.paths), job.queued
    where = f"{purged} of {n(total, 'path')} of endpoint {job.cdn_id}"
    if stop.signal is not None:
        err(
            f"Interrupted by {stop.name}: {where} were purged ({n(report.requests, 'request')}), "
            f"{len(report.failed)} failed, {len(queued)} still queued"
            + (
                " in the shared purge queue (a purge-worker, or the next purge of this "
                f"endpoint, sends them; see README for how long they stay): exit {code}."
                if job.queue is not None
                else f": exit {code}."
            )
        )
        if as_json:
            dump(report_json(report, code=code, queued=queued, budget_wait=waited))
        _print_outcome(report, queued, code, total=total, as_json=as_json)
        return code
    summary = (
        f"Purged {where} in {n(report.requests, 'request')}, {elapsed:.1f} s ({waited:.1f} s "
        "waiting "
        + (
            "for rate budgets and the shared queue)."
            if job.queue is not None
            else "for rate budgets)."
        )
    )
    if as_json:
        err(summary)
        dump(report_json(report, code=code, budget_wait=waited))
    else:
        out(summary)
    _print_outcome(report, queued, code, total=total, as_json=as_json)
    if report.failed:
        for error in distinct_errors(report.failed.values()):
            err(error_line(error))
        err(f"{n(len(report.failed), 'path')} failed to purge: exit {code} ({status_of(code)}).")
    return code


#: Rows of each outcome the table shows (--json lists every path).
_TABLE_ROWS = 20


def _print_outcome(
    report: PurgeReport, queued: Collection[str], code: int, *, total: int, as_json: bool
) -> None:
    """Unless ``--json``: a table on stdout of the paths that need attention (failed, still
    queued) and how many were purged; nothing when every path was purged."""
    if as_json or (not report.failed and not queued):
        return
    from rich.table import Table

    table = Table(title=f"{status_of(code)}: {total} paths", title_justify="left")
    table.add_column("outcome", no_wrap=True)
    table.add_column("path", no_wrap=True)
    table.add_column("detail")
    table.add_row("purged", f"{len(report.purged)} paths", "")
    groups = (
        ("failed", [(p, str(e)) for p, e in report.failed.items()]),
        ("queued", [(p, "still in the shared purge queue") for p in queued]),
    )
    for outcome, rows in groups:
        for path, detail in rows[:_TABLE_ROWS]:
            table.add_row(outcome, path, detail)
        if len(rows) > _TABLE_ROWS:
            table.add_row(outcome, f"... {len(rows) - _TABLE_ROWS} more", "--json lists all")
    stdout_console().print(table)


async def _submit(api: ApiOptions, cdn_id: str, paths: list[str], *, as_json: bool) -> int:
    async with api.connect() as (_, queue):
        assert queue is not None
        ticket = await queue.submit(cdn_id, paths)
    err(
        f"Queued {n(ticket.total, 'path')} of endpoint {ticket.endpoint_id} in the shared purge "
        "queue; a purge-worker (or any process waiting on a purge of this endpoint) sends them."
    )
    if as_json:
        dump({"endpoint_id": ticket.endpoint_id, "queued": ticket.total})
    return EXIT_OK


async def _work(api: ApiOptions, endpoint_ids: list[str], *, until_idle: bool) -> int:
    counts: Counter[str] = Counter()

    def on_batch(cdn_id: str, paths: int, error: CDNError | None) -> None:
        counts["batches"] += 1
        if error is None:
            counts["purged"] += paths
            err(f"endpoint {cdn_id}: purged {n(paths, 'path')}")
        else:
            counts["failed"] += paths
            err(f"endpoint {cdn_id}: {n(paths, 'path')} failed: {error_line(error)}")

    async with api.connect(bulk=True) as (cdn, queue):
        assert queue is not None
        err(
            f"purge-worker: draining the shared purge queue at {_redis_where(api.redis_url)} "
            "(Ctrl-C, SIGTERM or SIGHUP to stop)..."
        )
        try:
            await queue.work(
                cdn, endpoints=endpoint_ids or None, until_idle=until_idle, on_batch=on_batch
            )
        except asyncio.CancelledError:
            # A stop signal: a worker's normal stop (exit 0). A batch on the wire is answered
            # and completed first; one waiting for its budgets is given back to the queue.
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
    out(
        f"purge-worker: {counts['batches']} batches, {counts['purged']} paths purged, "
        f"{counts['failed']} failed."
    )
    return EXIT_PARTIAL if counts["failed"] else EXIT_OK


def _redis_where(url: str | None) -> str:
    """``host:port/db`` of a Redis URL, never its password."""
    parts = urlsplit(url or "")
    host = parts.hostname or parts.path or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path if parts.hostname else ''}"
