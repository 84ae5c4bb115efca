"""OpenTelemetry: spans per call with the budget wait as a child span, and metrics, checked with
the OpenTelemetry SDK's in-memory exporters against the fake API over loopback."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cdn_async import CDNClient, RateLimits
from cdn_async.otel import OpenTelemetry
from cdn_async.testing import FakeCDNServer

SCALE = 0.01


async def test_a_span_per_call_with_its_budget_wait_and_metrics() -> None:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    telemetry = OpenTelemetry(
        tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[reader])
    )
    async with FakeCDNServer(time_scale=SCALE) as server:
        ep = server.add_endpoint("static.nyc3.digitaloceanspaces.com")
        server.faults.fail_next(1, status=503, op="get")
        async with CDNClient(
            server.token,
            base_url=server.url,
            limits=RateLimits.documented().scaled(SCALE),
            telemetry=telemetry,
        ) as cdn:
            await asyncio.gather(*(cdn.endpoints.get(ep["id"]) for _ in range(7)))

    finished = spans.get_finished_spans()
    calls = [s for s in finished if s.name == "cdn_async GET /v2/cdn/endpoints/{id}"]
    waits = [s for s in finished if s.name == "cdn_async budget wait"]
    assert len(calls) == 7
    assert all(s.attributes["http.response.status_code"] == 200 for s in calls)
    assert all(s.attributes["cdn_async.request_id"] for s in calls)
    assert sorted(s.attributes["cdn_async.attempts"] for s in calls)[-1] == 2  # the 503 retry
    assert waits, "7 calls on a 5-per-window budget: someone waited"
    by_id = {s.context.span_id: s for s in calls}
    for w in waits:
        assert w.parent is not None and w.parent.span_id in by_id  # a child of its call
        assert w.attributes["cdn_async.budget"] == "cdn"
        parent = by_id[w.parent.span_id]
        assert parent.attributes["cdn_async.budget_wait_s"] > 0

    data = reader.get_metrics_data()
    metrics = {
        m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }
    requests = {
        p.attributes["http.response.status_code"]: p.value
        for p in metrics["cdn_async.requests"].data.data_points
    }
    assert requests == {200: 7, 503: 1}
    assert sum(p.value for p in metrics["cdn_async.retries"].data.data_points) == 1
    (hist,) = metrics["cdn_async.budget_wait"].data.data_points
    assert hist.attributes["cdn_async.budget"] == "cdn" and hist.count == len(waits)
    assert "cdn_async.queue_depth" in metrics


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
    callers = [s for s in finished if s.name.startswith("cdn_async PURGE")]
    (request,) = [s for s in finished if s.name.startswith("cdn_async DELETE")]
    assert len(callers) == 2
    linked = {link.context.span_id for link in request.links}
    assert linked == {s.context.span_id for s in callers}
