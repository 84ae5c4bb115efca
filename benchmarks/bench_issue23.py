"""Issue 23's measurements, against the fake API over loopback (``FakeCDNServer``).

Run from the repository root (the Redis parts need redis-server; it starts its own)::

    python -m benchmarks.bench_issue23            # about 30 s
    python -m benchmarks.bench_issue23 --smoke    # seconds: only proves it runs

* **urgent through the shared queue**: a 1-path ``priority="high"`` purge asked for while a
  1,500-path purge of the same endpoint drains through ``RedisPurgeQueue`` (time scale 0.01:
  files budget 50 paths / 0.2 s). Its wait, over several tries: one files period (plus a
  round trip) when it joins the batch the budgets admit next, two when that batch was fixed
  before its wait.
* **Redis priorities**: one process, a ``RedisBudgetStore``, the cdn window (5 / 0.1 s at
  scale 0.01) kept full by normal calls while high calls arrive; pairs (normal, high) where
  the high call arrived while the normal one waited but the normal one went first.
* **creates under 5xx**: 200 creates with ``max_retries=0``, 10 % of answers a 500 before
  the work and 10 % a 500 after it (every operation, lookups included): creates reported
  failed although the server has them, and creates reported unconfirmed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from benchmarks._redis_server import RedisServer, find_redis_server
from benchmarks._report import SMOKE_HELP, machine, table
from cdn_async import RateLimits
from cdn_async.errors import CDNError, CreateUnconfirmedError
from cdn_async.redis import RedisBudgetStore, RedisPurgeQueue
from cdn_async.testing import FakeCDNServer

SCALE = 0.01
ORIGIN = "static.nyc3.digitaloceanspaces.com"


async def urgent_through_the_queue(redis_url: str, tries: int) -> list[float]:
    """Seconds the 1-path urgent purge waited, per try (a fresh Redis namespace each)."""
    waits = []
    for n in range(tries):
        async with FakeCDNServer(time_scale=SCALE) as fake:
            cdn_id = fake.add_endpoint(ORIGIN)["id"]
            store = RedisBudgetStore(
                redis_url, namespace=f"u{n}", _restart_hold=False, recovery_grace=0.0
            )
            queue = RedisPurgeQueue(redis_url, namespace=f"u{n}", poll_interval=0.01)
            async with fake.client(budget_store=store, purge_queue=queue) as cdn:
                bulk = asyncio.create_task(
                    cdn.endpoints.purge(cdn_id, [f"bulk/{i}.png" for i in range(1500)])
                )
                await asyncio.sleep(0.5 + 0.037 * n)  # a few batches out; varied phase
                started = time.monotonic()
                await cdn.endpoints.purge(cdn_id, [f"urgent/{n}.png"], priority="high")
                waits.append(time.monotonic() - started)
                bulk.cancel()
                await asyncio.gather(bulk, return_exceptions=True)
            await queue.aclose()
            await store.aclose()
    return waits


async def redis_priorities(redis_url: str, rounds: int) -> tuple[int, int]:
    """(pairs out of order, pairs) over ``rounds`` rounds of 5 normal + 5 high calls."""
    limits = RateLimits.documented().scaled(SCALE)
    claims = limits.claims()
    store = RedisBudgetStore(redis_url, namespace="prio", _restart_hold=False, recovery_grace=0.0)
    out_of_order = pairs = 0
    try:
        for _ in range(rounds):
            full = [await store.acquire(claims) for _ in range(5)]
            log: list[tuple[str, float, float]] = []  # (priority, arrived, admitted)

            async def call(priority: str, log: list[tuple[str, float, float]]) -> None:
                arrived = time.monotonic()
                lease = await store.acquire(claims, priority=priority)  # type: ignore[arg-type]
                log.append((priority, arrived, time.monotonic()))
                store.release(lease)

            tasks = []
            for i in range(10):
                priority = "normal" if i % 2 == 0 else "high"
                tasks.append(asyncio.create_task(call(priority, log)))
                await asyncio.sleep(0.002)
            for lease in full:
                store.release(lease)
            await asyncio.gather(*tasks)
            for p, arrived, admitted in log:
                if p != "normal":
                    continue
                for q, arrived_q, admitted_q in log:
                    if q == "high" and arrived_q > arrived and arrived_q < admitted:
                        pairs += 1
                        out_of_order += admitted < admitted_q
            await asyncio.sleep(0.25)
    finally:
        await store.aclose()
    return out_of_order, pairs


async def creates_under_5xx(n: int, seed: int) -> dict[str, int]:
    async with FakeCDNServer(time_scale=SCALE, seed=seed) as fake:
        fake.faults.fail_randomly(0.1, status=500, when="before")
        fake.faults.fail_randomly(0.1, status=500, when="after")
        wrong = unconfirmed = failed = created = 0
        async with fake.client(max_retries=0) as cdn:
            for i in range(n):
                origin = f"b{seed}-{i}.nyc3.digitaloceanspaces.com"
                try:
                    await cdn.endpoints.create(origin)
                    created += 1
                except CreateUnconfirmedError:
                    unconfirmed += 1
                except CDNError:
                    failed += 1
                    if any(e["origin"] == origin for e in fake.endpoints):
                        wrong += 1
    return {"created": created, "failed": failed, "wrong": wrong, "unconfirmed": unconfirmed}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    tries, rounds, creates, seeds = (1, 1, 10, (1,)) if args.smoke else (8, 40, 200, (1, 2, 3))
    print(f"Machine: {machine(f'time scale {SCALE:g}')}")
    binary = find_redis_server()
    if binary is None:
        raise SystemExit("needs redis-server (apt-get install redis-server)")
    redis = RedisServer(binary)
    redis.start()
    try:
        waits = await urgent_through_the_queue(redis.url, tries)
        early, pairs = await redis_priorities(redis.url, rounds)
    finally:
        redis.close()
    rows: list[list[Any]] = [
        [
            "urgent purge through RedisPurgeQueue, wait ms (min / median / max)",
            f"{min(waits) * 1000:.0f} / {statistics.median(waits) * 1000:.0f} / "
            f"{max(waits) * 1000:.0f} (files period {20_000 * SCALE:.0f})",
        ],
        [
            "Redis store: a normal call admitted before a high one that arrived while it waited",
            f"{early} of {pairs} pairs",
        ],
    ]
    for seed in seeds:
        r = await creates_under_5xx(creates, seed)
        rows.append(
            [
                f"{creates} creates, max_retries=0, 10 % 500 before + 10 % after (seed {seed})",
                f"created {r['created']}, failed {r['failed']} (of which exist: {r['wrong']}), "
                f"unconfirmed {r['unconfirmed']}",
            ]
        )
    table("Issue 23", ["measure", "result"], rows)


if __name__ == "__main__":
    asyncio.run(main())
