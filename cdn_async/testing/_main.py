"""``python -m cdn_async.testing``: run a fake CDN API server from the shell."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import sys
from collections.abc import Sequence

from ._server import ALL_SCOPES, FakeCDNServer, serve


def build_parser() -> argparse.ArgumentParser:
    """The command line options (shared with ``cdn-async fake-server``).

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog="python -m cdn_async.testing",
        description="Serve a fake DigitalOcean CDN Endpoints API until interrupted.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port, 0 for any (default 8080)")
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        help="accept this token with all scopes (repeatable)",
    )
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="multiply every budget period"
    )
    parser.add_argument("--cdn-budget-scope", choices=("token", "endpoint"), default="token")
    parser.add_argument("--header-budget", choices=("cdn", "hourly"), default="cdn")
    parser.add_argument("--purge-duration", type=float, default=0.0, help="seconds a purge takes")
    parser.add_argument(
        "--invisible-after-create",
        type=float,
        default=0.0,
        help="seconds a new endpoint 404s on GET",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (chain)")
    parser.add_argument("--tls-key", help="the certificate's PEM private key (default: in cert)")
    return parser


def _ssl_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None:
        if key is not None:
            raise SystemExit("--tls-key needs --tls-cert")
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def _announce(server: FakeCDNServer) -> None:
    print(f"fake CDN API at {server.url}", flush=True)
    print(f"token: {server.token}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and serve until Ctrl-C.

    Args:
        argv: Arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit status.
    """
    args = build_parser().parse_args(argv)
    ssl_context = _ssl_context(args.tls_cert, args.tls_key)
    coro = serve(
        args.host,
        args.port,
        on_ready=_announce,
        tokens={t: ALL_SCOPES for t in args.token},
        time_scale=args.time_scale,
        cdn_budget_scope=args.cdn_budget_scope,
        header_budget=args.header_budget,
        purge_duration=args.purge_duration,
        invisible_after_create=args.invisible_after_create,
        seed=args.seed,
        ssl_context=ssl_context,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(coro)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
