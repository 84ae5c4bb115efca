"""Defaults, in one place."""

from __future__ import annotations

DEFAULT_BASE_URL = "https://api.digitalocean.com"
DEFAULT_TIMEOUT = 30.0
#: How long an attempt whose caller stopped waiting (a cancel, a timeout) may still get its
#: answer: its units stay counted until then. Front proxies drop requests that wait longer,
#: so none is stamped later than this after it was sent.
ANSWER_HORIZON = 300.0
DEFAULT_MAX_RETRIES = 3
#: The longest a request waits on a budget the server paused (after a 429) before
#: ``RateLimitedError`` is raised instead. Ordinary budget waits are never cut short.
DEFAULT_MAX_RATE_LIMIT_WAIT = 120.0
#: ``list()`` asks for the largest page the API allows: fewer requests against the budget.
DEFAULT_PER_PAGE = 200
MAX_PER_PAGE = 200
#: How long after creating an endpoint a 404 on GET is taken as the API's lag, not an answer.
CREATE_LAG_WINDOW = 30.0
#: How long such a GET keeps retrying a 404 before believing it.
NOT_FOUND_PATIENCE = 10.0
TOKEN_ENV = "DIGITALOCEAN_TOKEN"
#: doctl's variable, read when ``TOKEN_ENV`` is unset or empty (``TOKEN_ENV`` wins).
ACCESS_TOKEN_ENV = "DIGITALOCEAN_ACCESS_TOKEN"
BASE_URL_ENV = "CDN_ASYNC_BASE_URL"
LOG_ENV = "CDN_ASYNC_LOG"
