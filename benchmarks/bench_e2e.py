"""End to end against the fake server: cdn-async vs stacked AsyncLimiters at saturation.

Run from the repository root: ``python -m benchmarks.bench_e2e`` (about 3.5 minutes;
``--quick`` runs 100 requests a scenario instead of 300; ``--smoke`` tiny sizes in a few
seconds). Prints one table; the figures in ``benchmarks/RESULTS.md`` come from it.

Each scenario runs twice on fresh ``FakeCDNServer`` instances (real HTTP on loopback, every
budget period multiplied by ``time_scale``, latency with jitter on the uplink and the
downlink), with the same load: ``tasks`` concurrent tasks doing ``get()`` of one endpoint
until ``requests`` have succeeded, which saturates the 5 / 10 s cdn budget.

* cdn-async: ``CDNClient(limits=RateLimits.documented().scaled(S))``.
* aiolimiter: raw aiohttp with three nested ``AsyncLimiter``s (5 / 10 s, 250 / 60 s,
  5000 / 3600 s, all scaled), entered with ``async with`` around each attempt. A 429 is counted
  and the request goes round again through the limiters (no extra sleep: the limiters are its
  pacing).

The bound: an exact window of 5 per period P admits N requests no faster than
(ceil(N / 5) - 1) * P from the first stamp to the last. "of bound" is that bound divided by
the server-stamped span (first to last counted arrival). A client that never provokes a 429
without knowing when the server stamps its requests must wait one period after each answer,
so its ceiling is P / (P + RTT); the table prints that too, with the RTT measured on the run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiolimiter import AsyncLimiter

from benchmarks._report import SMOKE_HELP, machine, table
from cdn_async.testing import FakeCDNServer, JournalEntry

#: Called with a copy of the server's journal once a run is over (``benchmarks/charts.py``).
OnJournal = Callable[[list[JournalEntry]], None]

ORIGIN = "bench.nyc3.digitaloceanspaces.com"
CDN_LIMIT = 5
CDN_PERIOD = 10.0


def server_span(server: FakeCDNServer) -> tuple[float, int]:
    """First to last arrival of the requests the server counted, and how many it counted."""
    stamps = [e.arrival for e in server.journal if e.counted]
    return (stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0), len(stamps)


async def run_cdn_async(
    scale: float,
    requests: int,
    tasks: int,
    latency: tuple[float, float, float],
    seed: int,
    on_journal: OnJournal | None = None,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    async with FakeCDNServer(time_scale=scale, seed=seed) as server:
        server.faults.latency(*latency)
        ep_id = server.add_endpoint(ORIGIN)["id"]
        async with server.client() as cdn:
            started = itertools.count()

            async def worker() -> None:
                while next(started) < requests:
                    await cdn.endpoints.get(ep_id)

            # The SDK does not expose per-request send times; the RTT is taken from the raw
            # aiohttp run of the same scenario (same latency settings, same loopback).
            t0 = loop.time()
            await asyncio.gather(*(worker() for _ in range(tasks)))
            wall = loop.time() - t0
        span, counted = server_span(server)
        if on_journal is not None:
            on_journal(list(server.journal))
        return {
            "wall": wall,
            "span": span,
            "counted": counted,
            "ok": server.counters.by_status.get(200, 0),
            "r429": sum(server.counters.rate_limited.values()),
            "attempts": server.counters.requests,
        }


async def run_aiolimiter(
    scale: float,
    requests: int,
    tasks: int,
    latency: tuple[float, float, float],
    seed: int,
    on_journal: OnJournal | None = None,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    async with FakeCDNServer(time_scale=scale, seed=seed) as server:
        server.faults.latency(*latency)
        ep_id = server.add_endpoint(ORIGIN)["id"]
        cdn = AsyncLimiter(CDN_LIMIT, CDN_PERIOD * scale)
        minute = AsyncLimiter(250, 60.0 * scale)
        hourly = AsyncLimiter(5000, 3600.0 * scale)
        url = f"{server.url}/v2/cdn/endpoints/{ep_id}"
        headers = {"Authorization": f"Bearer {server.token}"}
        started = itertools.count()
        rtts: list[float] = []
        async with aiohttp.ClientSession() as http:

            async def one() -> None:
                while True:
                    async with hourly, minute, cdn:
                        sent = loop.time()
                        async with http.get(url, headers=headers) as resp:
                            await resp.read()
                            status = resp.status
                        rtts.append(loop.time() - sent)
                    if status != 429:
                        return

            async def worker() -> None:
                while next(started) < requests:
                    await one()

            t0 = loop.time()
            await asyncio.gather(*(worker() for _ in range(tasks)))
            wall = loop.time() - t0
        span, counted = server_span(server)
        if on_journal is not None:
            on_journal(list(server.journal))
        return {
            "wall": wall,
            "span": span,
            "counted": counted,
            "ok": server.counters.by_status.get(200, 0),
            "r429": sum(server.counters.rate_limited.values()),
            "attempts": server.counters.requests,
            "rtt": statistics.mean(rtts),
        }


async def scenario(
    name: str,
    scale: float,
    requests: int,
    tasks: int,
    latency: tuple[float, float, float],
    rows: list[list[Any]],
    seed: int = 1,
) -> None:
    period = CDN_PERIOD * scale
    bound = (math.ceil(requests / CDN_LIMIT) - 1) * period
    results = {
        "cdn-async": await run_cdn_async(scale, requests, tasks, latency, seed),
        "aiolimiter": await run_aiolimiter(scale, requests, tasks, latency, seed),
    }
    rtt = results["aiolimiter"]["rtt"]
    for kind, r in results.items():
        rows.append(
            [
                name,
                kind,
                f"{r['ok']}",
                f"{r['r429']}",
                f"{r['r429'] / r['attempts'] * 100:.1f} %",
                f"{r['span']:.2f}",
                f"{bound:.2f}",
                f"**{bound / r['span'] * 100:.1f} %**"
                if kind == "cdn-async"
                else f"{bound / r['span'] * 100:.1f} %",
                f"{r['wall']:.2f}",
                f"{rtt * 1e3:.1f} ({rtt / period * 100:.1f} % of P)",
                f"{period / (period + rtt) * 100:.1f} %",
            ]
        )
        print(f"  {name} / {kind}: {r}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, noisier")
    parser.add_argument("--tasks", type=int, default=50, help="concurrent tasks (default 50)")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    print(f"# bench_e2e ({machine()})")
    n = 11 if args.smoke else 100 if args.quick else 300
    if args.smoke:
        args.tasks = min(args.tasks, 5)
    rows: list[list[Any]] = []
    t0 = time.perf_counter()
    # (name, time_scale, (up, down, jitter) in real seconds)
    scenarios = [
        # P = 0.5 s. RTT 5..15 ms, about 2 % of P: a 200 ms RTT against the real 10 s.
        ("A: S=0.05, lat 2.5+2.5 ms, jitter 5 ms", 0.05, (0.0025, 0.0025, 0.005)),
        # Same S, four times the latency: RTT about 8 % of P (0.8 s against the real 10 s).
        ("B: S=0.05, lat 10+10 ms, jitter 20 ms", 0.05, (0.010, 0.010, 0.020)),
        # Same absolute latency as A at a five times smaller scale: RTT about 10 % of P.
        ("C: S=0.01, lat 2.5+2.5 ms, jitter 5 ms", 0.01, (0.0025, 0.0025, 0.005)),
        # No added latency: loopback only, RTT well under 1 % of P (a real API's ballpark at
        # the documented 10 s).
        ("D: S=0.05, loopback only", 0.05, (0.0, 0.0, 0.0)),
    ]
    for name, scale, latency in scenarios:
        if args.smoke:  # every period a fifth as long
            name, scale = name.replace(f"S={scale:g}", f"S={scale / 5:g}"), scale / 5
        asyncio.run(scenario(name, scale, n, args.tasks, latency, rows))
    table(
        f"end to end: {args.tasks} tasks, {n} get() each scenario, fake server on loopback",
        [
            "scenario",
            "client",
            "200s",
            "429s",
            "429 rate",
            "server span s",
            "bound s",
            "of bound",
            "client wall s",
            "RTT ms",
            "P/(P+RTT)",
        ],
        rows,
    )
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
