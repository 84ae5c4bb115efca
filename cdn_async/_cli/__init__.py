"""The ``cdn-async`` command: manage CDN endpoints and purge caches from a shell or CI.

Needs the ``cli`` extra (click and rich), imported only when ``main`` runs, so
``import cdn_async`` works without them::

    pip install 'cdn-async[cli]'
    export DIGITALOCEAN_TOKEN=...
    cdn-async endpoints list
    cdn-async purge 19f06b6a-3ace-4315-b086-499a0e521b76 img/logo.png 'css/*'
    cdn-async demo

Every command shares the rate budgets with the other ``cdn-async`` commands of the user on
this host through one SQLite file per token (``_host_budgets``; ``--no-share-budgets`` or
``CDN_ASYNC_SHARE_BUDGETS=0`` to keep them in the process), so parallel jobs on one runner
draw no 429s. With ``--redis URL`` (or ``$CDN_ASYNC_REDIS_URL``) every command shares them
(``RedisBudgetStore``) and purges go through one queue shared by every process
(``RedisPurgeQueue``): parallel CI jobs purge a path once between them. ``purge --no-wait``
only queues; ``cdn-async purge-worker`` sends what was queued.

Results go to stdout (a table, or JSON with ``--json``, whose ``status`` names the exit
code); progress, prompts and errors go to stderr. Exit codes (``_output.EXIT_STATUSES``): 0
success, 1 another API error (or a declined delete), 2 usage error, 3 some paths failed, 4
401, 5 403, 6 404, 7 unreachable, 8 rate limited, 128 + the signal when SIGINT, SIGTERM or
SIGHUP stopped it (``_signals``). The API token is never printed.

One module per concern: ``_commands`` (the click group, with every command module's
commands), ``_app`` (the options every API command shares, reading paths from a file, and
running a command's coroutine with stop signals and the exit codes of SDK errors),
``_host_budgets`` (the budget file), ``_endpoints``, ``_purge`` (``purge`` and
``purge-worker``), ``_deadline`` (``purge --manifest --deadline``), ``_settled`` (what a
purge has heard, and its report when stopped), ``_wire`` (what its requests are doing),
``_progress`` (the live bar, the heartbeat lines of a log, or nothing), ``_signals`` (stop signals), ``_demo`` (``demo`` and
``fake-server``) and ``_output`` (what is printed, and the exit statuses). Only this module
loads without click and rich; it imports the others once it has found them.
"""

from __future__ import annotations

import sys

from ._output import EXIT_USAGE

__all__ = ["EXTRA_HINT", "main"]

EXTRA_HINT = "The cdn-async command needs its extra: pip install 'cdn-async[cli]'"


def main(argv: list[str] | None = None) -> int:
    """Run the ``cdn-async`` command.

    Args:
        argv: The arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit status (see the module docstring).
    """
    try:
        import click  # noqa: F401  (only to fail early, with the hint, when it is missing)
        import rich  # noqa: F401
    except ImportError:
        print(EXTRA_HINT, file=sys.stderr)
        return EXIT_USAGE
    from ._commands import run

    return run(argv)
