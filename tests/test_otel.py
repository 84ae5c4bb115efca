"""OpenTelemetry: spans per call with the budget wait as a child span, and metrics, checked with
the OpenTelemetry SDK's in-memory exporters against the fake API over loopback."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from cdn_async import Budget, CDNClient, NotFoundError, RateLimits, TooManyRequestsError
from cdn_async.otel import OpenTelemetry
from cdn_async.testing import FakeCDNServer

SCALE = 0.01


class Recorder:
    """An OpenTelemetry for a client, with the SDK's in-memory span exporter and reader."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.telemetry = OpenTelemetry(
            tracer_provider=provider, meter_provider=MeterProvider(metric_readers=[self.reader])
        )

    def metrics(self) -> dict[str, Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return {
            m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        }

    def points(self, name: str) -> list[tuple[dict[str, Any], float]]:
        metric = self.metrics().get(name)
        if metric is None:
            return []
        return [(dict(p.attributes), p.value) for p in metric.data.data_points]


def client(server: FakeCDNServer, rec: Recorder, **options: Any) -> CDNClient:
    return CDNClient(
        server.token,
        base_url=server.url,
        limits=options.pop("limits", RateLimits.documented().scaled(SCALE)),
        telemetry=rec.telemetry,
        **options,
    )


async def test_a_span_per_call_with_its_budget_wait_and_metrics() -> None:
    rec = Recorder()
    async with FakeCDNServer(time_scale=SCALE) as server:
        ep = server.add_endpoint("static.nyc3.digitaloceanspaces.com")
        server.faults.fail_next(1, status=503, op="get")
        async with client(server, rec, name="web") as cdn:
            await asyncio.gather(*(cdn.endpoints.get(ep["id"]) for _ in range(7)))

    finished = rec.spans.get_finished_spans()
    calls = [s for s in finished if s.name == "GET /v2/cdn/endpoints/{id}"]
    waits = [s for s in finished if s.name == "cdn_async budget wait"]
    assert len(calls) == 7
    host, port = server.url.removeprefix("http://").split(":")
    for s in calls:  # the HTTP client semantic conventions
        assert s.kind == SpanKind.CLIENT
        assert s.attributes["http.request.method"] == "GET"
        assert s.attributes["url.template"] == "/v2/cdn/endpoints/{id}"
        assert s.attributes["server.address"] == host
        assert s.attributes["server.port"] == int(port)
        assert s.attributes["http.response.status_code"] == 200
        assert "error.type" not in s.attributes
        assert s.attributes["cdn_async.request_id"] and s.attributes["cdn_async.client"] == "web"
    assert len({s.attributes["cdn_async.call_id"] for s in calls}) == 7
    (retried,) = [s for s in calls if s.attributes["cdn_async.attempts"] == 2]  # the 503 retry
    assert retried.attributes["http.request.resend_count"] == 1
    # Every attempt is a span event: its status and request id.
    attempts = [e for e in retried.events if e.name == "cdn_async.attempt"]
    assert [e.attributes["http.response.status_code"] for e in attempts] == [503, 200]
    assert all(e.attributes["cdn_async.request_id"] for e in attempts)
    assert (
        attempts[0].attributes["cdn_async.request_id"] != retried.attributes["cdn_async.request_id"]
    )  # the span's own is the final answer's
    assert [
        e.attributes["cdn_async.reason"] for e in retried.events if e.name == "cdn_async.retry"
    ] == ["503"]
    assert waits, "7 calls on a 5-per-window budget: someone waited"
    by_id = {s.context.span_id: s for s in calls}
    for w in waits:
        assert w.parent is not None and w.parent.span_id in by_id  # a child of its call
        assert w.attributes["cdn_async.budget"] == "cdn"

    requests = {
        attrs["http.response.status_code"]: value
        for attrs, value in rec.points("cdn_async.requests")
    }
    assert requests == {200: 7, 503: 1}
    assert rec.points("cdn_async.retries") == [({"cdn_async.reason": "503"}, 1)]
    (hist,) = rec.metrics()["cdn_async.budget_wait"].data.data_points
    assert hist.attributes["cdn_async.budget"] == "cdn" and hist.count == len(waits)
    assert "cdn_async.queue_depth" in rec.metrics()


async def test_budget_wait_s_is_the_total_of_every_wait_of_the_call() -> None:
    # One request per 0.1 s: the second call waits, gets a 503, and waits again to retry.
    rec = Recorder()
    tight = RateLimits((Budget("cdn", 1, 0.1),))
    async with FakeCDNServer(time_scale=SCALE) as server:
        ep = server.add_endpoint("static.nyc3.digitaloceanspaces.com")
        async with client(server, rec, limits=tight) as cdn:
            cdn._session._rand = lambda: 0.0  # no backoff: the retry waits for the budget
            await cdn.endpoints.get(ep["id"])
            server.faults.fail_next(1, status=503, op="get")
            await cdn.endpoints.get(ep["id"])
    finished = rec.spans.get_finished_spans()
    second = [s for s in finished if s.name.startswith("GET ")][-1]
    children = [
        s
        for s in finished
        if s.name == "cdn_async budget wait" and s.parent.span_id == second.context.span_id
    ]
    assert len(children) == 2
    total = sum(c.attributes["cdn_async.wait_s"] for c in children)
    assert second.attributes["cdn_async.budget_wait_s"] == pytest.approx(total)
    assert total > max(c.attributes["cdn_async.wait_s"] for c in children)


async def test_a_429_retry_counts_as_a_retry_and_as_rate_limited_by_budget() -> None:
    rec = Recorder()
    async with FakeCDNServer(time_scale=SCALE) as server:
        ep = server.add_endpoint("static.nyc3.digitaloceanspaces.com")
        server.spend(server.token, "cdn", 5)  # another client spent the whole cdn budget
        async with client(server, rec) as cdn:
            await cdn.endpoints.get(ep["id"])
    assert [e.status for e in server.journal] == [429, 200]
    assert sorted(a["http.response.status_code"] for a, _ in rec.points("cdn_async.requests")) == [
        200,
        429,
    ]
    assert rec.points("cdn_async.retries") == [({"cdn_async.reason": "429"}, 1)]
    assert rec.points("cdn_async.rate_limited") == [({"cdn_async.budget": "cdn"}, 1)]
    (span,) = [s for s in rec.spans.get_finished_spans() if s.name.startswith("GET ")]
    names = [e.name for e in span.events]
    assert names == [
        "cdn_async.attempt",
        "cdn_async.rate_limit_pause",
        "cdn_async.retry",
        "cdn_async.attempt",
    ]


async def test_a_dropped_connection_is_counted_by_error_type_never_as_status_0() -> None:
    rec = Recorder()
    async with FakeCDNServer(time_scale=SCALE) as server:
        ep = server.add_endpoint("static.nyc3.digitaloceanspaces.com")
        server.faults.drop_next(1, op="get")
        async with client(server, rec) as cdn:
            await cdn.endpoints.get(ep["id"])
    points = rec.points("cdn_async.requests")
    assert all(a.get("http.response.status_code") != 0 for a, _ in points)
    dropped = [a for a, _ in points if "error.type" in a]
    assert len(dropped) == 1 and "http.response.status_code" not in dropped[0]
    (span,) = [s for s in rec.spans.get_finished_spans() if s.name.startswith("GET ")]
    first, second = [e for e in span.events if e.name == "cdn_async.attempt"]
    assert first.attributes["error.type"] == dropped[0]["error.type"]
    assert second.attributes["http.response.status_code"] == 200


async def test_a_failed_call_has_error_type_and_an_error_status() -> None:
    rec = Recorder()
    async with FakeCDNServer(time_scale=SCALE) as server, client(server, rec) as cdn:
        with pytest.raises(NotFoundError):
            await cdn.endpoints.get("892071a0-bb95-49bc-8021-3afd67a210bf")
        server.spend(server.token, "cdn", 5)
        with pytest.raises(TooManyRequestsError):
            await cdn.with_options(max_rate_limit_wait=0).endpoints.list().__anext__()
    failed = [s for s in rec.spans.get_finished_spans() if s.name.startswith("GET ")]
    assert [s.attributes["error.type"] for s in failed] == ["404", "429"]
    assert all(s.status.status_code == StatusCode.ERROR for s in failed)
    # A 429 that was not retried is rate-limited too, with its budget.
    assert rec.points("cdn_async.rate_limited") == [({"cdn_async.budget": "cdn"}, 1)]
    assert rec.points("cdn_async.retries") == []


def test_without_opentelemetry_the_client_works_and_the_extra_names_itself() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if the extra were not installed
        import cdn_async
        cdn_async.CDNClient("dop_v1_x", base_url="http://127.0.0.1:1")
        try:
            import cdn_async.otel
        except ImportError as exc:
            print(exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "pip install 'cdn-async[otel]'" in out


async def test_a_shared_purge_request_links_to_every_callers_span() -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry = OpenTelemetry(tracer_provider=provider, meter_provider=MeterProvider())
    async with FakeCDNServer(time_scale=SCALE) as server:
        ep = server.add_endpoint("static.nyc3.digitaloceanspaces.com")
        async with CDNClient(
            server.token,
            base_url=server.url,
            limits=RateLimits.documented().scaled(SCALE),
            telemetry=telemetry,
        ) as cdn:
            await asyncio.gather(
                cdn.endpoints.purge(ep["id"], ["a", "b"]),
                cdn.endpoints.purge(ep["id"], ["b", "c"]),
            )
    finished = spans.get_finished_spans()
    callers = [s for s in finished if s.name == "cdn_async.purge"]
    (request,) = [s for s in finished if s.name == "DELETE /v2/cdn/endpoints/{id}/cache"]
    assert len(callers) == 2
    linked = {link.context.span_id for link in request.links}
    assert linked == {s.context.span_id for s in callers}
    # A purge call is not an HTTP request: no made-up "PURGE" method.
    for s in callers:
        assert s.kind == SpanKind.INTERNAL and "http.request.method" not in s.attributes
    assert request.attributes["http.request.method"] == "DELETE"
    # The batch is a call of its own; each caller's span has its own call id.
    ids = {s.attributes["cdn_async.call_id"] for s in [*callers, request]}
    assert len(ids) == 3
