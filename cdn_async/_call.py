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
    the server gave it (None until an answer carried one).

    ``with call:`` makes it the current call (``CALL``) for the block: a plain class rather
    than a generator context manager, since every request enters one.
    """

    __slots__ = ("_id", "_token", "client", "request_id")

    def __init__(self, client: str | None) -> None:
        self._id: str | None = None
        self.client = client
        self.request_id: str | None = None
        self._token: contextvars.Token[Call | None] | None = None

    @property
    def id(self) -> str:
        """12 hex digits, made when first read (a call nobody logs or observes makes none):
        enough to tell concurrent calls apart in any log store; not a secret, so the cheap
        generator."""
        if self._id is None:
            self._id = f"{random.getrandbits(48):012x}"
        return self._id

    def __enter__(self) -> Call:
        self._token = CALL.set(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            CALL.reset(self._token)
            self._token = None

    def __repr__(self) -> str:
        return f"<Call {self.id} client={self.client!r} request_id={self.request_id!r}>"


#: The call the current task works for, or None outside a call.
CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar("cdn_async_call", default=None)
