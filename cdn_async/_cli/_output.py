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
EXIT_INTERRUPTED = 130


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


def report_json(report: PurgeReport) -> dict[str, Any]:
    """A purge report as JSON: endpoint_id, purged, failed (path -> error), requests,
    budget_wait."""
    return {
        "endpoint_id": report.endpoint_id,
        "purged": list(report.purged),
        "failed": {path: str(error) for path, error in report.failed.items()},
        "requests": report.requests,
        "budget_wait": round(report.budget_wait, 3),
    }


def distinct_errors(errors: Iterable[CDNError]) -> list[CDNError]:
    """The errors with distinct texts, first seen first."""
    seen: dict[str, CDNError] = {}
    for error in errors:
        seen.setdefault(str(error), error)
    return list(seen.values())
