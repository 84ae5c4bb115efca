"""4 processes purge overlapping 10,000-path lists of one endpoint: one shared purge queue
(``RedisPurgeQueue``) against today's per-process engines, budgets shared in both.

Run from the repository root (needs redis-server; starts its own, fresh for every run)::

    python -m benchmarks.bench_purge_queue            # about 6 minutes at --scale 0.01
    python -m benchmarks.bench_purge_queue --paths 1000   # a quick look
    python -m benchmarks.bench_purge_queue --smoke        # seconds: only proves it runs
    python -m benchmarks.bench_purge_queue --paths 2000 --trace   # + where each cycle goes

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
* **queue, staggered** (``--runs queue:staggered``): a purge has just filled the files budget
  (held by this script for half a period after the start), and the processes start
  0.15 files periods apart with shuffled lists, so they submit while a drainer's batch waits
  for its budgets: their paths join it (a batch is fixed only when admitted); none should be
  sent twice.

Figures (from the server's journal and counters): purge requests answered 204, paths sent,
429s, 409s, wall time; target ``ceil(union / 50)`` requests; the bound is the files budget's:
B batches take at least (B - 1) periods of 20 s x S ("x bound" = wall / bound).

``--trace``: every child records, on the system-wide monotonic clock the fake server stamps
with, when each purge request is sent and answered, when its budget release is called and
written to Redis, each acquire script call (sent, answered: admitted, or how long to wait)
and when the budgets admitted the request. Each cycle (server stamp of batch k to that of
batch k + 1: one files period plus the gap) is split into: stamp -> answer read, -> the
moment Redis counts the units released (the expiry the next waiter was told, less a period:
an estimate, the script running about halfway through that call's round trip), the period,
-> the next acquire attempt sent (how late the waiter woke after the expiry), that attempt's
round trip, admitted -> request handed to aiohttp, -> server stamp.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
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
    if order in ("shuffled", "staggered"):
        random.Random(k).shuffle(paths)
    return paths


# -- one process -------------------------------------------------------------------------------


def _instrument(path: str) -> Callable[[], None]:
    """Record the events of one child's cycles (see ``--trace``) to ``path``, as JSON lines
    ``[monotonic time, event, details]``; returns the function that writes them."""
    from cdn_async import _session
    from cdn_async._redis import _link, _store

    events: list[tuple[float, str, Any]] = []
    now = time.monotonic

    exchange = _session.Session._exchange

    async def _exchange(self: Any, http: Any, method: str, *args: Any) -> Any:
        events.append((now(), "send", method))
        try:
            return await exchange(self, http, method, *args)
        finally:
            events.append((now(), "answer", method))

    acquire = _session.Session._acquire

    async def _acquire(self: Any, *args: Any) -> Any:
        lease = await acquire(self, *args)
        events.append((now(), "admitted", None))
        return lease

    release = _store.RedisBudgetStore.release

    def _release(self: Any, lease: Any) -> None:
        events.append((now(), "release", None))
        release(self, lease)

    remote = _link.RedisLink._release_remote

    async def _release_remote(self: Any, lease: Any, **kw: Any) -> None:
        events.append((now(), "rel_sent", kw.get("give_back")))
        await remote(self, lease, **kw)
        events.append((now(), "rel_done", kw.get("give_back")))

    attempt = _store.RedisBudgetStore._attempt

    async def _attempt(self: Any, lease: Any) -> Any:
        events.append((now(), "att_sent", None))
        reply = await attempt(self, lease)
        events.append((now(), "att_reply", [reply.admitted, reply.wait, reply.unknown]))
        return reply

    for owner, name, wrapper in (
        (_session.Session, "_exchange", _exchange),
        (_session.Session, "_acquire", _acquire),
        (_store.RedisBudgetStore, "release", _release),
        (_link.RedisLink, "_release_remote", _release_remote),
        (_store.RedisBudgetStore, "_attempt", _attempt),
    ):
        setattr(owner, name, wrapper)

    def dump() -> None:
        with open(path, "w") as f:
            for event in events:
                f.write(json.dumps(event) + "\n")

    return dump


async def child(cfg: dict[str, Any]) -> None:
    dump = _instrument(str(cfg["trace"])) if cfg.get("trace") else None
    limits = RateLimits.documented().scaled(float(cfg["scale"]))
    tid = token_id_for(str(cfg["token"]))
    # The benchmark's Redis is new: no process can have lost units in it.
    store = RedisBudgetStore(
        str(cfg["redis"]), token_id=tid, recovery_grace=0.0, _restart_hold=False
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
        if cfg["order"] == "staggered":  # process k starts k x 0.15 files periods late
            await asyncio.sleep(int(cfg["k"]) * 0.15 * FILES_PERIOD * float(cfg["scale"]))
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
        if dump is not None:
            dump()


# -- one run -----------------------------------------------------------------------------------


#: The phases of a cycle, in order (``--trace``); their sum is the cycle minus the period.
PHASES = (
    ("stamp -> answer read", "server stamp of batch k -> its answer read by the client"),
    (
        "answer -> units stamped",
        "-> when Redis counts its units released (the expiry the next waiter was told, less a period)",
    ),
    ("expiry -> attempt sent", "-> the next acquire attempt sent (how late the waiter woke)"),
    ("admitting attempt", "that attempt's round trip (admitted)"),
    ("admitted -> sent", "-> the request handed to aiohttp"),
    ("sent -> stamp", "-> the server stamp of batch k + 1"),
)


def cycles(paths: list[Path], arrivals: list[float], period: float) -> dict[str, Any] | None:
    """Split every cycle into ``PHASES`` from the children's events (``--trace``); None when
    the requests cannot be matched one to one with the server's purges.

    When the units expire is read off the waiter's last refused attempt: the script said
    "``wait`` s from now", and ran about halfway through that call's round trip."""
    reqs = []  # (send, answer, child events, index of the send event)
    for path in paths:
        events = [tuple(e) for e in map(json.loads, path.read_text().splitlines())]
        for i, (t, name, method) in enumerate(events):
            if name == "send" and method == "DELETE":
                answer = next(e[0] for e in events[i:] if e[1] == "answer")
                reqs.append((t, answer, events, i))
    reqs.sort(key=lambda r: r[0])
    if len(reqs) != len(arrivals):
        return None
    rows: list[list[float]] = []
    short = 0
    for k in range(len(reqs) - 1):
        _, answer, _, _ = reqs[k]
        send, _, events, i = reqs[k + 1]
        before = [e for e in events[:i] if e[0] > answer]
        admitted = next((e[0] for e in reversed(before) if e[1] == "admitted"), None)
        calls = [
            (before[j][0], before[j + 1][0], before[j + 1][2])
            for j in range(len(before) - 1)
            if before[j][1] == "att_sent" and before[j + 1][1] == "att_reply"
        ]
        timed = [c for c in calls if not c[2][0] and not c[2][2]]  # refused, with a wait
        if admitted is None or not calls or not calls[-1][2][0] or not timed:
            continue
        asked, replied, (_, wait, _) = timed[-1]
        expiry = asked + (replied - asked) / 2 + wait
        short += sum(1 for c in timed if c[2][1] < 0.002)
        last_sent, last_reply, _ = calls[-1]
        rows.append(
            [
                answer - arrivals[k],
                expiry - period - answer,
                last_sent - expiry,
                last_reply - last_sent,
                send - admitted,
                arrivals[k + 1] - send,
                arrivals[k + 1] - arrivals[k] - period,
            ]
        )
    if not rows:
        return None
    columns = list(zip(*rows, strict=True))
    return {
        "cycles": len(rows),
        "early_retries": short,
        "mean_ms": [statistics.fmean(c) * 1000 for c in columns],
        "median_ms": [statistics.median(c) * 1000 for c in columns],
        "p90_ms": [sorted(c)[int(0.9 * (len(c) - 1))] * 1000 for c in columns],
    }


async def run(
    binary: str, mode: str, order: str, n: int, scale: float, trace: bool = False
) -> dict[str, Any]:
    redis = RedisServer(binary)
    redis.start()
    tmp = tempfile.TemporaryDirectory(prefix="bench_purge_queue_") if trace else None
    trace_paths: list[Path] = []
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
                if tmp is not None:
                    trace_paths.append(Path(tmp.name) / f"child-{k}.jsonl")
                    cfg["trace"] = str(trace_paths[-1])
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
            spent = None
            if order == "staggered":  # a purge just filled the files budget (held here)
                spender = RedisBudgetStore(
                    redis.url,
                    token_id=token_id_for(fake.token),
                    recovery_grace=0.0,
                    _restart_hold=False,
                )
                limits = RateLimits.documented().scaled(scale)
                files = [c for c in limits.claims(cdn_id, FILES_LIMIT) if c.budget == "purge_files"]
                spent = await spender.acquire(files)
            started = time.monotonic()
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
            if spent is not None:
                await asyncio.sleep(0.5 * FILES_PERIOD * scale)
                spender.release(spent)
                await spender.aclose()

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
            arrivals = sorted(e.arrival for e in fake.journal if e.op == "purge")
            split = cycles(trace_paths, arrivals, FILES_PERIOD * scale) if trace_paths else None
    finally:
        redis.close()
        if tmp is not None:
            tmp.cleanup()
    union = len({p for k in range(PROCESSES) for p in paths_of(k, n, order)})
    batches = math.ceil(files / FILES_LIMIT)
    bound = (batches - 1) * FILES_PERIOD * scale
    return {
        "run": f"{mode}, {'shared first' if order == 'shared' else order}",
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
        # Outside the bound's (B - 1) periods: go -> first stamp, last stamp -> last return.
        "head": arrivals[0] - started if arrivals else 0.0,
        "tail": started + wall - arrivals[-1] if arrivals else 0.0,
        "trace": split,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=10_000, help="paths per process's list")
    parser.add_argument("--scale", type=float, default=0.01, help="budget periods x this")
    parser.add_argument(
        "--runs",
        default="queue:shared,queue:shuffled,engine:shared",
        help="comma-separated mode:order (mode: queue|engine; order: shared|shuffled|staggered)",
    )
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument(
        "--trace", action="store_true", help="split each cycle into its phases (see above)"
    )
    args = parser.parse_args()
    if args.smoke:
        args.paths, args.runs = 100, "queue:shared,engine:shared"
    binary = find_redis_server()
    if binary is None:
        raise SystemExit("needs redis-server (apt-get install redis-server)")
    print(f"Machine: {machine(f'{PROCESSES} processes, time scale {args.scale:g}')}")
    rows = []
    results = []
    for spec in args.runs.split(","):
        mode, order = spec.split(":")
        r = await run(binary, mode, order, args.paths, args.scale, args.trace)
        print(json.dumps(r), flush=True)
        results.append(r)
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
    if args.trace:
        traced = [(r, r["trace"]) for r in results if r["trace"]]
        trows = [
            [
                f"{label}: {doc}",
                *(f"{t['mean_ms'][i]:.2f} / {t['p90_ms'][i]:.2f}" for _, t in traced),
            ]
            for i, (label, doc) in enumerate(PHASES)
        ]
        trows.append(
            [
                "cycle - period (the gap)",
                *(f"{t['mean_ms'][-1]:.2f} / {t['p90_ms'][-1]:.2f}" for _, t in traced),
            ]
        )
        trows.append(["cycles traced", *(str(t["cycles"]) for _, t in traced)])
        trows.append(
            [
                "outside the bound: go -> first stamp + last stamp -> last return, ms",
                *(f"{r['head'] * 1000:.0f} + {r['tail'] * 1000:.0f}" for r, _ in traced),
            ]
        )
        trows.append(
            [
                "acquire calls refused just short of the expiry (< 2 ms)",
                *(str(t["early_retries"]) for _, t in traced),
            ]
        )
        table(
            "Where each cycle goes, ms mean / p90 (--trace)",
            ["phase", *(r["run"] for r, _ in traced)],
            trows,
        )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        asyncio.run(child(json.loads(sys.argv[2])))
    else:
        asyncio.run(main())
