"""Rate-limit policy: which budgets exist and what one request claims from each.

This module is pure data. The stores that enforce the budgets (``_budgets.py`` in memory,
``_redis/`` across processes) all speak the ``BudgetStore`` protocol at the bottom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from .errors import ValidationError

Scope = Literal["token", "endpoint"]
#: A call's place among waiters for the same budgets (see ``BudgetStore.acquire``).
Priority = Literal["high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")
#: How far ahead of its arrival a "high" call queues (and "low" behind), in periods of the
#: shortest budget it claims (the cdn budget's 10 s with the documented budgets: 30 s): a
#: call is passed only by higher ones that arrive within that (one level up) or twice that
#: (two levels) after it. In budget terms, so it scales with ``RateLimits.scaled``.
PRIORITY_PERIODS = 3
_LEVELS: dict[str, int] = {"high": 1, "normal": 0, "low": -1}
Unit = Literal["request", "file"]


def priority_lead(claims: Sequence[Claim], priority: Priority) -> float:
    """How many seconds earlier than its arrival a call with ``claims`` queues (``"high"``;
    later for ``"low"``): ``PRIORITY_PERIODS`` periods of the shortest budget it claims."""
    level = _LEVELS[priority]
    if not level or not claims:
        return 0.0
    return level * PRIORITY_PERIODS * min(c.period for c in claims)


def _positive_int(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Budget.{attribute.name} must be a positive int, got {value!r}")


def _positive_float(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"Budget.{attribute.name} must be a positive number, got {value!r}")


@attrs.frozen
class Budget:
    """One budget the server enforces: at most ``limit`` units in any window of ``period`` s.

    Args:
        name: A short name, unique within a ``RateLimits`` (``"cdn"``, ``"hourly"``...).
        limit: Units allowed in any sliding window of ``period`` seconds.
        period: The window length in seconds.
        scope: ``"token"``: one window for every request made with the token.
            ``"endpoint"``: one window per CDN endpoint id (requests without one, such as
            list and create, share a window of their own).
        unit: ``"request"``: every request costs 1. ``"file"``: a purge costs the number
            of paths it sends (a wildcard path is one); other requests cost nothing.
        reserve: Units of every window this client never takes, left for other tools on the
            same token (doctl, Terraform, a dashboard). 0 to ``limit - 1``; default 0.
    """

    name: str
    limit: int = attrs.field(validator=_positive_int)
    period: float = attrs.field(validator=_positive_float)
    scope: Scope = attrs.field(
        default="token", validator=attrs.validators.in_(("token", "endpoint"))
    )
    unit: Unit = attrs.field(default="request", validator=attrs.validators.in_(("request", "file")))
    reserve: int = attrs.field(default=0, kw_only=True)

    @reserve.validator
    def _reserve_below_limit(self, attribute: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.limit:
            raise ValueError(
                f"Budget.reserve must be an int from 0 to limit - 1 ({self.limit - 1}), "
                f"got {value!r}"
            )

    @property
    def capacity(self) -> int:
        """The units of a window this client may take: ``limit - reserve``."""
        return self.limit - self.reserve

    def units(self, files: int) -> int:
        """How many units a request carrying ``files`` purge paths costs (0 for non-purges)."""
        return 1 if self.unit == "request" else files


@attrs.frozen
class Claim:
    """What one request takes from one budget window.

    ``key`` names the window (``"cdn"``, or ``"cdn:<endpoint id>"`` for endpoint scope);
    stores keep one ledger per key.
    """

    key: str
    limit: int
    period: float
    units: int
    budget: str


@attrs.frozen
class RateLimits:
    """The set of budgets every request is held to.

    ``RateLimits.documented()`` is DigitalOcean's published set. All budgets are exact
    sliding windows: a request holds its units from the moment it is sent until ``period``
    seconds after its answer arrives.

    ``time_scale`` is the product of the ``scaled()`` factors (1.0 for the real API): the
    session multiplies its retry delays by it, so a time-scaled fake server's retries keep
    pace with its scaled budgets.
    """

    budgets: tuple[Budget, ...] = attrs.field(converter=tuple[Budget, ...])
    time_scale: float = attrs.field(default=1.0, kw_only=True)

    @budgets.validator
    def _unique_names(
        self, attribute: attrs.Attribute[tuple[Budget, ...]], value: tuple[Budget, ...]
    ) -> None:
        names = [b.name for b in value]
        if len(set(names)) != len(names):
            raise ValueError(f"budget names must be unique, got {names}")

    @classmethod
    def documented(cls) -> RateLimits:
        """DigitalOcean's documented budgets, all per token.

        5,000 requests / hour and 250 / minute over the whole API, 5 requests / 10 s over all
        ``/v2/cdn/endpoints`` calls, and 50 purged paths / 20 s.
        """
        return cls(
            (
                Budget("hourly", 5000, 3600.0),
                Budget("minute", 250, 60.0),
                Budget("cdn", 5, 10.0),
                Budget("purge_files", 50, 20.0, unit="file"),
            )
        )

    def scaled(self, factor: float) -> RateLimits:
        """A copy with every period multiplied by ``factor`` (for tests and the fake server)."""
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"scale factor must be a positive number, got {factor!r}")
        return RateLimits(
            tuple(attrs.evolve(b, period=b.period * factor) for b in self.budgets),
            time_scale=self.time_scale * factor,
        )

    def with_reserve(self, fraction: float) -> RateLimits:
        """A copy that leaves ``fraction`` of every budget to other clients of the token.

        Each budget keeps ``ceil(limit * fraction)`` units of every window free (at most
        ``limit - 1``, so the client can still send), for doctl, Terraform or a dashboard on
        the same token. ``0`` takes the whole budget (the default).
        """
        if not (isinstance(fraction, int | float) and 0 <= fraction < 1):
            raise ValueError(f"reserve must be a fraction in [0, 1), got {fraction!r}")
        return RateLimits(
            tuple(
                attrs.evolve(b, reserve=min(b.limit - 1, math.ceil(b.limit * fraction)))
                for b in self.budgets
            ),
            time_scale=self.time_scale,
        )

    def get(self, name: str) -> Budget | None:
        """The budget called ``name``, or None."""
        for b in self.budgets:
            if b.name == name:
                return b
        return None

    @property
    def purge_batch_size(self) -> int:
        """The most paths one purge request may carry without exceeding a file budget alone."""
        sizes = [b.capacity for b in self.budgets if b.unit == "file"]
        return min(sizes, default=50)

    def claims(self, endpoint_id: str | None = None, files: int = 0) -> tuple[Claim, ...]:
        """What one request for ``endpoint_id`` carrying ``files`` purge paths takes.

        A claim's ``limit`` is the budget's ``capacity``: the stores never see the reserve.
        """
        out = []
        for b in self.budgets:
            units = b.units(files)
            if units <= 0:
                continue
            key = b.name if b.scope == "token" else f"{b.name}:{endpoint_id or '-'}"
            out.append(Claim(key, b.capacity, b.period, units, b.name))
        return tuple(out)

    def claim_for_header(self, limit: int, claims: Sequence[Claim]) -> tuple[Claim, Budget] | None:
        """Which of a request's claims a ``ratelimit-limit: <limit>`` header describes.

        The server reports one budget per answer and names it only by its limit, so the match
        is on the limit among the budgets counted in requests (file budgets never match).
        """
        for c in claims:
            b = self.get(c.budget)
            if b is not None and b.unit == "request" and b.limit == limit:
                return c, b
        return None


def merge_claims(claims: Sequence[Claim], *, to_fit: bool = True) -> tuple[tuple[Claim, int], ...]:
    """One ``(first claim, units)`` per key, sorted by key: repeated keys add up.

    ``to_fit=False`` skips the limit checks: an estimate's claims may span several windows
    (a purge's whole plan, ``_purge_deadline``).

    Raises:
        ValidationError: A claim takes fewer than 1 unit or more than its limit, or the claims
            on one key add up to more than its limit (they could never fit).
    """
    merged: dict[str, list[Any]] = {}
    for c in claims:
        if to_fit and (c.units < 1 or c.units > c.limit):
            raise ValidationError(
                f"claim on {c.key!r} takes {c.units} units; it must be 1..{c.limit}"
            )
        entry = merged.get(c.key)
        if entry is None:
            merged[c.key] = [c, c.units]
        else:
            entry[1] += c.units
            if to_fit and entry[1] > c.limit:
                raise ValidationError(f"claims on {c.key!r} take {entry[1]} units; limit {c.limit}")
    return tuple((c, u) for _, (c, u) in sorted(merged.items()))


class Lease(Protocol):
    """A store's record of one admitted request; handed back to ``BudgetStore.release``."""


class BudgetStore(Protocol):
    """Keeps the budget windows and admits requests into them.

    Times given to a store are durations in seconds from "now" as the store's own clock sees
    it, so a store stamped by another clock (Redis's) never mixes clocks.
    """

    async def acquire(
        self,
        claims: Sequence[Claim],
        *,
        max_wait: float | None = None,
        priority: Priority = "normal",
    ) -> Lease:
        """Wait until every claim fits, then take them all at once and return the lease.

        ``priority`` orders waiters for the same keys: higher first, in arrival order within
        a level, and never starved (a store documents how); a store may ignore it.

        Waiters contending for the same keys are admitted in arrival order; a waiter
        cancelled before admission takes nothing. Raises ``RateLimitedError`` at once when a
        key is paused (after a 429) for longer than ``max_wait`` seconds.
        """
        ...

    def release(self, lease: Lease) -> None:
        """The request's answer (or failure) arrived: its units free ``period`` s from now."""
        ...

    def give_back(self, lease: Lease) -> None:
        """The request never reached the server, or the server refused it without counting
        it (a 429): uncount its units at once. Idempotent; after ``release`` it does nothing."""
        ...

    def sync(self, claim: Claim, remaining: int, reset_after: float, refused: bool = False) -> None:
        """Apply server headers: ``remaining`` units were left on ``claim.key`` when the
        server stamped the answered request; the units it counts beyond ours are another
        client's, left to it for ``reset_after`` s. ``refused``: the answer was a 429 (until an
        answer that was not, a store should send one request at a time on the key)."""
        ...

    def pause(self, claim: Claim, resume_after: float) -> None:
        """The server answered 429 for this key: admit nothing on it for ``resume_after`` s,
        capped at ``claim.period`` (every unit of a window has expired a period later, so no
        answer can justify a longer pause; a skewed clock must not stall every process)."""
        ...

    def snapshot(self) -> dict[str, BudgetState]:
        """The state of every live key, for users to read and log."""
        ...

    async def aclose(self) -> None:
        """Release resources (timers, connections)."""
        ...


@runtime_checkable
class EstimatesAdmission(Protocol):
    """A store that can tell how long a call queued now would wait (optional for stores:
    without it, ``max_budget_wait`` is enforced by the deadline alone)."""

    def admission_delay(
        self, claims: Sequence[Claim], priority: Priority = "normal"
    ) -> tuple[float, str]:
        """A lower bound on the seconds until ``claims`` queued now at ``priority`` would be
        admitted (counting only waiters that go before it), and the name of the budget that
        holds them back (``(0.0, "")`` when they would pass at once). A claim may take more
        than its limit (a purge's whole plan): it then spans windows."""
        ...


@attrs.frozen
class BudgetState:
    """A point-in-time view of one budget window.

    Args:
        key: The window's key (``"cdn"``, ``"cdn:<endpoint id>"``...).
        limit: Units allowed per window.
        used: Units counted now (in flight, in their window, or held by server sync).
        remaining: ``limit - used``, floored at 0.
        next_free_in: Seconds until the next unit frees (0.0 when some are free now).
        waiters: Requests queued on this key.
        paused_for: Seconds left of a pause imposed by a 429 (0.0 if none).
        others: Of ``used``, the units the server's headers showed another client spent,
            held for it (0 where a store does not tell them apart).
    """

    key: str
    limit: int
    used: int
    remaining: int
    next_free_in: float
    waiters: int
    paused_for: float = 0.0
    others: int = 0
