"""Deadlines (``max_budget_wait``) and the queue cap (``max_queued``) keep their word against a
simulated strict server (``_strict_server``), in virtual time, with the in-memory store.

* The estimate that refuses a call at once counts only the waiters that go before it: a high
  call is not refused for normal calls it would pass.
* ``retry_after`` is not early: a call made then goes (nearly) at once, even when more calls
  wait than a window holds.
* Only calls that wait for budget count against ``max_queued``: a burst the budget can take
  is never shed, even while it is sent one at a time.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from cdn_async import CDNClient, RateLimits, SQLiteBudgetStore
from cdn_async._limits import BudgetStore
from cdn_async.errors import BudgetWaitTimeout, QueueFullError

from ._strict_server import StrictServer, install

ID = "6e7a3d8a-6f3e-4a57-9a1b-2b8f9f6f0b11"
PERIOD = 10.0  # the documented cdn budget: 5 requests per 10 s
LATENCY = (0.001, 0.004)  # each way


def client(
    server: StrictServer, rng: random.Random, scale: float = 1.0, store: BudgetStore | None = None
) -> CDNClient:
    cdn = CDNClient(
        "dop_v1_" + "e" * 56,
        base_url="https://api.example.test",
        limits=RateLimits.documented().scaled(scale),
        budget_store=store,
    )
    cdn._session._wall_clock = server.wall
    cdn._session._rand = rng.random
    return cdn


def now() -> float:
    return asyncio.get_running_loop().time()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def warm(cdn: CDNClient, period: float) -> None:
    """One answer, then a quiet period: the first-period probing is over."""
    await cdn.endpoints.get(ID)
    await asyncio.sleep(period * 1.01)


def make_store(kind: str, tmp_path: Path) -> BudgetStore | None:
    """None: the client's in-memory store; "sqlite": a SQLiteBudgetStore on the loop's clock."""
    if kind == "memory":
        return None
    return SQLiteBudgetStore(tmp_path / "budgets.sqlite3", clock=asyncio.get_running_loop().time)


@pytest.mark.looptime
@pytest.mark.parametrize(("scale", "kind"), [(1.0, "memory"), (0.1, "memory"), (1.0, "sqlite")])
async def test_a_high_call_is_not_refused_for_the_normal_calls_it_passes(
    scale: float, kind: str, tmp_path: Path
) -> None:
    # 20 normal calls wait (4 windows' worth); a high call with a deadline of 1.5 periods goes
    # ahead of all of them, so it makes it in about one period: it must not be refused.
    period = PERIOD * scale
    rng = random.Random(1)
    server = StrictServer(5, period, rng, LATENCY)
    store = make_store(kind, tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        install(mp, server)
        async with client(server, rng, scale, store) as cdn:
            await warm(cdn, period)
            await asyncio.gather(*(cdn.endpoints.get(ID) for _ in range(5)))  # window full
            normal = [asyncio.create_task(cdn.endpoints.get(ID)) for _ in range(20)]
            await settle()
            start = now()
            urgent = cdn.with_options(priority="high", max_budget_wait=1.5 * period)
            await urgent.endpoints.get(ID)
            assert now() - start <= 1.05 * period
            await asyncio.gather(*normal)


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("waiting", "priority", "kind"),
    [
        (3, "normal", "memory"),
        (12, "normal", "memory"),
        (12, "low", "memory"),
        (12, "normal", "sqlite"),
    ],
)
async def test_retry_after_is_when_a_new_call_would_go(
    waiting: int, priority: str, kind: str, tmp_path: Path
) -> None:
    # `waiting` normal calls queue behind a full window; one more (a twin, no deadline) and a
    # hasty one (deadline 0.1 period) follow. The hasty call is refused at once with
    # retry_after: no earlier than its twin (which went before it) was admitted, and a call
    # made at retry_after goes within a round trip, not a period later.
    rng = random.Random(waiting)
    server = StrictServer(5, PERIOD, rng, LATENCY)
    store = make_store(kind, tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        install(mp, server)
        async with client(server, rng, store=store) as cdn:
            await warm(cdn, PERIOD)
            await asyncio.gather(*(cdn.endpoints.get(ID) for _ in range(5)))  # window full
            ahead = [asyncio.create_task(cdn.endpoints.get(ID)) for _ in range(waiting)]
            await settle()
            start = now()
            leveled = cdn.with_options(priority=priority)  # type: ignore[arg-type]
            twin_at: list[float] = []

            async def twin() -> None:
                await leveled.endpoints.get(ID)
                twin_at.append(now() - start)

            twin_task = asyncio.create_task(twin())
            await settle()
            hasty = leveled.with_options(max_budget_wait=0.1 * PERIOD)
            with pytest.raises(BudgetWaitTimeout) as refused:
                await hasty.endpoints.get(ID)
            assert now() == start  # at once
            retry_after = refused.value.retry_after
            assert retry_after is not None
            await asyncio.sleep(retry_after)
            await asyncio.gather(twin_task)
            assert retry_after >= twin_at[0] - 0.02 * PERIOD  # it went before: not a period early
            again = now()
            await leveled.endpoints.get(ID)
            assert now() - again <= 0.02 * PERIOD  # a round trip or two, not a period
            await asyncio.gather(*ahead)


@pytest.mark.looptime
@pytest.mark.parametrize(("quiet", "kind"), [(False, "memory"), (True, "memory"), (True, "sqlite")])
async def test_max_queued_counts_only_calls_that_wait_for_budget(
    quiet: bool, kind: str, tmp_path: Path
) -> None:
    # An idle budget takes a burst of 5 at once: none is shed by max_queued=2, even when they
    # go one at a time (after a quiet spell the store probes: one request, then the rest).
    # Beyond what the budget takes, only 2 may wait: the rest are shed at once.
    rng = random.Random(2)
    server = StrictServer(5, PERIOD, rng, LATENCY)
    store = make_store(kind, tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        install(mp, server)
        async with client(server, rng, store=store) as cdn:
            await cdn.endpoints.get(ID)
            await asyncio.sleep(PERIOD * (3.01 if quiet else 1.01))
            capped = cdn.with_options(max_queued=2)
            burst = await asyncio.gather(
                *(capped.endpoints.get(ID) for _ in range(5)), return_exceptions=True
            )
            assert [type(r).__name__ for r in burst] == ["CDNEndpoint"] * 5
            await asyncio.sleep(PERIOD * 1.01)
            more = await asyncio.gather(
                *(capped.endpoints.get(ID) for _ in range(9)), return_exceptions=True
            )
            shed = [r for r in more if isinstance(r, QueueFullError)]
            assert len(shed) == 2, more  # 5 admitted at once, 2 wait, 2 shed
