"""Budget admission of the fake CDN API: sliding windows per token, 429s, ``ratelimit-*``."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Literal

from ._faults import Faults
from ._routes import _error, _Reply, _Route
from ._windows import BudgetSpec, SlidingWindow

CdnBudgetScope = Literal["token", "endpoint"]
HeaderBudget = Literal["cdn", "hourly"]


class Admission:
    """``FakeCDNServer``'s budget windows: which a request claims, admission (or a 429), and
    the ``ratelimit-*`` headers. The server holds one and validated its arguments.

    Args:
        budgets: The budgets (periods before ``time_scale``).
        time_scale: Multiplies every period.
        cdn_budget_scope: One cdn window per token, or per token and endpoint.
        header_budget: Which window the headers of CDN paths describe.
        clock: Monotonic seconds; None: the running loop's ``time()``.
        wall_clock: Epoch seconds, for ``ratelimit-reset``.
        faults: The server's faults (injected 429s, co-tenants).
        tokens: The server's tokens and their scopes (the same dict: tokens added later are
            known here too).
    """

    def __init__(
        self,
        *,
        budgets: tuple[BudgetSpec, ...],
        time_scale: float,
        cdn_budget_scope: CdnBudgetScope,
        header_budget: HeaderBudget,
        clock: Callable[[], float] | None,
        wall_clock: Callable[[], float],
        faults: Faults,
        tokens: dict[str, frozenset[str]],
    ) -> None:
        self.time_scale = time_scale
        self.cdn_budget_scope = cdn_budget_scope
        self.header_budget = header_budget
        self.faults = faults
        self._budgets = budgets
        self._clock = clock
        self._wall = wall_clock
        self._tokens = tokens
        self._windows: dict[tuple[str, str, str], SlidingWindow] = {}

    def now(self) -> float:
        """The windows' clock now."""
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()

    def spec(self, name: str) -> BudgetSpec:
        """The budget named ``name``."""
        for spec in self._budgets:
            if spec.name == name:
                return spec
        raise ValueError(f"unknown budget {name!r}; known: {[b.name for b in self._budgets]}")

    def window(self, token: str, spec: BudgetSpec, endpoint_id: str | None) -> SlidingWindow:
        """The window of ``spec`` that a request of ``token`` on ``endpoint_id`` counts in."""
        key = ""
        if spec.name == "cdn" and self.cdn_budget_scope == "endpoint":
            key = endpoint_id or "-"
        window = self._windows.get((token, spec.name, key))
        if window is None:
            window = SlidingWindow(spec.limit, spec.period * self.time_scale)
            self._windows[(token, spec.name, key)] = window
        return window

    def _claims(
        self, token: str, route: _Route, files: int
    ) -> list[tuple[BudgetSpec, SlidingWindow, int]]:
        claims = []
        for spec in self._budgets:
            if spec.name == "cdn" and not route.is_cdn:
                continue
            cost = spec.cost(files)
            if cost > 0:
                claims.append((spec, self.window(token, spec, route.cdn_id), cost))
        return claims

    def _cotenants_spend(self, token: str, now: float) -> None:
        """Count the co-tenants' units on ``token`` that fell due by ``now``, each at its own
        time (in clock order, before a request stamped at ``now``: the windows stay sorted)."""
        for tenant in self.faults.cotenants:
            if tenant.token is not None and tenant.token != token:
                continue
            spec = self.spec(tenant.budget)
            window = self.window(token, spec, None)
            step = spec.period * self.time_scale / tenant.units
            due = tenant.next_at.get(token, now)
            while due <= now:
                if window.fits(1, due):
                    window.add(1, due)
                    tenant.spent += 1
                due += step
            tenant.next_at[token] = due

    def admit(self, token: str, route: _Route, files: int, now: float) -> _Reply | None:
        """Count the request in all its windows at once, or refuse it with 429 (counting none):
        over a budget, or by an injected 429 (``faults.refuse_next``)."""
        self._cotenants_spend(token, now)
        rule = self.faults.take("admit", route.op)
        if rule is not None:
            reply = _error(429, "too_many_requests", "API rate limit exceeded.", "fault:429")
            reply.retry_after = rule.retry_after
            return reply
        claims = self._claims(token, route, files)
        for spec, window, cost in claims:
            if not window.fits(cost, now):
                reply = _error(
                    429, "too_many_requests", "API rate limit exceeded.", f"rate_limit:{spec.name}"
                )
                if spec.name == "minute":
                    # As documented: only the per-minute burst limit says how long to wait.
                    wait = window.time_until_fits(cost, now)
                    reply.retry_after = max(1, math.ceil(wait)) if math.isfinite(wait) else None
                return reply
        for _, window, cost in claims:
            window.add(cost, now)
        return None

    def rate_headers(self, token: str | None, route: _Route, refused: bool) -> dict[str, str]:
        """The ``ratelimit-*`` headers of an answer to ``token`` on ``route``."""
        name = self.header_budget if route.is_cdn else "hourly"
        spec = self.spec(name)
        now = self.now()
        wall = self._wall()
        if token is None or token not in self._tokens:
            return {
                "ratelimit-limit": str(spec.limit),
                "ratelimit-remaining": str(spec.limit),
                "ratelimit-reset": str(math.ceil(wall)),
            }
        window = self.window(token, spec, route.cdn_id)
        expiry = window.oldest_expiry(now)
        reset = math.ceil(wall + (expiry - now)) if expiry is not None else math.ceil(wall)
        return {
            "ratelimit-limit": str(spec.limit),
            # A refused request says 0 whichever budget refused it, as the docs describe for
            # the burst limit ("ratelimit-remaining reaching zero can also indicate...").
            "ratelimit-remaining": "0" if refused else str(window.remaining(now)),
            "ratelimit-reset": str(reset),
        }
