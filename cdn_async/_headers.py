"""The answer's rate-limit headers: which of a request's claims they describe, and the server's
clock they are read against."""

from __future__ import annotations

import email.utils
import functools
from collections.abc import Mapping

from ._limits import BudgetStore, Claim, RateLimits
from ._models import RateLimitInfo

#: Periods for which room seen taken by another client stays left for it (``apply_headers``).
OTHERS_MEMORY = 3


class RequestClaims:
    """A request's claims, which of them a ``ratelimit-limit`` value describes, and which
    a 429 that the described budget does not explain can be blamed on."""

    __slots__ = ("by_limit", "claims", "files", "requests")

    def __init__(self, claims: tuple[Claim, ...], limits: RateLimits) -> None:
        self.claims = claims
        # What RateLimits.claim_for_header answers, for every limit at once: the first
        # request-counted claim with that limit wins (hence filled back to front).
        self.by_limit: dict[int, Claim] = {}
        for c in reversed(claims):
            found = limits.claim_for_header(_server_limit(limits, c), (c,))
            if found is not None:
                claim, budget = found
                self.by_limit[budget.limit] = claim
        #: The file budgets (no header describes them), and the request budgets, shortest
        #: period first: what a refusal with room on the described budget is blamed on.
        self.files = tuple(c for c in claims if _counts_files(limits, c))
        self.requests = tuple(
            sorted((c for c in claims if c not in self.files), key=lambda c: c.period)
        )

    def described(self, info: RateLimitInfo) -> Claim | None:
        """The claim an answer's ``ratelimit-limit`` describes, if one of ours."""
        return self.by_limit.get(info.limit) if info.limit is not None else None

    def budget_for(self, info: RateLimitInfo) -> str | None:
        """The name of the budget an answer's ``ratelimit-limit`` describes, if one of ours."""
        found = self.described(info)
        return found.budget if found is not None else None


def _counts_files(limits: RateLimits, claim: Claim) -> bool:
    budget = limits.get(claim.budget)
    return budget is not None and budget.unit == "file"


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
    when = _date_seconds(date) if date is not None else None
    if when is None:
        return wall
    # Date is truncated to the second: the server's time lies in [when, when + 1), and a
    # wait computed from ``when`` is at most a second long, never short.
    return wall if when - 1.0 <= wall <= when + 2.0 else when


@functools.lru_cache(maxsize=8)
def _date_seconds(date: str) -> float | None:
    # Answers within one second carry the same Date: parsed once (it costs more than the
    # rest of reading the answer's headers).
    try:
        return email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def apply_headers(
    store: BudgetStore, info: RateLimitInfo, claimed: RequestClaims, *, refused: bool
) -> None:
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
    if info.remaining is None or info.reset is None:
        return
    claim = claimed.described(info)
    if claim is not None:
        memory = claim.period if refused else OTHERS_MEMORY * claim.period
        store.sync(claim, info.remaining, memory, refused=refused)


def pause(store: BudgetStore, info: RateLimitInfo, claimed: RequestClaims, wait: float) -> float:
    """Pause what a 429 blames; returns the longest pause as the stores apply it (each
    capped at its budget's period).

    - No header budget of ours: every budget of the request, for ``wait``.
    - The described budget reads 0 left: it may be the one spent, paused for ``wait`` (its
      ``Retry-After`` or reset).
    - A file budget of the request (a purge) is paused for a full period whatever the
      described budget reads: no header describes it, a refusal with room on the described
      budget can only be it, and one that reads 0 may be it too (a refused answer reads 0
      whichever budget refused it). A full period is the shortest pause after which every
      unit another client had in its window has surely expired (docs/design.md, "Budgets", 6).
    - Room on the described budget and no file budget: the shortest undescribed budget, for
      the server's ``Retry-After`` when it sent one, else a full period.
    """
    described = claimed.described(info)
    if described is None:
        targets = [(c, wait) for c in claimed.claims]
    else:
        targets = [(described, wait)] if info.remaining == 0 else []
        targets += [(c, c.period) for c in claimed.files]
        if info.remaining != 0 and not claimed.files:
            others = [c for c in claimed.requests if c is not described][:1]
            given = info.retry_after
            targets += [(c, given if given is not None else c.period) for c in others]
        if not targets:  # room on the only budget it has: trust the refusal, not the count
            targets = [(described, wait)]
    longest = 0.0
    for claim, seconds in targets:
        store.pause(claim, seconds)
        longest = max(longest, min(seconds, claim.period))
    return longest
