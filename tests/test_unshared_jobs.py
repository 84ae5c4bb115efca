"""Bulk purge jobs on one token, each with budgets of its own (CI jobs on several hosts, no
shared store), against a simulated strict server, in virtual time.

The server (``_strict_server``) counts the cdn budget, which its headers describe, and the
file budget (50 paths / 20 s), which no header describes, as exact sliding windows of stamps;
a refused request counts nowhere. Each job runs the real client: purge engine, request loop,
file share and memory store. Seeds vary the latencies and the jobs' start within a fifth of a
period; the figures asserted are README's ("Several processes") and docs/design.md's
("Budgets", 9).
"""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from cdn_async import CDNClient, RateLimits
from cdn_async.errors import PurgeError
from cdn_async.testing import FakeCDNServer

from ._strict_server import StrictServer, install
from ._support import max_in_window

ID = "6e7a3d8a-6f3e-4a57-9a1b-2b8f9f6f0b11"
FILES, FILE_PERIOD = 50, 20.0


def job_client(server: StrictServer, rng: random.Random, scale: float) -> CDNClient:
    cdn = CDNClient(
        "dop_v1_" + "e" * 56,
        base_url="https://api.example.test",
        limits=RateLimits.documented().scaled(scale),
        max_rate_limit_wait=math.inf,  # as the CLI's purge: a 429 costs time, never the job
        polite_purges=True,  # as the CLI's purge
    )
    cdn._session._wall_clock = server.wall
    cdn._session._rand = rng.random
    return cdn


async def run_jobs(
    seed: int, sizes: list[int], scale: float, spread: float
) -> tuple[StrictServer, list[int], float]:
    """One job per size, each starting within ``spread`` periods of the first; returns the
    server, each job's failed paths, and the time from the first start to the last end."""
    rng = random.Random(seed)
    low = rng.choice([0.001, 0.005, 0.02, 0.05])
    period = FILE_PERIOD * scale
    server = StrictServer(5, 10.0 * scale, rng, (low, 4 * low), files=(FILES, period))
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def job(n: int, size: int) -> int:
        await asyncio.sleep(rng.uniform(0, spread * period))
        async with job_client(server, rng, scale) as cdn:
            try:
                report = await cdn.endpoints.purge(ID, [f"job{n}/f{i}.css" for i in range(size)])
            except PurgeError as exc:
                return len(exc.report.failed)
        assert len(report.purged) == size
        return 0

    with pytest.MonkeyPatch.context() as mp:
        install(mp, server)
        failed = await asyncio.gather(*(job(n, size) for n, size in enumerate(sizes)))
    return server, failed, loop.time() - start


def union_bound(total: int, scale: float) -> float:
    """The earliest ``total`` paths can all be sent: one full window every period."""
    return max(1, math.ceil(total / FILES) - 1) * FILE_PERIOD * scale


@pytest.mark.looptime
@pytest.mark.parametrize("scale", [1.0, 0.25])
@pytest.mark.parametrize("count", [2, 4])
@pytest.mark.parametrize("seed", range(5))
async def test_unshared_purge_jobs_all_finish_with_few_429s_near_the_bound(
    seed: int, count: int, scale: float
) -> None:
    sizes = [200] * count
    server, failed, took = await run_jobs(seed, sizes, scale, spread=0.2)
    refused = server.purge_answers.count(429)
    assert failed == [0] * count  # a 429 costs time, never a path
    assert sum(n for _, n in server.file_stamps) == sum(sizes)  # each path reached the server
    assert max_in_window(server.file_stamps, FILE_PERIOD * scale) <= FILES
    assert refused <= 0.25 * len(server.purge_answers), (refused, len(server.purge_answers))
    assert took <= 1.5 * union_bound(sum(sizes), scale), took


@pytest.mark.looptime
@pytest.mark.parametrize("seed", range(4))
async def test_a_long_job_does_not_starve_a_short_one_beside_it(seed: int) -> None:
    # Started together, the short job shares the budget instead of waiting for the long one.
    rng = random.Random(seed)
    server = StrictServer(5, 10.0, rng, (0.005, 0.02), files=(FILES, FILE_PERIOD))
    loop = asyncio.get_running_loop()
    ends: dict[str, float] = {}

    async def job(name: str, size: int) -> None:
        await asyncio.sleep(rng.uniform(0, 0.2 * FILE_PERIOD))
        async with job_client(server, rng, 1.0) as cdn:
            await cdn.endpoints.purge(ID, [f"{name}/f{i}" for i in range(size)])
        ends[name] = loop.time()

    with pytest.MonkeyPatch.context() as mp:
        install(mp, server)
        await asyncio.gather(job("long", 1000), job("short", 100))
    # Alone at a quarter of the budget (its first share), 100 paths take 8 periods; the long
    # job alone takes 20 periods at the whole budget.
    assert ends["short"] < 0.6 * ends["long"], ends
    assert server.purge_answers.count(429) <= 0.25 * len(server.purge_answers)


@pytest.mark.looptime
@pytest.mark.parametrize("seed", range(3))
async def test_a_lone_bulk_job_loses_at_most_a_quarter_period_and_draws_no_429(seed: int) -> None:
    server, failed, took = await run_jobs(seed, [500], 1.0, spread=0.0)
    assert failed == [0] and server.purge_answers.count(429) == 0
    # Its first window is full a quarter period late, every later one a period after the
    # answers of the one before (a round trip of at most 0.4 s here).
    assert took <= union_bound(500, 1.0) + FILE_PERIOD / 4 + math.ceil(500 / FILES) * 0.4


@pytest.mark.looptime
async def test_small_purges_go_whole_until_a_refusal() -> None:
    # A purge that fits in one window is one request, at once: the file share only starts
    # small for bulk purges (docs/design.md, "Budgets", 9).
    server, failed, took = await run_jobs(0, [50], 1.0, spread=0.0)
    assert failed == [0] and len(server.purge_answers) == 1 and took < 1.0


async def test_two_unshared_polite_jobs_over_loopback_purge_everything_with_few_429s() -> None:
    # The same against the fake API over real HTTP, time-scaled: two clients with budgets of
    # their own, as on two hosts.
    scale = 0.01
    async with FakeCDNServer(time_scale=scale) as fake:
        ep = fake.add_endpoint("static.nyc3.digitaloceanspaces.com")["id"]

        async def job(n: int) -> int:
            async with fake.client(max_rate_limit_wait=math.inf, polite_purges=True) as cdn:
                report = await cdn.endpoints.purge(ep, [f"job{n}/f{i}.css" for i in range(200)])
            return len(report.purged)

        assert await asyncio.gather(job(0), job(1)) == [200, 200]
    purges = [e for e in fake.journal if e.op == "purge" and e.status is not None]
    refused = [e for e in purges if e.status == 429]
    assert sum(len(e.body["files"]) for e in purges if e.status == 204) == 400
    assert len(refused) <= 0.25 * len(purges), (len(refused), len(purges))
