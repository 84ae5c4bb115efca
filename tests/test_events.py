"""Event hooks, structured log records and raw answers: what an operator sees of each call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from cdn_async import CDNClient, RateLimits, events
from cdn_async.testing import FakeCDNServer

SCALE = 0.01
ORIGIN = "static.nyc3.digitaloceanspaces.com"


@pytest.fixture
async def server() -> AsyncIterator[FakeCDNServer]:
    async with FakeCDNServer(time_scale=SCALE) as s:
        yield s


def client(server: FakeCDNServer, **options: object) -> CDNClient:
    return CDNClient(
        server.token,
        base_url=server.url,
        limits=RateLimits.documented().scaled(SCALE),
        **options,  # type: ignore[arg-type]
    )


async def test_hooks_see_every_step_of_every_call(server: FakeCDNServer) -> None:
    seen: list[events.Event] = []
    ep = server.add_endpoint(ORIGIN)
    server.faults.fail_next(1, status=503, op="get")
    async with client(server, event_hooks=[seen.append]) as cdn:
        await cdn.endpoints.get(ep["id"])  # 503, retried
        await asyncio.gather(*(cdn.endpoints.get(ep["id"]) for _ in range(6)))  # one waits
    kinds = [type(e).__name__ for e in seen]
    assert kinds[:4] == ["RequestSent", "ResponseReceived", "RetryScheduled", "RequestSent"]
    answers = [e for e in seen if isinstance(e, events.ResponseReceived)]
    assert [a.status for a in answers].count(503) == 1
    assert all(a.request_id for a in answers)  # request ids on success too
    assert all(a.rate_limit is not None and a.rate_limit.limit == 5 for a in answers)
    waits = [e for e in seen if isinstance(e, events.BudgetWaited)]
    assert waits and all(w.budget == "cdn" and w.wait_s > 0 for w in waits)


async def test_a_raising_hook_is_logged_and_never_breaks_a_call(
    server: FakeCDNServer, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: events.Event) -> None:
        raise RuntimeError("boom")

    ep = server.add_endpoint(ORIGIN)
    async with client(server, event_hooks=[broken]) as cdn:
        got = await cdn.endpoints.get(ep["id"])
    assert got.id == ep["id"]
    assert any("event hook" in r.getMessage() for r in caplog.records)


async def test_log_records_carry_their_fields_as_extra(
    server: FakeCDNServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="cdn_async")
    ep = server.add_endpoint(ORIGIN)
    async with client(server) as cdn:
        await asyncio.gather(*(cdn.endpoints.get(ep["id"]) for _ in range(7)))
    answered = [r for r in caplog.records if getattr(r, "status", None) == 200]
    assert answered
    for r in answered:
        assert r.method == "GET" and r.path.startswith("/v2/cdn/endpoints/")  # type: ignore[attr-defined]
        assert r.request_id and r.attempt == 1 and r.elapsed_ms > 0  # type: ignore[attr-defined]
    waited = [r for r in caplog.records if getattr(r, "wait_s", None) and r.levelno == logging.INFO]
    assert waited and all(r.budget == "cdn" for r in waited)  # type: ignore[attr-defined]
    assert all("rate budget cdn" in r.getMessage() for r in waited)


async def test_raw_response_gives_request_id_and_headers_of_a_success(
    server: FakeCDNServer,
) -> None:
    async with client(server) as cdn:
        raw = await cdn.with_raw_response.endpoints.create(ORIGIN)
        assert raw.parsed.origin == ORIGIN
        (meta,) = raw.responses
        assert meta.status == 201 and meta.request_id and meta.attempts == 1
        assert meta.rate_limit.limit == 5 and meta.rate_limit.remaining is not None
        got = await cdn.with_raw_response.endpoints.get(raw.parsed.id)
        assert got.parsed == raw.parsed and got.responses[0].request_id != meta.request_id
    journal_ids = {r.request_id for r in server.journal}
    assert {meta.request_id, got.responses[0].request_id} <= journal_ids


async def test_a_shared_purge_batch_is_one_event_naming_its_callers_and_request_ids(
    server: FakeCDNServer,
) -> None:
    seen: list[events.Event] = []
    ep = server.add_endpoint(ORIGIN)
    async with client(server, event_hooks=[seen.append]) as cdn:
        one, two = await asyncio.gather(
            cdn.endpoints.purge(ep["id"], ["a.png", "b.png"]),
            cdn.endpoints.purge(ep["id"], ["b.png", "c.png"]),
        )
    batches = [e for e in seen if isinstance(e, events.PurgeBatchSent)]
    assert len(batches) == 1 and batches[0].callers == 2 and batches[0].ok
    assert set(batches[0].paths) == {"a.png", "b.png", "c.png"}
    sent = [r.request_id for r in server.journal if r.op == "purge"]
    assert one.request_ids == two.request_ids == (batches[0].request_id,) == tuple(sent)


async def test_every_record_and_event_of_a_call_carries_its_call_id(
    server: FakeCDNServer, caplog: pytest.LogCaptureFixture
) -> None:
    # 8 concurrent GETs of one path on a 5-per-window budget: 3 wait. Each call's lines and
    # events join up by call id, and no two calls share one.
    caplog.set_level(logging.DEBUG, logger="cdn_async")
    seen: list[events.Event] = []
    ep = server.add_endpoint(ORIGIN)
    async with client(server, event_hooks=[seen.append], name="web-1") as cdn:
        await asyncio.gather(*(cdn.endpoints.get(ep["id"]) for _ in range(8)))
    by_call: dict[str, list[events.Event]] = {}
    for e in seen:
        assert e.call_id and e.client == "web-1"
        by_call.setdefault(e.call_id, []).append(e)
    assert len(by_call) == 8
    for call_events in by_call.values():
        (answer,) = [e for e in call_events if isinstance(e, events.ResponseReceived)]
        assert answer.status == 200
    records = [r for r in caplog.records if r.name == "cdn_async"]
    assert {r.call_id for r in records} == set(by_call)  # type: ignore[attr-defined]
    assert all(r.client == "web-1" for r in records)  # type: ignore[attr-defined]
    waited = [r for r in records if "waited" in r.getMessage()]
    assert len(waited) >= 3
    for r in waited:  # a wait line names its call, whose answer line names the request id
        call_id = r.call_id  # type: ignore[attr-defined]
        answer = next(e for e in by_call[call_id] if isinstance(e, events.ResponseReceived))
        (line,) = [
            a
            for a in records
            if a.call_id == call_id and getattr(a, "status", None) == 200  # type: ignore[attr-defined]
        ]
        assert line.request_id == answer.request_id  # type: ignore[attr-defined]
    assert {e.request_id for e in seen if isinstance(e, events.ResponseReceived)} == {
        j.request_id for j in server.journal
    }


async def test_after_an_answer_the_calls_records_carry_its_request_id(
    server: FakeCDNServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cdn_async")
    seen: list[events.Event] = []
    ep = server.add_endpoint(ORIGIN)
    server.faults.fail_next(1, status=503, op="get")
    async with client(server, event_hooks=[seen.append]) as cdn:
        await cdn.endpoints.get(ep["id"])
    failed = server.journal[0]
    assert failed.status == 503
    (retry_line,) = [r for r in caplog.records if "retry" in r.getMessage()]
    assert retry_line.request_id == failed.request_id  # type: ignore[attr-defined]
    (retry,) = [e for e in seen if isinstance(e, events.RetryScheduled)]
    assert retry.request_id == failed.request_id and retry.reason == "503"


async def test_a_429_retry_is_a_retry_scheduled_after_its_pause(server: FakeCDNServer) -> None:
    seen: list[events.Event] = []
    ep = server.add_endpoint(ORIGIN)
    server.spend(server.token, "cdn", 5)  # another client spent the cdn budget
    async with client(server, event_hooks=[seen.append]) as cdn:
        await cdn.endpoints.get(ep["id"])
    kinds = [type(e).__name__ for e in seen if not isinstance(e, events.BudgetWaited)]
    assert kinds == [
        "RequestSent",
        "ResponseReceived",
        "RateLimitPaused",
        "RetryScheduled",
        "RequestSent",
        "ResponseReceived",
    ]
    pause, retry = seen[2], seen[3]
    assert isinstance(pause, events.RateLimitPaused) and isinstance(retry, events.RetryScheduled)
    assert retry.reason == "429" and retry.retry == 1 and retry.delay_s == pause.pause_s
    assert retry.request_id == server.journal[0].request_id
    assert len({e.call_id for e in seen}) == 1


async def test_a_shared_purge_batch_names_the_calls_it_served(server: FakeCDNServer) -> None:
    seen: list[events.Event] = []
    ep = server.add_endpoint(ORIGIN)
    async with client(server, event_hooks=[seen.append]) as cdn:
        await asyncio.gather(
            cdn.endpoints.purge(ep["id"], ["a.png", "b.png"]),
            cdn.endpoints.purge(ep["id"], ["b.png", "c.png"]),
        )
    (batch,) = [e for e in seen if isinstance(e, events.PurgeBatchSent)]
    assert len(batch.caller_ids) == 2 and batch.call_id not in batch.caller_ids
    # The batch's request events carry the batch's call id.
    request = [e for e in seen if isinstance(e, events.ResponseReceived)]
    assert {e.call_id for e in request} == {batch.call_id}


# -- async hooks -------------------------------------------------------------------------------


async def test_an_async_hook_is_awaited_for_every_event_in_order_without_holding_up_calls(
    server: FakeCDNServer,
) -> None:
    got: list[events.Event] = []
    gate = asyncio.Event()

    async def slow_hook(event: events.Event) -> None:
        await gate.wait()  # held until the calls are done: they must not wait for it
        got.append(event)

    sync_seen: list[events.Event] = []
    ep = server.add_endpoint(ORIGIN)
    cdn = client(server, event_hooks=[slow_hook, sync_seen.append])
    try:
        await asyncio.wait_for(
            asyncio.gather(*(cdn.endpoints.get(ep["id"]) for _ in range(3))), timeout=5
        )
        assert got == [] and sync_seen  # the calls finished; the async hook has not yet
        gate.set()
    finally:
        await cdn.close()  # lets the hook finish what it was given
    assert got == sync_seen  # every event, in order


async def test_an_async_hook_that_raises_is_logged_and_later_events_still_reach_it(
    server: FakeCDNServer, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[str] = []

    async def flaky(event: events.Event) -> None:
        if isinstance(event, events.RequestSent):
            raise RuntimeError("boom")
        got.append(type(event).__name__)

    ep = server.add_endpoint(ORIGIN)
    async with client(server, event_hooks=[flaky]) as cdn:
        await cdn.endpoints.get(ep["id"])
    assert got == ["ResponseReceived"]
    assert any("event hook" in r.getMessage() for r in caplog.records)


async def test_close_stops_waiting_for_a_stuck_async_hook_without_warnings(
    server: FakeCDNServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hook that never returns: close() gives up after its patience, cancels it, and closes
    # the events never started (no "coroutine was never awaited"; warnings are errors here).
    monkeypatch.setattr("cdn_async._events.HOOK_DRAIN_TIMEOUT", 0.05)

    async def stuck(event: events.Event) -> None:
        await asyncio.Event().wait()

    ep = server.add_endpoint(ORIGIN)
    cdn = client(server, event_hooks=[stuck])
    await cdn.endpoints.get(ep["id"])
    await asyncio.wait_for(cdn.close(), timeout=2)
    assert any("still busy" in r.getMessage() for r in caplog.records)
