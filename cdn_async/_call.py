"""The identity of one logical call, shared by every log record, event and span it makes.

A context variable holds the current ``Call``: set when a call starts (``Observer.call``), read
by the log filter (``_logs.py``) and by the observer, so records written anywhere below the
call (the budgets, the retry policy, the purge engine) carry the same ``call_id`` without
passing it down. Tasks copy the context they are created in; a task that starts calls of its
own (the purge engine's sender, the async-hook runner, a background purge) clears it first.
"""

from __future__ import annotations

import contextvars
import random

__all__ = ["CALL", "Call"]


class Call:
    """One logical call: its id, the name of the client making it, and the last request id
    the server gave it (None until an answer carried one)."""

    __slots__ = ("client", "id", "request_id")

    def __init__(self, client: str | None) -> None:
        # 12 hex digits: enough to tell concurrent calls apart in any log store (not a secret,
        # so the cheap generator).
        self.id = f"{random.getrandbits(48):012x}"
        self.client = client
        self.request_id: str | None = None

    def __repr__(self) -> str:
        return f"<Call {self.id} client={self.client!r} request_id={self.request_id!r}>"


#: The call the current task works for, or None outside a call.
CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar("cdn_async_call", default=None)
