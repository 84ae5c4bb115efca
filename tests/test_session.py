"""The session layer against mocked HTTP (aioresponses): retries, error mapping, 429s, logs.

Sleeps are virtual (looptime), so backoff and 429 waits cost no real time.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any
from unittest import mock

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses

from cdn_async import CDNClient, RateLimits
from cdn_async._constants import NOT_FOUND_PATIENCE
from cdn_async.errors import (
    APIConnectionError,
    APIError,
    APIResponseError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BudgetWaitTimeout,
    CDNError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    PurgeError,
    QueueFullError,
    RateLimitedError,
    TooManyRequestsError,
    UnprocessableEntityError,
)

from ._support import BASE, TOKEN, endpoint_json, rl_headers

pytestmark = pytest.mark.looptime

ID = "892071a0-bb95-49bc-8021-3afd67a210bf"
GET_URL = f"{BASE}/v2/cdn/endpoints/{ID}"
LIST_URL = re.compile(rf"^{re.escape(BASE)}/v2/cdn/endpoints\?.*$")


def connect_error() -> aiohttp.ClientConnectorError:
    return aiohttp.ClientConnectorError(
        mock.Mock(ssl=False, host="h", port=443), OSError(111, "refused")
    )


@pytest.fixture
async def cdn() -> Any:
    # Generous budgets: these tests are about the session, not the windows.
    limits = RateLimits.documented().scaled(0.1)
    async with CDNClient(TOKEN, base_url=BASE, limits=limits) as client:
        yield client


def calls(m: aioresponses, method: str = "GET") -> list[Any]:
    return [c for (meth, _url), cs in m.requests.items() if meth == method for c in cs]


async def test_sends_bearer_token_user_agent_and_accept(cdn: CDNClient) -> None:
    with aioresponses() as m:
        m.get(GET_URL, payload={"endpoint": endpoint_json(id=ID)})
        await cdn.endpoints.get(ID)
        headers = calls(m)[0].kwargs["headers"]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["User-Agent"].startswith("cdn-async/")
    assert headers["Accept"] == "application/json"


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_get_retries_5xx_then_succeeds(cdn: CDNClient, status: int) -> None:
    with aioresponses() as m:
        m.get(GET_URL, status=status, payload={"id": "server_error", "message": "boom"})
        m.get(GET_URL, status=status, payload={"id": "server_error", "message": "boom"})
        m.get(GET_URL, payload={"endpoint": endpoint_json(id=ID)})
        ep = await cdn.endpoints.get(ID)
        assert len(calls(m)) == 3
    assert ep.id == ID


async def test_gives_up_after_max_retries_and_counts_attempts(cdn: CDNClient) -> None:
    with aioresponses() as m:
        for _ in range(4):
            m.get(GET_URL, status=503, payload={"id": "unavailable", "message": "down"})
        with pytest.raises(InternalServerError) as info:
            await cdn.endpoints.get(ID)
        assert len(calls(m)) == 4  # 1 + max_retries (3)
    assert info.value.attempts == 4
    assert info.value.status == 503


async def test_backoff_sleeps_grow_exponentially_in_virtual_time(cdn: CDNClient) -> None:
    loop = asyncio.get_running_loop()
    cdn._session._rand = lambda: 1.0  # the ceiling of each full-jitter wait
    with aioresponses() as m:
        for _ in range(3):
            m.get(GET_URL, status=500, payload={"id": "e", "message": "m"})
        m.get(GET_URL, payload={"endpoint": endpoint_json(id=ID)})
        start = loop.time()
        await cdn.endpoints.get(ID)
    # The fixture's limits are scaled by 0.1: retry waits keep pace with the budgets.
    assert loop.time() - start == pytest.approx((0.5 + 1.0 + 2.0) * 0.1, abs=0.001)


async def test_post_is_not_retried_after_a_5xx_but_looks_the_origin_up(cdn: CDNClient) -> None:
    created = endpoint_json(origin="assets.nyc3.digitaloceanspaces.com")
    with aioresponses() as m:
        m.post(
            f"{BASE}/v2/cdn/endpoints", status=500, payload={"id": "server_error", "message": "x"}
        )
        m.get(LIST_URL, payload={"endpoints": [created], "links": {}, "meta": {"total": 1}})
        ep = await cdn.endpoints.create("assets.nyc3.digitaloceanspaces.com")
        assert len(calls(m, "POST")) == 1  # never sent blindly twice
    assert ep.id == created["id"]


async def test_post_after_ambiguous_failure_is_sent_again_only_if_not_created(
    cdn: CDNClient,
) -> None:
    created = endpoint_json(origin="assets.nyc3.digitaloceanspaces.com")
    with aioresponses() as m:
        m.post(f"{BASE}/v2/cdn/endpoints", exception=aiohttp.ServerDisconnectedError())
        m.get(LIST_URL, payload={"endpoints": [], "meta": {"total": 0}})
        m.post(f"{BASE}/v2/cdn/endpoints", status=201, payload={"endpoint": created})
        ep = await cdn.endpoints.create("assets.nyc3.digitaloceanspaces.com")
        assert len(calls(m, "POST")) == 2
    assert ep.id == created["id"]


async def test_post_is_retried_when_the_connection_was_never_made(cdn: CDNClient) -> None:
    created = endpoint_json()
    with aioresponses() as m:
        m.post(f"{BASE}/v2/cdn/endpoints", exception=connect_error())
        m.post(f"{BASE}/v2/cdn/endpoints", status=201, payload={"endpoint": created})
        ep = await cdn.endpoints.create("static.nyc3.digitaloceanspaces.com")
        assert len(calls(m, "POST")) == 2
        assert not calls(m, "GET")  # no look-up needed: it surely did not arrive
    assert ep.id == created["id"]


async def test_connection_errors_on_get_are_retried_then_raised(cdn: CDNClient) -> None:
    with aioresponses() as m:
        for _ in range(4):
            m.get(GET_URL, exception=aiohttp.ServerDisconnectedError())
        with pytest.raises(APIConnectionError) as info:
            await cdn.endpoints.get(ID)
    assert info.value.attempts == 4
    assert "ServerDisconnectedError" in str(info.value)
    assert not isinstance(info.value, APITimeoutError)


async def test_timeout_is_a_typed_timeout_error(cdn: CDNClient) -> None:
    client = cdn.with_options(max_retries=0)
    with aioresponses() as m:
        m.get(GET_URL, exception=TimeoutError())
        with pytest.raises(APITimeoutError, match="timed out after 1 attempt"):
            await client.endpoints.get(ID)


@pytest.mark.parametrize(
    ("status", "cls", "error_id"),
    [
        (400, BadRequestError, "bad_request"),
        (401, AuthenticationError, "unauthorized"),
        (403, PermissionDeniedError, "forbidden"),
        (404, NotFoundError, "not_found"),
        (409, ConflictError, "conflict"),
        (422, UnprocessableEntityError, "unprocessable_entity"),
    ],
)
async def test_error_statuses_map_to_typed_errors(
    cdn: CDNClient, status: int, cls: type[APIError], error_id: str
) -> None:
    with aioresponses() as m:
        m.get(
            GET_URL,
            status=status,
            payload={"id": error_id, "message": "it went wrong", "request_id": "req-123"},
            headers=rl_headers(remaining=3),
        )
        with pytest.raises(cls) as info:
            await cdn.endpoints.get(ID)
        assert len(calls(m)) == 1  # 4xx are final
    err = info.value
    assert (err.status, err.error_id, err.message, err.request_id) == (
        status,
        error_id,
        "it went wrong",
        "req-123",
    )
    assert err.attempts == 1
    assert err.rate_limit.limit == 5 and err.rate_limit.remaining == 3
    assert f"{status} {error_id}" in str(err)


async def test_request_id_falls_back_to_the_header(cdn: CDNClient) -> None:
    with aioresponses() as m:
        m.get(
            GET_URL,
            status=404,
            payload={"id": "not_found", "message": "gone"},
            headers={"x-request-id": "hdr-9"},
        )
        with pytest.raises(NotFoundError) as info:
            await cdn.endpoints.get(ID)
    assert info.value.request_id == "hdr-9"


async def test_non_json_error_body_still_yields_typed_error_with_excerpt(cdn: CDNClient) -> None:
    html = "<html><body><h1>502 Bad Gateway</h1>" + "<p>nginx</p>" * 100 + "</body></html>"
    client = cdn.with_options(max_retries=0)
    with aioresponses() as m:
        m.get(GET_URL, status=502, body=html, content_type="text/html")
        with pytest.raises(InternalServerError) as info:
            await client.endpoints.get(ID)
    assert info.value.status == 502
    assert info.value.message.startswith("502 Bad Gateway nginx")
    assert len(info.value.message) <= 203
    assert info.value.error_id is None


async def test_2xx_with_non_json_body_is_a_clear_error(cdn: CDNClient) -> None:
    with aioresponses() as m:
        m.get(GET_URL, status=200, body="<html>maintenance</html>", content_type="text/html")
        with pytest.raises(APIResponseError, match="not JSON"):
            await cdn.endpoints.get(ID)


async def test_2xx_with_unexpected_json_shape_is_a_clear_error(cdn: CDNClient) -> None:
    with aioresponses() as m:
        m.get(GET_URL, status=200, payload={"something": "else"})
        with pytest.raises(APIResponseError, match="not a CDN endpoint"):
            await cdn.endpoints.get(ID)


async def test_429_waits_retry_after_then_retries(cdn: CDNClient) -> None:
    loop = asyncio.get_running_loop()
    with aioresponses() as m:
        m.get(
            GET_URL,
            status=429,
            payload={"id": "too_many_requests", "message": "slow"},
            headers={"retry-after": "7"},
        )
        m.get(GET_URL, payload={"endpoint": endpoint_json(id=ID)})
        start = loop.time()
        await cdn.endpoints.get(ID)
        assert len(calls(m)) == 2
    assert loop.time() - start == pytest.approx(7.0, abs=0.05)


async def test_429_longer_than_max_rate_limit_wait_raises_at_once_with_reset(
    cdn: CDNClient,
) -> None:
    loop = asyncio.get_running_loop()
    client = cdn.with_options(max_rate_limit_wait=5)
    with aioresponses() as m:
        m.get(
            GET_URL,
            status=429,
            payload={"id": "too_many_requests", "message": "slow"},
            headers={"retry-after": "60"},
        )
        start = loop.time()
        with pytest.raises(RateLimitedError) as info:
            await client.endpoints.get(ID)
    assert loop.time() - start < 0.01
    assert isinstance(info.value, TooManyRequestsError)
    assert info.value.status == 429


async def test_404_soon_after_create_is_retried_briefly(cdn: CDNClient) -> None:
    created = endpoint_json()
    url = f"{BASE}/v2/cdn/endpoints/{created['id']}"
    with aioresponses() as m:
        m.post(f"{BASE}/v2/cdn/endpoints", status=201, payload={"endpoint": created})
        m.get(url, status=404, payload={"id": "not_found", "message": "lag"})
        m.get(url, status=404, payload={"id": "not_found", "message": "lag"})
        m.get(url, payload={"endpoint": created})
        ep = await cdn.endpoints.create(created["origin"])
        assert (await cdn.endpoints.get(ep.id)).id == ep.id


async def test_404_of_an_id_not_just_created_is_raised_at_once(cdn: CDNClient) -> None:
    with aioresponses() as m:
        m.get(GET_URL, status=404, payload={"id": "not_found", "message": "no"})
        with pytest.raises(NotFoundError):
            await cdn.endpoints.get(ID)
        assert len(calls(m)) == 1


async def test_debug_line_per_attempt_and_info_per_retry(
    cdn: CDNClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="cdn_async")
    with aioresponses() as m:
        m.get(GET_URL, status=500, payload={"id": "e", "message": "m"})
        m.get(
            GET_URL, payload={"endpoint": endpoint_json(id=ID)}, headers={"x-request-id": "rid-7"}
        )
        await cdn.endpoints.get(ID)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(debug) == 2
    assert re.search(
        rf"GET /v2/cdn/endpoints/{ID} -> 200 in [\d.]+ ms \(request_id=rid-7, attempt 2\)", debug[1]
    )
    assert any("500; retry 1 in" in line for line in info)


async def test_delete_that_finds_it_gone_after_an_ambiguous_failure_succeeds(
    cdn: CDNClient,
) -> None:
    with aioresponses() as m:
        m.delete(GET_URL, status=503, payload={"id": "unavailable", "message": "x"})
        m.delete(GET_URL, status=404, payload={"id": "not_found", "message": "gone"})
        await cdn.endpoints.delete(ID)  # the first attempt did delete it
        m.delete(GET_URL, status=404, payload={"id": "not_found", "message": "gone"})
        with pytest.raises(NotFoundError):
            await cdn.endpoints.delete(ID)  # a plain 404 is still an error


async def test_redirects_are_not_followed_and_map_to_an_error(cdn: CDNClient) -> None:
    with aioresponses() as m:
        m.get(GET_URL, status=302, headers={"Location": "https://elsewhere.example/steal"})
        with pytest.raises(APIError) as info:
            await cdn.endpoints.get(ID)
        assert len(calls(m)) == 1  # the token never followed the Location header
    assert info.value.status == 302


async def test_429_paused_longer_than_the_call_waits_still_pauses_the_budget_and_says_when(
    cdn: CDNClient,
) -> None:
    client = cdn.with_options(max_rate_limit_wait=5)
    with aioresponses() as m:
        m.get(
            GET_URL,
            status=429,
            payload={"id": "too_many_requests", "message": "x"},
            headers={"retry-after": "9"},
        )
        with pytest.raises(TooManyRequestsError) as info:
            await client.endpoints.get(ID)
    assert info.value.reset_at == pytest.approx(time.time() + 9, abs=2)
    assert max(s.paused_for for s in cdn.budget_snapshot().budgets.values()) == pytest.approx(
        9, abs=0.1
    )


async def test_429s_are_retried_whatever_max_retries_says_until_max_rate_limit_wait(
    cdn: CDNClient,
) -> None:
    # A 429 costs time, never the call: max_retries=0 still waits out three refusals.
    client = cdn.with_options(max_retries=0, max_rate_limit_wait=60)
    loop = asyncio.get_running_loop()
    refused = {"id": "too_many_requests", "message": "x"}
    with aioresponses() as m:
        for _ in range(3):
            m.get(GET_URL, status=429, payload=refused, headers={"retry-after": "2"})
        m.get(GET_URL, payload={"endpoint": endpoint_json(id=ID)})
        start = loop.time()
        ep = await client.endpoints.get(ID)
    assert ep.id == ID
    assert loop.time() - start >= 6.0  # three pauses of 2 s
    # ... and gives up once the next pause would take it past max_rate_limit_wait.
    short = cdn.with_options(max_retries=5, max_rate_limit_wait=5)
    with aioresponses() as m:
        for _ in range(3):
            m.get(GET_URL, status=429, payload=refused, headers={"retry-after": "2"})
        with pytest.raises(TooManyRequestsError):
            await short.endpoints.get(ID)


async def test_429_with_a_reset_already_past_waits_a_period_not_zero(cdn: CDNClient) -> None:
    loop = asyncio.get_running_loop()
    with aioresponses() as m:
        m.get(
            GET_URL,
            status=429,
            payload={"id": "too_many_requests", "message": "x"},
            headers={"ratelimit-limit": "5", "ratelimit-remaining": "0", "ratelimit-reset": "1"},
        )
        m.get(GET_URL, payload={"endpoint": endpoint_json(id=ID)})
        start = loop.time()
        await cdn.endpoints.get(ID)
    # A skewed local clock makes the reset look past; the cdn period (scaled: 1 s) is waited.
    assert loop.time() - start == pytest.approx(1.0, abs=0.005)


async def test_404_after_create_keeps_retrying_for_seconds_not_attempts(cdn: CDNClient) -> None:
    created = endpoint_json()
    url = f"{BASE}/v2/cdn/endpoints/{created['id']}"
    loop = asyncio.get_running_loop()
    cdn._session._rand = lambda: 0.0  # the shortest waits: the patience is what bounds it
    with aioresponses() as m:
        m.post(f"{BASE}/v2/cdn/endpoints", status=201, payload={"endpoint": created})
        for _ in range(20):
            m.get(url, status=404, payload={"id": "not_found", "message": "lag"})
        m.get(url, payload={"endpoint": created})
        ep = await cdn.endpoints.create(created["origin"])
        start = loop.time()
        assert (await cdn.endpoints.get(ep.id)).id == ep.id
    # Twenty 404s, far more than max_retries, each waited at least the (scaled) minimum,
    # all within the patience.
    assert 20 * 0.25 * 0.1 <= loop.time() - start < NOT_FOUND_PATIENCE


async def test_a_closed_user_session_is_a_clear_error() -> None:
    http = aiohttp.ClientSession()
    await http.close()
    async with CDNClient(TOKEN, base_url=BASE, session=http) as cdn:
        with pytest.raises(CDNError, match="aiohttp session used by this client is closed"):
            await cdn.endpoints.get(ID)
        with pytest.raises(PurgeError) as info:  # reported, never a hang
            await cdn.endpoints.purge(ID, ["a", "b"])
    assert set(info.value.report.failed) == {"a", "b"}
    assert info.value.report.requests == 0  # nothing was sent


async def test_create_that_finds_its_origin_in_use_after_an_ambiguous_failure_returns_it(
    cdn: CDNClient,
) -> None:
    created = endpoint_json(origin="assets.nyc3.digitaloceanspaces.com")
    with aioresponses() as m:
        m.post(
            f"{BASE}/v2/cdn/endpoints", status=502, payload={"id": "bad_gateway", "message": "x"}
        )
        m.get(LIST_URL, payload={"endpoints": [], "meta": {"total": 0}})  # the list lags
        m.post(
            f"{BASE}/v2/cdn/endpoints",
            status=422,
            payload={"id": "unprocessable_entity", "message": "in use"},
        )
        m.get(LIST_URL, payload={"endpoints": [created], "meta": {"total": 1}})
        ep = await cdn.endpoints.create("assets.nyc3.digitaloceanspaces.com")
    assert ep.id == created["id"]


# -- 429s: pauses from the server's clock, bounded, errors said once (issue 11) --------------


async def test_a_wrong_local_clock_does_not_turn_a_429_into_an_hours_pause(
    cdn: CDNClient,
) -> None:
    # The local clock is an hour slow; ratelimit-reset is 3 s after the answer's Date.
    cdn._session._wall_clock = lambda: time.time() - 3600
    server_now = int(time.time())
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(server_now))
    client = cdn.with_options(max_rate_limit_wait=1)  # raise once it knows the pause
    with aioresponses() as m:
        m.get(
            GET_URL,
            status=429,
            payload={"id": "too_many_requests", "message": "x"},
            headers={
                "ratelimit-limit": "250",
                "ratelimit-remaining": "0",
                "ratelimit-reset": str(server_now + 3),
                "date": date,
            },
        )
        with pytest.raises(TooManyRequestsError):
            await client.endpoints.get(ID)
    paused = cdn.budget_snapshot().budgets["minute"].paused_for
    # The true wait is in (2, 3] s (Date has whole seconds); it is read no shorter, and at
    # most a second longer.
    assert 2.0 < paused <= 3.0


async def test_a_pause_is_never_longer_than_the_period_of_the_budget_it_pauses(
    cdn: CDNClient,
) -> None:
    client = cdn.with_options(max_rate_limit_wait=0)
    with aioresponses() as m:
        m.get(
            GET_URL,
            status=429,
            payload={"id": "too_many_requests", "message": "x"},
            headers={"ratelimit-limit": "5", "ratelimit-remaining": "0", "retry-after": "86400"},
        )
        with pytest.raises(TooManyRequestsError) as info:
            await client.endpoints.get(ID)
    budgets = cdn.budget_snapshot().budgets
    assert budgets["cdn"].paused_for == pytest.approx(1.0)  # the cdn period (scaled by 0.1)
    assert budgets["minute"].paused_for == 0.0  # the 429 named the cdn budget only
    assert info.value.reset_at == pytest.approx(time.time() + 1.0, abs=0.5)


async def test_a_429_error_says_its_text_once_and_names_its_budget(cdn: CDNClient) -> None:
    client = cdn.with_options(max_rate_limit_wait=0)
    with aioresponses() as m:
        m.get(
            GET_URL,
            status=429,
            payload={"id": "too_many_requests", "message": "slow down", "request_id": "rq-1"},
            headers={"ratelimit-limit": "5", "ratelimit-remaining": "0", "retry-after": "0.5"},
        )
        with pytest.raises(TooManyRequestsError) as info:
            await client.endpoints.get(ID)
    err = info.value
    assert err.message == "slow down"
    assert str(err).count("slow down") == 1
    assert str(err).count("rq-1") == 1
    assert err.budget == "cdn"
    assert isinstance(err, RateLimitedError)


async def test_a_429_is_not_counted_against_our_own_budget(cdn: CDNClient) -> None:
    # The server refused the request without counting it: neither do we (else our estimate
    # of what other clients spend would be short by our own refused requests).
    client = cdn.with_options(max_rate_limit_wait=0)
    with aioresponses() as m:
        m.get(
            GET_URL,
            status=429,
            payload={"id": "too_many_requests", "message": "x"},
            headers={
                "ratelimit-limit": "5",
                "ratelimit-remaining": "3",
                "ratelimit-reset": str(int(time.time()) + 1),
                "retry-after": "0.5",
            },
        )
        with pytest.raises(TooManyRequestsError):
            await client.endpoints.get(ID)
    cdn_state = cdn.budget_snapshot().budgets["cdn"]
    # 2 units the server counts are another client's (held); ours, refused, is not counted.
    assert cdn_state.used == 2


# -- close(): nothing leaves after it (issue 11) ------------------------------------------------


async def test_after_close_calls_raise_client_closed_and_no_session_is_opened() -> None:
    client = CDNClient(TOKEN, base_url=BASE)
    with aioresponses() as m:
        m.get(GET_URL, payload={"endpoint": endpoint_json(id=ID)})
        await client.endpoints.get(ID)
        await client.close()
        with pytest.raises(CDNError, match="client closed"):
            await client.endpoints.get(ID)
        with pytest.raises(CDNError, match="client closed"):
            await client.with_options(timeout=5).endpoints.get(ID)
        assert len(calls(m)) == 1
    assert client._session._pool._http is None  # closed, and never opened again


async def test_close_ends_calls_waiting_in_a_shared_store_and_in_backoff() -> None:
    from cdn_async._budgets import MemoryBudgetStore

    store = MemoryBudgetStore()  # the user's: shared, left open by close()
    limits = RateLimits.documented().scaled(0.1)
    client = CDNClient(TOKEN, base_url=BASE, limits=limits, budget_store=store)
    with aioresponses() as m:
        m.get(GET_URL, payload={"endpoint": endpoint_json(id=ID)}, repeat=True)
        m.get(f"{BASE}/v2/cdn/endpoints/{'1' * 8}-0000-4000-8000-{'0' * 12}", status=503)
        # 5 fill the cdn window; 10 more wait in the store; one sleeps in a 5xx backoff.
        await asyncio.gather(*(client.endpoints.get(ID) for _ in range(5)))
        waiting = [asyncio.create_task(client.endpoints.get(ID)) for _ in range(10)]
        await asyncio.sleep(0.01)
        sent_before = len(calls(m))
        await client.close()
        results = await asyncio.gather(*waiting, return_exceptions=True)
        await asyncio.sleep(5)  # long after the window frees: nothing more is sent
        assert len(calls(m)) == sent_before
    assert all(isinstance(r, CDNError) and "client closed" in str(r) for r in results), results
    assert sum(s.waiters for s in store.snapshot().values()) == 0
    await store.aclose()


async def test_until_the_first_answer_requests_go_one_at_a_time(cdn: CDNClient) -> None:
    # The first answer's headers say what other clients of the token already spent; a burst
    # sent before it would land blind on their units.
    loop = asyncio.get_running_loop()
    sent_at: list[float] = []

    async def slow(url: Any, **kwargs: Any) -> Any:
        sent_at.append(loop.time())
        await asyncio.sleep(1.0)
        return CallbackResult(payload={"endpoint": endpoint_json(id=ID)})

    with aioresponses() as m:
        m.get(GET_URL, callback=slow, repeat=True)
        await asyncio.gather(*(cdn.endpoints.get(ID) for _ in range(4)))
    start = sent_at[0]
    assert [round(t - start, 3) for t in sent_at] == [0.0, 1.0, 1.0, 1.0]


# -- deadlines and a queue cap (issue 15) --------------------------------------------------------


async def test_a_call_that_cannot_be_admitted_in_time_raises_at_once_and_takes_nothing(
    cdn: CDNClient,
) -> None:
    loop = asyncio.get_running_loop()
    hasty = cdn.with_options(max_budget_wait=0.5)
    with aioresponses() as m:
        m.get(GET_URL, payload={"endpoint": endpoint_json(id=ID)}, repeat=True)
        await asyncio.gather(*(cdn.endpoints.get(ID) for _ in range(5)))  # cdn window: full
        start = loop.time()
        with pytest.raises(BudgetWaitTimeout) as info:
            await hasty.endpoints.get(ID)
        assert loop.time() == start  # the store could tell: the window frees in 1 s
        assert info.value.budget == "cdn"
        assert info.value.retry_after == pytest.approx(1.0, abs=0.01)
        assert isinstance(info.value, RateLimitedError)
        assert cdn.budget_snapshot().budgets["cdn"].used == 5  # nothing taken
        # A deadline long enough waits and succeeds.
        await cdn.with_options(max_budget_wait=1.5).endpoints.get(ID)
        assert loop.time() - start == pytest.approx(1.0, abs=0.01)


async def test_a_deadline_that_passes_while_queued_raises_then(cdn: CDNClient) -> None:
    # Units in flight cannot be foreseen: the call waits, then gives up at its deadline.
    loop = asyncio.get_running_loop()

    async def slow(url: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(3.0)
        return CallbackResult(payload={"endpoint": endpoint_json(id=ID)})

    with aioresponses() as m:
        m.get(GET_URL, payload={"endpoint": endpoint_json(id=ID)})
        m.get(GET_URL, callback=slow, repeat=True)
        await cdn.endpoints.get(ID)  # the first answer: no more slow start
        await asyncio.sleep(1.0)  # its unit expires
        busy = [asyncio.create_task(cdn.endpoints.get(ID)) for _ in range(5)]
        await asyncio.sleep(0.1)
        start = loop.time()
        with pytest.raises(BudgetWaitTimeout):
            await cdn.with_options(max_budget_wait=2.0).endpoints.get(ID)
        assert loop.time() - start == pytest.approx(2.0, abs=0.01)
        await asyncio.gather(*busy)
    assert sum(s.waiters for s in cdn.budget_snapshot().budgets.values()) == 0


async def test_max_queued_sheds_calls_beyond_the_cap_at_once(cdn: CDNClient) -> None:
    capped = cdn.with_options(max_queued=3)
    with aioresponses() as m:
        m.get(GET_URL, payload={"endpoint": endpoint_json(id=ID)}, repeat=True)
        await asyncio.gather(*(cdn.endpoints.get(ID) for _ in range(5)))  # window full
        queued = [asyncio.create_task(capped.endpoints.get(ID)) for _ in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await capped.endpoints.get(ID)
        await asyncio.gather(*queued)  # the three in the queue are served
        await capped.endpoints.get(ID)  # and the cap frees as they go
