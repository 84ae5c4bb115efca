"""What every command shares: how to reach the API (one ``ApiOptions`` on the click context,
built from the same options on every API command), ``--json``, ``--no-progress``, reading
paths from a file, and running a command's coroutine with stop signals and the exit codes of
SDK errors. The command modules build on it; ``_commands`` puts them on one click group.

Imported only once ``main`` has found click and rich.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TextIO

import attrs
import click

from .. import NOT_GIVEN, BudgetStore, CDNClient, RateLimits
from .._constants import ACCESS_TOKEN_ENV, DEFAULT_BASE_URL, DEFAULT_MAX_RATE_LIMIT_WAIT, TOKEN_ENV
from ..errors import CDNError, ValidationError
from ..events import BudgetWaited, Event, EventHook, ResponseReceived
from ._host_budgets import SHARE_ENV, host_store
from ._output import (
    EXIT_INTERRUPTED,
    dump,
    err,
    error_json,
    error_line,
    exit_code_for,
)
from ._signals import Stop

if TYPE_CHECKING:
    from ..redis import RedisPurgeQueue

BASE_URL_ENV = "CDN_ASYNC_BASE_URL"
TIME_SCALE_ENV = "CDN_ASYNC_TIME_SCALE"
REDIS_ENV = "CDN_ASYNC_REDIS_URL"
MAX_RATE_LIMIT_WAIT_ENV = "CDN_ASYNC_MAX_RATE_LIMIT_WAIT"

#: ``recovery_grace`` of the commands' ``RedisBudgetStore`` (None: the store's, 3 s): a seam
#: for the tests, which shorten the wait on a new Redis in the commands they fork.
redis_recovery_grace: float | None = None


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
        verbose: Print one line per request on stderr.
        max_rate_limit_wait: ``--max-rate-limit-wait``; None: unbounded for purges, the
            client's default otherwise.
        share_budgets: Without ``redis_url``, share the budgets with the other commands on
            this host through the token's budget file (``_host_budgets``).
    """

    token: str | None = attrs.field(repr=False)
    base_url: str
    time_scale: float
    redis_url: str | None = attrs.field(default=None, repr=False)
    verbose: bool = False
    share_budgets: bool = True
    max_rate_limit_wait: float | None = None

    def _hooks(self, extra: Sequence[EventHook]) -> list[EventHook]:
        return [*extra, RequestLines()] if self.verbose else list(extra)

    def _limits(self) -> RateLimits:
        if not self.token:
            raise ValidationError(
                f"no API token: set ${TOKEN_ENV} or pass --token (${ACCESS_TOKEN_ENV}, "
                "doctl's, is read too)"
            )
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ValidationError(f"--time-scale must be a positive number, got {self.time_scale}")
        limits = RateLimits.documented()
        if self.time_scale != 1.0:
            limits = limits.scaled(self.time_scale)
        return limits

    @contextlib.asynccontextmanager
    async def connect(
        self, hooks: Sequence[EventHook] = (), *, bulk: bool = False
    ) -> AsyncIterator[tuple[CDNClient, RedisPurgeQueue | None]]:
        """A client for these options and the shared purge queue (None without
        ``redis_url``); on exit the client, the queue and the budget store are closed.

        Args:
            hooks: Event hooks besides ``--verbose``'s.
            bulk: For a purge job: it waits out 429s as long as the job needs, and leaves
                room for jobs on other hosts (``CDNClient(polite_purges=True)``).

        Raises:
            ValidationError: No token, a bad base URL, time scale or Redis URL, or no
                redis-py for ``redis_url``.
            BudgetFileError: The budget file is corrupt or stays locked.
        """
        limits = self._limits()  # no token: a usage error before any file is made
        async with contextlib.AsyncExitStack() as stack:
            store, queue = self._shared(limits, stack)
            cdn = CDNClient(
                self.token,
                base_url=self.base_url,
                limits=limits,
                budget_store=store,
                purge_queue=queue,
                event_hooks=self._hooks(hooks),
                max_rate_limit_wait=(
                    self.max_rate_limit_wait
                    if self.max_rate_limit_wait is not None
                    else math.inf
                    if bulk
                    else DEFAULT_MAX_RATE_LIMIT_WAIT
                ),
                polite_purges=bulk,
            )
            stack.push_async_callback(cdn.close)
            yield cdn, queue

    def _shared(
        self, limits: RateLimits, stack: contextlib.AsyncExitStack
    ) -> tuple[BudgetStore | None, RedisPurgeQueue | None]:
        """The one place every command's budget store and purge queue are made (closed by
        ``stack``). With ``redis_url`` the budgets live in Redis (``RedisBudgetStore``) and
        purges go through the shared queue, both under the token's id (``token_id_for``).
        Without, the budgets live in the token's budget file on this host (``host_store``),
        unless ``share_budgets`` is off or the file's directory is unusable: then in this
        process; purges are coalesced in this process."""
        assert self.token is not None
        if self.redis_url is None:
            host = host_store(self.token) if self.share_budgets else None
            if host is not None:
                stack.push_async_callback(host.aclose)
            return host, None
        try:
            from ..redis import RedisBudgetStore, RedisPurgeQueue, token_id_for
        except ImportError:
            raise ValidationError(
                "--redis needs redis-py: pip install 'cdn-async[redis]'"
            ) from None
        tid = token_id_for(self.token)
        try:
            if redis_recovery_grace is None:
                store = RedisBudgetStore(self.redis_url, token_id=tid, limits=limits)
            else:
                store = RedisBudgetStore(
                    self.redis_url,
                    token_id=tid,
                    limits=limits,
                    recovery_grace=redis_recovery_grace,
                )
        except ValueError as exc:
            raise ValidationError(f"--redis: {exc}") from None
        stack.push_async_callback(store.aclose)
        queue = RedisPurgeQueue(self.redis_url, token_id=tid)
        stack.push_async_callback(queue.aclose)
        return store, queue


class RequestLines:
    """``--verbose``: one line per request on stderr, when its answer (or failure) comes:
    method, path, status, milliseconds, request id, and the seconds it waited for budgets."""

    def __init__(self) -> None:
        self._waits: dict[tuple[str, str, int], float] = {}

    def __call__(self, event: Event) -> None:
        if isinstance(event, BudgetWaited):
            self._waits[(event.method, event.path, event.attempt)] = event.wait_s
        elif isinstance(event, ResponseReceived):
            wait = self._waits.pop((event.method, event.path, event.attempt), 0.0)
            outcome = str(event.status) if event.status is not None else event.error
            err(
                f"{event.method} {event.path} -> {outcome} in {event.elapsed_ms:.1f} ms "
                f"(request_id={event.request_id or '-'}, attempt {event.attempt}, "
                f"waited {wait:.3f} s)"
            )


_API_OPTIONS = (
    # Applied bottom-up, as decorators are: --help lists --token first.
    click.option(
        "--verbose",
        "-v",
        is_flag=True,
        help="Print one line per request on stderr: method, path, status, milliseconds, "
        "request id and the seconds it waited for the rate budgets.",
    ),
    click.option(
        "--time-scale",
        type=float,
        default=1.0,
        envvar=TIME_SCALE_ENV,
        show_envvar=True,
        help="Multiply every budget period and retry delay by F. Only for a time-scaled "
        "fake server (cdn-async fake-server --time-scale F).",
        metavar="F",
    ),
    click.option(
        "--base-url",
        default=DEFAULT_BASE_URL,
        envvar=BASE_URL_ENV,
        show_envvar=True,
        show_default=True,
        help="The API's address (https; http only for loopback, e.g. the fake server).",
        metavar="URL",
    ),
    click.option(
        "--share-budgets/--no-share-budgets",
        default=True,
        envvar=SHARE_ENV,
        show_envvar=True,
        help="Without --redis, share the rate budgets with every cdn-async command of this "
        "user on this host, through one file per token (parallel jobs stay within the "
        "budgets together). --no-share-budgets keeps them in this process.",
    ),
    click.option(
        "--max-rate-limit-wait",
        type=click.FloatRange(min=0),
        default=None,
        envvar=MAX_RATE_LIMIT_WAIT_ENV,
        show_envvar=True,
        help="Give up a request rate limited (429s) for longer than SECONDS, with exit 8. "
        "Default: purges wait as long as the job needs (other jobs on the token finish), "
        f"other commands {DEFAULT_MAX_RATE_LIMIT_WAIT:g} s.",
        metavar="SECONDS",
    ),
    click.option(
        "--redis",
        envvar=REDIS_ENV,
        show_envvar=True,
        help="Share rate budgets and one purge queue with every process using this Redis "
        "(redis://host:6379/0): parallel jobs stay within the budgets together, and a path "
        "queued by several of them is purged once.",
        metavar="URL",
    ),
    click.option(
        "--token",
        # click takes the first variable set (and not empty): ours wins over doctl's.
        envvar=[TOKEN_ENV, ACCESS_TOKEN_ENV],
        show_envvar=True,
        help=f"API token (needs cdn scopes). Prefer ${TOKEN_ENV} (or doctl's "
        f"${ACCESS_TOKEN_ENV}; the first wins when both are set): an option shows in the "
        "process list. Never printed.",
        metavar="TOKEN",
    ),
)


def api_options(fn: Callable[..., int]) -> Callable[..., int]:
    """Give a command ``--token``, ``--redis``, ``--share-budgets``,
    ``--max-rate-limit-wait``, ``--base-url``,
    ``--time-scale`` and ``--verbose``; it is called with them as one ``ApiOptions`` first
    (also set as the click context's ``obj``)."""

    @functools.wraps(fn)
    def command(
        *,
        token: str | None,
        redis: str | None,
        share_budgets: bool,
        max_rate_limit_wait: float | None,
        base_url: str,
        time_scale: float,
        verbose: bool,
        **params: Any,
    ) -> int:
        api = ApiOptions(
            token,
            base_url,
            time_scale,
            redis or None,
            verbose,
            share_budgets,
            max_rate_limit_wait,
        )
        click.get_current_context().obj = api
        return fn(api, **params)

    for option in _API_OPTIONS:
        command = option(command)
    return command


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON on stdout instead of a table."
)
no_progress_option = click.option(
    "--no-progress",
    is_flag=True,
    help="Draw no progress bar (and print no progress lines without a terminal).",
)


def run_command(
    command: Callable[[Stop], Coroutine[Any, Any, int]], *, as_json: bool = False
) -> int:
    """Run one command's coroutine with SIGINT, SIGTERM and SIGHUP as a stop request, and map
    SDK errors to an error line (and with ``as_json`` a ``{"status", "error"}`` object on
    stdout) and an exit code.

    Args:
        command: Makes the coroutine, given the ``Stop`` it may read (a command that reports
            what it did before stopping catches the cancellation itself).
        as_json: ``--json`` was given.
    """
    stop = Stop()

    async def main() -> int:
        with stop.installed():
            return await command(stop)

    try:
        return asyncio.run(main())
    except CDNError as exc:
        code = exit_code_for(exc)
        err(error_line(exc))
        if as_json:
            dump(error_json(exc, code))
        return code
    except (asyncio.CancelledError, KeyboardInterrupt):
        # Stopped before anything worth reporting: the code names the signal.
        code = stop.exit_code or EXIT_INTERRUPTED
        err(f"Interrupted by {stop.name or 'SIGINT'}.")
        if as_json:
            dump(error_json(CDNError(f"interrupted by {stop.name or 'SIGINT'}"), code))
        return code


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


def given(value: Any) -> Any:
    """None (an option not given) -> NOT_GIVEN, so the SDK leaves the field out."""
    return NOT_GIVEN if value is None else value
