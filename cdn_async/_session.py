"""The session layer: the one place a request is sent.

Every call goes through ``Session.request``, which takes the request's budgets, sends it,
applies the answer's rate-limit headers, retries what is safe to retry and maps failures to
the typed errors of ``cdn_async.errors``. Resources above it only validate and structure.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import attrs

from . import __version__
from ._limits import BudgetStore, Claim, RateLimits
from ._logs import logger
from ._retry import Failure, backoff, parse_retry_after, should_retry
from .errors import (
    APIConnectionError,
    APIError,
    APIResponseError,
    APITimeoutError,
    CDNError,
    RateLimitedError,
    RateLimitInfo,
    TooManyRequestsError,
    error_class_for,
)

#: The shortest sleep between 404 retries after a create (full jitter alone can be ~0).
NOT_FOUND_MIN_DELAY = 0.25
_EXCERPT = 200
_TAGS = re.compile(r"<[^>]+>")


@attrs.frozen
class Options:
    """What a client can change per copy (``CDNClient.with_options``)."""

    base_url: str
    timeout: float | None
    max_retries: int
    max_rate_limit_wait: float


@attrs.frozen
class Response:
    """A successful answer.

    Args:
        status: The HTTP status (2xx).
        data: The parsed JSON body, or None for an empty body (204).
        rate_limit: The answer's rate-limit headers.
        attempts: Attempts made, this one included.
        budget_wait: Seconds spent waiting on budgets, over all attempts.
    """

    status: int
    data: Any
    rate_limit: RateLimitInfo
    attempts: int
    budget_wait: float


class Session:
    """Sends requests under the budgets, with retries. Shared by every copy of a client."""

    def __init__(
        self,
        *,
        token: str,
        options: Options,
        limits: RateLimits,
        store: BudgetStore,
        http: aiohttp.ClientSession | None,
        owns_http: bool,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.options = options
        self.limits = limits
        self.store = store
        self._pool = _Pool(http, owns_http)
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._rand = rand
        # The token lives only inside this header dict: never in a repr, log or error.
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "User-Agent": f"cdn-async/{__version__}",
        }
        self.last_rate_limit: RateLimitInfo | None = None
        #: Endpoint id -> loop time of its creation by this client (for the 404 lag rule).
        self.recently_created: dict[str, float] = {}
        self._timeout = aiohttp.ClientTimeout(total=options.timeout)
        #: Claims by purge-file count; only when no budget is keyed by endpoint (else the
        #: cache would grow with every endpoint id).
        self._plans: dict[int, _Plan] | None = (
            None if any(b.scope != "token" for b in limits.budgets) else {}
        )

    def __repr__(self) -> str:
        return f"<Session base_url={self.options.base_url!r}>"

    def copy(self, options: Options) -> Session:
        """A session with other options that shares the connection pool, budgets and state."""
        clone = object.__new__(Session)
        clone.__dict__.update(self.__dict__)
        clone.options = options
        clone._timeout = aiohttp.ClientTimeout(total=options.timeout)
        return clone

    async def aclose(self) -> None:
        """Close the connection pool if this session opened it."""
        await self._pool.aclose()

    def now(self) -> float:
        """The event loop's clock (virtual under looptime)."""
        return asyncio.get_running_loop().time()

    async def request(
        self,
        method: str,
        path: str,
        *,
        endpoint_id: str | None = None,
        files: int = 0,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
        retry_not_found: float = 0.0,
        gone_is_done: bool = False,
    ) -> Response:
        """Send one logical request, retrying what is safe, and return its successful answer.

        Args:
            method: The HTTP method.
            path: The URL path below ``base_url``.
            endpoint_id: The CDN endpoint the request is about (for per-endpoint budgets).
            files: How many purge paths it carries (for the file budget).
            json: The JSON body, if any; or a function that makes it, called once, when the
                budgets first admit the request (the purge engine seals its batch then).
            params: Query parameters.
            retry_not_found: For this many seconds from the first attempt, treat a 404 as the
                API's lag after a create and retry (with backoff).
            gone_is_done: A 404 after an attempt that may have reached the server (a 5xx or
                a broken connection) means that attempt did the work: return it as success.

        Returns:
            The 2xx answer.

        Raises:
            APIError: The final answer was an error status (a subclass per status).
            APIConnectionError: No answer arrived, after the retries allowed.
            RateLimitedError: The server paused a budget for longer than allowed to wait.
            APIResponseError: A 2xx answer whose body is not JSON.
        """
        opts = self.options
        plan = self._plan(endpoint_id, files)
        claims = plan.claims
        url = opts.base_url + path
        timeout = self._timeout
        clock = asyncio.get_running_loop().time
        make_body = json if callable(json) else None
        retries = 0
        budget_wait = 0.0
        attempt = 0
        maybe_done = False  # an earlier attempt may have been carried out
        not_found_until = clock() + retry_not_found
        while True:
            attempt += 1
            started = clock()
            lease = await self.store.acquire(claims, max_wait=opts.max_rate_limit_wait)
            sent = clock()
            budget_wait += sent - started
            if sent - started >= 0.001:
                logger.info("%s %s waited %.3f s for rate budgets", method, path, sent - started)
            failure: Failure | None = None
            error: BaseException | None = None
            status = 0
            body = b""
            headers: Mapping[str, str] = {}
            try:
                http = self._pool.get()
                if make_body is not None:
                    json, make_body = make_body(), None
                # No redirects: the token must not follow a Location header, and one budget
                # unit must mean one request. No raise_for_status: statuses are mapped here.
                async with http.request(
                    method,
                    url,
                    json=json,
                    params=params,
                    headers=self._headers,
                    timeout=timeout,
                    allow_redirects=False,
                    raise_for_status=False,
                ) as resp:
                    body = await resp.read()
                    status = resp.status
                    headers = resp.headers
            except aiohttp.ClientConnectorError as exc:
                failure, error = "connect", exc
            except (TimeoutError, aiohttp.ClientError) as exc:
                failure, error = "transport", exc
            finally:
                # Held until now, freed one period from now: the server stamped it in between.
                self.store.release(lease)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "%s %s -> %s in %.1f ms (request_id=%s, attempt %d)",
                    method,
                    path,
                    status or type(error).__name__,
                    (clock() - sent) * 1000,
                    headers.get("x-request-id"),
                    attempt,
                )

            if error is not None:
                maybe_done = maybe_done or failure == "transport"
                if should_retry(method, None, failure) and retries < opts.max_retries:
                    retries += 1
                    await self.backoff(method, path, retries, type(error).__name__)
                    continue
                kind = (
                    APITimeoutError
                    if isinstance(error, asyncio.TimeoutError)
                    else APIConnectionError
                )
                what = "timed out" if kind is APITimeoutError else "failed"
                # Not chained: aiohttp's exceptions can carry the request headers (and so the
                # token) in their repr. Their str() does not, so it goes in the message.
                raise kind(
                    f"{method} {path} {what} after {attempt} attempt(s): "
                    f"{type(error).__name__}: {error}",
                    method=method,
                    path=path,
                    attempts=attempt,
                ) from None

            info = RateLimitInfo.from_headers(headers)
            self.last_rate_limit = info
            self._apply_headers(info, plan)

            if 200 <= status < 300:
                return Response(status, _parse_body(status, body), info, attempt, budget_wait)

            if status == 429:
                wait = parse_retry_after(headers, self._wall_clock())
                if not wait:
                    # No usable reset (absent, or already past by a skewed local clock): any
                    # budget of the request surely frees something within its period.
                    wait = min(c.period for c in claims)
                # Paused even when this request gives up, so the others fail fast or wait
                # instead of drawing more 429s.
                self._pause(info, plan, wait)
                if retries >= opts.max_retries or wait > opts.max_rate_limit_wait:
                    err = self._error(status, body, headers, info, attempt, method, path)
                    if isinstance(err, RateLimitedError) and err.reset_at is None:
                        err.reset_at = self._wall_clock() + wait
                    raise err
                retries += 1
                logger.info("%s %s got 429; budget paused %.3f s, then retried", method, path, wait)
                continue

            if status == 404 and gone_is_done and maybe_done:
                logger.info("%s %s: 404 after an ambiguous attempt; it was done", method, path)
                return Response(status, None, info, attempt, budget_wait)

            if status == 404 and clock() < not_found_until:
                delay = max(NOT_FOUND_MIN_DELAY, backoff(attempt, self._rand()))
                logger.info("%s %s: 404 soon after create; retry in %.3f s", method, path, delay)
                await self._sleep(delay)
                continue

            maybe_done = maybe_done or status >= 500
            if should_retry(method, status, None) and retries < opts.max_retries:
                retries += 1
                await self.backoff(method, path, retries, str(status))
                continue

            raise self._error(status, body, headers, info, attempt, method, path)

    async def backoff(self, method: str, path: str, retry: int, why: str) -> None:
        """Sleep before retry number ``retry``, as the retry policy says, and log why."""
        delay = backoff(retry, self._rand())
        logger.info("%s %s: %s; retry %d in %.3f s", method, path, why, retry, delay)
        await self._sleep(delay)

    def _plan(self, endpoint_id: str | None, files: int) -> _Plan:
        """The claims of a request (and their header lookup), cached when they cannot depend
        on ``endpoint_id``: the same few tuples serve every request of a session."""
        limits = self.limits
        if self._plans is None:
            return _Plan.build(limits, limits.claims(endpoint_id, files))
        plan = self._plans.get(files)
        if plan is None:
            plan = self._plans[files] = _Plan.build(limits, limits.claims(endpoint_id, files))
        return plan

    def _apply_headers(self, info: RateLimitInfo, plan: _Plan) -> None:
        if info.limit is None or info.remaining is None or info.reset is None:
            return
        claim = plan.by_limit.get(info.limit)
        if claim is not None:
            # Units another client spent were stamped before now, so none counts longer than
            # a period from now; ratelimit-reset frees only the oldest of them.
            self.store.sync(claim, info.remaining, claim.period)

    def _pause(self, info: RateLimitInfo, plan: _Plan, wait: float) -> None:
        # The 429 names its budget only by ratelimit-limit; when that budget is not the one
        # that is spent, every budget of the request is paused (the server did not say which).
        described = plan.by_limit.get(info.limit) if info.limit is not None else None
        targets = [described] if described is not None and info.remaining == 0 else plan.claims
        for claim in targets:
            self.store.pause(claim, wait)

    @staticmethod
    def _error(
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
            message = _excerpt(body) or "(empty body)"
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


class _Plan:
    """A request's claims, and which of them a ``ratelimit-limit`` value describes."""

    __slots__ = ("by_limit", "claims")

    def __init__(self, claims: tuple[Claim, ...], by_limit: dict[int, Claim]) -> None:
        self.claims = claims
        self.by_limit = by_limit

    @classmethod
    def build(cls, limits: RateLimits, claims: tuple[Claim, ...]) -> _Plan:
        # What RateLimits.claim_for_header answers, for every limit at once: the first
        # request-counted claim with that limit wins (hence filled back to front).
        by_limit: dict[int, Claim] = {}
        for c in reversed(claims):
            if limits.claim_for_header(c.limit, (c,)) is not None:
                by_limit[c.limit] = c
        return cls(claims, by_limit)


class _Pool:
    """The aiohttp session, made on first use and shared by every copy of a client."""

    def __init__(self, http: aiohttp.ClientSession | None, owns: bool) -> None:
        self._http = http
        self._owns = owns

    def get(self) -> aiohttp.ClientSession:
        if self._http is not None and self._http.closed:
            raise CDNError("the aiohttp session used by this client is closed")
        if self._http is None:
            # Made lazily: an aiohttp session must be created inside the running loop.
            self._http = aiohttp.ClientSession()
            # aiohttp silently re-sends an idempotent request once when a kept-alive
            # connection drops; the server would count two requests where the budgets
            # counted one. Retries are the session layer's job, each through the budgets.
            self._http._retry_connection = False
            self._owns = True
        return self._http

    async def aclose(self) -> None:
        if self._http is not None and self._owns:
            await self._http.close()
            self._http = None


def _excerpt(body: bytes) -> str:
    text = " ".join(_TAGS.sub(" ", body.decode("utf-8", "replace")).split())
    return text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else "")


def _parse_body(status: int, body: bytes) -> Any:
    # isspace() tests the same ASCII whitespace strip() removes, without copying the body.
    if not body or body.isspace():
        return None
    try:
        return jsonlib.loads(body)
    except ValueError:
        raise APIResponseError(
            f"the API answered {status} with a body that is not JSON: {_excerpt(body)!r}",
            status=status,
            body_excerpt=_excerpt(body),
        ) from None
