"""Benchmark ``RedisBudgetStore`` when Redis misbehaves: restarts, outages, stalls.

Run from the repository root (needs redis-server on PATH; starts its own on free ports)::

    python -m benchmarks.bench_redis_failures          # about 2 minutes

``--smoke`` runs every section at tiny sizes in a few seconds: fewer processes and requests,
budgets at time scale 0.01 instead of 0.05 (0.02 instead of 1 for section 3's newcomer), and
every wait, outage and the stores' ``call_timeout``, ``heartbeat_interval`` and
``recovery_grace`` a tenth as long.

Every client uses the store's defaults (``call_timeout`` 0.5 s, ``heartbeat_interval`` 1 s,
``recovery_grace`` 3 s) unless a row says otherwise, against ``FakeCDNServer``.

1. Share of the bound: 2, 4 and 8 worker processes (200 requests in all, ``endpoints.get``)
   through one Redis, budgets at time scale 0.05 (cdn: 5 per 0.5 s), ``max_retries=0``:
   429s and the rate reached on cdn as a share of its bound (as in ``bench_redis.py``).
2. A lone process with ``fallback="memory"``, one task sending gets back to back (budgets
   at time scale 1e-4, so they never bind): the longest pause in its requests when Redis
   dies (killed: connections refused; stalled: SIGSTOP) and when it comes back (restarted
   empty; SIGCONT). Then 20 tasks saturating cdn (time scale 0.05) while Redis is killed
   for 2 s and restarts empty: 429s and share of the bound over the run.
3. Recovery after a restart, at the documented periods (time scale 1): a worker process
   fills the cdn window (5 gets) and exits; Redis restarts empty; a newcomer sends 5 gets:
   when it is first admitted (the rule: one cdn period, 10 s, after Redis started) and its
   429s. Then 4 processes saturating cdn (time scale 0.05) across a restart: 429s and the
   longest pause in the server's arrivals.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import logging
import statistics
import sys
import time
from typing import Any

from benchmarks._redis_server import RedisServer, find_redis_server, run_workers
from benchmarks._report import SMOKE_HELP, machine, table
from benchmarks.bench_redis import saturation
from cdn_async import CDNClient, RateLimits
from cdn_async.redis import RedisBudgetStore, token_id_for
from cdn_async.testing import FakeCDNServer


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The run's sizes; ``SMOKE`` shrinks them to seconds (the figures then mean nothing)."""

    processes: tuple[int, ...] = (2, 4, 8)  # section 1
    scale: float = 0.05  # sections 1, 2b and 3's saturated run
    restart_scale: float = 1.0  # section 3's newcomer
    waits: float = 1.0  # every wait and outage, and the stores' timeouts, times this
    outage_tasks: int = 20  # 2b
    restart_processes: int = 4  # 3
    restart_tasks: int = 25  # 3

    def store_options(self) -> dict[str, float]:
        """The stores' defaults (call_timeout 0.5 s, heartbeat 1 s, grace 3 s) x ``waits``."""
        if self.waits == 1.0:
            return {}  # the defaults themselves
        w = self.waits
        return {"call_timeout": 0.5 * w, "heartbeat_interval": 1.0 * w, "recovery_grace": 3.0 * w}


SMOKE = Sizes(
    processes=(2,),
    scale=0.01,
    restart_scale=0.02,
    waits=0.1,
    outage_tasks=10,
    restart_processes=2,
    restart_tasks=10,
)


def endpoints(fake: FakeCDNServer, n: int = 8) -> list[str]:
    return [fake.add_endpoint(f"space-{i}.nyc3.digitaloceanspaces.com")["id"] for i in range(n)]


def longest_gap(stamps: list[float], start: float, end: float) -> float:
    """The longest time between consecutive stamps that overlaps ``[start, end]``."""
    stamps = sorted(stamps)
    best = 0.0
    for a, b in itertools.pairwise(stamps):
        if b >= start and a <= end:
            best = max(best, b - a)
    return best


async def workers(
    fake: FakeCDNServer,
    url: str,
    ids: list[str],
    processes: int,
    tasks: int,
    sizes: Sizes,
    **cfg: Any,
) -> list[dict[str, Any]]:
    config = {
        "store": "redis",
        "redis_url": url,
        "token_id": token_id_for(fake.token),
        "url": fake.url,
        "token": fake.token,
        "ids": ids,
        "tasks": tasks,
        "requests": 1,
        "max_retries": 0,
        "heartbeat": 1.0 * sizes.waits,
        "grace": 3.0 * sizes.waits,
        **cfg,
    }
    return await run_workers(config, processes)


# -- 2. a lone process in fallback ------------------------------------------------------------


async def resume(server: RedisServer, how: str, sizes: Sizes) -> dict[str, float]:
    """One task, gets back to back; Redis fails for 2 s (``how``: killed or stalled)."""
    scale, w = 1e-4, sizes.waits
    loop = asyncio.get_running_loop()
    async with FakeCDNServer(time_scale=scale) as fake:
        ids = endpoints(fake)
        store = RedisBudgetStore(
            server.url,
            token_id=token_id_for(fake.token),
            fallback="memory",
            **sizes.store_options(),
        )
        stamps: list[float] = []
        running = True
        async with CDNClient(
            fake.token,
            base_url=fake.url,
            limits=RateLimits.documented().scaled(scale),
            budget_store=store,
            max_retries=0,
        ) as cdn:

            async def sender() -> None:
                i = 0
                while running:
                    await cdn.endpoints.get(ids[i % len(ids)])
                    stamps.append(loop.time())
                    i += 1

            task = asyncio.create_task(sender())
            await asyncio.sleep(4.0 * w)  # past the first use's recovery grace
            while len(stamps) < 3:  # noqa: ASYNC110 (a loaded machine: a few gets before the failure)
                await asyncio.sleep(0.01)
            failed = loop.time()
            if how == "killed":
                server.stop()
            else:
                server.stall()
            await asyncio.sleep(2.0 * w)
            back = loop.time()
            if how == "killed":
                await asyncio.to_thread(server.start)
            else:
                server.resume()
            await asyncio.sleep(4.5 * w)
            running = False
            await task
        await store.aclose()
        before = [b - a for a, b in itertools.pairwise(stamps) if b < failed]
        return {
            "normal_ms": statistics.median(before) * 1000,
            "stop_ms": longest_gap(stamps, failed, failed + 1.0 * w) * 1000,
            "return_ms": longest_gap(stamps, back, back + 4.0 * w) * 1000,
            "requests": len(stamps),
            "429": sum(fake.counters.rate_limited.values()),
        }


async def outage_saturated(server: RedisServer, sizes: Sizes) -> dict[str, Any]:
    """20 tasks saturating cdn; Redis killed for 2 s, then back empty."""
    scale, w = sizes.scale, sizes.waits
    loop = asyncio.get_running_loop()
    async with FakeCDNServer(time_scale=scale) as fake:
        ids = endpoints(fake)
        store = RedisBudgetStore(
            server.url,
            token_id=token_id_for(fake.token),
            fallback="memory",
            **sizes.store_options(),
        )
        async with CDNClient(
            fake.token,
            base_url=fake.url,
            limits=RateLimits.documented().scaled(scale),
            budget_store=store,
            max_retries=0,
        ) as cdn:

            async def task(n: int) -> None:
                for i in range(5):
                    await cdn.endpoints.get(ids[(n + i) % len(ids)])

            run = asyncio.gather(
                *(task(n) for n in range(sizes.outage_tasks)), return_exceptions=True
            )
            await asyncio.sleep(4.0 * w)
            server.stop()
            killed = loop.time()
            await asyncio.sleep(2.0 * w)
            await asyncio.to_thread(server.start)
            results = await run
        await store.aclose()
        ok = sorted(e.arrival for e in fake.journal if e.status == 200)
        during = [t for t in ok if killed <= t < killed + 2.0 * w]
        limit, period = 5, 10.0 * scale
        return {
            "ok": len(ok),
            "failed": sum(isinstance(r, BaseException) for r in results),
            "429": sum(fake.counters.rate_limited.values()),
            "share": (len(ok) - limit) / (ok[-1] - ok[0]) / (limit / period),
            "during_outage": len(during),
            "bound_during": 2.0 * w / period * limit,
        }


# -- 3. recovery after a restart -----------------------------------------------------------------


async def restart_newcomer(server: RedisServer, sizes: Sizes) -> dict[str, float]:
    """Documented periods: a filler fills cdn and exits, Redis restarts, a newcomer asks."""
    scale = sizes.restart_scale
    loop = asyncio.get_running_loop()
    async with FakeCDNServer(time_scale=scale) as fake:
        ids = endpoints(fake)
        await workers(fake, server.url, ids, 1, 5, sizes, time_scale=scale)
        filled = max(e.arrival for e in fake.journal)
        restarting = loop.time()
        await asyncio.to_thread(server.restart)
        restarted = loop.time()
        store = RedisBudgetStore(
            server.url, token_id=token_id_for(fake.token), **sizes.store_options()
        )
        async with CDNClient(
            fake.token,
            base_url=fake.url,
            limits=RateLimits.documented().scaled(scale),
            budget_store=store,
            max_retries=0,
        ) as cdn:
            await asyncio.gather(*(cdn.endpoints.get(ids[i]) for i in range(5)))
        await store.aclose()
        first = min(e.arrival for e in fake.journal[5:])
        return {
            "filled_before_restart_s": restarting - filled,
            "restart_s": restarted - restarting,
            "first_after_restart_s": first - restarting,
            "first_after_filler_s": first - filled,
            "429": sum(fake.counters.rate_limited.values()),
        }


async def restart_saturated(server: RedisServer, sizes: Sizes) -> dict[str, Any]:
    """4 processes x 25 tasks saturating cdn; Redis restarts empty mid-run."""
    scale = sizes.scale
    processes, tasks = sizes.restart_processes, sizes.restart_tasks
    loop = asyncio.get_running_loop()
    async with FakeCDNServer(time_scale=scale) as fake:
        ids = endpoints(fake)
        run = asyncio.create_task(
            workers(fake, server.url, ids, processes, tasks, sizes, time_scale=scale)
        )
        restart_at = processes * tasks * 2 // 5  # 40 of 100
        while fake.counters.requests < restart_at and not run.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        restarting = loop.time()
        await asyncio.to_thread(server.restart)
        results = await run
        ok = sorted(e.arrival for e in fake.journal if e.status == 200)
        return {
            "ok": len(ok),
            "failed": sum(r["failed"] for r in results),
            "429": sum(fake.counters.rate_limited.values()),
            "gap_s": longest_gap(ok, restarting, restarting + 5.0 * sizes.waits),
            "period_s": 10.0 * scale,
        }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=200, help="requests in section 1")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    sizes = Sizes()
    if args.smoke:
        sizes, args.total = SMOKE, 10
    binary = find_redis_server()
    if binary is None:
        print("redis-server not found", file=sys.stderr)
        return 1
    began = time.monotonic()
    logging.getLogger("cdn_async").setLevel(logging.ERROR)  # the WARNINGs are expected here
    print(f"# {machine()}")
    server = RedisServer(binary)
    server.start()
    try:
        rows = []
        for processes in sizes.processes:
            res = await saturation(
                "redis", server.url, processes, args.total // processes, 1, sizes.scale
            )
            rows.append(
                [
                    processes,
                    f"{args.total // processes}",
                    f"{res['requests_ok']} ok, {res['requests_failed']} failed",
                    res["answers_429"],
                    f"{res['rate_per_s']:.2f}/s of {res['bound_per_s']:.2f}/s",
                    f"**{res['share_of_bound']:.1%}**",
                ]
            )
        table(
            f"1. Processes sharing one Redis (cdn 5 per {10 * sizes.scale:g} s, max_retries=0)",
            ["processes", "tasks each", "requests", "429s", "rate", "share of bound"],
            rows,
        )

        rows = []
        for how in ("killed", "stalled"):
            r = await resume(server, how, sizes)
            rows.append(
                [
                    f"Redis {how} for {2 * sizes.waits:g} s"
                    + (" (then restarted empty)" if how == "killed" else " (SIGSTOP, SIGCONT)"),
                    f"{r['normal_ms']:.1f} ms",
                    f"**{r['stop_ms']:.0f} ms**",
                    f"{r['return_ms']:.0f} ms",
                    r["requests"],
                    r["429"],
                ]
            )
        table(
            "2a. A lone process, fallback='memory': how long its requests stop",
            [
                "event",
                "normal gap",
                "longest gap as Redis fails",
                "longest gap as it returns",
                "requests",
                "429s",
            ],
            rows,
        )
        o = await outage_saturated(server, sizes)
        table(
            f"2b. A lone process, {sizes.outage_tasks} tasks saturating cdn "
            f"(5 per {10 * sizes.scale:g} s), Redis killed for {2 * sizes.waits:g} s",
            ["requests", "429s", "share of bound (whole run)", "sent while Redis was down"],
            [
                [
                    f"{o['ok']} ok, {o['failed']} failed",
                    f"**{o['429']}**",
                    f"{o['share']:.1%}",
                    f"{o['during_outage']} (bound {o['bound_during']:.0f})",
                ]
            ],
        )

        n = await restart_newcomer(server, sizes)
        s = await restart_saturated(server, sizes)
        table(
            "3. Recovery after a restart",
            ["case", "result"],
            [
                [
                    f"filler (1 process) fills cdn (5 per {10 * sizes.restart_scale:g} s) and "
                    "exits; Redis restarts; a newcomer sends 5 gets",
                    f"filler's last request {n['filled_before_restart_s']:.2f} s before the "
                    f"restart (restart took {n['restart_s']:.2f} s); newcomer first admitted "
                    f"**{n['first_after_restart_s']:.2f} s** after the restart "
                    f"({n['first_after_filler_s']:.2f} s after the filler's last); "
                    f"429s: **{n['429']}**",
                ],
                [
                    f"{sizes.restart_processes} processes x {sizes.restart_tasks} tasks "
                    f"saturating cdn (5 per {10 * sizes.scale:g} s); Redis restarts empty mid-run",
                    f"{s['ok']} ok, {s['failed']} failed, 429s: **{s['429']}**; longest pause "
                    f"in arrivals {s['gap_s']:.2f} s (recovery_grace {3 * sizes.waits:g} s; cdn period "
                    f"{s['period_s']:.1f} s)",
                ],
            ],
        )
    finally:
        server.close()
    print(f"\nWhole run: {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
