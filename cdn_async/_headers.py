"""The answer's rate-limit headers: which of a request's claims they describe, and the server's
clock they are read against."""

from __future__ import annotations

import email.utils
from collections.abc import Mapping

from ._limits import BudgetStore, Claim, RateLimits
from ._models import RateLimitInfo

#: Periods for which room seen taken by another client stays left for it (``apply_headers``).
OTHERS_MEMORY = 3


class Plan:
    """A request's claims, and which of them a ``ratelimit-limit`` value describes."""

    __slots__ = ("by_limit", "claims")

    def __init__(self, claims: tuple[Claim, ...], by_limit: dict[int, Claim]) -> None:
        self.claims = claims
        self.by_limit = by_limit

    @classmethod
    def build(cls, limits: RateLimits, claims: tuple[Claim, ...]) -> Plan:
        # What RateLimits.claim_for_header answers, for every limit at once: the first
        # request-counted claim with that limit wins (hence filled back to front).
        by_limit: dict[int, Claim] = {}
        for c in reversed(claims):
            found = limits.claim_for_header(_server_limit(limits, c), (c,))
            if found is not None:
                claim, budget = found
                by_limit[budget.limit] = claim
        return cls(claims, by_limit)

    def budget_for(self, info: RateLimitInfo) -> str | None:
        """The name of the budget an answer's ``ratelimit-limit`` describes, if one of ours."""
        found = self.by_limit.get(info.limit) if info.limit is not None else None
        return found.budget if found is not None else None


def _server_limit(limits: RateLimits, claim: Claim) -> int:
    budget = limits.get(claim.budget)
    return budget.limit if budget is not None else claim.limit


def server_now(headers: Mapping[str, str], wall: float) -> float:
    """The server's clock at the answer, in epoch seconds.

    ``ratelimit-reset`` is an epoch second of the server's clock, so a wait computed from it
    with a wrong local clock is wrong by as much (an hour slow: an hour's pause). The answer's
    ``Date`` header is the server's clock to the second: the local clock is used only when it
    agrees with it (it has sub-second precision), else ``Date`` is.
    """
    date = headers.get("date")
    if date is None:
        return wall
    try:
        when = email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return wall
    # Date is truncated to the second: the server's time lies in [when, when + 1), and a
    # wait computed from ``when`` is at most a second long, never short.
    return wall if when - 1.0 <= wall <= when + 2.0 else when


def apply_headers(store: BudgetStore, info: RateLimitInfo, plan: Plan, *, refused: bool) -> None:
    """Hold back what the server counts beyond our own units: another client's.

    A client seen spending keeps spending: the room it took is left to it for
    ``OTHERS_MEMORY`` periods after that answer, so our requests stop landing on its next
    ones. A 429 says only "full now" (a refused answer reads 0 whichever budget refused it):
    that is kept for one period, and the store sends one request at a time until an answer
    that was not refused (docs/design.md, "Budgets", 6).

    The store knows only the capacity (limit - reserve), and ``remaining`` is given to it
    as the server sent it: what others spend comes out of the reserve first, and only what
    exceeds it is held against our capacity (the reserve is room for the others, not room
    on top of what they are seen to use).
    """
    if info.limit is None or info.remaining is None or info.reset is None:
        return
    claim = plan.by_limit.get(info.limit)
    if claim is not None:
        memory = claim.period if refused else OTHERS_MEMORY * claim.period
        store.sync(claim, info.remaining, memory, refused=refused)


def pause(store: BudgetStore, info: RateLimitInfo, plan: Plan, wait: float) -> float:
    """Pause the budget a 429 names (every budget of the request when it names none);
    returns the pause as the stores apply it (capped at the paused budgets' period)."""
    # The 429 names its budget only by ratelimit-limit; when that budget is not the one
    # that is spent, every budget of the request is paused (the server did not say which).
    described = plan.by_limit.get(info.limit) if info.limit is not None else None
    if described is not None and info.remaining == 0:
        targets: tuple[Claim, ...] = (described,)
    else:
        targets = plan.claims
    for claim in targets:
        store.pause(claim, wait)
    return min(wait, max(c.period for c in targets))
