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
