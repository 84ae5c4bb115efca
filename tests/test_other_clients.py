"""Other clients on the token, against a simulated strict server, in virtual time.

DigitalOcean tokens are shared with doctl, Terraform, dashboards and other processes that do
not share our budget store. The server below (``_strict_server``) counts every client's
requests in one exact sliding window and answers with the headers the real API sends; each
client runs the real request loop and the real memory store. Seeds vary the latencies; the
figures asserted are the promises of README ("Other clients on the token").
"""

from __future__ import annotations

import asyncio
import random

import pytest

from cdn_async import CDNClient, RateLimits
from cdn_async._ledger import WindowLedger
from cdn_async._pool import Wire
from cdn_async.errors import CDNError

from ._strict_server import StrictServer, install
from ._support import max_in_window

ID = "6e7a3d8a-6f3e-4a57-9a1b-2b8f9f6f0b11"
PERIOD = 10.0  # the documented cdn budget: 5 requests per 10 s


def client(server: StrictServer, rng: random.Random, reserve: float = 0.0) -> CDNClient:
    cdn = CDNClient(
        "dop_v1_" + "e" * 56,
        base_url="https://api.example.test",
        limits=RateLimits.documented(),
        max_rate_limit_wait=3600,
        reserve=reserve,
    )
    cdn._session._wall_clock = server.wall
    cdn._session._rand = rng.random
    return cdn


async def busy(cdn: CDNClient, calls: int, tasks: int) -> int:
    """``calls`` gets from ``tasks`` tasks; returns how many failed."""
    todo = list(range(calls))
    failed = 0

    async def worker() -> None:
        nonlocal failed
        while todo:
            todo.pop()
            try:
                await cdn.endpoints.get(ID)
            except CDNError:
                failed += 1

    async with cdn:
        await asyncio.gather(*(worker() for _ in range(tasks)))
    return failed


def latency(seed: int) -> tuple[float, float]:
    # From loopback to a slow uplink: each way, uniform in [low, 4 * low].
    low = random.Random(seed).choice([0.001, 0.002, 0.01, 0.05])
    return low, 4 * low


@pytest.mark.looptime
@pytest.mark.parametrize("seed", range(8))
async def test_two_unshared_clients_draw_few_429s_and_every_call_succeeds(seed: int) -> None:
    rng = random.Random(seed)
    server = StrictServer(5, PERIOD, rng, latency(seed))
    with pytest.MonkeyPatch.context() as mp:
        install(mp, server)
        failed = await asyncio.gather(
            busy(client(server, rng), 30, rng.randint(2, 8)),
            busy(client(server, rng), 30, rng.randint(2, 8)),
        )
    refused = server.answers.count(429)
    assert failed == [0, 0]
    assert refused <= 0.1 * len(server.answers), (refused, len(server.answers))
    assert max_in_window(server.stamps, PERIOD) <= 5


async def beside_a_co_tenant(seed: int, reserve: float = 0.0) -> tuple[list[int], list[int], float]:
    """40 gets from 8 tasks beside a raw client (doctl in a loop) that sends one request every
    0.4 of the window: half the budget. Returns our statuses, its statuses, and our rate in
    requests per window."""
    rng = random.Random(seed)
    server = StrictServer(5, PERIOD, rng, latency(seed))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    theirs: list[int] = []

    async def co_tenant() -> None:
        while not stop.is_set():
            status, _, _ = await server.exchange(Wire(False), "co-tenant")
            theirs.append(status)
            await asyncio.sleep(0.4 * PERIOD)

    with pytest.MonkeyPatch.context() as mp:
        install(mp, server)
        task = asyncio.create_task(co_tenant())
        await asyncio.sleep(rng.uniform(0.1, 1.0) * PERIOD)  # it was there first
        started = loop.time()
        assert await busy(client(server, rng, reserve), 40, 8) == 0
        windows = (loop.time() - started) / PERIOD
        stop.set()
        await task
    ours = [status for _, who, status, _ in server.trace if who != "co-tenant"]
    return ours, theirs, 40 / windows


@pytest.mark.looptime
@pytest.mark.parametrize("seed", range(8))
async def test_beside_a_steady_co_tenant_we_draw_no_429_and_use_what_it_leaves(
    seed: int,
) -> None:
    ours, _, rate = await beside_a_co_tenant(seed)
    assert ours.count(429) <= 0.03 * len(ours), ours
    # It leaves 2.5 requests per window, but holds 3 in half of all windows: no client can
    # take more than 2 per window without landing on its units (docs/design.md, "Budgets", 6).
    # We take that, less the first window's probing.
    assert rate >= 0.75 * 2.5, rate


@pytest.mark.looptime
@pytest.mark.parametrize("seed", range(4))
async def test_a_reserve_leaves_a_co_tenant_all_it_needs(seed: int) -> None:
    # It needs 3 of the 5 units of some windows: reserve=0.6 leaves it exactly that.
    ours, theirs, rate = await beside_a_co_tenant(seed, reserve=0.6)
    assert theirs.count(429) == 0, theirs
    assert ours.count(429) == 0, ours
    assert rate >= 0.9 * 2, rate


@pytest.mark.looptime
@pytest.mark.parametrize("seed", range(4))
async def test_a_lone_client_never_mistakes_itself_for_another(seed: int) -> None:
    # Bursts from many tasks over a jittery link: answers arrive out of order, requests are
    # stamped in another order than sent. None of it may read as another client's units.
    rng = random.Random(seed)
    server = StrictServer(5, PERIOD, rng, (0.001, 0.2))
    cdn = client(server, rng)
    loop = asyncio.get_running_loop()
    held: list[int] = []
    hold = WindowLedger._hold

    def spy(ledger: WindowLedger, units: int, until: float) -> bool:
        held.append(units)
        return hold(ledger, units, until)

    with pytest.MonkeyPatch.context() as mp:
        install(mp, server)
        mp.setattr(WindowLedger, "_hold", spy)
        started = loop.time()
        assert await busy(cdn, 60, 12) == 0
    assert held == []  # never a phantom unit
    assert server.answers.count(429) == 0
    # 60 requests at 5 per window: 11 windows after the first 5, plus round trips.
    assert loop.time() - started < 11 * PERIOD + 60 * 0.4 + 1.0


@pytest.mark.looptime
async def test_a_client_that_sees_another_on_its_token_warns_once_naming_the_fix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = random.Random(3)
    server = StrictServer(5, PERIOD, rng, latency(3))
    with pytest.MonkeyPatch.context() as mp, caplog.at_level("WARNING", logger="cdn_async"):
        install(mp, server)
        await asyncio.gather(busy(client(server, rng), 20, 4), busy(client(server, rng), 20, 4))
    warnings = [r for r in caplog.records if "another client" in r.getMessage()]
    assert len(warnings) == 2  # one per client, once each
    assert all("SQLiteBudgetStore" in r.getMessage() for r in warnings)
    assert all("RedisBudgetStore" in r.getMessage() for r in warnings)


@pytest.mark.looptime
async def test_a_lone_client_never_warns_of_another(caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(4)
    server = StrictServer(5, PERIOD, rng, (0.001, 0.2))
    with pytest.MonkeyPatch.context() as mp, caplog.at_level("WARNING", logger="cdn_async"):
        install(mp, server)
        assert await busy(client(server, rng), 40, 10) == 0
    assert not [r for r in caplog.records if "another client" in r.getMessage()]
