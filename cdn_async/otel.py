"""OpenTelemetry for cdn-async: a span per call, the budget wait as a child span, and metrics.

Needs the ``otel`` extra (``pip install 'cdn-async[otel]'``: the OpenTelemetry *API* only; your
application brings the SDK and exporters)::

    from cdn_async.otel import OpenTelemetry

    cdn = CDNClient(telemetry=OpenTelemetry())

Each logical call (``cdn.endpoints.get(...)``, one purge request...) is one span,
``cdn_async <METHOD> <route>``, with the attributes ``http.request.method``, ``url.path``,
``http.response.status_code``, ``cdn_async.attempts``, ``cdn_async.request_id``,
``cdn_async.budget_wait_s``; a wait for the budgets is a child span ``cdn_async budget wait``
(attribute ``cdn_async.budget``). A ``purge`` call is a span ``cdn_async PURGE ...`` of its
own, and each purge request, sent once for every caller whose paths it carries, links to every
such caller's span. Metrics: ``cdn_async.requests`` (counter, by status),
``cdn_async.rate_limited`` (429s), ``cdn_async.retries``, ``cdn_async.budget_wait``
(histogram in seconds, by budget) and ``cdn_async.queue_depth`` (calls waiting for budgets).
A client without ``telemetry`` runs none of this.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

try:
    from opentelemetry import metrics, trace
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("cdn_async.otel needs OpenTelemetry: pip install 'cdn-async[otel]'") from exc

from ._events import BudgetWaited, Event, RequestSent, ResponseReceived, RetryScheduled

__all__ = ["OpenTelemetry"]

_ID = re.compile(r"/[0-9a-fA-F-]{36}")


def _route(path: str) -> str:
    # Low-cardinality span names: ids become {id}.
    return _ID.sub("/{id}", path)


class OpenTelemetry:
    """Spans and metrics for every call of a client (see the module docstring).

    Args:
        tracer_provider: Default: the global one (``opentelemetry.trace``).
        meter_provider: Default: the global one (``opentelemetry.metrics``).
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._tracer = trace.get_tracer("cdn_async", tracer_provider=tracer_provider)
        meter = metrics.get_meter("cdn_async", meter_provider=meter_provider)
        self._requests = meter.create_counter("cdn_async.requests", description="Attempts")
        self._rate_limited = meter.create_counter("cdn_async.rate_limited", description="429s")
        self._retries = meter.create_counter("cdn_async.retries", description="Retries")
        self._wait = meter.create_histogram(
            "cdn_async.budget_wait", unit="s", description="Seconds waited for rate budgets"
        )
        self._depth: Callable[[], int] = lambda: 0
        meter.create_observable_gauge(
            "cdn_async.queue_depth",
            callbacks=[self._observe_depth],
            description="Calls waiting for their budgets",
        )

    def bind(self, queue_depth: Callable[[], int]) -> None:
        """Called by the client: where to read the queue depth from."""
        self._depth = queue_depth

    def _observe_depth(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        yield metrics.Observation(self._depth())

    @contextmanager
    def call(self, method: str, path: str) -> Iterator[None]:
        """The span of one logical call; events inside it land on it."""
        with self._tracer.start_as_current_span(
            f"cdn_async {method} {_route(path)}",
            kind=trace.SpanKind.CLIENT,
            attributes={"http.request.method": method, "url.path": path},
        ):
            yield

    def capture(self) -> object | None:
        context = trace.get_current_span().get_span_context()
        return context if context.is_valid else None

    def link(self, contexts: Sequence[object]) -> None:
        span = trace.get_current_span()
        for context in contexts:
            if isinstance(context, trace.SpanContext):
                span.add_link(context)

    def __call__(self, event: Event) -> None:
        span = trace.get_current_span()
        if isinstance(event, ResponseReceived):
            status = event.status if event.status is not None else 0
            self._requests.add(1, {"http.response.status_code": status})
            if status == 429:
                self._rate_limited.add(1)
            if event.status is not None:
                span.set_attribute("http.response.status_code", event.status)
            if event.request_id:
                span.set_attribute("cdn_async.request_id", event.request_id)
        elif isinstance(event, RequestSent):
            span.set_attribute("cdn_async.attempts", event.attempt)
        elif isinstance(event, RetryScheduled):
            self._retries.add(1, {"cdn_async.reason": event.reason})
        elif isinstance(event, BudgetWaited):
            budget = event.budget or "unknown"
            self._wait.record(event.wait_s, {"cdn_async.budget": budget})
            end = time.time_ns()
            child = self._tracer.start_span(
                "cdn_async budget wait",
                start_time=end - int(event.wait_s * 1e9),
                attributes={"cdn_async.budget": budget, "cdn_async.wait_s": event.wait_s},
            )
            child.end(end_time=end)
            span.set_attribute("cdn_async.budget_wait_s", event.wait_s)
