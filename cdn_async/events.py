"""What a client reports as it works: typed events for ``CDNClient(event_hooks=[...])``, and the
raw answers of a call (``CDNClient.with_raw_response``).

::

    def on_event(event: events.Event) -> None:
        if isinstance(event, events.BudgetWaited):
            metrics.observe("cdn_budget_wait", event.wait_s, budget=event.budget)

    cdn = CDNClient(event_hooks=[on_event])

A hook may be an ``async def`` function: it is awaited by a task of the client, in the order of
the events, and never holds up the call. Every event names its logical call (``call_id``) and
the client (``client``, its ``name``).

Every record of the ``cdn_async`` logger also carries its fields as ``extra`` (``method``,
``path``, ``status``, ``attempt``, ``request_id``, ``budget``, ``wait_s``, ``elapsed_ms``, and
``call_id`` and ``client`` on every record), so a JSON log handler gets them without parsing
text.
"""

from ._client import RawResponse
from ._events import (
    BudgetWaited,
    Event,
    EventHook,
    PurgeBatchSent,
    RateLimitPaused,
    RequestSent,
    ResponseMeta,
    ResponseReceived,
    RetryScheduled,
)
from ._public import publish as _publish

__all__ = [
    "BudgetWaited",
    "Event",
    "EventHook",
    "PurgeBatchSent",
    "RateLimitPaused",
    "RawResponse",
    "RequestSent",
    "ResponseMeta",
    "ResponseReceived",
    "RetryScheduled",
]

_publish(__name__, [globals()[name] for name in __all__])
