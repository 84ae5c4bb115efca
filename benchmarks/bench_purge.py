"""End to end against the fake server: one 10,000-path purge, cdn-async vs hand-written loops.

Run from the repository root: ``python -m benchmarks.bench_purge`` (about 1.5 minutes at the
default ``--scale 0.01``; ``--smoke`` for 500 paths in a few seconds). Prints one table; the
figures in ``benchmarks/RESULTS.md`` come from it.

The input: 10,000 paths, 30 % of them redundant. 7,000 unique files plus the wildcard
``assets/*`` (7,001 paths that must be sent), 1,000 exact duplicates of those files, 1,000
leading-slash variants of them (``/static/...``) and 999 files under ``assets/`` (covered by
the wildcard), shuffled with a fixed seed.

* cdn-async: ``await cdn.endpoints.purge(id, paths)`` on a fresh ``FakeCDNServer(time_scale=S)``.
  Expected: ceil(7001 / 50) = 141 requests, every one of the 7,001 paths sent exactly once,
  0 x 429, 0 x 409.
* hand-written, "retry 3x per headers": the raw list cut into batches of 50 (200 requests),
  all sent at once with ``asyncio.gather``; a 429 is retried after ``Retry-After`` or else
  ``ratelimit-reset`` minus now, as the server says, at most 3 times (a common default); what is
  still refused then fails.
* hand-written, "backoff until done": same batches, each 429 retried after a full-jitter
  exponential backoff (base one scaled file period, 20 s x S, cap 8 periods), until it passes.
* hand-written, one request per path (a sample of the first 200 paths, retry 3x per headers).

The bound: the files budget (50 / 20 s) lets the k-th full batch be stamped no earlier than
(k - 1) periods after the first, so B batches take at least (B - 1) * 20 s * S. "x bound" is
the wall time of the call (start to return) divided by that.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp

from benchmarks._report import SMOKE_HELP, machine, table
from cdn_async import CDNClient, RateLimits
from cdn_async._retry import parse_retry_after  # no public name: the SDK's own header parsing
from cdn_async.testing import FakeCDNServer, JournalEntry

ORIGIN = "bench.nyc3.digitaloceanspaces.com"
#: Called with a copy of the server's journal once a run is over (``benchmarks/charts.py``).
OnJournal = Callable[[list[JournalEntry]], None]

FILES_LIMIT = 50
FILES_PERIOD = 20.0
CDN_LIMIT = 5
CDN_PERIOD = 10.0


def build_paths(seed: int = 7, size: int = 10_000) -> tuple[list[str], set[str]]:
    """The ``size``-path input (a multiple of 10) and the set of paths that must be sent."""
    rng = random.Random(seed)
    tenth = size // 10
    files = [f"static/{i // 100:02d}/file-{i:05d}.css" for i in range(7 * tenth)]
    wildcard = "assets/*"
    duplicates = rng.sample(files, tenth)
    slashed = ["/" + p for p in rng.sample(files, tenth)]
    covered = [f"assets/img/{i:04d}.png" for i in range(tenth - 1)]
    paths = [*files, wildcard, *duplicates, *slashed, *covered]
    rng.shuffle(paths)
    assert len(paths) == size
    return paths, {*files, wildcard}


def purge_stats(server: FakeCDNServer, scale: float) -> dict[str, Any]:
    purges = [e for e in server.journal if e.op == "purge"]
    ok = [e for e in purges if e.status == 204]
    sent = Counter(f for e in ok for f in e.body["files"])
    stamps = [e.arrival for e in ok]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    period = FILES_PERIOD * scale
    return {
        "requests": len(purges),
        "ok": len(ok),
        "r429": sum(server.counters.rate_limited.values()),
        "r409": server.counters.conflicts,
        "sent": sent,
        "span": stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0,
        "gap_excess_mean": statistics.mean(gaps) - period if gaps else 0.0,
        "gap_excess_max": max(gaps) - period if gaps else 0.0,
    }


async def run_cdn_async(
    scale: float, paths: list[str], must: set[str], on_journal: OnJournal | None = None
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    async with FakeCDNServer(time_scale=scale) as server:
        ep_id = server.add_endpoint(ORIGIN)["id"]
        limits = RateLimits.documented().scaled(scale)
        async with CDNClient(server.token, base_url=server.url, limits=limits) as cdn:
            t0 = loop.time()
            report = await cdn.endpoints.purge(ep_id, paths)
            wall = loop.time() - t0
        r = purge_stats(server, scale)
        if on_journal is not None:
            on_journal(list(server.journal))
        sent: Counter[str] = r["sent"]
        assert set(sent) == must, "sent paths differ from the unique uncovered set"
        assert max(sent.values()) == 1, "a path was sent twice"
        r.update(wall=wall, failed=len(report.failed), report_requests=report.requests)
        return r


async def run_by_hand(
    scale: float,
    paths: list[str],
    *,
    batch: int,
    policy: str,
    seed: int = 3,
    on_journal: OnJournal | None = None,
) -> dict[str, Any]:
    """Batches of ``batch`` raw paths, all at once; 429s retried per ``policy``."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    period = FILES_PERIOD * scale
    async with FakeCDNServer(time_scale=scale) as server:
        ep_id = server.add_endpoint(ORIGIN)["id"]
        url = f"{server.url}/v2/cdn/endpoints/{ep_id}/cache"
        headers = {"Authorization": f"Bearer {server.token}"}
        batches = [paths[i : i + batch] for i in range(0, len(paths), batch)]
        failed = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            async def send(files: list[str]) -> None:
                nonlocal failed
                attempt = 0
                while True:
                    async with http.delete(url, json={"files": files}, headers=headers) as resp:
                        await resp.read()
                        if resp.status != 429:
                            return
                        wait = parse_retry_after(resp.headers, time.time())
                    attempt += 1
                    if policy == "headers":
                        if attempt > 3:
                            failed += len(files)
                            return
                        await asyncio.sleep(wait if wait is not None else period)
                    else:  # full-jitter exponential backoff, base one file period, cap 8
                        await asyncio.sleep(rng.uniform(0, period * min(8, 2 ** (attempt - 1))))

            t0 = loop.time()
            await asyncio.gather(*(send(b) for b in batches))
            wall = loop.time() - t0
        r = purge_stats(server, scale)
        if on_journal is not None:
            on_journal(list(server.journal))
        r.update(wall=wall, failed=failed, batches=len(batches))
        return r


async def bench(scale: float, sample: int, size: int) -> list[list[Any]]:
    paths, must = build_paths(size=size)
    period = FILES_PERIOD * scale
    rows: list[list[Any]] = []

    def row(name: str, r: dict[str, Any], batches: int, requests: int) -> None:
        # The files budget's bound for ``batches`` full batches; with one path per request
        # the cdn budget (5 / 10 s over ``requests``) is the tighter one: the larger wins.
        cdn_bound = (math.ceil(requests / CDN_LIMIT) - 1) * CDN_PERIOD * scale
        bound = max((batches - 1) * period, cdn_bound)
        rows.append(
            [
                name,
                f"{r['requests']}",
                f"{r['ok']}",
                f"{r['r429']}",
                f"{r['r409']}",
                f"{r['failed']}",
                f"{r['wall']:.2f}",
                f"{bound:.2f}",
                f"{r['wall'] / bound:.3f}" if r["failed"] == 0 else "(failed)",
                f"{r['span']:.2f}",
                f"{r['gap_excess_mean'] * 1e3:.1f} / {r['gap_excess_max'] * 1e3:.1f}",
            ]
        )
        shown = {k: v for k, v in r.items() if k != "sent"}
        print(f"  {name}: {shown}", file=sys.stderr, flush=True)

    ours = await run_cdn_async(scale, paths, must)
    batches = math.ceil(len(must) / FILES_LIMIT)
    row("**cdn-async purge()**", ours, batches, batches)
    hand = await run_by_hand(scale, paths, batch=50, policy="headers")
    row("by hand: 50/request, gather, retry 3x per headers", hand, hand["batches"], hand["batches"])
    hand = await run_by_hand(scale, paths, batch=50, policy="backoff")
    row("by hand: 50/request, gather, backoff until done", hand, hand["batches"], hand["batches"])
    hand = await run_by_hand(scale, paths[:sample], batch=1, policy="headers")
    row(
        f"by hand: 1/request ({sample}-path sample), gather, retry 3x per headers",
        hand,
        math.ceil(sample / FILES_LIMIT),
        sample,
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.01, help="time_scale (default 0.01)")
    parser.add_argument("--sample", type=int, default=200, help="one-per-path sample size")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    size = 10_000
    if args.smoke:
        size, args.scale, args.sample = 500, 0.002, 10
    print(f"# bench_purge ({machine()})")
    t0 = time.perf_counter()
    rows = asyncio.run(bench(args.scale, args.sample, size))
    period = FILES_PERIOD * args.scale
    table(
        f"purge of {size:,} paths ({size * 7 // 10 + 1:,} unique uncovered), time_scale {args.scale} "
        f"(files budget 50 / {period:g} s), fake server on loopback, no added latency",
        [
            "client",
            "requests",
            "204s",
            "429s",
            "409s",
            "paths failed",
            "wall s",
            "bound s",
            "x bound",
            "server span s",
            "gap - P ms mean / max",
        ],
        rows,
    )
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
