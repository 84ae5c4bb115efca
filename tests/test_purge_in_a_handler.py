"""A purge in a web handler: all or nothing under ``max_budget_wait`` (refused before anything is
sent when the whole plan cannot be), or handed to the client to run in the background.

Against the fake API over loopback at time scale 0.01: the file budget is 50 paths per 0.2 s,
so a 200-path purge needs at least 0.6 s from its first request to its last. In virtual time
(looptime), so deadlines are met or missed by the design, not by the machine's load; the
Redis test runs in real time (Redis answers from another process).
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from benchmarks._redis_server import RedisServer
from cdn_async import (
    Budget,
    BudgetWaitTimeout,
    CDNClient,
    MemoryBudgetStore,
    PurgeError,
    PurgeHandle,
    PurgeProgress,
    RateLimits,
    events,
)
from cdn_async.redis import RedisPurgeQueue
from cdn_async.testing import FakeCDNServer, fake_cdn_fixture

SCALE = 0.01
ORIGIN = "static.nyc3.digitaloceanspaces.com"
PATHS = [f"img/{i}.png" for i in range(200)]

pytestmark = pytest.mark.looptime


server = fake_cdn_fixture(time_scale=SCALE)


def purged_paths(server: FakeCDNServer) -> list[str]:
    return [p for e in server.journal if e.op == "purge" for p in e.body["files"]]


# -- all or nothing ----------------------------------------------------------------------------


async def test_a_purge_that_cannot_all_be_sent_in_time_is_refused_before_anything_is_sent(
    server: FakeCDNServer,
) -> None:
    ep = server.add_endpoint(ORIGIN)["id"]
    sends: list[float] = []
    loop = asyncio.get_running_loop()

    def on_event(event: events.Event) -> None:
        if isinstance(event, events.RequestSent):
            sends.append(loop.time())

    async with server.client(max_budget_wait=0.3, event_hooks=[on_event]) as cdn:
        with pytest.raises(BudgetWaitTimeout) as refused:  # itself, not in a PurgeError
            await cdn.endpoints.purge(ep, PATHS)
        assert server.journal == [] and sends == []
        assert refused.value.budget == "purge_files"
        # Nothing was taken: the budgets are as idle as before.
        assert cdn.budget_snapshot().budgets["purge_files"].used == 0
        # retry_after is truthful: the same purge, allowed to wait, sends its last request no
        # sooner than that.
        started = loop.time()
        report = await cdn.with_options(max_budget_wait=None).endpoints.purge(ep, PATHS)
    assert report.ok and report.requests == 4
    assert refused.value.retry_after is not None
    assert refused.value.retry_after >= 3 * 20 * SCALE
    assert sends[-1] - started >= refused.value.retry_after - 0.01


async def test_a_purge_that_fits_the_deadline_is_sent_whole(server: FakeCDNServer) -> None:
    ep = server.add_endpoint(ORIGIN)["id"]
    async with server.client(max_budget_wait=1.0) as cdn:
        report = await cdn.endpoints.purge(ep, PATHS)
    assert report.ok and report.requests == 4
    assert sorted(purged_paths(server)) == sorted(PATHS)


async def test_paths_pending_ahead_count_against_the_deadline(server: FakeCDNServer) -> None:
    # A bulk purge's 150 pending paths go first: 10 more cannot be sent within 0.3 s.
    ep = server.add_endpoint(ORIGIN)["id"]
    async with server.client() as cdn:
        bulk = asyncio.create_task(cdn.endpoints.purge(ep, PATHS[:150]))
        await asyncio.sleep(0.01)  # the bulk purge has joined and sent its first batch
        mine = [f"css/{i}.css" for i in range(10)]
        with pytest.raises(BudgetWaitTimeout):
            await cdn.with_options(max_budget_wait=0.3).endpoints.purge(ep, mine)
        assert (await bulk).ok
    assert not set(mine) & set(purged_paths(server))


async def test_an_urgent_purge_is_not_held_to_the_normal_batch_it_passes(
    server: FakeCDNServer,
) -> None:
    # A bulk purge's next batch waits in the store at "normal"; a high purge passes it, so
    # only the window's expiry (about a period) counts against its deadline, not that batch.
    ep = server.add_endpoint(ORIGIN)["id"]
    async with server.client() as cdn:
        bulk = asyncio.create_task(cdn.endpoints.purge(ep, PATHS))
        await asyncio.sleep(0.03)  # the first batch answered, the second waits in the store
        hasty = cdn.with_options(max_budget_wait=1.5 * 20 * SCALE)
        report = await hasty.endpoints.purge(ep, ["urgent.png"], priority="high")
        assert report.ok
        with pytest.raises(BudgetWaitTimeout):  # at "normal" it would queue behind the batch
            await hasty.endpoints.purge(ep, ["normal.png"])
        assert (await bulk).ok


class BlindStore(MemoryBudgetStore):
    """A store that cannot estimate admission: only the deadline tells."""

    admission_delay = None  # type: ignore[assignment]


async def test_without_an_estimate_a_purge_that_sent_nothing_in_time_raises_budget_wait_timeout(
    server: FakeCDNServer,
) -> None:
    ep = server.add_endpoint(ORIGIN)
    # One request per 5 s (the fake allows more): after one get, the purge waits seconds.
    limits = RateLimits((Budget("cdn", 1, 5.0), Budget("purge_files", 50, 0.2, unit="file")))
    async with server.client(budget_store=BlindStore(), limits=limits) as cdn:
        await cdn.endpoints.get(ep["id"])
        with pytest.raises(BudgetWaitTimeout):
            await cdn.with_options(max_budget_wait=0.02).endpoints.purge(ep["id"], ["a", "b"])
        # The plan alone is refused at once too: 4 requests at 1 per 5 s bind (15 s), not the
        # file budget (0.6 s).
        with pytest.raises(BudgetWaitTimeout) as refused:
            await cdn.with_options(max_budget_wait=0.3).endpoints.purge(ep["id"], PATHS)
        assert refused.value.retry_after == pytest.approx(15.0)
        assert refused.value.budget == "cdn"
    assert purged_paths(server) == []


# -- in the background -------------------------------------------------------------------------


async def test_a_background_purge_survives_the_cancelled_handler_that_started_it(
    server: FakeCDNServer,
) -> None:
    ep = server.add_endpoint(ORIGIN)["id"]
    handles: list[PurgeHandle] = []
    async with server.client(max_budget_wait=0.05) as cdn:

        async def handler() -> None:
            handle = cdn.endpoints.purge_in_background(ep, PATHS)
            handles.append(handle)
            assert server.journal == []  # returned at once
            await handle  # the handler waits... and is cancelled (its client hung up)

        task = asyncio.create_task(handler())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (handle,) = handles
        assert not handle.done()
        # max_budget_wait does not apply: nobody waits for a background purge.
        report = await handle
    assert report.ok and report.requests == 4
    assert sorted(purged_paths(server)) == sorted(PATHS)


async def test_a_dropped_handle_still_purges_and_logs_the_outcome(
    server: FakeCDNServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cdn_async")
    ep = server.add_endpoint(ORIGIN)["id"]
    async with server.client() as cdn:
        cdn.endpoints.purge_in_background(ep, ["a.css", "b.css"])
        cdn.endpoints.purge_in_background(
            "892071a0-bb95-49bc-8021-3afd67a210bf", ["x"]
        )  # fails: unknown endpoint (no "exception never retrieved": warnings are errors)
        for _ in range(100):
            if len(server.journal) == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
    assert sorted(purged_paths(server)) == ["a.css", "b.css", "x"]
    lines = [r.getMessage() for r in caplog.records if "background purge" in r.getMessage()]
    assert any("2 path(s) purged" in m for m in lines)
    assert any("1 failed" in m for m in lines)


async def test_close_reports_what_each_background_purge_left(server: FakeCDNServer) -> None:
    ep = server.add_endpoint(ORIGIN)["id"]
    confirmed: list[str] = []
    first_batch = asyncio.Event()

    def on_batch(progress: PurgeProgress) -> None:
        confirmed.extend(progress.confirmed)
        first_batch.set()

    cdn = CDNClient(server.token, base_url=server.url, limits=RateLimits.documented().scaled(SCALE))
    handle = cdn.endpoints.purge_in_background(ep, PATHS, on_batch=on_batch)
    await first_batch.wait()  # the first batch is confirmed; the rest waits for the file budget
    (left,) = await cdn.close()
    assert left.endpoint_id == ep
    assert set(left.purged) == set(confirmed) == set(purged_paths(server))
    assert set(left.purged) | set(left.failed) == set(PATHS)
    assert len(left.failed) == 150
    with pytest.raises(PurgeError) as failed:
        await handle
    assert failed.value.report == left
    assert await cdn.close() == []  # idempotent


async def test_bad_input_is_refused_before_a_background_purge_starts(
    server: FakeCDNServer,
) -> None:
    async with server.client() as cdn:
        with pytest.raises(ValueError):
            cdn.endpoints.purge_in_background("not-a-uuid", ["a"])
        with pytest.raises(ValueError):
            cdn.endpoints.purge_in_background(
                "892071a0-bb95-49bc-8021-3afd67a210bf", "a-bare-string"
            )
    assert server.journal == []


@pytest.mark.looptime(False)  # Redis answers in real time
async def test_through_a_shared_purge_queue_a_plan_too_long_for_the_deadline_is_refused(
    server: FakeCDNServer, redis_server: RedisServer
) -> None:
    ep = server.add_endpoint(ORIGIN)["id"]
    queue = RedisPurgeQueue(redis_server.url, token_id="t-26")
    try:
        async with server.client(max_budget_wait=0.3, purge_queue=queue) as cdn:
            with pytest.raises(BudgetWaitTimeout) as refused:
                await cdn.endpoints.purge(ep, PATHS)
            assert refused.value.retry_after == pytest.approx(3 * 20 * SCALE)
            assert await queue.pending(ep) == 0  # nothing queued either
            # A purge with a deadline is checked on its plan's entries the same way.
            with pytest.raises(BudgetWaitTimeout):
                await cdn.endpoints.purge(ep, PATHS, deadline=3600)
            assert await queue.pending(ep) == 0
    finally:
        await queue.aclose()
    assert server.journal == []
