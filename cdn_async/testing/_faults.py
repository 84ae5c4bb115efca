"""Switchable faults for the fake server, deterministic under a seed.

A fault is a rule in an ordered list. At each stage of a request (``"admit"``: as the budgets
decide, where a 429 is injected; ``"before"`` the change is applied, right after the request
was admitted by the budgets; ``"after"`` the change was applied successfully) the first
matching rule with uses left fires. Random choices (probabilistic rules and latency jitter) all
come from one ``random.Random(seed)``, so a run is reproducible as long as requests arrive in
the same order.

Besides rules, a *co-tenant* (``cotenant``) plays another client on a token that spends a
budget at a steady pace; the server's admission counts its units as they fall due (no task,
so virtual-time tests see it too).
"""

from __future__ import annotations

import random
from typing import Literal

import attrs

When = Literal["admit", "before", "after"]
FaultKind = Literal["5xx", "drop", "non_json", "429"]

#: The six operations, as named in journal entries and fault filters.
OPERATIONS: tuple[str, ...] = ("list", "create", "get", "update", "delete", "purge")


@attrs.define
class FaultRule:
    """One fault.

    Args:
        kind: ``"5xx"`` answers an error status; ``"drop"`` closes the connection without an
            answer; ``"non_json"`` answers a success status with an HTML body; ``"429"``
            refuses the request as over a budget (not counted, as the server does).
        when: ``"admit"``: as the budgets decide (only ``"429"``). ``"before"``: after
            admission, before the request is checked or applied (nothing changes).
            ``"after"``: once the change was applied (only on requests that succeed).
        remaining: Uses left; None means unlimited (use with ``probability``).
        probability: Chance that a matching request triggers the rule.
        status: The status to send (``"5xx"``: the error status; ``"non_json"``: None means the
            operation's success status, 200 for the 204 operations since a 204 has no body).
        op: Restrict the rule to one operation (see ``OPERATIONS``); None matches all.
        html: For ``"5xx"``: send an HTML page (like a proxy) instead of the JSON error body.
        retry_after: For ``"429"``: the ``Retry-After`` seconds to send (None: no header,
            as for every budget but the per-minute one).
        skip: Matching requests let through before the rule fires ("the second purge
            fails": ``skip=1``).
    """

    kind: FaultKind
    when: When
    remaining: int | None = 1
    probability: float = 1.0
    status: int | None = None
    op: str | None = None
    html: bool = False
    retry_after: int | None = None
    skip: int = 0


@attrs.define
class CoTenant:
    """Another client on a token: it spends one unit of ``budget`` every ``period / units``
    seconds (the budget's period, scaled), when the window has room (a request it would see
    refused is not counted, as for any client).

    Args:
        units: Units it spends per period (``1..limit``).
        budget: The budget's name (``"cdn"``, ``"purge_files"``, ``"minute"``, ``"hourly"``).
        token: The token it spends on; None: every token that sends requests, each from its
            first request on.
        spent: Units it has spent so far (over all its tokens).
        next_at: Per token, the clock reading of its next spend.
    """

    units: int
    budget: str = "cdn"
    token: str | None = None
    spent: int = 0
    next_at: dict[str, float] = attrs.Factory(dict)


def _check_op(op: str | None) -> None:
    if op is not None and op not in OPERATIONS:
        raise ValueError(f"op must be one of {OPERATIONS} or None, got {op!r}")


def _check_when(when: str) -> None:
    if when not in ("admit", "before", "after"):
        raise ValueError(f"when must be 'admit', 'before' or 'after', got {when!r}")


class Faults:
    """The fault switchboard of one ``FakeCDNServer`` (``server.faults``).

    Args:
        seed: Seed of the random generator used for probabilities and jitter.
    """

    def __init__(self, seed: int | None = 0) -> None:
        self.rng = random.Random(seed)
        self.rules: list[FaultRule] = []
        self.cotenants: list[CoTenant] = []
        self.up = 0.0
        self.down = 0.0
        self.jitter = 0.0

    # -- configuration ---------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 503,
        when: When = "before",
        op: str | None = None,
        html: bool = False,
        skip: int = 0,
    ) -> FaultRule:
        """Answer the next ``n`` matching requests with a 5xx.

        Args:
            n: How many requests to fail.
            status: The error status (500-599).
            when: ``"before"`` the change (nothing happens) or ``"after"`` it was applied.
            op: Only requests for this operation (``"create"``, ``"purge"``...).
            html: Send an HTML error page instead of the JSON error body.
            skip: Let this many matching requests through first.

        Returns:
            The rule added (its ``remaining`` counts down).
        """
        if not 500 <= status <= 599:
            raise ValueError(f"status must be a 5xx, got {status}")
        if skip < 0:
            raise ValueError(f"skip must be >= 0, got {skip}")
        return self._add(FaultRule("5xx", when, n, status=status, op=op, html=html, skip=skip))

    def fail_randomly(
        self,
        probability: float,
        *,
        status: int = 503,
        when: When = "before",
        op: str | None = None,
        html: bool = False,
    ) -> FaultRule:
        """Answer each matching request with a 5xx with the given probability, until cleared.

        Args:
            probability: Chance per request, 0..1, drawn from the seeded generator.
            status: The error status (500-599).
            when: ``"before"`` or ``"after"`` the change.
            op: Only requests for this operation.
            html: Send an HTML error page instead of the JSON error body.

        Returns:
            The rule added.
        """
        if not 500 <= status <= 599:
            raise ValueError(f"status must be a 5xx, got {status}")
        rule = FaultRule("5xx", when, None, probability, status=status, op=op, html=html)
        return self._add(rule)

    def drop_next(self, n: int = 1, *, when: When = "before", op: str | None = None) -> FaultRule:
        """Close the connection of the next ``n`` matching requests without answering.

        Args:
            n: How many requests to drop.
            when: ``"before"`` the change (nothing happens) or ``"after"`` it was applied.
            op: Only requests for this operation.

        Returns:
            The rule added.
        """
        return self._add(FaultRule("drop", when, n, op=op))

    def drop_randomly(
        self, probability: float, *, when: When = "before", op: str | None = None
    ) -> FaultRule:
        """Drop each matching request's connection with the given probability, until cleared.

        Args:
            probability: Chance per request, 0..1, drawn from the seeded generator.
            when: ``"before"`` or ``"after"`` the change.
            op: Only requests for this operation.

        Returns:
            The rule added.
        """
        return self._add(FaultRule("drop", when, None, probability, op=op))

    def non_json_next(
        self, n: int = 1, *, status: int | None = None, op: str | None = None
    ) -> FaultRule:
        """Answer the next ``n`` successful matching requests with an HTML body.

        The change is applied; only the answer is garbled, as by a misbehaving proxy.

        Args:
            n: How many answers to garble.
            status: The status to send; None: the operation's success status (200 for the
                operations that answer 204, since a 204 cannot carry a body).
            op: Only requests for this operation.

        Returns:
            The rule added.
        """
        return self._add(FaultRule("non_json", "after", n, status=status, op=op))

    def refuse_next(
        self, n: int = 1, *, op: str | None = None, retry_after: int | None = None
    ) -> FaultRule:
        """Refuse the next ``n`` matching requests with a 429, as if a budget were full.

        The request is not counted in any budget window (the server counts no refused
        request); its ``ratelimit-remaining`` says 0 and the journal's rule is
        ``"fault:429"``.

        Args:
            n: How many requests to refuse.
            op: Only requests for this operation.
            retry_after: Send ``Retry-After: <seconds>`` (None: no header).

        Returns:
            The rule added.
        """
        return self._add(FaultRule("429", "admit", n, op=op, retry_after=retry_after))

    def refuse_randomly(
        self, probability: float, *, op: str | None = None, retry_after: int | None = None
    ) -> FaultRule:
        """Refuse each matching request with a 429 with the given probability, until cleared
        (a share of requests refused; see ``refuse_next``).

        Args:
            probability: Chance per request, 0..1, drawn from the seeded generator.
            op: Only requests for this operation.
            retry_after: Send ``Retry-After: <seconds>`` (None: no header).

        Returns:
            The rule added.
        """
        rule = FaultRule("429", "admit", None, probability, op=op, retry_after=retry_after)
        return self._add(rule)

    def cotenant(self, units: int, *, budget: str = "cdn", token: str | None = None) -> CoTenant:
        """Play another client on a token that spends ``units`` of ``budget`` every period,
        one unit every ``period / units`` seconds, from the token's next request on.

        Requests of the token then find that much less room: a client that reads the
        ``ratelimit-*`` headers adapts; one that does not meets 429s.

        Args:
            units: Units per period, at least 1.
            budget: The budget it spends (``"cdn"``: 5 / 10 s; ``"purge_files"``: 50 / 20 s).
            token: The token; None: every token that sends requests.

        Returns:
            The co-tenant (``spent`` counts its units).
        """
        if units < 1:
            raise ValueError(f"units must be >= 1, got {units}")
        tenant = CoTenant(units, budget, token)
        self.cotenants.append(tenant)
        return tenant

    def latency(self, up: float = 0.0, down: float = 0.0, jitter: float = 0.0) -> None:
        """Delay every request on its way in and every answer on its way out.

        Delays are real seconds of the event loop clock (not multiplied by ``time_scale``).

        Args:
            up: Seconds before the request is processed (and stamped by the budgets).
            down: Seconds between processing and sending the answer.
            jitter: Up to this many extra seconds, drawn uniformly from the seeded generator,
                added to each delay (uplink and downlink) separately.
        """
        if min(up, down, jitter) < 0:
            raise ValueError("latency values must be >= 0")
        self.up, self.down, self.jitter = up, down, jitter

    def clear(self) -> None:
        """Remove every fault rule, co-tenant and all latency."""
        self.rules.clear()
        self.cotenants.clear()
        self.up = self.down = self.jitter = 0.0

    # -- used by the server ----------------------------------------------------------------

    def _add(self, rule: FaultRule) -> FaultRule:
        _check_op(rule.op)
        _check_when(rule.when)
        if (rule.when == "admit") != (rule.kind == "429"):
            raise ValueError("a 429 is injected at admission ('admit'), other faults are not")
        if rule.remaining is not None and rule.remaining < 1:
            raise ValueError(f"n must be >= 1, got {rule.remaining}")
        if not 0.0 <= rule.probability <= 1.0:
            raise ValueError(f"probability must be within 0..1, got {rule.probability}")
        self.rules.append(rule)
        return rule

    def delay(self, direction: Literal["up", "down"]) -> float:
        """The delay to apply now in one direction, jitter included.

        Args:
            direction: ``"up"`` (request) or ``"down"`` (answer).

        Returns:
            Seconds to sleep (0 when no latency is configured in that direction).
        """
        base = self.up if direction == "up" else self.down
        if self.jitter <= 0:
            return base
        return base + self.rng.uniform(0.0, self.jitter)

    def take(self, when: When, op: str | None) -> FaultRule | None:
        """The rule that fires for this request at this stage, its use consumed.

        Args:
            when: The stage.
            op: The request's operation (None for a path outside the API).

        Returns:
            The rule, or None.
        """
        for rule in self.rules:
            if rule.when != when or rule.remaining == 0:
                continue
            if rule.op is not None and rule.op != op:
                continue
            if rule.probability < 1.0 and self.rng.random() >= rule.probability:
                continue
            if rule.skip > 0:
                rule.skip -= 1
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
            return rule
        return None
