"""``RateLimitInfo.retry_after`` reads ``Retry-After`` the way the session's pause does: seconds
and an HTTP date mean the same wait, from one parser (issue 14)."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import pytest
from aioresponses import CallbackResult, aioresponses

from cdn_async import CDNClient, RateLimits
from cdn_async._retry import parse_retry_after
from cdn_async.errors import RateLimitInfo, TooManyRequestsError

from ._support import BASE, TOKEN

ID = "892071a0-bb95-49bc-8021-3afd67a210bf"
GET_URL = f"{BASE}/v2/cdn/endpoints/{ID}"
NOW = 1_800_000_000.0  # a whole second, so an HTTP date can name "3 s from now" exactly


def http_date(epoch: float) -> str:
    return email.utils.formatdate(epoch, usegmt=True)


@pytest.mark.parametrize("value", ["3", "3.0", http_date(NOW + 3)])
def test_retry_after_as_seconds_or_as_a_date_reads_the_same(value: str) -> None:
    headers = {"retry-after": value}
    info = RateLimitInfo.from_headers(headers, now=NOW)
    assert info.retry_after == 3.0
    # One reading: the pause the session takes after a 429 is the value users see.
    assert parse_retry_after(headers, NOW) == info.retry_after


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("soon", None),
        ("Wed, 21 Oct 2015 25:28:00 GMT", None),  # no such hour
        ("-5", 0.0),
        (http_date(NOW - 60), 0.0),  # a date already past: no wait
    ],
)
def test_retry_after_absent_unreadable_or_past(value: str | None, expected: float | None) -> None:
    headers = {} if value is None else {"retry-after": value}
    assert RateLimitInfo.from_headers(headers, now=NOW).retry_after == expected


def test_a_date_is_read_against_the_wall_clock_by_default() -> None:
    info = RateLimitInfo.from_headers({"retry-after": http_date(time.time() + 60)})
    assert info.retry_after is not None and 58.0 < info.retry_after <= 60.0


@pytest.mark.looptime
@pytest.mark.parametrize("form", ["seconds", "date"])
async def test_the_429_users_see_carries_the_same_retry_after_either_way(form: str) -> None:
    def answer(url: Any, **kwargs: Any) -> CallbackResult:
        # Made when the request arrives, as a server would: 3 s from its clock.
        value = "3" if form == "seconds" else http_date(time.time() + 3)
        return CallbackResult(
            status=429,
            payload={"id": "too_many_requests", "message": "slow down"},
            headers={"ratelimit-limit": "5", "ratelimit-remaining": "0", "retry-after": value},
        )

    limits = RateLimits.documented().scaled(0.1)
    async with CDNClient(TOKEN, base_url=BASE, limits=limits, max_rate_limit_wait=0) as cdn:
        with aioresponses() as m:
            m.get(GET_URL, callback=answer)
            with pytest.raises(TooManyRequestsError) as raised:
                await cdn.endpoints.get(ID)
        last = cdn.budget_snapshot().last_headers
    seen = raised.value.rate_limit.retry_after
    assert last is not None and last.retry_after == seen
    if form == "seconds":
        assert seen == 3.0
    else:
        # An HTTP date has whole seconds: the same 3 s, read no longer, at most 1 s shorter.
        assert seen is not None and 2.0 < seen <= 3.0
