"""OpenTelemetry for cdn-async: a span per call, the budget wait as a child span, and metrics.

Needs the ``otel`` extra (``pip install 'cdn-async[otel]'``: the OpenTelemetry *API* only; your
application brings the SDK and exporters)::

    from cdn_async.otel import OpenTelemetry

    cdn = CDNClient(telemetry=OpenTelemetry())

Each request call (``cdn.endpoints.get(...)``, each purge request...) is a ``CLIENT`` span
named as the HTTP client semantic conventions say, ``<METHOD> <route>`` (``GET
/v2/cdn/endpoints/{id}``), with ``http.request.method``, ``url.path``, ``url.template``,
``server.address``, ``server.port``, ``http.response.status_code`` (the final answer's),
``http.request.resend_count`` (when retried) and, when it fails, ``error.type`` (the status,
or the error's type name) and an error status; plus ``cdn_async.call_id`` (the call id its log
records and events carry), ``cdn_async.client``, ``cdn_async.attempts``,
``cdn_async.request_id`` and ``cdn_async.budget_wait_s`` (the total over all its waits). Each
attempt's answer is a span event ``cdn_async.attempt`` (attempt, status or ``error.type``,
request id, milliseconds), each retry a ``cdn_async.retry`` event and each 429 pause a
``cdn_async.rate_limit_pause`` event; each wait for the budgets is a child span ``cdn_async
budget wait`` (attribute ``cdn_async.budget``).

A ``purge`` call is an ``INTERNAL`` span ``cdn_async.purge`` (it is not one HTTP request); each
purge request, sent once for every caller whose paths it carries, links to every such caller's
span.

Metrics: ``cdn_async.requests`` (attempts, by ``http.response.status_code``, or by
``error.type`` for an attempt that got no answer), ``cdn_async.rate_limited`` (429s, by
``cdn_async.budget``), ``cdn_async.retries`` (by ``cdn_async.reason``: a status such as
``"503"`` or ``"429"``, or an error type), ``cdn_async.budget_wait`` (histogram in seconds, by
``cdn_async.budget``) and ``cdn_async.queue_depth`` (calls waiting for budgets).
A client without ``telemetry`` runs none of this.
"""

from __future__ import annotations

import contextvars
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import urlsplit

try:
    from opentelemetry import metrics, trace
    from opentelemetry.util.types import AttributeValue
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("cdn_async.otel needs OpenTelemetry: pip install 'cdn-async[otel]'") from exc

from ._call import CALL
from ._events import (
    BudgetWaited,
    Event,
    RateLimitPaused,
    RequestSent,
    ResponseReceived,
    RetryScheduled,
)
from .errors import APIError, TooManyRequestsError

__all__ = ["OpenTelemetry"]

_ID = re.compile(r"/[0-9a-fA-F-]{36}")


class _RequestSpan:
    """The current request call's span, and its budget wait summed over its attempts.

    Events of the call find their span here rather than through OpenTelemetry's context API
    (``trace.get_current_span``), which costs more than the rest of handling most events.
    """

    __slots__ = ("span", "waited")

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self.waited = 0.0


_REQUEST_SPAN: contextvars.ContextVar[_RequestSpan | None] = contextvars.ContextVar(
    "cdn_async_otel_request_span", default=None
)


def _route(path: str) -> str:
    # Low-cardinality span names: ids become {id}.
    return _ID.sub("/{id}", path)


def _error_type(exc: BaseException) -> str:
    # The conventions: the status code for an HTTP error answer, else the error's type.
    if isinstance(exc, APIError) and exc.status:
        return str(exc.status)
    return type(exc).__name__


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
        self._server: dict[str, AttributeValue] = {}
        meter.create_observable_gauge(
            "cdn_async.queue_depth",
            callbacks=[self._observe_depth],
            description="Calls waiting for their budgets",
        )

    def bind(self, queue_depth: Callable[[], int], base_url: str | None = None) -> None:
        """Called by the client: where to read the queue depth from, and the API's address
        (for ``server.address`` and ``server.port``)."""
        self._depth = queue_depth
        if base_url is not None:
            parts = urlsplit(base_url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            self._server = {"server.address": parts.hostname or "", "server.port": port}

    def _observe_depth(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        yield metrics.Observation(self._depth())

    @contextmanager
    def call(self, method: str, path: str) -> Iterator[None]:
        """The span of one logical call; events inside it land on it. ``method``: the HTTP
        method of a request call, or ``"purge"`` for a purge call (an internal span)."""
        call = CALL.get()
        attributes: dict[str, AttributeValue] = {}
        if call is not None:
            attributes["cdn_async.call_id"] = call.id
            if call.client is not None:
                attributes["cdn_async.client"] = call.client
        if not method.isupper():  # an operation above the requests: not an HTTP span
            attributes["url.path"] = path
            with self._tracer.start_as_current_span(
                f"cdn_async.{method}", kind=trace.SpanKind.INTERNAL, attributes=attributes
            ):
                yield
            return
        route = _route(path)
        attributes.update(self._server)
        attributes.update({"http.request.method": method, "url.path": path, "url.template": route})
        with self._tracer.start_as_current_span(
            f"{method} {route}",
            kind=trace.SpanKind.CLIENT,
            attributes=attributes,
            set_status_on_exception=False,
        ) as span:
            token = _REQUEST_SPAN.set(_RequestSpan(span))
            try:
                yield
            except BaseException as exc:
                span.set_attribute("error.type", _error_type(exc))
                span.set_status(trace.StatusCode.ERROR, type(exc).__name__)
                if isinstance(exc, TooManyRequestsError):
                    # A 429 not retried: no pause event counted it.
                    self._rate_limited.add(1, {"cdn_async.budget": exc.budget or "unknown"})
                raise
            finally:
                _REQUEST_SPAN.reset(token)

    def capture(self) -> object | None:
        context = trace.get_current_span().get_span_context()
        return context if context.is_valid else None

    def link(self, contexts: Sequence[object]) -> None:
        span = trace.get_current_span()
        for context in contexts:
            if isinstance(context, trace.SpanContext):
                span.add_link(context)

    def __call__(self, event: Event) -> None:
        current = _REQUEST_SPAN.get()
        span = current.span if current is not None else trace.get_current_span()
        if isinstance(event, ResponseReceived):
            answer: dict[str, AttributeValue] = {"cdn_async.attempt": event.attempt}
            if event.status is not None:
                self._requests.add(1, {"http.response.status_code": event.status})
                span.set_attribute("http.response.status_code", event.status)
                answer["http.response.status_code"] = event.status
            else:  # no answer: counted by what went wrong, not as a made-up status
                self._requests.add(1, {"error.type": event.error or "unknown"})
                answer["error.type"] = event.error or "unknown"
            if event.request_id:
                span.set_attribute("cdn_async.request_id", event.request_id)
                answer["cdn_async.request_id"] = event.request_id
            answer["cdn_async.elapsed_ms"] = event.elapsed_ms
            span.add_event("cdn_async.attempt", answer)
        elif isinstance(event, RequestSent):
            span.set_attribute("cdn_async.attempts", event.attempt)
            if event.attempt > 1:
                span.set_attribute("http.request.resend_count", event.attempt - 1)
        elif isinstance(event, RetryScheduled):
            self._retries.add(1, {"cdn_async.reason": event.reason})
            span.add_event(
                "cdn_async.retry",
                {
                    "cdn_async.retry": event.retry,
                    "cdn_async.reason": event.reason,
                    "cdn_async.delay_s": event.delay_s,
                },
            )
        elif isinstance(event, RateLimitPaused):
            budget = event.budget or "unknown"
            self._rate_limited.add(1, {"cdn_async.budget": budget})
            span.add_event(
                "cdn_async.rate_limit_pause",
                {"cdn_async.budget": budget, "cdn_async.pause_s": event.pause_s},
            )
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
            if current is not None:
                current.waited += event.wait_s
                span.set_attribute("cdn_async.budget_wait_s", current.waited)
