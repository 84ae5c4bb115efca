"""``SQLiteBudgetStore`` across real OS processes: workers against the fake API over loopback,
and a process SIGKILLed while it holds units.

Real time at small time scales; assertions are on counts (the fake server's 429 counter, its
journal) and on lower bounds of waits, with generous upper bounds. Throughput figures are
measured in ``benchmarks/bench_host_store.py``.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sqlite3
import statistics
import sys
import time
from pathlib import Path

import pytest

from benchmarks._redis_server import fork_workers
from cdn_async import SQLiteBudgetStore
from cdn_async._limits import Claim
from cdn_async.testing import FakeCDNServer

ROOT = Path(__file__).resolve().parent.parent


async def run_workers(
    fake: FakeCDNServer, path: Path, processes: int, tasks: int, requests: int, scale: float
) -> list[dict[str, object]]:
    """Run ``processes`` workers (``benchmarks/_redis_server.py``), budgets in the file at
    ``path``."""
    ids = [fake.add_endpoint(f"space-{i}.nyc3.digitaloceanspaces.com")["id"] for i in range(4)]
    cfg = {
        "store": "sqlite",
        "path": str(path),
        "url": fake.url,
        "token": fake.token,
        "ids": ids,
        "time_scale": scale,
        "tasks": tasks,
        "requests": requests,
        "max_retries": 0,  # a 429 fails the call: it cannot hide behind a retry
    }
    return await fork_workers(cfg, processes)


@pytest.mark.parametrize("processes", [2, 4, 8])
async def test_processes_on_one_file_draw_no_429_and_keep_the_pace(
    processes: int, tmp_path: Path
) -> None:
    """2, 4 or 8 OS processes, 5 tasks each, on one token and one file: 0 x 429, every call
    done, and admitted at the budget's pace (cdn, 5 per period): the k-th call goes out no
    sooner than a period after the (k-5)-th (n calls need ceil(n / 5) - 1 periods after the
    first burst), and typically a round trip and a poll after that, not a period later. The
    typical gap is the median, so a stall of a loaded machine does not count, while a store
    that lost a period per window would (every gap a period long)."""
    scale = 0.02  # cdn: 5 per 0.2 s
    period = 10.0 * scale
    calls = 20 if processes < 8 else 40
    async with FakeCDNServer(time_scale=scale) as fake:
        results = await run_workers(
            fake, tmp_path / "b.sqlite3", processes, 5, calls // (5 * processes) or 1, scale
        )
        assert fake.counters.rate_limited == {}
        ok = sorted(e.arrival for e in fake.journal if e.status == 200)
    assert [r["failed"] for r in results] == [0] * processes, results
    assert len(ok) == calls
    assert ok[-1] - ok[0] >= (math.ceil(calls / 5) - 1) * period
    late = [ok[k] - (ok[k - 5] + period) for k in range(5, calls)]
    assert statistics.median(late) < period / 2, late


async def test_a_sigkilled_process_frees_its_units_after_the_bound_and_not_before(
    tmp_path: Path,
) -> None:
    """A process holds both units of a budget in flight and is SIGKILLed: the units stay
    counted until its last heartbeat deadline plus a period, then free."""
    path = tmp_path / "b.sqlite3"
    period, timeout = 0.3, 0.5
    holder = (
        "import asyncio, sys\n"
        "from cdn_async import SQLiteBudgetStore\n"
        "from cdn_async._limits import Claim\n"
        "async def main():\n"
        f"    s = SQLiteBudgetStore({str(path)!r}, inflight_timeout={timeout},"
        " heartbeat_interval=0.05)\n"
        f"    await s.acquire([Claim('cdn', 2, {period}, 2, 'cdn')])\n"
        "    print('held', flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", holder, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"held\n"
    await asyncio.sleep(0.3)  # a few heartbeats
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    with sqlite3.connect(path) as db:
        (deadline,) = db.execute("SELECT MAX(until) FROM units WHERE released = 0").fetchone()
    db.close()
    assert deadline > time.monotonic()  # the heartbeat kept it alive until it died
    store = SQLiteBudgetStore(path)
    try:
        lease = await asyncio.wait_for(store.acquire([Claim("cdn", 2, period, 1, "cdn")]), 5)
        admitted = time.monotonic()
        store.release(lease)
    finally:
        await store.aclose()
    assert deadline + period <= admitted <= deadline + period + 0.5
