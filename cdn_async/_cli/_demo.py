"""``cdn-async fake-server`` and ``cdn-async demo``: the SDK against a local fake API, with no
account and no token."""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs
import click

from .. import CDNClient, PurgeReport, RateLimits, plan_purge
from .._constants import TOKEN_ENV
from ..errors import CDNError, PurgeError
from ..testing._faults import OPERATIONS
from ._app import no_progress_option
from ._output import EXIT_API_ERROR, EXIT_OK, endpoint_table, err, error_line, out, stdout_console
from ._progress import progress_display

if TYPE_CHECKING:
    from ..testing import FakeCDNServer


_SHARE = click.FloatRange(0.0, 1.0)


@click.command("fake-server", short_help="Serve a fake CDN API for local work and pipelines.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port (0: any free one).")
@click.option(
    "--time-scale",
    type=float,
    default=1.0,
    show_default=True,
    metavar="F",
    help="Multiply every budget period by F (0.01: 10 s become 0.1 s).",
)
@click.option(
    "--purge-duration",
    type=float,
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="How long each purge request takes.",
)
@click.option(
    "--token",
    "tokens",
    multiple=True,
    metavar="TOKEN",
    help="Accept this token too, with every scope (repeatable): set it in the pipeline first.",
)
@click.option("--fail", type=_SHARE, default=0.0, metavar="P", help="Answer 503 to a share P.")
@click.option(
    "--fail-after",
    type=_SHARE,
    default=0.0,
    metavar="P",
    help="Answer 500 to a share P of requests, after the change was made.",
)
@click.option("--drop", type=_SHARE, default=0.0, metavar="P", help="Drop a share P of requests.")
@click.option(
    "--refuse",
    type=_SHARE,
    default=0.0,
    metavar="P",
    help="Refuse a share P of requests with a 429 (not counted, as the API does).",
)
@click.option(
    "--refuse-next",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Refuse the next N requests with a 429.",
)
@click.option(
    "--retry-after",
    type=click.IntRange(min=0),
    metavar="SECONDS",
    help="Send Retry-After with the injected 429s.",
)
@click.option(
    "--cotenant",
    "cotenants",
    multiple=True,
    metavar="BUDGET=UNITS",
    help="Another client on the token spends UNITS of BUDGET (cdn, purge_files, minute, "
    "hourly) every period (repeatable): cdn=3 leaves 2 requests per 10 s.",
)
@click.option(
    "--latency",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="SECONDS",
    help="Delay requests and answers by this much each way.",
)
@click.option(
    "--jitter",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="SECONDS",
    help="Up to this much more delay, random, each way.",
)
@click.option(
    "--fault-op",
    type=click.Choice(OPERATIONS),
    help="Only this operation's requests get the 5xx, drops and 429s.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random fault.")
# Over 60 lines for its 16 options and its docstring (fake-server --help); the body is 45.
def fake_server(
    host: str,
    port: int,
    time_scale: float,
    purge_duration: float,
    tokens: tuple[str, ...],
    fail: float,
    fail_after: float,
    drop: float,
    refuse: float,
    refuse_next: int,
    retry_after: int | None,
    cotenants: tuple[str, ...],
    latency: float,
    jitter: float,
    fault_op: str | None,
    seed: int,
) -> int:
    """Serve a fake DigitalOcean CDN API for local work and pipeline tests, until Ctrl-C or
    SIGTERM; then print its totals (requests by status, 429s, paths purged).

    Prints its URL and a throwaway token that only the fake accepts. Faults test a
    pipeline's own error handling from a shell: 5xx before or after the change, dropped
    connections, latency, and 429s (a share refused, or a co-tenant spending the budget).

    \b
    Example:
      cdn-async fake-server --port 0 --time-scale 0.01 --refuse 0.2 --cotenant cdn=2
    """
    if not (math.isfinite(time_scale) and time_scale > 0):
        raise click.BadParameter("must be a positive number", param_hint="--time-scale")
    spent = [_parse_cotenant(text) for text in cotenants]
    from ..testing import ALL_SCOPES, serve
    from ..testing._main import apply_faults, serve_until_stopped, totals_text

    running: list[FakeCDNServer] = []

    def ready(server: FakeCDNServer) -> None:
        apply_faults(
            server,
            fail=fail,
            fail_after=fail_after,
            drop=drop,
            refuse=refuse,
            refuse_next=refuse_next,
            retry_after=retry_after,
            cotenants=spent,
            latency=latency,
            jitter=jitter,
            op=fault_op,
        )
        running.append(server)
        scale = f" --time-scale {time_scale:g}" if time_scale != 1.0 else ""
        out(f"Fake CDN API listening on {server.url}")
        out(f"Throwaway token for it (the fake's own, not a DigitalOcean token): {server.token}")
        out("Use it from another shell:")
        out(f"  export {TOKEN_ENV}={server.token}")
        out(f"  cdn-async endpoints list --base-url {server.url}{scale}")
        out("Press Ctrl-C to stop.")

    def stopped() -> None:
        err("Stopped.")
        if running:
            out(totals_text(running[0]))

    serving = serve(
        host,
        port,
        on_ready=ready,
        tokens={t: ALL_SCOPES for t in tokens},
        time_scale=time_scale,
        purge_duration=purge_duration,
        seed=seed,
    )
    try:
        asyncio.run(serve_until_stopped(serving, stopped, signals=(signal.SIGINT, signal.SIGTERM)))
    except KeyboardInterrupt:  # before the loop took the signal over
        stopped()
    return EXIT_OK


def _parse_cotenant(text: str) -> tuple[str, int]:
    from ..testing._main import parse_cotenant

    try:
        return parse_cotenant(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--cotenant") from None


@click.command("demo", short_help="Run the whole job against a local fake API.")
@click.option(
    "--paths",
    type=click.IntRange(1, 100_000),
    default=3000,
    show_default=True,
    help="Paths to purge in all.",
)
@click.option(
    "--tasks",
    type=click.IntRange(1, 100),
    default=8,
    show_default=True,
    help="Concurrent purge tasks.",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(0.0001, 1.0),
    default=0.02,
    show_default=True,
    metavar="F",
    help="Run the budgets 1/F times faster than the real API.",
)
@no_progress_option
def demo(paths: int, tasks: int, time_scale: float, no_progress: bool) -> int:
    """Run the whole job against a local fake API: no account, no token needed.

    Starts a time-scaled fake API on loopback, creates endpoints, lists them, then
    bulk-purges thousands of paths from concurrent tasks with a progress bar, and shows
    the requests sent, the 429s the server counted (0) and how much of the budget was used.
    """
    try:
        return asyncio.run(_demo(paths, tasks, time_scale, no_progress=no_progress))
    except CDNError as exc:
        err(error_line(exc))
        return EXIT_API_ERROR


def demo_jobs(endpoint_ids: Sequence[str], paths: int, tasks: int) -> list[tuple[str, list[str]]]:
    """The demo's purge jobs: ``tasks`` lists of paths, ``paths`` in all, across endpoints.

    Tasks on the same endpoint overlap by about a tenth of their paths (the engine shares
    what is pending), every 25th path repeats the one before with a leading ``/`` (the same
    path once normalised), and the first task also purges ``css/*``, which covers its css paths.

    Args:
        endpoint_ids: The endpoints to spread the tasks over.
        paths: Paths in all, duplicates included.
        tasks: How many concurrent purge calls.

    Returns:
        ``(endpoint id, paths)`` for each task.
    """
    per_task, extra = divmod(paths, tasks)
    dirs = (("img", "png"), ("css", "css"), ("js", "js"), ("fonts", "woff2"))
    jobs: list[tuple[str, list[str]]] = []
    for i in range(tasks):
        count = per_task + (1 if i < extra else 0)
        base = (i // len(endpoint_ids)) * int(per_task * 0.9)
        own: list[str] = []
        for k in range(count):
            j = base + k
            folder, ext = dirs[j % len(dirs)]
            own.append(f"{folder}/asset-{j:05d}.{ext}")
            if k % 25 == 24:
                own[-1] = "/" + own[-2]
        if i == 0 and own:
            own[-1] = "css/*"
        jobs.append((endpoint_ids[i % len(endpoint_ids)], own))
    return [job for job in jobs if job[1]]


async def _demo(paths: int, tasks: int, time_scale: float, *, no_progress: bool) -> int:
    from ..testing import FakeCDNServer

    say = stdout_console().print
    limits = RateLimits.documented().scaled(time_scale)
    files_budget = limits.get("purge_files")
    assert files_budget is not None
    demo_started = time.monotonic()
    async with FakeCDNServer(time_scale=time_scale, host="127.0.0.1", port=0) as server:
        say(
            f"[bold]1.[/] A fake DigitalOcean CDN API is running on {server.url}, with the "
            f"documented budgets {1 / time_scale:g}x faster than the real API's "
            f"(files: {files_budget.limit} paths / {files_budget.period:g} s)."
        )
        async with CDNClient(server.token, base_url=server.url, limits=limits) as cdn:
            endpoint_ids = await _make_endpoints(cdn, say)
            jobs = demo_jobs(endpoint_ids, paths, tasks)
            say(
                f"[bold]3.[/] {len(jobs)} concurrent tasks purge "
                f"{sum(len(job_paths) for _, job_paths in jobs)} paths (duplicates, a "
                f"wildcard and overlapping lists included) across {len(endpoint_ids)} "
                "endpoints..."
            )
            results, purge_wall = await _purge(cdn, server, jobs, no_progress=no_progress)
            tally = _Tally.of(jobs, results, purge_wall, server)
    say(f"[bold]4.[/] Done in {time.monotonic() - demo_started:.1f} s.")
    return tally.show(say, files_budget.limit, files_budget.period, time_scale)


async def _make_endpoints(cdn: CDNClient, say: Callable[..., None]) -> list[str]:
    """Create the demo's three endpoints and list them; their ids."""
    names = [("assets", 3600), ("images", 86400), ("downloads", 600)]
    created = await asyncio.gather(
        *(
            cdn.endpoints.create(f"demo-{name}.nyc3.digitaloceanspaces.com", ttl=ttl)
            for name, ttl in names
        )
    )
    say(f"[bold]2.[/] Created {len(created)} endpoints; listing them:")
    say(endpoint_table([ep async for ep in cdn.endpoints.list()]))
    return [ep.id for ep in created]


async def _purge(
    cdn: CDNClient, server: FakeCDNServer, jobs: list[tuple[str, list[str]]], *, no_progress: bool
) -> tuple[list[PurgeReport | BaseException], float]:
    """Every job's purge at once, one progress display for all; each job's report (or
    what it raised), and the seconds they took."""
    totals = []
    for _, job_paths in jobs:
        plan = plan_purge(job_paths, cdn.limits)
        totals.append(len(plan.paths) + len(plan.covered))
    dones = [0] * len(jobs)
    display = progress_display(cdn, description="purge", no_progress=no_progress, total=sum(totals))

    def on_progress(i: int) -> Callable[[int, int], None]:
        def update(done: int, total: int) -> None:
            dones[i] = done
            sent = server.counters.by_rule["ok"] + sum(server.counters.rate_limited.values())
            display.update(sum(dones), sent)

        return update

    started = time.monotonic()
    async with display:
        results = await asyncio.gather(
            *(
                cdn.endpoints.purge(ep_id, job_paths, on_progress=on_progress(i))
                for i, (ep_id, job_paths) in enumerate(jobs)
            ),
            return_exceptions=True,
        )
    return results, time.monotonic() - started


@attrs.frozen
class _Tally:
    """What the demo's purges did, from their reports and the fake server's journal."""

    tasks: int
    asked: int
    purged: int
    failed: int
    crashed: list[BaseException]
    requests: int
    by_op: Counter[str]
    files_sent: int
    rate_limited: int
    purge_wall: float

    @classmethod
    def of(
        cls,
        jobs: list[tuple[str, list[str]]],
        results: list[PurgeReport | BaseException],
        purge_wall: float,
        server: FakeCDNServer,
    ) -> _Tally:
        reports = [r.report if isinstance(r, PurgeError) else r for r in results]
        journal = list(server.journal)
        return cls(
            tasks=len(jobs),
            asked=sum(len(job_paths) for _, job_paths in jobs),
            purged=sum(len(r.purged) for r in reports if isinstance(r, PurgeReport)),
            failed=sum(len(r.failed) for r in reports if isinstance(r, PurgeReport)),
            crashed=[
                r for r in results if isinstance(r, BaseException) and not isinstance(r, PurgeError)
            ],
            requests=len(journal),
            by_op=Counter(e.op or "other" for e in journal),
            files_sent=sum(
                len(e.body["files"])
                for e in journal
                if e.op == "purge" and e.status == 204 and isinstance(e.body, dict)
            ),
            rate_limited=sum(server.counters.rate_limited.values()),
            purge_wall=purge_wall,
        )

    def show(self, say: Callable[..., None], limit: int, period: float, time_scale: float) -> int:
        """Print the table and the closing line; the exit code (0: no 429, nothing failed)."""
        from rich.table import Table

        windows = math.ceil(self.files_sent / limit) if self.files_sent else 0
        bound = max(0, windows - 1) * period
        wall = self.purge_wall
        pace = (bound / wall * 100) if wall > 0 else 100
        ops = ", ".join(f"{n} {op}" for op, n in self.by_op.most_common())
        rows = [
            ("requests sent", f"{self.requests} ({ops})"),
            ("429s from the server", str(self.rate_limited)),
            ("paths asked to purge", f"{self.asked} in {self.tasks} tasks"),
            ("paths purged", f"{self.purged}, {self.failed} failed (each task's paths once)"),
            (
                "paths sent",
                f"{self.files_sent} (duplicates shared, covered paths dropped, batches of {limit})",
            ),
            (
                "purge wall time",
                f"{wall:.1f} s; the files budget allows no less than {bound:.1f} s "
                f"({windows} windows of {period:g} s)",
            ),
            (
                "budget use",
                f"{pace:.0f}% of the files budget's pace; at the real API's pace this purge "
                f"takes about {wall / time_scale / 60:.1f} min",
            ),
        ]
        table = Table(show_header=False, box=None, padding=(0, 2))
        for name, value in rows:
            table.add_row(name, value)
        say(table)
        say(
            f"[bold]5.[/] {pace:.0f}% of the files budget's pace, and the server counted "
            f"{self.rate_limited} x 429. Charts of every window: benchmarks/budget-window.svg "
            "and benchmarks/purge-window.svg in the cdn-async repository."
        )
        for result in self.crashed:
            err(error_line(result))
        ok = self.rate_limited == 0 and self.failed == 0 and not self.crashed
        return EXIT_OK if ok else EXIT_API_ERROR
