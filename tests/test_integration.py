"""The SDK against its own fake API, over real HTTP on loopback.

Every operation, every error status, pagination, retries after each injected fault, the purge
engine under faults, and the budgets against a strict server: zero 429s. Budgets are
time-scaled (periods x 0.01) on both sides, so the injected latencies are a real share of a
window. The time is virtual (looptime): the server's windows, its latencies and the client's
waits all read the event loop's clock, which jumps ahead whenever every task waits. The bytes
still cross real sockets; only the waiting is skipped, so the checks are exact and do not
depend on the machine's speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cdn_async import TTL, CDNClient
from cdn_async.errors import (
    APIResponseError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    CreateUnconfirmedError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    PurgeError,
    RateLimitedError,
    UnprocessableEntityError,
)
from cdn_async.testing import FakeCDNServer

SCALE = 0.01
ORIGIN = "static.nyc3.digitaloceanspaces.com"
MISSING = "892071a0-bb95-49bc-8021-3afd67a210bf"

pytestmark = [pytest.mark.fake_cdn(time_scale=SCALE), pytest.mark.looptime]


@pytest.fixture
async def cdn(fake_cdn: FakeCDNServer) -> AsyncIterator[CDNClient]:
    async with fake_cdn.client() as c:
        yield c


def no_429(server: FakeCDNServer) -> None:
    assert server.counters.rate_limited == {}, server.counters


async def test_every_operation_end_to_end(cdn: CDNClient, fake_cdn: FakeCDNServer) -> None:
    ep = await cdn.endpoints.create(ORIGIN, ttl=TTL.ONE_DAY)
    assert ep.origin == ORIGIN and ep.ttl is TTL.ONE_DAY and ep.created_at.tzinfo is not None
    assert (await cdn.endpoints.get(ep.id)) == ep
    assert [e.id async for e in cdn.endpoints.list()] == [ep.id]
    updated = await cdn.endpoints.update(
        ep.id, ttl=60, custom_domain="cdn.example.com", certificate_id=MISSING
    )
    assert (updated.ttl, updated.custom_domain, updated.certificate_id) == (
        60,
        "cdn.example.com",
        MISSING,
    )
    removed = await cdn.endpoints.update(ep.id, custom_domain=None)
    assert removed.custom_domain is None and removed.certificate_id is None
    report = await cdn.endpoints.purge(ep.id, ["/img/a.png", "img/a.png", "css/*", "css/x.css"])
    assert set(report.purged) == {"img/a.png", "css/*", "css/x.css"} and report.requests == 1
    assert fake_cdn.journal[-1].body == {"files": ["img/a.png", "css/*"]}
    await cdn.endpoints.delete(ep.id)
    with pytest.raises(NotFoundError):
        await cdn.endpoints.get(ep.id)
    no_429(fake_cdn)


async def test_pagination_over_450_endpoints(cdn: CDNClient, fake_cdn: FakeCDNServer) -> None:
    for i in range(450):
        fake_cdn.add_endpoint(f"bucket{i}.nyc3.digitaloceanspaces.com")
    ids = [e.id async for e in cdn.endpoints.list()]
    assert len(ids) == len(set(ids)) == 450
    assert [r.query for r in fake_cdn.journal] == [
        {"page": "1", "per_page": "200"},
        {"page": "2", "per_page": "200"},
        {"page": "3", "per_page": "200"},
    ]
    pages = [p async for p in cdn.endpoints.pages(per_page=100)]
    assert [len(p.endpoints) for p in pages] == [100, 100, 100, 100, 50]
    assert {p.total for p in pages} == {450} and [p.has_next for p in pages][-2:] == [True, False]


async def test_error_statuses_over_http(cdn: CDNClient, fake_cdn: FakeCDNServer) -> None:
    async with fake_cdn.client(token="dop_v1_unknown") as stranger:
        with pytest.raises(AuthenticationError) as e401:
            await stranger.endpoints.get(MISSING)
    assert e401.value.error_id == "unauthorized" and e401.value.request_id

    reader = fake_cdn.add_token(["cdn:read"])
    async with fake_cdn.client(token=reader) as read_only:
        with pytest.raises(PermissionDeniedError) as e403:
            await read_only.endpoints.create(ORIGIN)
    assert e403.value.status == 403

    with pytest.raises(NotFoundError) as e404:
        await cdn.endpoints.delete(MISSING)
    assert e404.value.error_id == "not_found"

    with pytest.raises(UnprocessableEntityError):
        await cdn.endpoints.create("static.example.com")  # not a Space
    await cdn.endpoints.create(ORIGIN)
    with pytest.raises(UnprocessableEntityError):
        await cdn.endpoints.create(ORIGIN)  # origin already has an endpoint

    # 400: per_page is validated before sending, so reach past validation to see the mapping.
    with pytest.raises(BadRequestError) as e400:
        await cdn._session.request("GET", "/v2/cdn/endpoints", params={"per_page": 500})
    assert e400.value.status == 400

    fake_cdn.faults.fail_next(4, status=503)
    with pytest.raises(InternalServerError) as e5xx:
        await cdn.endpoints.get(MISSING)
    assert e5xx.value.attempts == 4


async def test_409_when_an_identical_purge_from_elsewhere_is_in_progress(
    fake_cdn: FakeCDNServer,
) -> None:
    fake_cdn.purge_duration = 0.3
    async with fake_cdn.client() as one, fake_cdn.client(max_retries=0) as other:
        ep = await one.endpoints.create(ORIGIN)
        first = asyncio.create_task(one.endpoints.purge(ep.id, ["a.png"]))
        await asyncio.sleep(0.1)
        with pytest.raises(PurgeError) as info:
            await other.endpoints.purge(ep.id, ["a.png"])
        assert isinstance(info.value.report.failed["a.png"], ConflictError)
        assert (await first).ok
    assert fake_cdn.counters.conflicts == 1


@pytest.mark.parametrize(
    ("inject", "op"),
    [
        (lambda s: s.faults.fail_next(2, status=500, when="before", op="get"), "get"),
        (lambda s: s.faults.fail_next(2, status=502, when="after", op="update"), "update"),
        (lambda s: s.faults.drop_next(2, when="before", op="get"), "get"),
        (lambda s: s.faults.drop_next(1, when="after", op="update"), "update"),
        (lambda s: s.faults.fail_next(1, status=503, when="after", op="delete"), "delete"),
        (lambda s: s.faults.latency(up=0.02, down=0.02, jitter=0.01), "get"),
    ],
)
async def test_retries_recover_from_each_fault(
    cdn: CDNClient, fake_cdn: FakeCDNServer, inject: object, op: str
) -> None:
    ep = await cdn.endpoints.create(ORIGIN)
    inject(fake_cdn)  # type: ignore[operator]
    if op == "get":
        assert (await cdn.endpoints.get(ep.id)).id == ep.id
    elif op == "update":
        assert (await cdn.endpoints.update(ep.id, ttl=600)).ttl == 600
    else:
        await cdn.endpoints.delete(ep.id)
        assert fake_cdn.endpoints == []
    no_429(fake_cdn)


async def test_create_after_an_ambiguous_failure_is_not_duplicated(
    cdn: CDNClient, fake_cdn: FakeCDNServer
) -> None:
    fake_cdn.faults.fail_next(1, status=500, when="after", op="create")
    ep = await cdn.endpoints.create(ORIGIN)
    assert [e["id"] for e in fake_cdn.endpoints] == [ep.id]
    fake_cdn.faults.drop_next(1, when="after", op="create")
    other = await cdn.endpoints.create("assets.ams3.digitaloceanspaces.com")
    assert sorted(e["id"] for e in fake_cdn.endpoints) == sorted([ep.id, other.id])
    assert sum(1 for r in fake_cdn.journal if r.method == "POST") == 2  # never sent twice


@pytest.mark.parametrize("retries", [0, 1])
async def test_create_whose_lookup_fails_is_never_reported_failed(
    fake_cdn: FakeCDNServer, retries: int
) -> None:
    # The create is carried out but answered 500; the list that would find it fails too (every
    # attempt the client allows). The outcome is unknown: CreateUnconfirmedError, naming the
    # origin, never an InternalServerError saying it failed.
    fake_cdn.faults.fail_next(1, status=500, when="after", op="create")
    fake_cdn.faults.fail_next(retries + 1, status=500, when="before", op="list")
    async with fake_cdn.client(max_retries=retries) as cdn:
        with pytest.raises(CreateUnconfirmedError) as info:
            await cdn.endpoints.create(ORIGIN)
    assert info.value.origin == ORIGIN and ORIGIN in str(info.value)
    assert isinstance(info.value.error, InternalServerError)
    assert isinstance(info.value.lookup_error, InternalServerError)
    assert [e["origin"] for e in fake_cdn.endpoints] == [ORIGIN]  # it was created
    assert sum(1 for r in fake_cdn.journal if r.method == "POST") == 1


async def test_create_after_a_failure_before_the_change_is_sent_again(
    cdn: CDNClient, fake_cdn: FakeCDNServer
) -> None:
    fake_cdn.faults.fail_next(1, status=500, when="before", op="create")
    ep = await cdn.endpoints.create(ORIGIN)
    assert [e["id"] for e in fake_cdn.endpoints] == [ep.id]


async def test_new_endpoint_invisible_for_a_moment_is_still_got(
    cdn: CDNClient, fake_cdn: FakeCDNServer
) -> None:
    fake_cdn.invisible_after_create = 0.5
    ep = await cdn.endpoints.create(ORIGIN)
    assert (await cdn.endpoints.get(ep.id)).id == ep.id
    assert any(r.rule == "invisible" for r in fake_cdn.journal)


async def test_non_json_2xx_is_a_clear_error(cdn: CDNClient, fake_cdn: FakeCDNServer) -> None:
    ep = await cdn.endpoints.create(ORIGIN)
    fake_cdn.faults.non_json_next(1, op="get")
    with pytest.raises(APIResponseError, match="not JSON"):
        await cdn.endpoints.get(ep.id)


async def test_saturating_load_draws_no_429(cdn: CDNClient, fake_cdn: FakeCDNServer) -> None:
    fake_cdn.faults.latency(up=0.005, down=0.005, jitter=0.005)
    ep = await cdn.endpoints.create(ORIGIN)
    results = await asyncio.gather(*(cdn.endpoints.get(ep.id) for _ in range(40)))
    assert {r.id for r in results} == {ep.id}
    no_429(fake_cdn)


async def test_budget_spent_by_another_client_is_respected(
    cdn: CDNClient, fake_cdn: FakeCDNServer
) -> None:
    ep = await cdn.endpoints.create(ORIGIN)
    await asyncio.sleep(10 * SCALE)  # let the create's unit expire on both sides
    fake_cdn.spend(fake_cdn.token, "cdn", 3)  # another process used 3 of 5 just now
    await cdn.endpoints.get(ep.id)  # its answer says: 1 remaining
    await asyncio.gather(*(cdn.endpoints.get(ep.id) for _ in range(10)))
    no_429(fake_cdn)


async def test_a_429_pauses_the_budget_then_the_request_succeeds(
    cdn: CDNClient, fake_cdn: FakeCDNServer
) -> None:
    ep = await cdn.endpoints.create(ORIGIN)
    await asyncio.sleep(10 * SCALE)
    fake_cdn.spend(fake_cdn.token, "cdn", 5)  # spent before this client could know
    assert (await cdn.endpoints.get(ep.id)).id == ep.id
    assert fake_cdn.counters.rate_limited == {"cdn": 1}


async def test_a_long_server_pause_raises_rate_limited_at_once(fake_cdn: FakeCDNServer) -> None:
    async with fake_cdn.client(max_rate_limit_wait=0.0) as cdn:
        fake_cdn.spend(fake_cdn.token, "cdn", 5)
        with pytest.raises(RateLimitedError) as info:
            await cdn.endpoints.get(MISSING)
    assert info.value.reset_at is not None


async def test_purge_under_faults_reports_every_path(
    cdn: CDNClient, fake_cdn: FakeCDNServer
) -> None:
    ep = await cdn.endpoints.create(ORIGIN)
    fake_cdn.faults.fail_randomly(0.3, status=500, op="purge")
    fake_cdn.faults.drop_randomly(0.2, op="purge")
    paths = [f"assets/{i}.js" for i in range(400)]
    try:
        report = await cdn.endpoints.purge(ep.id, paths)
    except PurgeError as exc:
        report = exc.report
    assert sorted([*report.purged, *report.failed]) == sorted(paths)
    sent_ok = {
        p for r in fake_cdn.journal if r.op == "purge" and r.status == 204 for p in r.body["files"]
    }
    assert set(report.purged) <= sent_ok  # "purged" only when the server said so
    no_429(fake_cdn)


async def test_bulk_purge_with_duplicates_is_exact_and_paced(
    cdn: CDNClient, fake_cdn: FakeCDNServer
) -> None:
    ep = await cdn.endpoints.create(ORIGIN)
    unique = [f"img/{i}.png" for i in range(700)]
    paths = unique + unique[:200] + ["/" + p for p in unique[:100]] + ["css/*", "css/a.css"]
    loop = asyncio.get_running_loop()
    start = loop.time()
    report = await cdn.endpoints.purge(ep.id, paths)
    elapsed = loop.time() - start
    purges = [r for r in fake_cdn.journal if r.op == "purge"]
    assert len(purges) == -(-701 // 50) == 15
    assert sorted(p for r in purges for p in r.body["files"]) == sorted([*unique, "css/*"])
    assert len(report.purged) == 702
    # The 15th batch may leave 14 periods after the first: the file budget's bound.
    assert elapsed >= 14 * 20 * SCALE
    no_429(fake_cdn)
    assert fake_cdn.counters.conflicts == 0


async def test_concurrent_purges_coalesce(cdn: CDNClient, fake_cdn: FakeCDNServer) -> None:
    ep = await cdn.endpoints.create(ORIGIN)
    reports = await asyncio.gather(
        *(cdn.endpoints.purge(ep.id, ["index.html", "app.js"]) for _ in range(20))
    )
    assert all(r.ok for r in reports)
    assert sum(1 for r in fake_cdn.journal if r.op == "purge") <= 2
    assert fake_cdn.counters.conflicts == 0
