"""Purge jobs on several hosts with nothing shared: parallel ``cdn-async purge`` processes.

Run from the repository root: ``python -m benchmarks.bench_unshared_jobs`` (about 3 minutes at
the default scale 0.25; ``--smoke`` tiny sizes in a few seconds).

Each job is a real ``cdn-async purge`` process with ``--no-share-budgets`` (its budgets in
its own process, as on a host of its own: no budget file, no Redis), all on one token, against
the fake server (real HTTP on loopback, periods x ``scale``). Every job purges paths of its
own. Reported per run: exit codes, purge requests and the share that drew a 429, paths the
server purged, and the time from the first start to the last exit against the file budget's
bound for all the jobs' paths (one full window every period). Targets (issue 22): every job
exits 0, every path reaches the server, at most 25 % of purge requests draw a 429, the whole
within 1.5 x the bound. docs/design.md, "Budgets", 9.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from typing import Any

from benchmarks._report import SMOKE_HELP, machine, table
from cdn_async.testing import FakeCDNServer

ORIGIN = "static.nyc3.digitaloceanspaces.com"
FILES, FILE_PERIOD = 50, 20.0


async def run_jobs(scale: float, jobs: int, paths: int) -> dict[str, Any]:
    async with FakeCDNServer(time_scale=scale) as server:
        ep = server.add_endpoint(ORIGIN)["id"]
        env = {
            **os.environ,
            "DIGITALOCEAN_TOKEN": server.token,
            "CDN_ASYNC_BASE_URL": server.url,
            "CDN_ASYNC_TIME_SCALE": str(scale),
            "CDN_ASYNC_SHARE_BUDGETS": "0",  # a host of its own: nothing shared
        }
        started = time.monotonic()

        async def job(n: int) -> int:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "from cdn_async._cli import main; main()",
                "purge",
                ep,
                *(f"job{n}/f{i}.css" for i in range(paths)),
                "--no-progress",
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            return await proc.wait()

        codes = await asyncio.gather(*(job(n) for n in range(jobs)))
        took = time.monotonic() - started
        purges = [e for e in server.journal if e.op == "purge" and e.status is not None]
        refused = sum(e.status == 429 for e in purges)
        purged = sum(len(e.body["files"]) for e in purges if e.status == 204)
    bound = max(1, math.ceil(jobs * paths / FILES) - 1) * FILE_PERIOD * scale
    return {
        "jobs": jobs,
        "codes": codes,
        "requests": len(purges),
        "refused": refused,
        "purged": purged,
        "took": took,
        "bound": bound,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--paths", type=int, default=200)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    scale, paths = (0.01, 60) if args.smoke else (args.scale, args.paths)
    rows = []
    for jobs in (2, 4):
        for _ in range(1 if args.smoke else args.runs):
            r = await run_jobs(scale, jobs, paths)
            rows.append(
                [
                    f"{jobs} x {paths}",
                    " ".join(map(str, r["codes"])),
                    r["requests"],
                    f"{r['refused']} ({r['refused'] / max(1, r['requests']):.0%})",
                    f"{r['purged']:,} of {jobs * paths:,}",
                    f"{r['took']:.1f}",
                    f"{r['bound']:.1f}",
                    f"{r['took'] / r['bound']:.2f}",
                ]
            )
    table(
        f"unshared purge jobs: cdn-async purge processes, nothing shared, scale {scale}",
        [
            "jobs",
            "exit codes",
            "purge requests",
            "429s",
            "paths purged",
            "wall s",
            "bound s",
            "x bound",
        ],
        rows,
    )
    print(machine(f"python -m benchmarks.bench_unshared_jobs --scale {scale} --paths {paths}"))


if __name__ == "__main__":
    asyncio.run(main())
