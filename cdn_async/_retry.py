"""The retry policy, as small pure functions the session layer calls once per attempt."""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from typing import Literal

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

    ``Retry-After`` may be seconds or an HTTP date; ``ratelimit-reset`` is the epoch second
    when the oldest counted request expires. ``now`` is the wall clock in epoch seconds.
    Negative waits read as 0.
    """
    value = headers.get("retry-after")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                return max(0.0, when.timestamp() - now)
    reset = headers.get("ratelimit-reset")
    if reset is not None:
        try:
            return max(0.0, float(reset) - now)
        except ValueError:
            return None
    return None
