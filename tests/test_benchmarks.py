"""Every benchmark still runs: ``python -m benchmarks.<name> --smoke`` exits 0 and prints its tables.

``--smoke`` runs a script at tiny sizes in a few seconds; its figures mean nothing, so nothing
here checks a timing, only what the run must show whatever the machine: the tables' titles and
columns, and counts fixed by the input (every request answered, one round trip per acquire,
ceil(unique / 50) purge requests). The Redis benchmarks need redis-server: they skip without it,
except on CI (``CI=true``), where that fails. The pydo and pyrate-limiter rows need the
``bench`` extra; without it the scripts leave those rows out.

The smoke runs spend most of their time waiting (real-time windows, child processes, a
redis-server starting), and their CPU goes mostly to starting interpreters: they run in four
groups (``GROUPS``), one interpreter each, that start together when the first test of this
module asks for one, and each test checks its own script's output.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest

from benchmarks._redis_server import find_redis_server

ROOT = Path(__file__).resolve().parent.parent

#: script -> (whether it needs redis-server, text its output must hold, patterns it must match)
EXPECTED: dict[str, tuple[bool, list[str], list[str]]] = {
    "bench_budgets": (
        False,
        [
            "## uncontended acquire+release (best of 1 x 2000 iterations)",
            "| cdn-async MemoryBudgetStore, 4-budget stack |",
            "## drain: 200 waiters, limit 50 / 0.02 s, real time",
            "CPU per grant, cdn-async / aiolimiter:",
            "## fairness: 60 requests at 1.5x the budget rate",
        ],
        [
            r"\| cdn-async \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \| yes \|",  # FIFO order kept
            r"\| one period later \| 0 \|",  # every idle key dropped
        ],
    ),
    "bench_e2e": (
        False,
        ["| scenario | client | 200s | 429s | 429 rate |"],
        [rf"\| {s}: [^|]+ \| cdn-async \| 11 \|" for s in "ABCD"],
    ),
    "bench_purge": (
        False,
        [
            "## purge of 500 paths (351 unique uncovered)",
            "| client | requests | 204s | 429s | 409s | paths failed |",
        ],
        [r"\| \*\*cdn-async purge\(\)\*\* \| \d+ \| 8 \| \d+ \| 0 \| 0 \|"],  # ceil(351 / 50)
    ),
    "bench_plan": (
        False,
        [
            "## purge of 2,500 paths (1,050 unique uncovered, 50 wildcards)",
            "| plan() of 2,500 paths, 50 wildcards (best of 1) |",
        ],
        [r"\| purge requests \(ceil\(1,050 / 50\) = 21\) \| \d+ \| 21 \|"],
    ),
    "bench_cotenant": (
        False,
        [
            "## Beside a steady co-tenant",
            "| run | our requests | our 429 share | co-tenant 429s | of what it leaves |",
            "## Two unshared clients on one token",
        ],
        [r"\| 1 \| \d+ \| [\d.]+% \| \d+ \| \d+% \|"],  # two unshared: run 1
    ),
    "bench_overhead": (
        False,
        [
            "## Sequential get(): median per request, best of 1 rounds of 20",
            "## 10 concurrent tasks doing get()",
            "## list() of 400 endpoints (2 pages of 200): best of 1",
            "| cattrs structure -> CDNEndpoint |",
        ],
        [r"\| cdn_async \| \d+ \| [\d.]+ x \|", r"Server answers by status: \{200: \d+\}"],
    ),
    "bench_redis": (
        True,
        ["round trips per acquire: 1.000", "acquire latency  redis:"],
        [r"saturation 2 procs x 5 tasks, +redis budgets: ok 10, failed 0, 429s \d+"],
    ),
    "bench_host_store": (
        False,  # without redis-server it leaves the Redis rows out
        [
            "| store | p50 us | p99 us |",
            "| processes | budgets | calls | 429s | share of the bound | CPU ms / call |",
        ],
        [
            r"\| sqlite \| [\d.]+ \| [\d.]+ \|",
            r"\| 2 \| sqlite \| 8 ok, 0 failed \| 0 \|",  # a shared file: never a 429
        ],
    ),
    "bench_redis_failures": (
        True,
        [
            "## 1. Processes sharing one Redis",
            "| 2 | 5 | 10 ok, 0 failed |",
            "## 2a. A lone process, fallback='memory'",
            "## 2b. A lone process, 10 tasks saturating cdn",
            "## 3. Recovery after a restart",
        ],
        [r"newcomer first admitted \*\*[\d.]+ s\*\*", r"20 ok, 0 failed, 429s: \*\*\d+\*\*"],
    ),
    "bench_purge_queue": (
        True,
        ["| run | union | purge requests | paths sent | 429s | 409s |"],
        [
            # 5 when every process queued before the first batch left (a loaded machine may
            # send one first: a sent path is never joined)
            r"\| queue, shared first \| 250 \| \d \(target 5\) \| \d+ \| 0 \| 0 \|",
            r"\| engine, shared first \| 250 \| 8 \(target 5\) \| 400 \| 0 \| 0 \|",
        ],
    ),
    "bench_issue23": (
        True,
        ["## Issue 23", "| measure | result |", "urgent purge through RedisPurgeQueue"],
        [r"\(of which exist: 0\)"],  # a create that may exist is never reported failed
    ),
    "bench_wildcards": (
        False,
        [
            "## speed: plan_purge of 1,000 changed in a 5,000-path manifest (best of 1)",
            "## loop blocking: planning 1,000 changed in 5,000 inside the event loop",
            "## curve: 1,000 of 5,000 files changed, at the documented budgets",
            "| `*` |  | 1 | 1 | 0 s | 4,000 | 100% |",
        ],
        [
            r"\| 60 s \| 200 \| 200 \| 4 \| 60 s \| [\d,]+ \|",  # the 60 s plan fills 4 windows
            r"\| exact \(1,000 paths\) \| +\| 1,000 \| 20 \| 6\.3 min \| 0 \|",
            r"\| \d \| [\d. /]+ \| \*\*[\d.]+\*\* \| [\d.]+ \| 1,000 of 1,000 \| 0 \|",
        ],
    ),
    "bench_unshared_jobs": (
        False,
        [
            "## unshared purge jobs: cdn-async purge processes, nothing shared, scale 0.01",
            "| jobs | exit codes | purge requests | 429s | paths purged |",
        ],
        # Every job exits 0 and every path reaches the server, whatever the timing.
        [r"\| 2 x 60 \| 0 0 \| \d+ \| [^|]+ \| 120 of 120 \|", r"\| 4 x 60 \| 0 0 0 0 \|"],
    ),
    "charts": (
        False,
        ["budget-window.svg", "purge-window.svg"],
        [r"cdn-async: 11 counted \(11 units\)", r"cdn-async purge\(\): 8 counted \(351 units\)"],
    ),
}


#: The smoke runs, in groups that start together, each group one interpreter that runs its
#: scripts one after another (``tests/_smoke.py``): Python, aiohttp and the SDK are imported
#: once a group, not once a script. The runs mostly wait (real-time windows, their own worker
#: processes, a redis-server starting); four groups of about 10 s each on a 2-core machine
#: overlap well, yet do not starve a script's real-time windows of CPU.
GROUPS: list[list[str]] = [
    ["bench_redis_failures", "bench_cotenant", "bench_budgets", "bench_plan"],
    ["bench_purge_queue", "bench_purge", "bench_wildcards"],
    ["charts", "bench_unshared_jobs", "bench_e2e", "bench_overhead"],
    ["bench_host_store", "bench_redis", "bench_issue23"],
]


def run_group(names: list[str], out_dir: Path, charts_dir: Path) -> None:
    """Run the smoke runs of ``names`` in one interpreter; their outputs land in ``out_dir``."""
    runs = {n: ["--smoke", *(("--out", str(charts_dir)) if n == "charts" else ())] for n in names}
    proc = subprocess.run(
        [sys.executable, "-m", "tests._smoke", str(out_dir), json.dumps(runs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"


def check(name: str, out: str) -> None:
    _, texts, patterns = EXPECTED[name]
    for text in texts:
        assert text in out, f"{text!r} not in the output of {name}:\n{out}"
    for pattern in patterns:
        assert re.search(pattern, out), f"{pattern!r} does not match {name}'s output:\n{out}"


def redis_missing() -> bool:
    """True when the Redis benchmarks cannot run here (failing the test on CI)."""
    if find_redis_server() is not None:
        return False
    if os.environ.get("CI") == "true":
        pytest.fail("redis-server is not installed (CI=true: .ci/run installs it)")
    return True


def svg_hashes() -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (ROOT / "benchmarks").glob("*.svg")
    }


class SmokeRuns(NamedTuple):
    groups: dict[str, Future[None]]  # script -> the run of its group
    out_dir: Path  # where each script's output lands
    charts_dir: Path  # where the charts smoke run writes
    svgs_before: dict[str, str]  # the committed SVGs' hashes before any run started

    def output(self, name: str) -> str:
        """What ``name``'s smoke run printed, once it exited 0."""
        self.groups[name].result()
        ended = json.loads((self.out_dir / f"{name}.json").read_text())
        printed = (self.out_dir / f"{name}.out").read_text()
        assert ended["code"] == 0, f"exit {ended['code']}\n{printed}\n{ended['stderr']}"
        return printed


@pytest.fixture(scope="module")
def smoke_runs() -> Iterator[SmokeRuns]:
    """Every script's smoke run, the groups started together; the charts write into a
    temporary directory, never over the committed SVGs."""
    svgs_before = svg_hashes()
    redis = find_redis_server() is not None
    with (
        tempfile.TemporaryDirectory() as out_dir,
        tempfile.TemporaryDirectory() as charts_dir,
        ThreadPoolExecutor(len(GROUPS)) as pool,
    ):
        groups: dict[str, Future[None]] = {}
        for group in GROUPS:
            names = [n for n in group if redis or not EXPECTED[n][0]]
            if names:
                future = pool.submit(run_group, names, Path(out_dir), Path(charts_dir))
                groups.update(dict.fromkeys(names, future))
        yield SmokeRuns(groups, Path(out_dir), Path(charts_dir), svgs_before)


def test_every_script_is_covered_once() -> None:
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_")}
    assert scripts == set(EXPECTED)
    assert sorted(n for group in GROUPS for n in group) == sorted(EXPECTED)


@pytest.mark.parametrize("name", [n for n in EXPECTED if n != "charts"])
def test_smoke_run_prints_its_tables(name: str, smoke_runs: SmokeRuns) -> None:
    if EXPECTED[name][0] and redis_missing():
        pytest.skip("redis-server is not installed")
    check(name, smoke_runs.output(name))


def test_charts_smoke_run_writes_elsewhere(smoke_runs: SmokeRuns) -> None:
    check("charts", smoke_runs.output("charts"))
    for name in ("budget-window.svg", "purge-window.svg"):
        root = ET.parse(smoke_runs.charts_dir / name).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert svg_hashes() == smoke_runs.svgs_before
