"""The retry policy, as small pure functions the session layer calls once per attempt."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import attrs

from ._models import retry_after_seconds

#: How a failed attempt failed, as far as retrying is concerned.
#: ``"connect"``: the connection was never made, so the server surely did not see the request.
#: ``"transport"``: the connection broke or timed out after the request may have been sent.
Failure = Literal["connect", "transport"]

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})

BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0


def should_retry(method: str, status: int | None, failure: Failure | None) -> bool:
    """Whether an attempt that got ``status`` (or failed as ``failure``) may be sent again.

    5xx answers and broken connections are retried for idempotent methods; a POST only when
    the connection was never made (retrying it otherwise could create twice). 429 is handled by
    the budgets, not here.
    """
    if failure == "connect":
        return True
    if method.upper() not in IDEMPOTENT:
        return False
    if failure == "transport":
        return True
    return status is not None and status >= 500


def backoff(
    attempt: int, rand: float, *, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP
) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): exponential, full jitter.

    Args:
        attempt: 1 for the first retry, 2 for the second...
        rand: A uniform random number in [0, 1).
        base: The ceiling of the first wait.
        cap: The ceiling of every wait.

    Returns:
        ``rand * min(cap, base * 2 ** (attempt - 1))``; full jitter spreads the retries of
        many clients that failed together (AWS architecture blog, "Exponential Backoff and
        Jitter").
    """
    return float(rand * min(cap, base * 2.0 ** max(0, attempt - 1)))


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait per the answer's ``Retry-After`` or ``ratelimit-reset``, or None.

    ``Retry-After`` may be seconds or an HTTP date, read by ``retry_after_seconds`` (the same
    reading as ``RateLimitInfo.retry_after``); ``ratelimit-reset``, used when ``Retry-After`` is
    absent or unreadable, is the epoch second when the oldest counted request expires. ``now``
    is the wall clock in epoch seconds. Negative waits read as 0.
    """
    retry_after = retry_after_seconds(headers.get("retry-after"), now)
    if retry_after is not None:
        return retry_after
    reset = headers.get("ratelimit-reset")
    if reset is not None:
        try:
            return max(0.0, float(reset) - now)
        except ValueError:
            return None
    return None


#: What to do after an attempt (see ``decide``).
Verdict = Literal["return", "gone", "retry", "retry_paused", "retry_not_found", "raise"]


@attrs.frozen
class Attempt:
    """What one attempt produced, and the call's state, as far as deciding what next goes.

    Args:
        method: The HTTP method.
        status: The answer's status; None when no answer came (see ``failure``).
        failure: How the attempt failed without an answer, else None.
        retries: Retries made so far.
        max_retries: Retries allowed.
        maybe_done: This or an earlier attempt may have been carried out (a 5xx, or a
            connection lost after the request was written).
        gone_is_done: A 404 after ``maybe_done`` means the work was done (a DELETE).
        not_found_open: A 404 is still read as the API's lag after a create.
        rate_limited_for: Seconds from the call's first 429 to the end of this pause.
        max_pause: The longest the call may spend rate limited (``max_rate_limit_wait``).
        retry_conflict: A 409 is an identical request in progress (a purge): retry it.
    """

    method: str
    status: int | None
    failure: Failure | None = None
    retries: int = 0
    max_retries: int = 0
    maybe_done: bool = False
    gone_is_done: bool = False
    not_found_open: bool = False
    rate_limited_for: float = 0.0
    max_pause: float = 0.0
    retry_conflict: bool = False


def decide(a: Attempt) -> Verdict:
    """The next step after an attempt: the whole retry policy, one pure function.

    ``"return"`` the answer; ``"gone"``: return as done (the 404 of a DELETE whose earlier
    attempt did the work); ``"retry"`` after a backoff; ``"retry_paused"`` once the 429's
    pause ends (the budget store waits it out); ``"retry_not_found"`` after a short sleep;
    ``"raise"`` the typed error.

    A 429 costs time, never the call: it is retried, whatever ``max_retries`` says, for as
    long as the call has been rate limited no longer than ``max_pause`` (the server counted
    nothing, so the retry spends nothing the budgets do not already pace).
    """
    can_retry = a.retries < a.max_retries
    if a.status is None:
        return "retry" if can_retry and should_retry(a.method, None, a.failure) else "raise"
    if 200 <= a.status < 300:
        return "return"
    if a.status == 429:
        return "retry_paused" if a.rate_limited_for <= a.max_pause else "raise"
    if a.status == 404 and a.gone_is_done and a.maybe_done:
        return "gone"
    if a.status == 404 and a.not_found_open:
        return "retry_not_found"
    if a.status == 409 and a.retry_conflict:
        return "retry" if can_retry else "raise"
    return "retry" if can_retry and should_retry(a.method, a.status, None) else "raise"
