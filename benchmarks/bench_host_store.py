"""Benchmark ``SQLiteBudgetStore`` (one host, one file) beside the memory and Redis stores.

Run from the repository root (starts its own redis-server on a free port; without one the
Redis rows are left out)::

    python -m benchmarks.bench_host_store          # --smoke: tiny sizes in a few seconds

1. Uncontended acquire: p50 and p99 of ``acquire`` (the documented three-budget stack of a
   GET, limits too large to ever wait; released between samples) for each store.
2. 2, 4 and 8 OS processes on one token against one fake server (budgets scaled by
   ``--scale``), each with ``--tasks`` concurrent tasks doing gets: with in-process budgets
   (each process its own ``MemoryBudgetStore``: nothing shared), a shared SQLite file, and a
   shared Redis. Per run: 429s, calls failed, the share of the bound reached on the binding
   budget (cdn, 5 per 10 s x scale: n calls need ``ceil(n / 5) - 1`` periods after the first
   burst; share = that over the span of the 200s), and the CPU per call of the workers.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._redis_server import RedisServer, find_redis_server, run_workers
from benchmarks._report import SMOKE_HELP, machine, table
from benchmarks.bench_redis import latency  # the same uncontended acquire
from cdn_async import MemoryBudgetStore, SQLiteBudgetStore
from cdn_async.testing import FakeCDNServer


async def processes(
    kind: str, workdir: Path, redis_url: str | None, procs: int, tasks: int, scale: float
) -> dict[str, Any]:
    async with FakeCDNServer(time_scale=scale) as fake:
        ids = [fake.add_endpoint(f"space-{i}.nyc3.digitaloceanspaces.com")["id"] for i in range(8)]
        cfg = {
            "store": kind,
            "path": str(workdir / f"{kind}-{procs}.sqlite3"),
            "redis_url": redis_url,
            "token_id": f"{kind}-{procs}-{time.monotonic_ns()}",
            "url": fake.url,
            "token": fake.token,
            "ids": ids,
            "time_scale": scale,
            "tasks": tasks,
            "requests": 1,
            "heartbeat": 0.5,
            "grace": 0.0,
            "restart_hold": False,
        }
        results = await run_workers(cfg, procs)
        ok = sorted(e.arrival for e in fake.journal if e.status == 200)
        period = 10.0 * scale
        ideal = (math.ceil(len(ok) / 5) - 1) * period
        span = ok[-1] - ok[0] if len(ok) > 1 else math.nan
        calls = sum(r["ok"] + r["failed"] for r in results)
        return {
            "429s": sum(fake.counters.rate_limited.values()),
            "failed": sum(r["failed"] for r in results),
            "ok": sum(r["ok"] for r in results),
            "share": ideal / span,
            "cpu_ms": 1000 * sum(r["cpu"] for r in results) / max(calls, 1),
        }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.05, help="budget time scale")
    parser.add_argument("--tasks", type=int, default=60, help="calls per run (all processes)")
    parser.add_argument("--n", type=int, default=5000, help="acquires for the latency")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    counts = [2, 4, 8]
    if args.smoke:
        args.scale, args.tasks, args.n, counts = 0.01, 8, 50, [2]
    binary = find_redis_server()
    server = RedisServer(binary) if binary is not None else None
    if server is not None:
        server.start()
    try:
        with tempfile.TemporaryDirectory(prefix="cdn-async-bench-") as tmp:
            workdir = Path(tmp)
            print(f"# machine: {machine()}")
            stores: list[tuple[str, Any]] = [
                ("memory", MemoryBudgetStore),
                ("sqlite", lambda: SQLiteBudgetStore(workdir / "latency.sqlite3")),
            ]
            if server is not None:
                from cdn_async.redis import RedisBudgetStore

                url = server.url
                stores.append(
                    (
                        "redis",
                        lambda: RedisBudgetStore(
                            url, recovery_grace=0.0, _restart_hold=False, heartbeat_interval=30.0
                        ),
                    )
                )
            rows = []
            for name, make in stores:
                lat = await latency(make(), args.n)
                rows.append([name, f"{lat['p50_us']:.1f}", f"{lat['p99_us']:.1f}"])
            table(
                f"uncontended acquire, 3-budget stack ({args.n} samples)",
                ["store", "p50 us", "p99 us"],
                rows,
            )
            kinds = ["memory", "sqlite"] + (["redis"] if server is not None else [])
            rows = []
            for procs in counts:
                for kind in kinds:
                    res = await processes(
                        kind,
                        workdir,
                        server.url if server is not None else None,
                        procs,
                        max(1, args.tasks // procs),
                        args.scale,
                    )
                    label = "memory (unshared)" if kind == "memory" else kind
                    rows.append(
                        [
                            procs,
                            label,
                            f"{res['ok']} ok, {res['failed']} failed",
                            res["429s"],
                            f"{res['share']:.1%}",
                            f"{res['cpu_ms']:.2f}",
                        ]
                    )
            table(
                f"processes on one token, cdn 5 per {10 * args.scale:g} s, "
                f"{args.tasks} calls per run",
                ["processes", "budgets", "calls", "429s", "share of the bound", "CPU ms / call"],
                rows,
            )
    finally:
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
