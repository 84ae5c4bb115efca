"""What the command prints, and the exit status it returns.

Results go to stdout (a table, or JSON with ``--json``); progress, prompts and errors go to
stderr. rich is imported only inside the functions that draw with it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .._models import converter
from ..errors import CDNError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from .. import CDNEndpoint, PurgeReport

EXIT_OK = 0
EXIT_API_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_AUTH = 4
EXIT_FORBIDDEN = 5
EXIT_NOT_FOUND = 6
EXIT_UNREACHABLE = 7
EXIT_RATE_LIMITED = 8
#: Ctrl-C (SIGINT); SIGTERM and SIGHUP exit 128 + their number (143, 129), as a shell reports.
EXIT_INTERRUPTED = 130

#: Every exit status and its ``status`` in ``--json`` output, with what a pipeline should do.
EXIT_STATUSES: dict[int, tuple[str, str]] = {
    EXIT_OK: ("ok", "success"),
    EXIT_API_ERROR: ("api_error", "another API error (5xx after retries, 422, ...)"),
    EXIT_USAGE: ("usage", "usage error, bad input or no token: nothing was sent"),
    EXIT_PARTIAL: ("partial", "purge: some paths purged, some failed (retry the failed)"),
    EXIT_AUTH: ("unauthorized", "401: the token is wrong, expired or revoked"),
    EXIT_FORBIDDEN: ("forbidden", "403: the token lacks a cdn scope"),
    EXIT_NOT_FOUND: ("not_found", "404: no such endpoint"),
    EXIT_UNREACHABLE: ("unreachable", "no answer from the API (or the --redis server)"),
    EXIT_RATE_LIMITED: ("rate_limited", "a rate limit did not clear in time (retry later)"),
    EXIT_INTERRUPTED: ("interrupted", "stopped by SIGINT (Ctrl-C), after its report"),
    128 + 15: ("interrupted", "stopped by SIGTERM (CI, Kubernetes, docker), after its report"),
    128 + 1: ("interrupted", "stopped by SIGHUP, after its report"),
}


#: Why a path of an interrupted purge has no outcome: sent, but its answer not heard; never sent.
NOT_CONFIRMED = "interrupted before this path was confirmed purged"
NOT_SENT = "interrupted before this path was sent"


def status_of(code: int) -> str:
    """The ``status`` word of an exit code (``"interrupted"`` for 128 + a signal)."""
    if code > 128:
        return "interrupted"
    return EXIT_STATUSES.get(code, ("api_error", ""))[0]


def exit_codes_help() -> str:
    """The exit codes, one a line, for ``--help`` (click keeps the lines after ``\\b``)."""
    lines = [
        f"  {code:<3} {EXIT_STATUSES[code][0]}: {EXIT_STATUSES[code][1]}" for code in EXIT_STATUSES
    ]
    return "\n".join(lines)


def exit_code_for(exc: BaseException) -> int:
    """The exit status an SDK error stands for.

    Args:
        exc: The error.

    Returns:
        One of the ``EXIT_*`` codes.
    """
    from ..errors import (
        APIConnectionError,
        AuthenticationError,
        NotFoundError,
        PermissionDeniedError,
        QueueFullError,
        RateLimitedError,
        ValidationError,
    )

    if isinstance(exc, ValidationError):
        return EXIT_USAGE
    if isinstance(exc, AuthenticationError):
        return EXIT_AUTH
    if isinstance(exc, PermissionDeniedError):
        return EXIT_FORBIDDEN
    if isinstance(exc, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, RateLimitedError | QueueFullError):  # TooManyRequestsError included
        return EXIT_RATE_LIMITED
    if isinstance(exc, APIConnectionError) or _store_unreachable(exc):
        return EXIT_UNREACHABLE
    return EXIT_API_ERROR


def _store_unreachable(exc: BaseException) -> bool:
    try:
        from .._redis._errors import BudgetStoreUnavailableError
    except ImportError:  # no redis-py: no Redis store either
        return False
    return isinstance(exc, BudgetStoreUnavailableError)


def err(message: str) -> None:
    """Print a line on stderr."""
    print(message, file=sys.stderr, flush=True)


def out(text: str) -> None:
    """Print a line on stdout."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def n(count: int, noun: str) -> str:
    """``3 paths``, ``1 path``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def dump(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    out(json.dumps(data, indent=2))


def error_line(exc: BaseException) -> str:
    """One line describing an error for a human: ``error: `` and the error's own text.

    An ``APIError`` reads ``error: 404 not_found GET /v2/cdn/endpoints/ID: ... (request_id=...)``.

    Args:
        exc: The error.

    Returns:
        The line, without a trailing newline.
    """
    return f"error: {exc}"


def stdout_console() -> Console:
    """A rich console on stdout; piped, 200 columns wide unless ``$COLUMNS`` says otherwise."""
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped: do not squeeze UUIDs into 80 columns (scripts should use --json anyway).
        console = Console(highlight=False, width=200)
    return console


def stderr_console() -> Console:
    """A rich console on stderr."""
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


def endpoint_json(endpoint: CDNEndpoint) -> Any:
    """An endpoint as the API's JSON object."""
    return converter.unstructure(endpoint)


def report_json(
    report: PurgeReport, *, code: int, queued: Iterable[str] = (), budget_wait: float | None = None
) -> dict[str, Any]:
    """A purge report as JSON: status (of the exit ``code``), endpoint_id, purged, failed
    (path -> error), queued (paths still in the shared queue), requests, budget_wait (seconds
    the purge waited rather than had a request on the wire: for rate budgets, and with
    ``--redis`` for other processes' batches; default the report's)."""
    wait = report.budget_wait if budget_wait is None else budget_wait
    return {
        "status": status_of(code),
        "endpoint_id": report.endpoint_id,
        "purged": list(report.purged),
        "failed": {path: str(error) for path, error in report.failed.items()},
        "queued": list(queued),
        "requests": report.requests,
        "budget_wait": round(wait, 3),
    }


def error_json(exc: BaseException, code: int) -> dict[str, Any]:
    """What ``--json`` prints on stdout when a command fails without a result."""
    return {"status": status_of(code), "error": str(exc)}


def distinct_errors(errors: Iterable[CDNError]) -> list[CDNError]:
    """The errors with distinct texts, first seen first."""
    seen: dict[str, CDNError] = {}
    for error in errors:
        seen.setdefault(str(error), error)
    return list(seen.values())


def purge_exit_code(report: PurgeReport, stopped: int | None) -> int:
    """A purge's exit code. Interrupted (``stopped``: 128 + the signal, else None): that.
    Some paths purged and some failed: partial. None purged: what the first error stands for
    (401, 403, 404, unreachable, rate limited...)."""
    if stopped is not None:
        return stopped
    if not report.failed:
        return EXIT_OK
    if report.purged:
        return EXIT_PARTIAL
    return exit_code_for(next(iter(report.failed.values())))
