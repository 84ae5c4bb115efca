"""What async backends do to a client, over real HTTP on loopback against the fake API.

Callers cancelled or timed out while their request is on a slow uplink, purges abandoned before
they are sent, ``close()`` with calls queued in a shared budget store, and creates under both
kinds of 500. The fake stamps each request when it arrives, after its uplink delay, whatever
the client did meanwhile: the strictest server a client can face.

In virtual time (looptime): the uplink delays, the timeouts and the windows all read the event
loop's clock, so a request cancelled 5 ms after it started is on the wire whatever the
machine's load, and no check depends on the machine's speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from cdn_async import CDNClient, RateLimits
from cdn_async._budgets import MemoryBudgetStore
from cdn_async.errors import CDNError, PurgeError
from cdn_async.testing import FakeCDNServer, fake_cdn_fixture

from ._support import max_in_window

SCALE = 0.01  # cdn: 5 per 0.1 s; purge_files: 50 per 0.2 s

pytestmark = pytest.mark.looptime


def client(server: FakeCDNServer, **options: object) -> CDNClient:
    return CDNClient(
        server.token,
        base_url=server.url,
        limits=RateLimits.documented().scaled(SCALE),
        **options,  # type: ignore[arg-type]
    )


server = fake_cdn_fixture(time_scale=SCALE)


def rate_limited(server: FakeCDNServer) -> int:
    return sum(server.counters.rate_limited.values())


async def test_gets_cancelled_on_the_wire_stay_counted_until_the_server_answers(
    server: FakeCDNServer,
) -> None:
    # Up to 60 ms of uplink: a GET cancelled 5 ms after it started is still on its way; the
    # server counts it when it arrives. The next 5 GETs must not be sent into that window.
    server.faults.latency(up=0.01, jitter=0.05)
    ep = server.add_endpoint("static.nyc3.digitaloceanspaces.com")
    async with client(server) as cdn:
        for _ in range(6):
            doomed = [asyncio.create_task(cdn.endpoints.get(ep["id"])) for _ in range(5)]
            await asyncio.sleep(0.005)
            for task in doomed:
                task.cancel()
            await asyncio.gather(*doomed, return_exceptions=True)
            await asyncio.gather(*(cdn.endpoints.get(ep["id"]) for _ in range(5)))
    # The first 5 reach the server though cancelled; later ones are cancelled while queued.
    assert server.counters.requests >= 35
    assert rate_limited(server) == 0, server.counters


async def test_handlers_under_asyncio_timeout_never_draw_a_429(server: FakeCDNServer) -> None:
    server.faults.latency(up=0.004, jitter=0.04)
    ep = server.add_endpoint("static.nyc3.digitaloceanspaces.com")
    rng = random.Random(7)
    async with client(server) as cdn:

        async def handler(patient: bool) -> None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30.0 if patient else rng.uniform(0.01, 0.25)):
                    await cdn.endpoints.get(ep["id"])

        # Five handlers wait as long as it takes, so requests are sent however slow the
        # machine; the others give up at random moments around them.
        await asyncio.gather(*(handler(patient=n % 30 == 0) for n in range(150)))
        await asyncio.sleep(0.1)  # let detached attempts land
    assert server.counters.requests >= 5
    assert rate_limited(server) == 0, server.counters


async def test_the_clients_own_timeout_keeps_late_requests_counted(server: FakeCDNServer) -> None:
    # Every attempt outlives the 20 ms timeout (20-80 ms uplink) and is retried: all of them
    # arrive at the server, late, and none may push a window over the limit.
    server.faults.latency(up=0.02, jitter=0.06)
    ep = server.add_endpoint("static.nyc3.digitaloceanspaces.com")
    async with client(server, timeout=0.02, max_retries=2) as cdn:
        results = await asyncio.gather(
            *(cdn.endpoints.get(ep["id"]) for _ in range(12)), return_exceptions=True
        )
        await asyncio.sleep(0.2)
    assert all(isinstance(r, CDNError) for r in results)  # APITimeoutError, typed
    assert server.counters.requests == 36  # 12 calls x 3 attempts, all arrived
    assert rate_limited(server) == 0, server.counters


async def test_an_abandoned_purge_gives_its_units_back(server: FakeCDNServer) -> None:
    ep = server.add_endpoint("static.nyc3.digitaloceanspaces.com")
    async with client(server) as cdn:
        # Fill the cdn window so the next purge waits for its budget with its batch fixed.
        await asyncio.gather(*(cdn.endpoints.get(ep["id"]) for _ in range(5)))
        abandoned = asyncio.create_task(
            cdn.endpoints.purge(ep["id"], [f"old/{i}.png" for i in range(30)])
        )
        await asyncio.sleep(0.01)
        abandoned.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await abandoned
        # Its 30 file units are free again at once, not when its window would have ended.
        files = cdn.budget_snapshot().budgets["purge_files"]
        assert (files.used, files.remaining) == (0, 50), files
        await asyncio.sleep(0.15)  # the cdn window frees; the abandoned batch is not sent
        report = await cdn.endpoints.purge(ep["id"], [f"new/{i}.png" for i in range(30)])
    assert report.requests == 1
    sent = [p for r in server.journal if r.op == "purge" for p in r.body["files"]]
    assert not any(p.startswith("old/") for p in sent)
    assert sent == [f"new/{i}.png" for i in range(30)]


async def test_after_close_nothing_reaches_the_server_and_waiters_fail_clearly(
    server: FakeCDNServer,
) -> None:
    ep = server.add_endpoint("static.nyc3.digitaloceanspaces.com")
    store = MemoryBudgetStore()  # shared stores are a documented use: the user's to close
    cdn = client(server, budget_store=store)
    calls = [asyncio.create_task(cdn.endpoints.get(ep["id"])) for _ in range(25)]
    purge = asyncio.create_task(cdn.endpoints.purge(ep["id"], [f"p/{i}" for i in range(200)]))
    await asyncio.sleep(0.05)
    await cdn.close()
    at_close = server.counters.requests
    results = await asyncio.gather(*calls, return_exceptions=True)
    with pytest.raises(PurgeError) as info:
        await purge
    await asyncio.sleep(0.5)  # several windows: anything still queued would have gone out
    assert server.counters.requests == at_close
    closed = [r for r in results if isinstance(r, CDNError)]
    assert closed and all("client closed" in str(r) for r in closed)
    assert info.value.report.failed  # unsent paths reported, none dropped
    report = info.value.report
    assert len(report.purged) + len(report.failed) == 200
    with pytest.raises(CDNError, match="client closed"):
        await cdn.endpoints.get(ep["id"])
    assert cdn._session._pool._http is None  # no fresh session was opened
    await store.aclose()


@pytest.mark.parametrize("max_retries", [0, 3])
async def test_creates_under_both_kinds_of_500_are_never_lost_or_doubled(
    server: FakeCDNServer, max_retries: int
) -> None:
    server.faults.fail_randomly(0.1, status=500, when="before", op="create")
    server.faults.fail_randomly(0.1, status=500, when="after", op="create")
    origins = [f"bucket{i:03d}.nyc3.digitaloceanspaces.com" for i in range(60)]
    async with client(server, max_retries=max_retries) as cdn:
        results = await asyncio.gather(
            *(cdn.endpoints.create(o) for o in origins), return_exceptions=True
        )
    on_server = {e["origin"] for e in server.endpoints}
    posts: dict[str, int] = {}
    for r in server.journal:
        if r.op == "create":
            posts[r.body["origin"]] = posts.get(r.body["origin"], 0) + 1
    for origin, result in zip(origins, results, strict=True):
        if isinstance(result, BaseException):
            assert origin not in on_server, (origin, result)  # failed only when not created
        else:
            assert result.origin == origin and origin in on_server
        assert posts[origin] <= max_retries + 1
    if max_retries:
        assert not any(isinstance(r, BaseException) for r in results)
    assert rate_limited(server) == 0


async def test_reserve_leaves_part_of_every_budget_to_other_tools(server: FakeCDNServer) -> None:
    ep = server.add_endpoint("static.nyc3.digitaloceanspaces.com")
    async with client(server, reserve=0.4) as cdn:  # 2 of the 5 cdn requests per window
        await asyncio.gather(*(cdn.endpoints.get(ep["id"]) for _ in range(15)))
        assert cdn.budget_snapshot().budgets["cdn"].limit == 3
    stamps = [(r.arrival, 1) for r in server.journal]
    assert max_in_window(stamps, 10.0 * SCALE) == 3
    with pytest.raises(ValueError):
        client(server, reserve=1.0)
