"""Benchmark ``RedisBudgetStore``: round trips, acquire latency, multi-process saturation.

Run from the repository root (needs redis-server on PATH; starts its own on a free port)::

    python -m benchmarks.bench_redis          # --smoke: tiny sizes in a few seconds

1. Round trips per acquire: commands the redis-py client sends per uncontended acquire
   (counted at ``execute_command``), cross-checked with ``INFO commandstats``.
2. Acquire latency (acquire + release, uncontended) against ``MemoryBudgetStore``.
3. Saturation: 4 OS processes x 50 tasks hammer one fake server (budgets scaled by
   ``--scale``) through ``RedisBudgetStore``: 429s and the rate reached on the binding budget
   (cdn: 5 per 10 s x scale) as a share of its bound; beside it the same processes with
   in-process budgets, and their 429s.

What happens when Redis restarts, dies or stalls (and 2/4/8 processes): see
``bench_redis_failures.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
from typing import Any

from benchmarks._redis_server import RedisServer, find_redis_server, run_workers
from benchmarks._report import SMOKE_HELP
from cdn_async import BudgetStore, MemoryBudgetStore
from cdn_async._limits import Claim  # no public name: what a store is asked for
from cdn_async.redis import RedisBudgetStore, token_id_for
from cdn_async.testing import FakeCDNServer

# The documented budgets' keys, with limits too large to ever wait: latency, not budgets.
CLAIMS = [
    Claim("hourly", 10**9, 3600.0, 1, "hourly"),
    Claim("minute", 10**9, 60.0, 1, "minute"),
    Claim("cdn", 10**9, 10.0, 1, "cdn"),
]


async def round_trips(url: str, n: int) -> dict[str, float]:
    import redis.asyncio as aioredis

    store = RedisBudgetStore(url, recovery_grace=0.0, _restart_hold=False, heartbeat_interval=30.0)
    store.release(await store.acquire(CLAIMS))  # loads the script
    await asyncio.sleep(0.05)
    sent = 0
    inner = store._link.client.execute_command

    went = asyncio.Event()

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal sent
        sent += 1
        went.set()
        return await inner(*args, **kwargs)

    store._link.client.execute_command = counting  # type: ignore[method-assign]
    probe = aioredis.Redis.from_url(url)
    before = (await probe.info("commandstats"))["cmdstat_evalsha"]["calls"]
    acquires = 0
    for _ in range(n):
        count0 = sent
        lease = await store.acquire(CLAIMS)
        acquires += sent - count0
        went.clear()
        store.release(lease)
        await went.wait()  # the release's call goes out (in a task) before the next acquire
    await asyncio.sleep(0.05)
    after = (await probe.info("commandstats"))["cmdstat_evalsha"]["calls"]
    await probe.aclose()
    await store.aclose()
    return {
        "acquire_round_trips": acquires / n,
        "evalsha_per_acquire_plus_release": (after - before) / n,
    }


async def latency(store: BudgetStore, n: int) -> dict[str, float]:
    samples = []
    for _ in range(50):  # warm up
        store.release(await store.acquire(CLAIMS))
    for _ in range(n):
        t0 = time.perf_counter()
        lease = await store.acquire(CLAIMS)
        samples.append(time.perf_counter() - t0)
        store.release(lease)
        await asyncio.sleep(0)  # let the release task run, as between real requests
    samples.sort()
    await store.aclose()
    return {
        "p50_us": statistics.median(samples) * 1e6,
        "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
        "mean_us": statistics.fmean(samples) * 1e6,
    }


async def saturation(
    kind: str, redis_url: str, processes: int, tasks: int, requests: int, scale: float
) -> dict[str, Any]:
    async with FakeCDNServer(time_scale=scale) as fake:
        ids = [fake.add_endpoint(f"space-{i}.nyc3.digitaloceanspaces.com")["id"] for i in range(8)]
        cfg = {
            "store": kind,
            "redis_url": redis_url,
            "token_id": token_id_for(fake.token) + kind,
            "url": fake.url,
            "token": fake.token,
            "ids": ids,
            "time_scale": scale,
            "tasks": tasks,
            "requests": requests,
            "heartbeat": 0.5,
            "grace": 0.0,
        }
        results = await run_workers(cfg, processes)
        ok = sorted(e.arrival for e in fake.journal if e.status == 200)
        limit, period = 5, 10.0 * scale  # the binding budget: cdn, 5 per 10 s (scaled)
        span = ok[-1] - ok[0] if len(ok) > 1 else float("nan")
        # n requests need (n - limit) / limit further periods after the first burst.
        rate = (len(ok) - limit) / span
        return {
            "store": kind,
            "requests_ok": sum(r["ok"] for r in results),
            "requests_failed": sum(r["failed"] for r in results),
            "answers_429": sum(fake.counters.rate_limited.values()),
            "rate_per_s": rate,
            "bound_per_s": limit / period,
            "share_of_bound": rate / (limit / period),
            "span_s": span,
            "errors": [e for r in results for e in r["errors"]][:3],
        }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.05, help="budget time scale")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--requests", type=int, default=1, help="requests per task")
    parser.add_argument("--n", type=int, default=2000, help="acquires for latency/round trips")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    if args.smoke:
        args.scale, args.processes, args.tasks, args.requests, args.n = 0.01, 2, 5, 1, 50
    binary = find_redis_server()
    if binary is None:
        print("redis-server not found", file=sys.stderr)
        return 1
    server = RedisServer(binary)
    server.start()
    try:
        print(f"# machine: {platform.platform()}, Python {platform.python_version()}")
        rt = await round_trips(server.url, args.n)
        print(f"round trips per acquire: {rt['acquire_round_trips']:.3f}")
        print(
            f"EVALSHA per acquire+release (commandstats): {rt['evalsha_per_acquire_plus_release']:.3f}"
        )
        mem = await latency(MemoryBudgetStore(), args.n)
        red = await latency(
            RedisBudgetStore(
                server.url, recovery_grace=0.0, _restart_hold=False, heartbeat_interval=30.0
            ),
            args.n,
        )
        for name, lat in (("memory", mem), ("redis", red)):
            print(
                f"acquire latency {name:>6}: p50 {lat['p50_us']:8.1f} us  "
                f"p99 {lat['p99_us']:8.1f} us  mean {lat['mean_us']:8.1f} us"
            )
        for kind in ("redis", "memory"):
            res = await saturation(
                kind, server.url, args.processes, args.tasks, args.requests, args.scale
            )
            print(
                f"saturation {args.processes} procs x {args.tasks} tasks, {kind:>6} budgets: "
                f"ok {res['requests_ok']}, failed {res['requests_failed']}, "
                f"429s {res['answers_429']}, {res['rate_per_s']:.2f}/s of "
                f"{res['bound_per_s']:.2f}/s bound = {res['share_of_bound']:.1%} "
                f"(span {res['span_s']:.1f} s)"
            )
            if res["errors"]:
                print(f"  e.g. {res['errors'][0]}")
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
