"""A 100,000-path purge with 2,000 wildcards: planning time, event-loop blocking, requests, memory.

Run from the repository root: ``python -m benchmarks.bench_plan`` (about 15 s; ``--old`` adds
the linear planner this replaced, about 15 s more; ``--smoke`` a 2,500-path input in a few
seconds). Prints the machine and one table.

The input: 80,000 unique files in 4,000 directories (``dNNNN/sK/file-I.css``, two levels deep),
the 2,000 wildcards ``d0000/*`` .. ``d1999/*`` (covering the files of half the directories),
and 18,000 redundant entries: exact duplicates and leading-slash variants of those files,
shuffled with a fixed seed. 100,000 paths; 42,000 unique uncovered ones (40,000 files and the
2,000 wildcards) must be sent, in exactly ceil(42,000 / 50) = 840 requests.

* plan: ``sent_for()`` of the normalised paths, best of 5 (target < 0.5 s). ``--old``: the linear
  planner it replaced (every path checked against every wildcard), once.
* loop blocking: ``await cdn.endpoints.purge(id, paths)`` against a fresh
  ``FakeCDNServer(time_scale=S)`` (both sides' budgets scaled by S) in the same event loop,
  with two probes: a ticker task sleeping 1 ms records its lateness (the longest time any
  other task of the loop, such as a web backend's handlers, waited for its turn), and every
  loop callback is timed (the longest single step; one step may be the client's, the fake
  server's or aiohttp's). Target: < 50 ms.
* requests: the fake server's journal: every purge request, the paths sent (each exactly once,
  exactly the unique uncovered set) and the report's ``requests``.
* memory: a second, separate run of the same call under ``tracemalloc`` (which slows Python,
  so it is kept out of the timing run); the peak of traced memory during the call, the input
  list excluded (it was 27 MiB before the change).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from typing import Any

from benchmarks._report import SMOKE_HELP, machine, table
from cdn_async import CDNClient, RateLimits

# No public names: the planning step alone (``plan_purge`` adds validation and pacing).
from cdn_async import _validation as check
from cdn_async._purge_plan import sent_for
from cdn_async.testing import FakeCDNServer

ORIGIN = "bench.nyc3.digitaloceanspaces.com"
BATCH = 50
WILDCARDS = 2000
DIRS = 4000
FILES_PER_DIR = 20


def build_paths(seed: int = 13, shrink: int = 1) -> tuple[list[str], set[str]]:
    """The 100,000-path input (``shrink`` times smaller) and the paths that must be sent."""
    rng = random.Random(seed)
    dirs, wildcard_dirs = DIRS // shrink, WILDCARDS // shrink
    files = [
        f"d{d:04d}/s{f % 4}/file-{f:02d}.css" for d in range(dirs) for f in range(FILES_PER_DIR)
    ]
    wildcards = [f"d{d:04d}/*" for d in range(wildcard_dirs)]
    redundant = [
        ("/" + p if i % 2 else p) for i, p in enumerate(rng.sample(files, 18_000 // shrink))
    ]
    paths = [*files, *wildcards, *redundant]
    rng.shuffle(paths)
    assert len(paths) == 100_000 // shrink
    must = {*wildcards, *(p for p in files if int(p[1:5]) >= wildcard_dirs)}
    return paths, must


def old_plan(paths: Sequence[str]) -> dict[str, str]:
    """The linear planner this benchmark's change replaced (for ``--old``)."""
    unique = list(dict.fromkeys(paths))
    if "*" in unique:
        return {p: "*" for p in unique}
    prefixes = sorted({p[:-1] for p in unique if p.endswith("/*")}, key=len)
    mapping: dict[str, str] = {}
    for p in unique:
        cover = next(
            (q + "*" for q in prefixes if p.startswith(q) and p != q + "*"),
            None,
        )
        mapping[p] = cover or p
    return mapping


def time_plan(paths: list[str], rounds: int) -> tuple[float, int]:
    normalised = check.files(paths)
    best = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        mapping = sent_for(normalised)
        best = min(best, time.perf_counter() - t0)
    return best, len(set(mapping.values()))


class StepTimer:
    """Times every event-loop callback (``Handle._run``) and keeps the longest."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.what = ""
        self._orig = asyncio.events.Handle._run

    def __enter__(self) -> StepTimer:
        orig, timer, clock = self._orig, self, time.perf_counter

        def _run(handle: asyncio.events.Handle) -> None:
            t0 = clock()
            orig(handle)
            took = clock() - t0
            if took > timer.longest:
                timer.longest, timer.what = took, repr(handle)[:120]

        asyncio.events.Handle._run = _run  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.events.Handle._run = self._orig  # type: ignore[method-assign]


async def ticker(lags: list[float], stop: asyncio.Event, every: float = 0.001) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + every
        await asyncio.sleep(every)
        lags.append(loop.time() - due)


async def purge_run(scale: float, paths: list[str], *, probe: bool) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    out: dict[str, Any] = {}
    async with FakeCDNServer(time_scale=scale) as server:
        ep_id = server.add_endpoint(ORIGIN)["id"]
        limits = RateLimits.documented().scaled(scale)
        async with CDNClient(server.token, base_url=server.url, limits=limits) as cdn:
            lags: list[float] = []
            stop = asyncio.Event()
            ticking = asyncio.create_task(ticker(lags, stop)) if probe else None
            steps = StepTimer()
            with steps if probe else _Null():
                # Entered before this sleep, so the step that starts the call is timed too.
                await asyncio.sleep(0.01)
                if not probe:
                    tracemalloc.reset_peak()
                    base = tracemalloc.get_traced_memory()[0]
                t0 = loop.time()
                report = await cdn.endpoints.purge(ep_id, paths)
                out["wall"] = loop.time() - t0
            if not probe:
                out["peak_mib"] = (tracemalloc.get_traced_memory()[1] - base) / 2**20
            stop.set()
            if ticking is not None:
                await ticking
        purges = [e for e in server.journal if e.op == "purge"]
        out.update(
            requests=len(purges),
            ok=sum(e.status == 204 for e in purges),
            r429=sum(server.counters.rate_limited.values()),
            sent=Counter(f for e in purges if e.status == 204 for f in e.body["files"]),
            report_requests=report.requests,
            purged=len(report.purged),
            failed=len(report.failed),
            first_request=(purges[0].arrival - t0) if purges else math.nan,
        )
        if probe:
            lags.sort()
            out.update(
                lag_max=lags[-1],
                lag_p99=lags[int(len(lags) * 0.99)],
                step_max=steps.longest,
                step_what=steps.what,
            )
    return out


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale", type=float, default=0.0001, help="time_scale of both sides (default 0.0001)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="sent_for() timing rounds")
    parser.add_argument("--old", action="store_true", help="also time the old linear planner")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    shrink = 40 if args.smoke else 1
    if args.smoke:
        args.rounds = 1
    print(f"# bench_plan ({machine()})")
    paths, must = build_paths(shrink=shrink)
    expected = math.ceil(len(must) / BATCH)
    n_paths, n_wild = f"{len(paths):,}", f"{WILDCARDS // shrink:,}"

    plan_s, planned = time_plan(paths, args.rounds)
    assert planned == len(must), (planned, len(must))
    rows: list[list[Any]] = [
        [
            f"plan() of {n_paths} paths, {n_wild} wildcards (best of {args.rounds})",
            f"{plan_s:.3f} s",
            "< 0.5 s",
            "met" if plan_s < 0.5 else "MISSED",
        ],
    ]
    if args.old:
        normalised = check.files(paths)
        t0 = time.perf_counter()
        old = old_plan(normalised)
        old_s = time.perf_counter() - t0
        assert old == sent_for(normalised), "the planners disagree"
        rows.append(["old linear plan(), same input (once)", f"{old_s:.2f} s", "", ""])

    timed = asyncio.run(purge_run(args.scale, paths, probe=True))
    sent: Counter[str] = timed["sent"]
    assert set(sent) == must and max(sent.values()) == 1, "sent paths differ or repeat"
    assert timed["failed"] == 0 and timed["purged"] == len(set(check.files(paths)))
    rows += [
        [
            "longest loop block in the purge call (1 ms ticker's max lateness)",
            f"{timed['lag_max'] * 1e3:.1f} ms",
            "< 50 ms",
            "met" if timed["lag_max"] < 0.05 else "MISSED",
        ],
        ["ticker lateness p99", f"{timed['lag_p99'] * 1e3:.2f} ms", "", ""],
        [
            "longest single loop callback",
            f"{timed['step_max'] * 1e3:.1f} ms",
            "< 50 ms",
            "met" if timed["step_max"] < 0.05 else "MISSED",
        ],
        [
            f"purge requests (ceil({len(must):,} / 50) = {expected})",
            str(timed["requests"]),
            str(expected),
            "met" if timed["requests"] == expected == timed["report_requests"] else "MISSED",
        ],
        ["429s", str(timed["r429"]), "0", "met" if timed["r429"] == 0 else "MISSED"],
        ["call to first request", f"{timed['first_request'] * 1e3:.0f} ms", "", ""],
        ["purge call wall time", f"{timed['wall']:.2f} s", "", ""],
    ]
    print(f"  longest callback: {timed['step_what']}", file=sys.stderr)

    tracemalloc.start()
    traced = asyncio.run(purge_run(args.scale, paths, probe=False))
    tracemalloc.stop()
    assert traced["requests"] == expected
    rows.append(
        [
            "peak traced memory of the call (tracemalloc)",
            f"{traced['peak_mib']:.1f} MiB",
            "about 27 MiB",
            "",
        ]
    )
    table(
        f"purge of {n_paths} paths ({len(must):,} unique uncovered, {n_wild} wildcards), "
        f"time_scale {args.scale:g}, fake server on loopback in the same loop",
        ["measure", "value", "target", ""],
        rows,
    )


if __name__ == "__main__":
    main()
