"""The retry policy's pure functions, each proved by a table of cases."""

from __future__ import annotations

import pytest

from cdn_async._retry import Attempt, backoff, decide, parse_retry_after, should_retry


@pytest.mark.parametrize(
    ("method", "status", "failure", "expected"),
    [
        ("GET", 500, None, True),
        ("GET", 503, None, True),
        ("PUT", 502, None, True),
        ("DELETE", 504, None, True),
        ("POST", 500, None, False),  # may have created: never blindly sent twice
        ("POST", None, "transport", False),  # may have reached the server
        ("POST", None, "connect", True),  # surely never reached it
        ("GET", None, "transport", True),
        ("GET", 404, None, False),
        ("GET", 400, None, False),
        ("DELETE", 409, None, False),
        ("GET", 429, None, False),  # 429 is the budgets' business
        ("GET", 200, None, False),
    ],
)
def test_should_retry_only_what_is_safe(
    method: str, status: int | None, failure: str | None, expected: bool
) -> None:
    assert should_retry(method, status, failure) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (1, 1.0, 0.5),
        (2, 1.0, 1.0),
        (3, 1.0, 2.0),
        (4, 0.5, 2.0),
        (5, 1.0, 8.0),
        (10, 1.0, 8.0),  # capped
        (3, 0.0, 0.0),  # full jitter reaches zero
    ],
)
def test_backoff_is_exponential_with_full_jitter_and_a_cap(
    attempt: int, rand: float, expected: float
) -> None:
    assert backoff(attempt, rand) == pytest.approx(expected)


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "-3"}, 0.0),
        ({"ratelimit-reset": str(int(NOW) + 12)}, 12.0),
        ({"ratelimit-reset": str(int(NOW) - 12)}, 0.0),
        ({"retry-after": "4", "ratelimit-reset": str(int(NOW) + 30)}, 4.0),  # Retry-After wins
        ({"retry-after": "Fri, 15 Jan 2027 08:00:10 GMT"}, None),  # checked below
        ({"retry-after": "soon"}, None),
        ({"ratelimit-reset": "later"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after_reads_both_headers(
    headers: dict[str, str], expected: float | None
) -> None:
    got = parse_retry_after(headers, NOW)
    if "GMT" in headers.get("retry-after", ""):
        assert got is not None and got > 0
    else:
        assert got == expected


def test_parse_retry_after_http_date_is_relative_to_now() -> None:
    assert parse_retry_after(
        {"retry-after": "Thu, 01 Jan 1970 00:01:40 GMT"}, 90.0
    ) == pytest.approx(10.0)


# The whole retry policy as one table: (attempt, verdict).
DECISIONS = [
    (Attempt("GET", 200), "return"),
    (Attempt("DELETE", 204), "return"),
    (Attempt("GET", 503, retries=0, max_retries=3), "retry"),
    (Attempt("GET", 503, retries=3, max_retries=3), "raise"),
    (Attempt("POST", 500, retries=0, max_retries=3), "raise"),  # a create may have happened
    (Attempt("GET", None, "transport", max_retries=1), "retry"),
    (Attempt("POST", None, "transport", max_retries=1), "raise"),
    (Attempt("POST", None, "connect", max_retries=1), "retry"),  # never written: safe
    (Attempt("POST", None, "connect", retries=1, max_retries=1), "raise"),
    (Attempt("GET", 429, max_retries=3, rate_limited_for=5.0, max_pause=120.0), "retry_paused"),
    (Attempt("GET", 429, max_retries=3, rate_limited_for=300.0, max_pause=120.0), "raise"),
    # A 429 costs time, never the call: retries spent on 5xx do not stop it, nor does
    # max_retries=0; only the time spent rate limited does.
    (
        Attempt("GET", 429, retries=3, max_retries=3, rate_limited_for=1.0, max_pause=120.0),
        "retry_paused",
    ),
    (
        Attempt("DELETE", 429, max_retries=0, rate_limited_for=119.0, max_pause=120.0),
        "retry_paused",
    ),
    (Attempt("POST", 429, max_retries=0, rate_limited_for=121.0, max_pause=120.0), "raise"),
    (Attempt("GET", 429, rate_limited_for=1e6, max_pause=float("inf")), "retry_paused"),
    (Attempt("DELETE", 404, maybe_done=True, gone_is_done=True), "gone"),
    (Attempt("DELETE", 404, maybe_done=False, gone_is_done=True), "raise"),
    (Attempt("GET", 404, not_found_open=True), "retry_not_found"),
    (Attempt("GET", 404), "raise"),
    (Attempt("DELETE", 409, max_retries=3, retry_conflict=True), "retry"),  # a purge's 409
    (Attempt("DELETE", 409, retries=3, max_retries=3, retry_conflict=True), "raise"),
    (Attempt("DELETE", 409, max_retries=3), "raise"),
    (Attempt("PUT", 422, max_retries=3), "raise"),
]


@pytest.mark.parametrize(("attempt", "verdict"), DECISIONS)
def test_decide(attempt: Attempt, verdict: str) -> None:
    assert decide(attempt) == verdict
