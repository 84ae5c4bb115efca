"""What the fake server saw: one journal entry per request, and running counters."""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs


@attrs.frozen
class JournalEntry:
    """One request as the server handled it.

    Attributes:
        arrival: Event-loop clock reading when the request was stamped (after uplink latency).
        method: The HTTP method.
        path: The URL path.
        query: The query parameters (last value wins for repeated keys).
        body: The parsed JSON body, the raw text if it was not JSON, or None when empty.
        status: The status sent, or None when the connection was dropped.
        rule: Which rule answered: ``"ok"``, ``"auth"``, ``"scope"``, ``"bad_request"``,
            ``"validation"``, ``"not_found"``, ``"invisible"`` (404 for a new endpoint still
            invisible), ``"conflict"``, ``"rate_limit:<budget>"``, ``"fault:5xx_before"``,
            ``"fault:5xx_after"``, ``"fault:drop_before"``, ``"fault:drop_after"``,
            ``"fault:non_json"``.
        op: The operation (``"list"``, ``"create"``, ``"get"``, ``"update"``, ``"delete"``,
            ``"purge"``), or None for a path outside the API.
        endpoint_id: The ``cdn_id`` in the path, if any.
        request_id: The ``x-request-id`` sent with the answer.
        counted: Whether the request was counted in the token's budget windows.
        token: The bearer token presented (hidden from the repr).
    """

    arrival: float
    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int | None
    rule: str
    op: str | None = None
    endpoint_id: str | None = None
    request_id: str = ""
    counted: bool = False
    token: str | None = attrs.field(default=None, repr=False)


@attrs.define
class Counters:
    """Running totals since the server started (or since ``FakeCDNServer.reset_journal``).

    Attributes:
        requests: Requests journaled.
        rate_limited: 429 answers by the name of the budget that was exceeded.
        conflicts: 409 answers (identical purge in progress).
        by_rule: Answers by journal rule.
        by_status: Answers by status (dropped connections are not counted here).
    """

    requests: int = 0
    rate_limited: Counter[str] = attrs.Factory(Counter)
    conflicts: int = 0
    by_rule: Counter[str] = attrs.Factory(Counter)
    by_status: Counter[int] = attrs.Factory(Counter)

    def record(self, entry: JournalEntry) -> None:
        """Count one journal entry.

        Args:
            entry: The entry just journaled.
        """
        self.requests += 1
        self.by_rule[entry.rule] += 1
        if entry.status is not None:
            self.by_status[entry.status] += 1
        if entry.rule.startswith("rate_limit:"):
            self.rate_limited[entry.rule.partition(":")[2]] += 1
        elif entry.rule == "conflict":
            self.conflicts += 1
