"""``python -m cdn_async.testing``: run a fake CDN API server from the shell; and what it
shares with ``cdn-async fake-server``: switching faults on from options, and the totals both
print when stopped (SIGINT or SIGTERM)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence

from ._faults import OPERATIONS
from ._server import ALL_SCOPES, FakeCDNServer, serve

#: Budgets a co-tenant may spend.
COTENANT_BUDGETS = ("hourly", "minute", "cdn", "purge_files")


def apply_faults(
    server: FakeCDNServer,
    *,
    fail: float = 0.0,
    fail_after: float = 0.0,
    drop: float = 0.0,
    refuse: float = 0.0,
    refuse_next: int = 0,
    retry_after: int | None = None,
    cotenants: Iterable[tuple[str, int]] = (),
    latency: float = 0.0,
    jitter: float = 0.0,
    op: str | None = None,
) -> None:
    """Switch on a server's faults as the command line options say.

    Args:
        server: The server (started or not).
        fail: Share of requests answered 503 before anything changes.
        fail_after: Share of successful requests answered 500 after the change was applied.
        drop: Share of connections closed without an answer, before anything changes.
        refuse: Share of requests refused with a 429 (not counted in any budget).
        refuse_next: The next this many requests are refused with a 429.
        retry_after: ``Retry-After`` seconds on injected 429s (None: no header).
        cotenants: ``(budget, units)`` as ``parse_cotenant`` returns them: another client
            spends ``units`` of ``budget`` every period, on every token that sends requests.
        latency: Seconds added on the way in and on the way out.
        jitter: Up to this many more seconds, random, each way.
        op: Only this operation's requests get the 5xx, drops and 429s.

    Raises:
        ValueError: A share outside 0..1, an unknown operation, a negative latency.
    """
    faults = server.faults
    if refuse_next:
        faults.refuse_next(refuse_next, op=op, retry_after=retry_after)
    if refuse:
        faults.refuse_randomly(refuse, op=op, retry_after=retry_after)
    if drop:
        faults.drop_randomly(drop, op=op)
    if fail:
        faults.fail_randomly(fail, op=op)
    if fail_after:
        faults.fail_randomly(fail_after, status=500, when="after", op=op)
    for budget, units in cotenants:
        faults.cotenant(units, budget=budget)
    if latency or jitter:
        faults.latency(latency, latency, jitter)


def totals_text(server: FakeCDNServer) -> str:
    """One line of what the server answered: requests by status, 429s (injected ones and
    those over a budget), dropped connections, paths purged, what co-tenants spent."""
    counters = server.counters
    statuses = ", ".join(f"{n} x {status}" for status, n in sorted(counters.by_status.items()))
    dropped = counters.by_rule["fault:drop_before"] + counters.by_rule["fault:drop_after"]
    injected = counters.by_rule["fault:429"]
    over = counters.rate_limited.total()
    purged = sum(
        len(e.body["files"])
        for e in server.journal
        if e.op == "purge" and e.status == 204 and isinstance(e.body, dict)
    )
    text = (
        f"Totals: {counters.requests} requests ({statuses or 'none'}); "
        f"{injected + over} x 429 ({injected} injected, {over} over a budget); "
        f"{dropped} dropped; {purged} paths purged"
    )
    for tenant in server.faults.cotenants:
        text += f"; co-tenant spent {tenant.spent} units of {tenant.budget}"
    return text + "."


async def serve_until_stopped(
    serving: Awaitable[None],
    on_stop: Callable[[], None] | None = None,
    *,
    signals: Sequence[signal.Signals] = (),
) -> None:
    """Run ``serving`` (a ``serve(...)`` call) until cancelled or one of ``signals`` comes,
    then call ``on_stop``.

    Args:
        serving: The awaitable to run.
        on_stop: Called once it has stopped (to print the totals).
        signals: Signals that stop it (SIGINT, SIGTERM), handled on the loop.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    taken = []
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, task.cancel)
            taken.append(sig)
    try:
        await serving
    except asyncio.CancelledError:
        task.uncancel()
    finally:
        for sig in taken:
            loop.remove_signal_handler(sig)
    if on_stop is not None:
        on_stop()


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0..1, got {text}")
    return value


def parse_cotenant(text: str) -> tuple[str, int]:
    """``"cdn=3"`` -> ``("cdn", 3)``: a co-tenant option's budget and units.

    Raises:
        ValueError: Not ``BUDGET=UNITS`` with a known budget and units >= 1.
    """
    budget, sep, units = text.partition("=")
    if not sep or budget not in COTENANT_BUDGETS or not units.isdigit() or int(units) < 1:
        raise ValueError(
            f"expected BUDGET=UNITS with BUDGET one of {', '.join(COTENANT_BUDGETS)} and "
            f"UNITS >= 1, got {text!r}"
        )
    return budget, int(units)


def _cotenant(text: str) -> tuple[str, int]:
    try:
        return parse_cotenant(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The command line options (the faults are the same as ``cdn-async fake-server``'s).

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog="python -m cdn_async.testing",
        description="Serve a fake DigitalOcean CDN Endpoints API until interrupted "
        "(SIGINT or SIGTERM); then print its totals.",
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
    faults = parser.add_argument_group("faults")
    faults.add_argument("--fail", type=_share, default=0.0, help="share answered 503 (0..1)")
    faults.add_argument(
        "--fail-after", type=_share, default=0.0, help="share answered 500 after the change"
    )
    faults.add_argument("--drop", type=_share, default=0.0, help="share of connections dropped")
    faults.add_argument("--refuse", type=_share, default=0.0, help="share refused with a 429")
    faults.add_argument("--refuse-next", type=int, default=0, help="refuse the next N with 429")
    faults.add_argument("--retry-after", type=int, help="Retry-After seconds on injected 429s")
    faults.add_argument(
        "--cotenant",
        type=_cotenant,
        action="append",
        default=[],
        metavar="BUDGET=UNITS",
        help="another client spends UNITS of BUDGET every period (repeatable)",
    )
    faults.add_argument("--latency", type=float, default=0.0, help="seconds each way")
    faults.add_argument("--jitter", type=float, default=0.0, help="up to this many more seconds")
    faults.add_argument("--fault-op", choices=OPERATIONS, help="faults only on this operation")
    return parser


def _ssl_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None:
        if key is not None:
            raise SystemExit("--tls-key needs --tls-cert")
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and serve until SIGINT or SIGTERM, then print the totals.

    Args:
        argv: Arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit status.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    ssl_context = _ssl_context(args.tls_cert, args.tls_key)
    running: list[FakeCDNServer] = []

    def ready(server: FakeCDNServer) -> None:
        try:
            apply_faults(
                server,
                fail=args.fail,
                fail_after=args.fail_after,
                drop=args.drop,
                refuse=args.refuse,
                refuse_next=args.refuse_next,
                retry_after=args.retry_after,
                cotenants=args.cotenant,
                latency=args.latency,
                jitter=args.jitter,
                op=args.fault_op,
            )
        except ValueError as exc:
            parser.error(str(exc))
        running.append(server)
        print(f"fake CDN API at {server.url}", flush=True)
        print(f"token: {server.token}", flush=True)

    def stopped() -> None:
        if running:
            print(totals_text(running[0]), flush=True)

    coro = serve(
        args.host,
        args.port,
        on_ready=ready,
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
        asyncio.run(serve_until_stopped(coro, stopped, signals=(signal.SIGINT, signal.SIGTERM)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
