"""4 processes purge overlapping 10,000-path lists of one endpoint: one shared purge queue
(``RedisPurgeQueue``) against today's per-process engines, budgets shared in both.

Run from the repository root (needs redis-server; starts its own, fresh for every run)::

    python -m benchmarks.bench_purge_queue            # about 6 minutes at --scale 0.01
    python -m benchmarks.bench_purge_queue --paths 1000   # a quick look
    python -m benchmarks.bench_purge_queue --smoke        # seconds: only proves it runs

Workload: 4 lists of N paths (default 10,000) for one endpoint. Each list is the same N/2
shared paths plus N/2 of its own, so the union is N/2 + 4 x N/2 = 2.5 N paths (25,000). The
fake API (``FakeCDNServer(time_scale=S)``, files budget 50 paths / 20 s x S) runs in this
process; each list is purged by its own OS process (this script with ``--child``), each with
its own ``CDNClient`` on one shared ``RedisBudgetStore``. The processes start, build their
client, print "ready" and wait; the clock starts when all are released at once and stops when
the last ``endpoints.purge`` returns.

Runs:

* **queue, shared first**: the clients send purges through one ``RedisPurgeQueue``. Each list
  holds the shared half first, in one common order, then its own paths.
* **queue, shuffled**: the same, each list shuffled on its own (seeded): a process's first
  batch is likely to go out before the others have queued their copies of its paths, which
  are then queued again (a path sent is never joined).
* **engine, shared first**: today: each process's own ``PurgeEngine``; the shared half is sent
  once per process.

Figures (from the server's journal and counters): purge requests answered 204, paths sent,
429s, 409s, wall time; target ``ceil(union / 50)`` requests; the bound is the files budget's:
B batches take at least (B - 1) periods of 20 s x S ("x bound" = wall / bound).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from typing import Any

from benchmarks._redis_server import RedisServer, find_redis_server
from benchmarks._report import SMOKE_HELP, machine, table
from cdn_async import CDNClient, RateLimits
from cdn_async.errors import PurgeError
from cdn_async.redis import RedisBudgetStore, RedisPurgeQueue, token_id_for
from cdn_async.testing import FakeCDNServer

PROCESSES = 4
FILES_LIMIT = 50
FILES_PERIOD = 20.0


def paths_of(k: int, n: int, order: str) -> list[str]:
    """Process ``k``'s list: the n/2 shared paths, then n/2 of its own (or all shuffled)."""
    half = n // 2
    shared = [f"shared/asset-{i:05d}.js" for i in range(half)]
    own = [f"p{k}/asset-{i:05d}.png" for i in range(n - half)]
    paths = shared + own
    if order == "shuffled":
        random.Random(k).shuffle(paths)
    return paths


# -- one process -------------------------------------------------------------------------------


async def child(cfg: dict[str, Any]) -> None:
    limits = RateLimits.documented().scaled(float(cfg["scale"]))
    tid = token_id_for(str(cfg["token"]))
    # The benchmark's Redis is new: no process can have lost units in it.
    store = RedisBudgetStore(
        str(cfg["redis"]), token_id=tid, recovery_grace=0.0, restart_hold=False
    )
    queue = RedisPurgeQueue(str(cfg["redis"]), token_id=tid) if cfg["mode"] == "queue" else None
    cdn = CDNClient(
        str(cfg["token"]),
        base_url=str(cfg["url"]),
        limits=limits,
        budget_store=store,
        purge_queue=queue,
    )
    paths = paths_of(int(cfg["k"]), int(cfg["n"]), str(cfg["order"]))
    try:
        print(json.dumps({"ready": True}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        try:
            report = await cdn.endpoints.purge(str(cfg["endpoint"]), paths)
        except PurgeError as exc:
            report = exc.report
        print(
            json.dumps(
                {
                    "purged": len(report.purged),
                    "failed": len(report.failed),
                    "requests": report.requests,
                }
            ),
            flush=True,
        )
    finally:
        await cdn.close()
        if queue is not None:
            await queue.aclose()
        await store.aclose()


# -- one run -----------------------------------------------------------------------------------


async def run(binary: str, mode: str, order: str, n: int, scale: float) -> dict[str, Any]:
    redis = RedisServer(binary)
    redis.start()
    try:
        async with FakeCDNServer(time_scale=scale) as fake:
            cdn_id = fake.add_endpoint("bench.nyc3.digitaloceanspaces.com")["id"]
            procs = []
            for k in range(PROCESSES):
                cfg = {
                    "mode": mode,
                    "order": order,
                    "k": k,
                    "n": n,
                    "scale": scale,
                    "redis": redis.url,
                    "token": fake.token,
                    "url": fake.url,
                    "endpoint": cdn_id,
                }
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "benchmarks.bench_purge_queue",
                        "--child",
                        json.dumps(cfg),
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                    )
                )
            for proc in procs:
                assert proc.stdout is not None
                assert json.loads(await proc.stdout.readline())["ready"]
            started = time.monotonic()
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")

            async def done(proc: asyncio.subprocess.Process) -> dict[str, Any]:
                assert proc.stdout is not None
                line = await proc.stdout.readline()
                finished = time.monotonic()
                await proc.wait()
                return {**json.loads(line), "at": finished}

            results = await asyncio.gather(*(done(p) for p in procs))
            wall = max(r["at"] for r in results) - started
            purges = [
                e
                for e in fake.journal
                if e.op == "purge" and e.status == 204 and isinstance(e.body, dict)
            ]
            files = sum(len(e.body["files"]) for e in purges)
            counters = fake.counters
    finally:
        redis.close()
    union = len({p for k in range(PROCESSES) for p in paths_of(k, n, order)})
    batches = math.ceil(files / FILES_LIMIT)
    bound = (batches - 1) * FILES_PERIOD * scale
    return {
        "run": f"{mode}, {'shared first' if order == 'shared' else 'shuffled'}",
        "union": union,
        "target": math.ceil(union / FILES_LIMIT),
        "requests": len(purges),
        "files": files,
        "429": counters.rate_limited.total(),
        "409": counters.conflicts,
        "failed": sum(r["failed"] for r in results),
        "wall": wall,
        "bound": bound,
        "x_bound": wall / bound if bound else float("nan"),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=10_000, help="paths per process's list")
    parser.add_argument("--scale", type=float, default=0.01, help="budget periods x this")
    parser.add_argument(
        "--runs",
        default="queue:shared,queue:shuffled,engine:shared",
        help="comma-separated mode:order (mode: queue|engine; order: shared|shuffled)",
    )
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    if args.smoke:
        args.paths, args.runs = 100, "queue:shared,engine:shared"
    binary = find_redis_server()
    if binary is None:
        raise SystemExit("needs redis-server (apt-get install redis-server)")
    print(f"Machine: {machine(f'{PROCESSES} processes, time scale {args.scale:g}')}")
    rows = []
    for spec in args.runs.split(","):
        mode, order = spec.split(":")
        r = await run(binary, mode, order, args.paths, args.scale)
        print(json.dumps(r), flush=True)
        rows.append(
            [
                r["run"],
                r["union"],
                f"{r['requests']} (target {r['target']})",
                r["files"],
                r["429"],
                r["409"],
                r["failed"],
                f"{r['wall']:.2f}",
                f"{r['bound']:.2f}",
                f"{r['x_bound']:.3f}",
            ]
        )
    table(
        f"{PROCESSES} processes x {args.paths:,} paths, one endpoint, time scale {args.scale:g}",
        [
            "run",
            "union",
            "purge requests",
            "paths sent",
            "429s",
            "409s",
            "failed",
            "wall s",
            "bound s",
            "x bound",
        ],
        rows,
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        asyncio.run(child(json.loads(sys.argv[2])))
    else:
        asyncio.run(main())
