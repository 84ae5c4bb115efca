"""The ``cdn-async`` command tree: every command module's commands on one click group, and
``run``, which ``main`` calls once it has found click and rich.

The command modules import ``_app`` (what they share) and nothing here; this module imports
them all.
"""

from __future__ import annotations

import click

from ._demo import demo, fake_server
from ._endpoints import endpoints
from ._output import EXIT_API_ERROR, EXIT_INTERRUPTED, EXIT_OK, err, exit_codes_help
from ._purge import purge, purge_worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cdn-async", prog_name="cdn-async")
def cli() -> None:
    """Manage DigitalOcean CDN endpoints and purge their caches.

    Every request stays within DigitalOcean's rate limits (no 429s), and a bulk purge
    uses the whole budget. The token comes from $DIGITALOCEAN_TOKEN (else doctl's
    $DIGITALOCEAN_ACCESS_TOKEN, or --token).

    SIGINT (Ctrl-C), SIGTERM and SIGHUP stop a command the same way: a purge stops
    sending, waits for the batch on the wire, reports and exits 130, 143 or 129.

    Try it with no account and no token: cdn-async demo
    """


cli.epilog = '\b\nExit codes (--json prints the same word as "status"):\n' + exit_codes_help()
for _command in (endpoints, purge, purge_worker, fake_server, demo):
    cli.add_command(_command)


def run(argv: list[str] | None) -> int:
    """Run the command tree on ``argv``; the exit status (see ``cdn_async._cli.main``)."""
    try:
        rv = cli.main(args=argv, prog_name="cdn-async", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        err("Aborted.")
        return EXIT_API_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return rv if isinstance(rv, int) else EXIT_OK
