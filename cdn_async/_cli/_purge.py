"""``cdn-async purge`` and ``cdn-async purge-worker``.

``purge`` plans with ``plan_purge`` (what it announces) and makes one
``cdn.endpoints.purge`` call; the engine batches and paces it, and its ``on_batch`` progress
moves the bar and keeps what was confirmed, so that a Ctrl-C can report exactly which paths
were purged. With ``--redis`` the same call goes through the shared purge queue;
``--no-wait`` only queues, and ``purge-worker`` sends what was queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from typing import TextIO
from urllib.parse import urlsplit

import click

from .. import PurgePlan, PurgeProgress, PurgeReport, plan_purge
from .. import _validation as check
from ..errors import CDNError, PurgeError
from ._app import REDIS_ENV, ApiOptions, api_options, json_option, no_progress_option, run_command
from ._deadline import duration, planned_purge
from ._output import (
    EXIT_API_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    distinct_errors,
    dump,
    err,
    error_line,
    n,
    out,
    report_json,
)
from ._progress import progress_display

_NOT_CONFIRMED = "interrupted before this path was confirmed purged"


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
def purge(
    api: ApiOptions,
    endpoint_id: str,
    paths: tuple[str, ...],
    from_file: TextIO | None,
    purge_all: bool,
    no_progress: bool,
    no_wait: bool,
    as_json: bool,
    manifest_file: TextIO | None = None,
    deadline: float | None = None,
    dry_run: bool = False,
) -> int:
    """Purge cached PATHS of the CDN endpoint ENDPOINT_ID.

    Any number of paths: duplicates and paths under a wildcard given too (css/*) are
    dropped, and the rest go out in batches of 50 as fast as the rate limits allow, with
    a progress bar. Ctrl-C stops and reports what was already purged.

    Parallel jobs on one host share the rate budgets (a file per token; see
    --no-share-budgets). With --redis, jobs on any host share them and one purge queue: a
    path queued by several of them is sent once, and one batch per endpoint is in flight at
    a time.

    With --manifest and --deadline, the changed paths are covered by exact paths and
    dir/* wildcards chosen to meet the deadline, purging the fewest files that did not
    change; --dry-run prints that plan.

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
            read_paths=read_paths,
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
        return run_command(_submit(api, endpoint_id, files, as_json=as_json))
    return run_command(_purge(api, endpoint_id, files, as_json=as_json, no_progress=no_progress))


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
    return run_command(_work(api, list(endpoint_ids), until_idle=until_idle))


def read_paths(source: TextIO) -> list[str]:
    """Paths from a file, one a line; blank lines and lines starting with ``#`` skipped.

    Args:
        source: The open file.

    Returns:
        The paths, stripped of surrounding whitespace.
    """
    paths = []
    for line in source:
        path = line.strip()
        if path and not path.startswith("#"):
            paths.append(path)
    return paths


class _Settled:
    """What ``on_batch`` has delivered of one purge call: its report if it is cancelled.

    Args:
        endpoint_id: The endpoint purged.
        plan: The call's plan, for the paths it holds.
    """

    def __init__(self, endpoint_id: str, plan: PurgePlan) -> None:
        self.endpoint_id = endpoint_id
        #: The call's paths, normalised, once each: those sent and those a wildcard covers.
        self.paths = [*plan.paths, *plan.covered]
        self.confirmed: list[str] = []
        self.failed: dict[str, CDNError] = {}
        self.batches = 0

    def add(self, progress: PurgeProgress) -> None:
        """Take in one settled batch."""
        self.confirmed.extend(progress.confirmed)
        self.failed.update(progress.failed)
        self.batches += 1

    def report(self) -> PurgeReport:
        """The report so far: paths with no outcome yet fail as not confirmed. ``requests``
        counts the batches settled; the time they waited on budgets is not known (0)."""
        failed = dict(self.failed)
        done = set(self.confirmed)
        for path in self.paths:
            if path not in done and path not in failed:
                failed[path] = CDNError(_NOT_CONFIRMED)
        return PurgeReport(self.endpoint_id, tuple(self.confirmed), failed, self.batches, 0.0)


async def _purge(
    api: ApiOptions, cdn_id: str, paths: list[str], *, as_json: bool, no_progress: bool
) -> int:
    interrupted = False
    started = time.monotonic()
    async with api.connect() as (cdn, queue):
        cdn_id = check.uuid_str("cdn_id", cdn_id)
        plan = plan_purge(paths, cdn.limits)
        settled = _Settled(cdn_id, plan)
        display = progress_display(cdn, description="purging", no_progress=no_progress)

        def on_batch(progress: PurgeProgress) -> None:
            settled.add(progress)
            display.update(progress.done, settled.batches)

        try:
            async with display:
                display.announce(
                    len(settled.paths),
                    f"Purging {n(len(settled.paths), 'path')} of endpoint {cdn_id} "
                    f"({len(plan.paths)} sent in {n(plan.requests, 'request')} of up to "
                    f"{cdn.limits.purge_batch_size})...",
                )
                try:
                    report = await cdn.endpoints.purge(cdn_id, paths, on_batch=on_batch)
                except PurgeError as exc:
                    report = exc.report
        except asyncio.CancelledError:
            # Ctrl-C: asyncio.run cancelled this task. Report, then exit with 130.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            interrupted = True
            report = settled.report()
    elapsed = time.monotonic() - started
    purged, total = len(report.purged), len(settled.paths)
    if interrupted:
        err(
            f"Interrupted: {purged} of {n(total, 'path')} of endpoint {cdn_id} were purged "
            f"({n(report.requests, 'request')}); the other {total - purged} were not confirmed"
            + (
                " and stay in the shared purge queue (a purge-worker, or another process "
                "waiting on them, sends them)."
                if queue is not None
                else "."
            )
        )
        if as_json:
            dump(report_json(report))
        return EXIT_INTERRUPTED
    summary = (
        f"Purged {purged} of {n(total, 'path')} of endpoint {cdn_id} in "
        f"{n(report.requests, 'request')}, {elapsed:.1f} s ({report.budget_wait:.1f} s waiting "
        "for rate budgets)."
    )
    if as_json:
        err(summary)
        dump(report_json(report))
    else:
        out(summary)
    if report.failed:
        for error in distinct_errors(report.failed.values()):
            err(error_line(error))
        err(f"{n(len(report.failed), 'path')} failed to purge.")
        return EXIT_API_ERROR
    return EXIT_OK


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

    async with api.connect() as (cdn, queue):
        assert queue is not None
        err(
            f"purge-worker: draining the shared purge queue at {_redis_where(api.redis_url)} "
            "(Ctrl-C or SIGTERM to stop)..."
        )
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            await queue.work(
                cdn, endpoints=endpoint_ids or None, until_idle=until_idle, on_batch=on_batch
            )
        except asyncio.CancelledError:
            # Ctrl-C or SIGTERM: a worker's normal stop. A batch it was sending is sent
            # again by the next drainer (its lease is released on the way out).
            task.uncancel()
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGTERM)
    out(
        f"purge-worker: {counts['batches']} batches, {counts['purged']} paths purged, "
        f"{counts['failed']} failed."
    )
    return EXIT_API_ERROR if counts["failed"] else EXIT_OK


def _redis_where(url: str | None) -> str:
    """``host:port/db`` of a Redis URL, never its password."""
    parts = urlsplit(url or "")
    host = parts.hostname or parts.path or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path if parts.hostname else ''}"
