"""The ``cdn-async`` command: manage CDN endpoints and purge caches from a shell or CI.

Needs the ``cli`` extra (click and rich), imported only here and only when ``main`` runs, so
``import cdn_async`` works without them::

    pip install 'cdn-async[cli]'
    export DIGITALOCEAN_TOKEN=...
    cdn-async endpoints list
    cdn-async purge 19f06b6a-3ace-4315-b086-499a0e521b76 img/logo.png 'css/*'
    cdn-async demo

With ``--redis URL`` (or ``$CDN_ASYNC_REDIS_URL``) every command shares the rate budgets
(``RedisBudgetStore``) and purges go through one queue shared by every process
(``RedisPurgeQueue``): parallel CI jobs purge a path once between them. ``purge --no-wait``
only queues; ``cdn-async purge-worker`` sends what was queued.

Results go to stdout (a table, or JSON with ``--json``); progress, prompts and errors go to
stderr. Exit codes: 0 success, 1 API error (or a declined delete), 2 usage error, 130 Ctrl-C.
The API token is never printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

import attrs

from . import _validation as check
from ._client import CDNClient
from ._constants import DEFAULT_BASE_URL, TOKEN_ENV
from ._limits import BudgetState, RateLimits
from ._models import CDNEndpoint, converter
from ._purge import PurgeReport, plan
from ._sentinel import NOT_GIVEN, NotGiven
from .errors import APIError, CDNError, PurgeError, ValidationError

if TYPE_CHECKING:
    import click
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.table import Table

    from ._purge_queue import RedisPurgeQueue
    from .testing import FakeCDNServer

EXTRA_HINT = "The cdn-async command needs its extra: pip install 'cdn-async[cli]'"

EXIT_OK = 0
EXIT_API_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

BASE_URL_ENV = "CDN_ASYNC_BASE_URL"
TIME_SCALE_ENV = "CDN_ASYNC_TIME_SCALE"
REDIS_ENV = "CDN_ASYNC_REDIS_URL"
#: How often the progress bar reads the budgets to say which one it waits for.
_POLL_INTERVAL = 0.2
_NOT_CONFIRMED = "interrupted before this path was confirmed purged"


def main(argv: list[str] | None = None) -> int:
    """Run the ``cdn-async`` command.

    Args:
        argv: The arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit status: 0 success, 1 API error, 2 usage error, 130 interrupted.
    """
    try:
        import click
        import rich  # noqa: F401  (only to fail early, with the hint, when it is missing)
    except ImportError:
        print(EXTRA_HINT, file=sys.stderr)
        return EXIT_USAGE
    cli = _build_cli()
    try:
        rv = cli.main(args=argv, prog_name="cdn-async", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        print("Aborted.", file=sys.stderr)
        return EXIT_API_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return rv if isinstance(rv, int) else EXIT_OK


# -- shared plumbing ------------------------------------------------------------------------


@attrs.frozen
class ApiOptions:
    """How to reach the API: the options every API command takes.

    Args:
        token: The API token (never printed; hidden from the repr).
        base_url: The API's address.
        time_scale: Multiplies every budget period (only for a time-scaled fake server).
        redis_url: A Redis to share budgets (``RedisBudgetStore``) and the purge queue
            (``RedisPurgeQueue``) through, or None (hidden from the repr: it may hold a
            password).
    """

    token: str | None = attrs.field(repr=False)
    base_url: str
    time_scale: float
    redis_url: str | None = attrs.field(default=None, repr=False)

    def _limits(self) -> RateLimits:
        if not self.token:
            raise ValidationError(f"no API token: set ${TOKEN_ENV} or pass --token")
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ValidationError(f"--time-scale must be a positive number, got {self.time_scale}")
        limits = RateLimits.documented()
        if self.time_scale != 1.0:
            limits = limits.scaled(self.time_scale)
        return limits

    def client(self) -> CDNClient:
        """A client for these options, with budgets in this process (``redis_url`` unused).

        Raises:
            ValidationError: No token, a bad base URL or time scale.
        """
        limits = self._limits()
        return CDNClient(self.token, base_url=self.base_url, limits=limits)

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[tuple[CDNClient, RedisPurgeQueue | None]]:
        """A client for these options and the shared purge queue (None without
        ``redis_url``); on exit the client, the queue and the budget store are closed.

        With ``redis_url`` the client's budgets live in Redis (``RedisBudgetStore``) and its
        purges go through the shared queue, both under the token's id (``token_id_for``).

        Raises:
            ValidationError: No token, a bad base URL, time scale or Redis URL, or no
                redis-py for ``redis_url``.
        """
        if self.redis_url is None:
            async with self.client() as cdn:
                yield cdn, None
            return
        limits = self._limits()
        assert self.token is not None
        try:
            from .redis import RedisBudgetStore, RedisPurgeQueue, token_id_for
        except ImportError:
            raise ValidationError(
                "--redis needs redis-py: pip install 'cdn-async[redis]'"
            ) from None
        tid = token_id_for(self.token)
        try:
            store = RedisBudgetStore(self.redis_url, token_id=tid, limits=limits)
        except ValueError as exc:
            raise ValidationError(f"--redis: {exc}") from None
        try:
            queue = RedisPurgeQueue(self.redis_url, token_id=tid)
            try:
                cdn = CDNClient(
                    self.token,
                    base_url=self.base_url,
                    limits=limits,
                    budget_store=store,
                    purge_queue=queue,
                )
            except BaseException:
                await queue.aclose()
                raise
        except BaseException:
            await store.aclose()
            raise
        try:
            yield cdn, queue
        finally:
            await cdn.close()
            await queue.aclose()
            await store.aclose()


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _n(count: int, noun: str) -> str:
    """``3 paths``, ``1 path``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _dump(data: Any) -> None:
    _out(json.dumps(data, indent=2))


def error_line(exc: BaseException) -> str:
    """One line describing an error for a human: ``error: 404 not_found: ... (request_id=...)``.

    Args:
        exc: The error.

    Returns:
        The line, without a trailing newline.
    """
    if isinstance(exc, APIError):
        rid = f" (request_id={exc.request_id})" if exc.request_id else ""
        return f"error: {exc.status} {exc.error_id or 'error'}: {exc.message}{rid}"
    return f"error: {exc}"


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run one command's coroutine and map SDK errors to an error line and an exit code."""
    try:
        return asyncio.run(coro)
    except ValidationError as exc:
        _err(error_line(exc))
        return EXIT_USAGE
    except CDNError as exc:
        _err(error_line(exc))
        return EXIT_API_ERROR


def _stdout_console() -> Console:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped: do not squeeze UUIDs into 80 columns (scripts should use --json anyway).
        console = Console(highlight=False, width=200)
    return console


def _stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def endpoint_table(endpoints: Iterable[CDNEndpoint], title: str | None = None) -> Table:
    """A rich table of endpoints: id, origin, endpoint, ttl, custom_domain, created_at.

    Args:
        endpoints: The endpoints, one per row.
        title: An optional caption above the table.

    Returns:
        The table.
    """
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("id", no_wrap=True)
    table.add_column("origin", no_wrap=True)
    table.add_column("endpoint", no_wrap=True)
    table.add_column("ttl", justify="right")
    table.add_column("custom_domain")
    table.add_column("created_at", no_wrap=True)
    for ep in endpoints:
        table.add_row(
            ep.id,
            ep.origin,
            ep.endpoint,
            str(int(ep.ttl)),
            ep.custom_domain or "",
            ep.created_at.isoformat().replace("+00:00", "Z"),
        )
    return table


def _endpoint_json(ep: CDNEndpoint) -> Any:
    return converter.unstructure(ep)


# -- progress -------------------------------------------------------------------------------


def budget_wait_text(budgets: dict[str, BudgetState]) -> str:
    """Say which budget requests are queued on and when it frees, or "" when none waits.

    Args:
        budgets: ``CDNClient.budget_snapshot().budgets``.

    Returns:
        For example ``"budget purge_files: 0.4 s"`` (its next unit frees in 0.4 s).
    """
    # A key whose next unit frees within a poll is not worth showing: it is about to send.
    waiting = [
        s
        for s in budgets.values()
        if s.waiters > 0 and (s.paused_for > 0 or s.next_free_in >= 0.05)
    ]
    if not waiting:
        return ""
    state = max(waiting, key=lambda s: max(s.paused_for, s.next_free_in))
    if state.paused_for > 0:
        return f"paused (429) {state.key}: {state.paused_for:.1f} s"
    if math.isinf(state.next_free_in):
        return f"budget {state.key}: in flight"
    return f"budget {state.key}: {state.next_free_in:.1f} s"


class PurgeProgress:
    """A live progress bar on stderr: paths done of total, requests, and budget waits.

    Without a live bar (stderr not a terminal, or ``--no-progress``) it shows nothing; the
    caller still prints a summary.

    Args:
        cdn: The client whose budgets are shown.
        total: Paths to purge.
        live: Whether to draw the bar.
        description: The bar's label.
    """

    def __init__(self, cdn: CDNClient, total: int, *, live: bool, description: str) -> None:
        self._cdn = cdn
        self._live = live
        self._progress: Progress | None = None
        self._task_id: TaskID | None = None
        self._poller: asyncio.Task[None] | None = None
        self.total = total
        self.done = 0
        self.requests = 0
        self._description = description

    async def __aenter__(self) -> PurgeProgress:
        if not self._live:
            return self
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.table import Column

        # The counts never shrink; on a narrow terminal the budget note is cut instead.
        fixed = Column(no_wrap=True)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", table_column=fixed),
            BarColumn(bar_width=12),
            TextColumn(
                "{task.completed}/{task.total} paths, {task.fields[requests]} req",
                table_column=Column(no_wrap=True),
            ),
            TimeElapsedColumn(),
            TextColumn(
                "[yellow]{task.fields[waiting]}",
                table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1),
            ),
            console=_stderr_console(),
        )
        self._task_id = self._progress.add_task(
            self._description, total=self.total, requests=0, waiting=""
        )
        self._progress.start()
        self._poller = asyncio.get_running_loop().create_task(self._poll())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        if self._progress is not None and self._task_id is not None:
            self._progress.update(self._task_id, waiting="")
            self._progress.stop()

    def set_total(self, total: int) -> None:
        """Set how many paths the bar counts to."""
        self.total = total
        if self._progress is not None and self._task_id is not None:
            self._progress.update(self._task_id, total=total)

    def update(self, done: int, requests: int) -> None:
        """Show ``done`` paths finished (purged or failed) and ``requests`` sent."""
        self.done, self.requests = done, requests
        if self._progress is not None and self._task_id is not None:
            self._progress.update(self._task_id, completed=done, requests=requests)

    async def _poll(self) -> None:
        assert self._progress is not None and self._task_id is not None
        while True:
            text = budget_wait_text(self._cdn.budget_snapshot().budgets)
            self._progress.update(self._task_id, waiting=text)
            await asyncio.sleep(_POLL_INTERVAL)


# -- purge ----------------------------------------------------------------------------------


@attrs.define
class PurgeTally:
    """A purge's results so far, by the caller's own (normalised) paths.

    Args:
        endpoint_id: The endpoint purged.
        mapping: Each path of the call -> the path sent for it (itself or a covering wildcard).
    """

    endpoint_id: str
    mapping: dict[str, str]
    purged_targets: set[str] = attrs.Factory(set)
    failed_targets: dict[str, CDNError] = attrs.Factory(dict)
    requests: int = 0
    budget_wait: float = 0.0

    def add(self, report: PurgeReport) -> None:
        """Take in one finished batch's report."""
        self.purged_targets.update(report.purged)
        self.failed_targets.update(report.failed)
        self.requests += report.requests
        self.budget_wait += report.budget_wait

    @property
    def done(self) -> int:
        """Paths of the call with a final outcome."""
        return sum(
            1 for t in self.mapping.values() if t in self.purged_targets or t in self.failed_targets
        )

    def purged(self) -> list[str]:
        """The caller's paths confirmed purged."""
        return [p for p, t in self.mapping.items() if t in self.purged_targets]

    def failed(self) -> dict[str, str]:
        """The caller's paths not purged -> why (an API error, or not confirmed)."""
        out: dict[str, str] = {}
        for path, target in self.mapping.items():
            if target in self.purged_targets:
                continue
            error = self.failed_targets.get(target)
            out[path] = str(error) if error is not None else _NOT_CONFIRMED
        return out

    def errors(self) -> list[CDNError]:
        """The distinct errors that failed paths, first seen first."""
        seen: dict[str, CDNError] = {}
        for error in self.failed_targets.values():
            seen.setdefault(str(error), error)
        return list(seen.values())

    def as_json(self) -> dict[str, Any]:
        """The PurgeReport shape: endpoint_id, purged, failed (path -> error), requests,
        budget_wait."""
        return {
            "endpoint_id": self.endpoint_id,
            "purged": self.purged(),
            "failed": self.failed(),
            "requests": self.requests,
            "budget_wait": round(self.budget_wait, 3),
        }


async def purge_tracked(
    cdn: CDNClient,
    cdn_id: str,
    paths: Sequence[str],
    tally_ready: Callable[[PurgeTally], None],
    on_batch: Callable[[PurgeTally], None],
) -> PurgeTally:
    """Purge ``paths`` one budget-sized batch per ``purge`` call, so a Ctrl-C knows exactly
    which paths were purged.

    The paths are planned as the engine plans one call (duplicates and covered paths dropped),
    then the paths to send are split into batches of ``purge_batch_size`` and every batch is
    submitted at once: the engine queues them on the endpoint and sends each as soon as the
    budgets allow, as it would for one call, but each batch's outcome arrives on its own.

    Args:
        cdn: The client.
        cdn_id: The endpoint's UUID.
        paths: The paths as given (validated and normalised here).
        tally_ready: Called with the tally before anything is sent.
        on_batch: Called after each batch finishes.

    Returns:
        The tally; on cancellation the tally passed to ``tally_ready`` holds what finished.

    Raises:
        ValidationError: A bad id or path.
    """
    cdn_id = check.uuid_str("cdn_id", cdn_id)
    mapping = plan(check.files(paths))
    tally = PurgeTally(cdn_id, mapping)
    tally_ready(tally)
    targets = list(dict.fromkeys(mapping.values()))
    size = cdn.limits.purge_batch_size

    async def one(batch: list[str]) -> None:
        try:
            report = await cdn.endpoints.purge(cdn_id, batch)
        except PurgeError as exc:
            report = exc.report
        tally.add(report)
        on_batch(tally)

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(one(targets[i : i + size])) for i in range(0, len(targets), size)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return tally


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


async def _purge_command(
    api: ApiOptions, cdn_id: str, paths: list[str], *, as_json: bool, live: bool
) -> int:
    holder: list[PurgeTally] = []
    interrupted = False
    started = time.monotonic()
    async with api.connect() as (cdn, queue):
        progress = PurgeProgress(cdn, 0, live=live, description="purging")

        def ready(tally: PurgeTally) -> None:
            holder.append(tally)
            progress.set_total(len(tally.mapping))
            sends = len(set(tally.mapping.values()))
            batches = math.ceil(sends / cdn.limits.purge_batch_size)
            if not live:
                _err(
                    f"Purging {_n(len(tally.mapping), 'path')} of endpoint {tally.endpoint_id} "
                    f"({sends} sent in {_n(batches, 'request')} of up to "
                    f"{cdn.limits.purge_batch_size})..."
                )

        def batch_done(tally: PurgeTally) -> None:
            progress.update(tally.done, tally.requests)

        try:
            async with progress:
                tally = await purge_tracked(cdn, cdn_id, paths, ready, batch_done)
        except asyncio.CancelledError:
            # Ctrl-C: asyncio.run cancelled this task. Report, then exit with 130.
            if not holder:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            interrupted = True
            tally = holder[0]
    elapsed = time.monotonic() - started
    purged, total = len(tally.purged()), len(tally.mapping)
    if interrupted:
        _err(
            f"Interrupted: {purged} of {_n(total, 'path')} of endpoint {tally.endpoint_id} were purged "
            f"({_n(tally.requests, 'request')}); the other {total - purged} were not confirmed"
            + (
                " and stay in the shared purge queue (a purge-worker, or another process "
                "waiting on them, sends them)."
                if queue is not None
                else "."
            )
        )
        if as_json:
            _dump(tally.as_json())
        return EXIT_INTERRUPTED
    failed = tally.failed()
    summary = (
        f"Purged {purged} of {_n(total, 'path')} of endpoint {tally.endpoint_id} in "
        f"{_n(tally.requests, 'request')}, {elapsed:.1f} s ({tally.budget_wait:.1f} s waiting for "
        "rate budgets)."
    )
    if as_json:
        _err(summary)
        _dump(tally.as_json())
    else:
        _out(summary)
    if failed:
        for error in tally.errors():
            _err(error_line(error))
        _err(f"{_n(len(failed), 'path')} failed to purge.")
        return EXIT_API_ERROR
    return EXIT_OK


async def _submit_command(api: ApiOptions, cdn_id: str, paths: list[str], *, as_json: bool) -> int:
    async with api.connect() as (_, queue):
        assert queue is not None
        ticket = await queue.submit(cdn_id, paths)
    _err(
        f"Queued {_n(ticket.total, 'path')} of endpoint {ticket.endpoint_id} in the shared purge "
        "queue; a purge-worker (or any process waiting on a purge of this endpoint) sends them."
    )
    if as_json:
        _dump({"endpoint_id": ticket.endpoint_id, "queued": ticket.total})
    return EXIT_OK


async def _worker_command(api: ApiOptions, endpoint_ids: list[str], *, until_idle: bool) -> int:
    counts: Counter[str] = Counter()

    def on_batch(cdn_id: str, paths: int, error: CDNError | None) -> None:
        counts["batches"] += 1
        if error is None:
            counts["purged"] += paths
            _err(f"endpoint {cdn_id}: purged {_n(paths, 'path')}")
        else:
            counts["failed"] += paths
            _err(f"endpoint {cdn_id}: {_n(paths, 'path')} failed: {error_line(error)}")

    async with api.connect() as (cdn, queue):
        assert queue is not None
        _err(
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
    _out(
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


# -- endpoints ------------------------------------------------------------------------------


async def _list_command(api: ApiOptions, *, per_page: int, as_json: bool) -> int:
    async with api.connect() as (cdn, _):
        endpoints = [ep async for ep in cdn.endpoints.list(per_page=per_page)]
    if as_json:
        _dump([_endpoint_json(ep) for ep in endpoints])
    elif endpoints:
        _stdout_console().print(endpoint_table(endpoints))
    else:
        _out("No CDN endpoints.")
    return EXIT_OK


async def _one_endpoint(
    api: ApiOptions,
    call: Callable[[CDNClient], Awaitable[CDNEndpoint]],
    *,
    as_json: bool,
    title: str | None = None,
) -> int:
    async with api.connect() as (cdn, _):
        endpoint = await call(cdn)
    if as_json:
        _dump(_endpoint_json(endpoint))
    else:
        _stdout_console().print(endpoint_table([endpoint], title=title))
    return EXIT_OK


async def _delete_command(api: ApiOptions, cdn_id: str, *, as_json: bool) -> int:
    async with api.connect() as (cdn, _):
        await cdn.endpoints.delete(cdn_id)
    if as_json:
        _dump({"deleted": cdn_id})
    else:
        _out(f"Deleted CDN endpoint {cdn_id}.")
    return EXIT_OK


# -- fake server and demo -------------------------------------------------------------------


def _fake_server_command(host: str, port: int, time_scale: float, purge_duration: float) -> int:
    from .testing import serve

    def ready(server: FakeCDNServer) -> None:
        scale = f" --time-scale {time_scale:g}" if time_scale != 1.0 else ""
        _out(f"Fake CDN API listening on {server.url}")
        _out(f"Throwaway token for it (the fake's own, not a DigitalOcean token): {server.token}")
        _out("Use it from another shell:")
        _out(f"  export {TOKEN_ENV}={server.token}")
        _out(f"  cdn-async endpoints list --base-url {server.url}{scale}")
        _out("Press Ctrl-C to stop.")

    try:
        asyncio.run(
            serve(
                host,
                port,
                on_ready=ready,
                time_scale=time_scale,
                purge_duration=purge_duration,
            )
        )
    except KeyboardInterrupt:
        _err("Stopped.")
    return EXIT_OK


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


async def _demo_command(paths: int, tasks: int, time_scale: float, *, live: bool) -> int:
    from .testing import FakeCDNServer

    console = _stdout_console()
    say = console.print
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
            names = [("assets", 3600), ("images", 86400), ("downloads", 600)]
            created = await asyncio.gather(
                *(
                    cdn.endpoints.create(f"demo-{name}.nyc3.digitaloceanspaces.com", ttl=ttl)
                    for name, ttl in names
                )
            )
            say(f"[bold]2.[/] Created {len(created)} endpoints; listing them:")
            endpoints = [ep async for ep in cdn.endpoints.list()]
            say(endpoint_table(endpoints))
            jobs = demo_jobs([ep.id for ep in created], paths, tasks)
            asked = sum(len(job_paths) for _, job_paths in jobs)
            say(
                f"[bold]3.[/] {len(jobs)} concurrent tasks purge {asked} paths (duplicates, a "
                f"wildcard and overlapping lists included) across {len(created)} endpoints..."
            )
            totals = {i: len(plan(check.files(p))) for i, (_, p) in enumerate(jobs)}
            dones = dict.fromkeys(totals, 0)
            progress = PurgeProgress(cdn, sum(totals.values()), live=live, description="purge")

            def on_progress(i: int) -> Callable[[int, int], None]:
                def update(done: int, total: int) -> None:
                    dones[i] = done
                    sent = server.counters.by_rule["ok"] + sum(
                        server.counters.rate_limited.values()
                    )
                    progress.update(sum(dones.values()), sent)

                return update

            purge_started = time.monotonic()
            async with progress:
                results = await asyncio.gather(
                    *(
                        cdn.endpoints.purge(ep_id, job_paths, on_progress=on_progress(i))
                        for i, (ep_id, job_paths) in enumerate(jobs)
                    ),
                    return_exceptions=True,
                )
            purge_wall = time.monotonic() - purge_started
        reports = [r.report if isinstance(r, PurgeError) else r for r in results]
        purged = sum(len(r.purged) for r in reports if isinstance(r, PurgeReport))
        failed = sum(len(r.failed) for r in reports if isinstance(r, PurgeReport))
        crashed = [
            r for r in results if isinstance(r, BaseException) and not isinstance(r, PurgeError)
        ]
        journal = list(server.journal)
        by_op = Counter(e.op or "other" for e in journal)
        files_sent = sum(
            len(e.body["files"])
            for e in journal
            if e.op == "purge" and e.status == 204 and isinstance(e.body, dict)
        )
        rate_limited = sum(server.counters.rate_limited.values())
    windows = math.ceil(files_sent / files_budget.limit) if files_sent else 0
    bound = max(0, windows - 1) * files_budget.period
    pace = (bound / purge_wall * 100) if purge_wall > 0 else 100
    ops = ", ".join(f"{n} {op}" for op, n in by_op.most_common())
    say(f"[bold]4.[/] Done in {time.monotonic() - demo_started:.1f} s.")
    rows = [
        ("requests sent", f"{len(journal)} ({ops})"),
        ("429s from the server", str(rate_limited)),
        ("paths asked to purge", f"{asked} in {len(jobs)} tasks"),
        ("paths purged", f"{purged}, {failed} failed (each task's paths once)"),
        (
            "paths sent",
            f"{files_sent} (duplicates shared, covered paths dropped, batches of "
            f"{files_budget.limit})",
        ),
        (
            "purge wall time",
            f"{purge_wall:.1f} s; the files budget allows no less than {bound:.1f} s "
            f"({windows} windows of {files_budget.period:g} s)",
        ),
        (
            "budget use",
            f"{pace:.0f}% of the files budget's "
            f"pace; at the real API's pace this purge takes about "
            f"{purge_wall / time_scale / 60:.1f} min",
        ),
    ]
    from rich.table import Table

    table = Table(show_header=False, box=None, padding=(0, 2))
    for name, value in rows:
        table.add_row(name, value)
    say(table)
    say(
        f"[bold]5.[/] {pace:.0f}% of the files budget's pace, and the server counted "
        f"{rate_limited} x 429. Charts of every window: benchmarks/budget-window.svg and "
        "benchmarks/purge-window.svg in the cdn-async repository."
    )
    for result in crashed:
        _err(error_line(result))
    return EXIT_OK if rate_limited == 0 and failed == 0 and not crashed else EXIT_API_ERROR


# -- the click tree -------------------------------------------------------------------------


def _build_cli() -> click.Group:
    """Build the click command tree (click is imported only when the command runs)."""
    import click

    def api_options(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.option(
            "--time-scale",
            type=float,
            default=1.0,
            envvar=TIME_SCALE_ENV,
            show_envvar=True,
            help="Multiply every budget period by F. Only for a time-scaled fake server "
            "(cdn-async fake-server --time-scale F).",
            metavar="F",
        )(fn)
        fn = click.option(
            "--base-url",
            default=DEFAULT_BASE_URL,
            envvar=BASE_URL_ENV,
            show_envvar=True,
            show_default=True,
            help="The API's address (https; http only for loopback, e.g. the fake server).",
            metavar="URL",
        )(fn)
        fn = click.option(
            "--redis",
            envvar=REDIS_ENV,
            show_envvar=True,
            help="Share rate budgets and one purge queue with every process using this Redis "
            "(redis://host:6379/0): parallel jobs stay within the budgets together, and a path "
            "queued by several of them is purged once.",
            metavar="URL",
        )(fn)
        fn = click.option(
            "--token",
            envvar=TOKEN_ENV,
            show_envvar=True,
            help=f"API token (needs cdn scopes). Prefer ${TOKEN_ENV}: an option shows in "
            "the process list. Never printed.",
            metavar="TOKEN",
        )(fn)
        return fn

    json_option = click.option(
        "--json", "as_json", is_flag=True, help="Print JSON on stdout instead of a table."
    )

    def api(token: str | None, base_url: str, time_scale: float, redis: str | None) -> ApiOptions:
        return ApiOptions(token, base_url, time_scale, redis or None)

    def live_progress(no_progress: bool) -> bool:
        return not no_progress and sys.stderr.isatty()

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(package_name="cdn-async", prog_name="cdn-async")
    def cli() -> None:
        """Manage DigitalOcean CDN endpoints and purge their caches.

        Every request stays within DigitalOcean's rate limits (no 429s), and a bulk purge
        uses the whole budget. The token comes from $DIGITALOCEAN_TOKEN (or --token).

        Exit codes: 0 success, 1 API error, 2 usage error, 130 interrupted.

        Try it with no account and no token: cdn-async demo
        """

    @cli.group()
    def endpoints() -> None:
        """List, show, create, update and delete CDN endpoints."""

    @endpoints.command("list")
    @click.option(
        "--per-page",
        type=click.IntRange(1, 200),
        default=200,
        show_default=True,
        help="Endpoints per request (200 spends the least budget).",
    )
    @json_option
    @api_options
    def list_(
        per_page: int,
        as_json: bool,
        token: str | None,
        base_url: str,
        time_scale: float,
        redis: str | None,
    ) -> int:
        """List every CDN endpoint of the account."""
        return _run(
            _list_command(
                api(token, base_url, time_scale, redis), per_page=per_page, as_json=as_json
            )
        )

    @endpoints.command("get")
    @click.argument("endpoint_id")
    @json_option
    @api_options
    def get(
        endpoint_id: str,
        as_json: bool,
        token: str | None,
        base_url: str,
        time_scale: float,
        redis: str | None,
    ) -> int:
        """Show one CDN endpoint."""
        return _run(
            _one_endpoint(
                api(token, base_url, time_scale, redis),
                lambda cdn: cdn.endpoints.get(endpoint_id),
                as_json=as_json,
            )
        )

    ttl_help = "Edge cache lifetime in seconds: 60, 600, 3600, 86400 or 604800."

    @endpoints.command("create", short_help="Create a CDN endpoint for a Space.")
    @click.argument("origin")
    @click.option("--ttl", type=int, help=ttl_help + " The API defaults to 3600.")
    @click.option("--custom-domain", metavar="FQDN", help="Serve on this custom subdomain.")
    @click.option(
        "--certificate-id",
        metavar="ID",
        help="The custom domain's certificate UUID, or needs-cloudflare-cert.",
    )
    @json_option
    @api_options
    def create(
        origin: str,
        ttl: int | None,
        custom_domain: str | None,
        certificate_id: str | None,
        as_json: bool,
        token: str | None,
        base_url: str,
        time_scale: float,
        redis: str | None,
    ) -> int:
        """Create a CDN endpoint for the Space ORIGIN (name.region.digitaloceanspaces.com)."""
        return _run(
            _one_endpoint(
                api(token, base_url, time_scale, redis),
                lambda cdn: cdn.endpoints.create(
                    origin,
                    ttl=_given(ttl),
                    custom_domain=_given(custom_domain),
                    certificate_id=_given(certificate_id),
                ),
                as_json=as_json,
            )
        )

    @endpoints.command("update")
    @click.argument("endpoint_id")
    @click.option("--ttl", type=int, help=ttl_help)
    @click.option("--custom-domain", metavar="FQDN", help="A new custom subdomain.")
    @click.option("--certificate-id", metavar="ID", help="A new certificate UUID.")
    @click.option(
        "--remove-custom-domain",
        is_flag=True,
        help="Remove the custom domain and its certificate.",
    )
    @json_option
    @api_options
    def update(
        endpoint_id: str,
        ttl: int | None,
        custom_domain: str | None,
        certificate_id: str | None,
        remove_custom_domain: bool,
        as_json: bool,
        token: str | None,
        base_url: str,
        time_scale: float,
        redis: str | None,
    ) -> int:
        """Change a CDN endpoint; only the options given are sent."""
        if remove_custom_domain and (custom_domain or certificate_id):
            raise click.UsageError(
                "--remove-custom-domain cannot be combined with --custom-domain or --certificate-id"
            )
        domain: str | NotGiven | None = _given(custom_domain)
        cert: str | NotGiven | None = _given(certificate_id)
        if remove_custom_domain:
            domain = cert = None
        return _run(
            _one_endpoint(
                api(token, base_url, time_scale, redis),
                lambda cdn: cdn.endpoints.update(
                    endpoint_id, ttl=_given(ttl), custom_domain=domain, certificate_id=cert
                ),
                as_json=as_json,
            )
        )

    @endpoints.command("delete")
    @click.argument("endpoint_id")
    @click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
    @json_option
    @api_options
    def delete(
        endpoint_id: str,
        yes: bool,
        as_json: bool,
        token: str | None,
        base_url: str,
        time_scale: float,
        redis: str | None,
    ) -> int:
        """Delete a CDN endpoint (asks first unless --yes)."""
        if not yes and not click.confirm(
            f"Delete CDN endpoint {endpoint_id}?", default=False, err=True
        ):
            _err("Not deleted.")
            return EXIT_API_ERROR
        return _run(
            _delete_command(api(token, base_url, time_scale, redis), endpoint_id, as_json=as_json)
        )

    @cli.command("purge")
    @click.argument("endpoint_id")
    @click.argument("paths", nargs=-1)
    @click.option(
        "--from-file",
        "from_file",
        type=click.File("r"),
        help="Read paths from FILE, one a line ('-' for stdin; blank lines and # comments "
        "skipped).",
        metavar="FILE",
    )
    @click.option(
        "--all", "purge_all", is_flag=True, help="Purge everything cached ('*'). Never implied."
    )
    @click.option("--no-progress", is_flag=True, help="Do not draw the live progress bar.")
    @click.option(
        "--no-wait",
        is_flag=True,
        help="With --redis: queue the paths in the shared purge queue and exit at once; a "
        "cdn-async purge-worker (or any process waiting on a purge) sends them.",
    )
    @json_option
    @api_options
    def purge(
        endpoint_id: str,
        paths: tuple[str, ...],
        from_file: TextIO | None,
        purge_all: bool,
        no_progress: bool,
        no_wait: bool,
        as_json: bool,
        token: str | None,
        base_url: str,
        time_scale: float,
        redis: str | None,
    ) -> int:
        """Purge cached PATHS of the CDN endpoint ENDPOINT_ID.

        Any number of paths: duplicates and paths under a wildcard given too (css/*) are
        dropped, and the rest go out in batches of 50 as fast as the rate limits allow, with
        a progress bar. Ctrl-C stops and reports what was already purged.

        With --redis, parallel jobs share the rate budgets and one purge queue: a path queued
        by several of them is sent once, and one batch per endpoint is in flight at a time.

        \b
        Examples:
          cdn-async purge ID img/logo.png 'css/*'
          git diff --name-only HEAD~1 | cdn-async purge ID --from-file -
          cdn-async purge ID --all
        """
        files = list(paths)
        if from_file is not None:
            files.extend(read_paths(from_file))
        if purge_all:
            if files:
                raise click.UsageError("--all purges everything; give no paths with it")
            files = ["*"]
        if not files:
            raise click.UsageError("no paths to purge: give PATH..., --from-file FILE or --all")
        if no_wait:
            if not redis:
                raise click.UsageError(
                    f"--no-wait needs a shared queue: --redis URL or ${REDIS_ENV}"
                )
            return _run(
                _submit_command(
                    api(token, base_url, time_scale, redis), endpoint_id, files, as_json=as_json
                )
            )
        return _run(
            _purge_command(
                api(token, base_url, time_scale, redis),
                endpoint_id,
                files,
                as_json=as_json,
                live=live_progress(no_progress),
            )
        )

    @cli.command("purge-worker", short_help="Send what other processes queued for purging.")
    @click.option(
        "--endpoint",
        "endpoint_ids",
        multiple=True,
        metavar="ID",
        help="Only this endpoint (repeatable); default every endpoint with paths queued.",
    )
    @click.option("--until-idle", is_flag=True, help="Exit once nothing is queued or in flight.")
    @api_options
    def purge_worker(
        endpoint_ids: tuple[str, ...],
        until_idle: bool,
        token: str | None,
        base_url: str,
        time_scale: float,
        redis: str | None,
    ) -> int:
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
        if not redis:
            raise click.UsageError(
                f"purge-worker needs the shared queue: --redis URL or ${REDIS_ENV}"
            )
        return _run(
            _worker_command(
                api(token, base_url, time_scale, redis), list(endpoint_ids), until_idle=until_idle
            )
        )

    @cli.command("fake-server", short_help="Serve a fake CDN API for local work.")
    @click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
    @click.option(
        "--port", type=int, default=8080, show_default=True, help="Port (0: any free one)."
    )
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
    def fake_server(host: str, port: int, time_scale: float, purge_duration: float) -> int:
        """Serve a fake DigitalOcean CDN API for local work, until Ctrl-C.

        Prints its URL and a throwaway token that only the fake accepts.
        """
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise click.BadParameter("must be a positive number", param_hint="--time-scale")
        return _fake_server_command(host, port, time_scale, purge_duration)

    @cli.command("demo", short_help="Run the whole job against a local fake API.")
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
    @click.option("--no-progress", is_flag=True, help="Do not draw the live progress bar.")
    def demo(paths: int, tasks: int, time_scale: float, no_progress: bool) -> int:
        """Run the whole job against a local fake API: no account, no token needed.

        Starts a time-scaled fake API on loopback, creates endpoints, lists them, then
        bulk-purges thousands of paths from concurrent tasks with a progress bar, and shows
        the requests sent, the 429s the server counted (0) and how much of the budget was used.
        """
        try:
            return asyncio.run(
                _demo_command(paths, tasks, time_scale, live=live_progress(no_progress))
            )
        except CDNError as exc:
            _err(error_line(exc))
            return EXIT_API_ERROR

    return cli


def _given(value: Any) -> Any:
    """None (an option not given) -> NOT_GIVEN, so the SDK leaves the field out."""
    return NOT_GIVEN if value is None else value
