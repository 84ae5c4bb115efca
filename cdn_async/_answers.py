"""What an answer (or its absence) becomes: the parsed body, or the typed error."""

from __future__ import annotations

import json as jsonlib
import re
from collections.abc import Mapping
from typing import Any

from ._models import RateLimitInfo
from .errors import (
    APIConnectionError,
    APIError,
    APIResponseError,
    APITimeoutError,
    BudgetWaitTimeout,
    TooManyRequestsError,
    error_class_for,
)

_EXCERPT = 200
_TAGS = re.compile(r"<[^>]+>")


def api_error(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    info: RateLimitInfo,
    attempts: int,
    method: str,
    path: str,
) -> APIError:
    error_id: str | None = None
    request_id = headers.get("x-request-id")
    try:
        data = jsonlib.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error_id = data.get("id") if isinstance(data.get("id"), str) else None
        message = str(data.get("message") or "")
        request_id = data.get("request_id") or request_id
    else:
        # A proxy's HTML page: keep a short, readable excerpt.
        message = excerpt(body) or "(empty body)"
    cls = error_class_for(status)
    kwargs: dict[str, Any] = {
        "status": status,
        "error_id": error_id,
        "request_id": request_id,
        "attempts": attempts,
        "rate_limit": info,
        "method": method,
        "path": path,
    }
    if cls is TooManyRequestsError:
        return TooManyRequestsError(message, **kwargs)
    return cls(message, **kwargs)


def no_answer(method: str, path: str, attempt: int, error: BaseException) -> APIConnectionError:
    kind = APITimeoutError if isinstance(error, TimeoutError) else APIConnectionError
    what = "timed out" if kind is APITimeoutError else "failed"
    # Not chained (the caller raises it "from None"): aiohttp's exceptions can carry the
    # request headers, and so the token, in their repr. Their str() does not, so it goes in
    # the message.
    return kind(
        f"{method} {path} {what} after {attempt} attempt(s): {type(error).__name__}: {error}",
        method=method,
        path=path,
        attempts=attempt,
    )


def wait_timeout(
    delay: float | None, budget: str, deadline: float, *, early: bool, what: str = "call"
) -> BudgetWaitTimeout:
    when = f"would wait {delay:.3f} s" if delay is not None else "was not admitted"
    where = f" on budget {budget!r}" if budget else ""
    return BudgetWaitTimeout(
        f"the {what} {when}{where}; max_budget_wait is {deadline} s"
        + (" (raised at once)" if early else ""),
        retry_after=delay,
        budget=budget or None,
    )


def excerpt(body: bytes) -> str:
    text = " ".join(_TAGS.sub(" ", body.decode("utf-8", "replace")).split())
    return text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else "")


def parse_body(status: int, body: bytes) -> Any:
    # isspace() tests the same ASCII whitespace strip() removes, without copying the body.
    if not body or body.isspace():
        return None
    try:
        return jsonlib.loads(body)
    except ValueError:
        raise APIResponseError(
            f"the API answered {status} with a body that is not JSON: {excerpt(body)!r}",
            status=status,
            body_excerpt=excerpt(body),
        ) from None
