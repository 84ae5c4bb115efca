"""``CDNClient``: configuration, lifetime, and the ``endpoints`` resource."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import aiohttp
import attrs

from ._background import Background
from ._constants import (
    ACCESS_TOKEN_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_MAX_RATE_LIMIT_WAIT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    TOKEN_ENV,
)
from ._endpoints import Endpoints
from ._events import CAPTURE, Emitter, EventHook, ResponseMeta, Telemetry
from ._limits import PRIORITIES, BudgetState, BudgetStore, Priority, RateLimits
from ._models import CDNEndpoint, PurgeReport, RateLimitInfo
from ._purge import PurgeBackend, PurgeEngine
from ._sentinel import NOT_GIVEN, NotGiven
from ._session import Options, Session
from .errors import ValidationError

_T = TypeVar("_T")


@attrs.frozen
class BudgetSnapshot:
    """What the budgets look like now, for reading and logging.

    Args:
        budgets: Each live budget window by key (``"cdn"``, ``"purge_files"``...).
        last_headers: The rate-limit headers of the last answer, or None before any.
    """

    budgets: dict[str, BudgetState]
    last_headers: RateLimitInfo | None


def _check_base_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return base_url.rstrip("/")
    if parts.scheme == "http" and _is_loopback(host):
        return base_url.rstrip("/")
    # The token travels in a header: plain HTTP would show it to every hop.
    raise ValidationError(
        f"base_url must be https:// (plain http:// only for loopback hosts), got {base_url!r}"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class CDNClient:
    """An async client for DigitalOcean's CDN Endpoints API.

    Use it as an async context manager, or call ``close()`` when done::

        async with CDNClient() as cdn:
            async for ep in cdn.endpoints.list():
                print(ep.origin)

    Args:
        token: The API token; defaults to ``$DIGITALOCEAN_TOKEN``, else doctl's
            ``$DIGITALOCEAN_ACCESS_TOKEN`` (the first wins when both are set).
        base_url: The API's address; https only (http only for loopback hosts). Defaults to
            ``$CDN_ASYNC_BASE_URL``, else ``https://api.digitalocean.com``.
        limits: The budgets every request is held to (``RateLimits.documented()``).
        budget_store: Where the budget windows live: None keeps them in this process; a
            ``SQLiteBudgetStore(path)`` shares them between the processes of one host, a
            ``cdn_async.redis.RedisBudgetStore`` between hosts. A store you pass is yours to
            close (``await store.aclose()``): clients may share one.
        timeout: Seconds an attempt may take, or None for no limit.
        max_retries: Retries after 5xx answers, broken connections and 429s.
        max_rate_limit_wait: The longest a request waits on a budget the server paused (after
            a 429) before ``RateLimitedError`` is raised instead.
        max_budget_wait: The longest a call waits for its budgets before
            ``BudgetWaitTimeout`` is raised (at once when the store can already tell it would
            wait longer); None: as long as it takes. Nothing is taken by a call that times
            out. A purge is all or nothing: refused before anything is sent when its whole
            plan cannot be sent within it (``endpoints.purge``).
        max_queued: The most calls of this client (and its copies) that may wait for their
            budgets at once; one more raises ``QueueFullError`` at once. None: no cap.
        priority: ``"high"``, ``"normal"`` or ``"low"``: the calls' place among waiters for
            the same budgets (higher first, arrival order within a level; a lower call is
            passed only by higher ones that arrive within 3 periods of the shortest budget
            it claims, 30 s with the documented budgets, so none waits forever). Honoured by
            both stores among a process's calls.
        reserve: A fraction of every budget this client never takes, left for the other tools
            on the token (doctl, Terraform, a dashboard): 0.2 keeps 1 of the 5 cdn requests
            per 10 s and 10 of the 50 purged paths per 20 s free. Default 0: the whole budget.
        polite_purges: Leave room for purge jobs this client cannot see (on other hosts, with
            no shared store): a bulk purge (more than 50 paths) starts at a quarter of the file
            budget and finds, by trial, how much more fits beside the others, so jobs that
            start together share the budget instead of the first taking it and the rest
            drawing 429s. Costs a lone bulk purge a quarter period (5 s) in its first window.
            The CLI's purges are polite. Default False: the whole budget at once.
        event_hooks: Callables that receive every event of every call (``cdn_async.events``:
            a budget wait and which budget, each request sent and answered with its request
            id, each retry, each 429 pause), each naming its call (``call_id``). A plain
            function is called at once, on the event loop; an ``async def`` one is awaited by
            a task of the client, in order, without holding up the call. A hook that raises is
            logged and never breaks a call; none costs nothing.
        telemetry: ``cdn_async.otel.OpenTelemetry()`` (extra ``otel``): a span per call, the
            budget wait as a child span, and metrics. None: no telemetry, at no cost.
        purge_queue: A ``cdn_async.redis.RedisPurgeQueue``: ``endpoints.purge()`` goes through
            one queue shared by every process on the token (same call, same report). Yours to
            close. None: purges are coalesced in this process.
        name: A name for this client, carried by every log record (``client``), event and span
            of its calls, to tell several clients of one process apart. None: no name.
        session: An ``aiohttp.ClientSession`` of your own; the client then never closes it.
            Create it with ``raise_for_status=False`` (the default). aiohttp re-sends a GET,
            PUT or DELETE once on its own when a kept-alive connection drops, a request the
            budgets cannot see; the client turns that off only in the session it creates.

    Raises:
        ValidationError: No token, or a ``base_url`` that is not https.
    """

    endpoints: Endpoints

    # Over 60 lines only for its 19 keyword arguments (documented above); the body is 43.
    def __init__(
        self,
        token: str | None = None,
        *,
        base_url: str | None = None,
        limits: RateLimits | None = None,
        budget_store: BudgetStore | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_rate_limit_wait: float = DEFAULT_MAX_RATE_LIMIT_WAIT,
        max_budget_wait: float | None = None,
        max_queued: int | None = None,
        priority: Priority = "normal",
        reserve: float = 0.0,
        polite_purges: bool = False,
        event_hooks: Sequence[EventHook] = (),
        telemetry: Telemetry | None = None,
        purge_queue: PurgeBackend | None = None,
        name: str | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        token = _token(token)
        if name is not None and not isinstance(name, str):
            raise ValidationError(f"name must be a str or None, got {name!r}")
        options = _options(
            base_url=base_url if base_url is not None else _base_url_from_env(),
            timeout=timeout,
            max_retries=max_retries,
            max_rate_limit_wait=max_rate_limit_wait,
            max_budget_wait=max_budget_wait,
            max_queued=max_queued,
            priority=priority,
        )
        limits = _limits(limits, reserve)
        # A store the user passed in may be shared with other clients: theirs to close.
        self._owns_store = budget_store is None
        if budget_store is None:
            from ._budgets import MemoryBudgetStore

            budget_store = MemoryBudgetStore()
        hooks = (*event_hooks, telemetry) if telemetry is not None else tuple(event_hooks)
        self._session = Session(
            token=token,
            options=options,
            limits=limits,
            store=budget_store,
            http=session,
            owns_http=session is None,
            events=Emitter(hooks),
            telemetry=telemetry,
            polite_purges=polite_purges,
        )
        self._session.observer.name = name
        if telemetry is not None:
            store = self._session.store
            telemetry.bind(
                lambda: sum(s.waiters for s in store.snapshot().values()), options.base_url
            )
        self._owner = True
        self._owns_purge = purge_queue is None
        self._purge: PurgeBackend = purge_queue if purge_queue is not None else PurgeEngine()
        self._background = Background()
        self.endpoints = Endpoints(self._session, self._purge, self._background)

    def __repr__(self) -> str:
        return f"<CDNClient base_url={self._session.options.base_url!r}>"

    @property
    def limits(self) -> RateLimits:
        """The budgets every request is held to."""
        return self._session.limits

    def with_options(
        self,
        *,
        timeout: float | NotGiven | None = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        max_rate_limit_wait: float | NotGiven = NOT_GIVEN,
        max_budget_wait: float | NotGiven | None = NOT_GIVEN,
        max_queued: int | NotGiven | None = NOT_GIVEN,
        priority: Priority | NotGiven = NOT_GIVEN,
    ) -> CDNClient:
        """A copy with other options that shares the connection pool and the budgets.

        ``max_queued`` caps the calls of this copy that wait at once (each copy counts its
        own). Closing the copy closes nothing; close the original.
        """
        given = {
            "timeout": timeout,
            "max_retries": max_retries,
            "max_rate_limit_wait": max_rate_limit_wait,
            "max_budget_wait": max_budget_wait,
            "max_queued": max_queued,
            "priority": priority,
        }
        fields = attrs.asdict(self._session.options)
        fields.update({k: v for k, v in given.items() if not isinstance(v, NotGiven)})
        options = _options(**fields)
        clone = object.__new__(CDNClient)
        clone._session = self._session.copy(options)
        clone._owner = False
        clone._owns_store = False
        clone._owns_purge = False
        clone._purge = self._purge  # one engine: purges through copies still coalesce
        clone._background = self._background
        clone.endpoints = Endpoints(clone._session, self._purge, self._background)
        return clone

    @property
    def with_raw_response(self) -> RawClient:
        """The same calls, returning what each answered as well as what it returns::

            raw = await cdn.with_raw_response.endpoints.get(cdn_id)
            raw.parsed  # the CDNEndpoint
            raw.responses[-1].request_id, raw.responses[-1].rate_limit

        Works for ``get``, ``create``, ``update`` and ``delete`` (a purge's request ids are in
        its ``PurgeReport``; ``list`` is an iterator).
        """
        return RawClient(self)

    def budget_snapshot(self) -> BudgetSnapshot:
        """The budgets' state now (remaining, when the next unit frees) and the last headers.

        Every token-scoped budget of ``limits`` is present, idle or not (an idle one shows
        its whole capacity remaining); endpoint-scoped budgets appear per endpoint key while
        they count something.
        """
        live = self._session.store.snapshot()
        budgets: dict[str, BudgetState] = {}
        for b in self._session.limits.budgets:
            if b.scope == "token" and b.name not in live:
                budgets[b.name] = BudgetState(
                    key=b.name,
                    limit=b.capacity,
                    used=0,
                    remaining=b.capacity,
                    next_free_in=0.0,
                    waiters=0,
                )
        budgets.update(live)
        return BudgetSnapshot(budgets, self._session.last_rate_limit)

    async def close(self) -> list[PurgeReport]:
        """Stop everything: after it returns no request leaves.

        Calls waiting on a budget (in any store, a shared one included) or a retry, and every
        later call, raise ``CDNError("client closed")``; pending purges report their unsent
        paths failed; the connection pool closes if the client opened it, and the budget
        store if the client made it. Idempotent; a copy made by ``with_options`` closes
        nothing.

        Returns:
            The report of every background purge (``endpoints.purge_in_background``) the close
            cut short: what it purged, and every path left, failed (also logged at WARNING).
            Empty when none was running.
        """
        if not self._owner:
            return []
        self._background.closing = True
        self._session.shut()
        if self._owns_purge:
            await self._purge.aclose()
        await self._session.aclose()
        if self._owns_store:
            await self._session.store.aclose()
        left = await self._background.aclose()
        await self._session.observer.aclose()  # async hooks finish what they were given
        return left

    async def __aenter__(self) -> CDNClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


@attrs.frozen
class RawResponse(Generic[_T]):
    """A call's result and the metadata of every successful request it made.

    Args:
        parsed: What the call returns.
        responses: One ``ResponseMeta`` per request (status, request id, rate-limit headers,
            attempts, budget wait), in order; a create that looked its origin up has several.
    """

    parsed: _T
    responses: tuple[ResponseMeta, ...]


class RawClient:
    """``CDNClient.with_raw_response``: ``.endpoints`` with every call's answers attached."""

    def __init__(self, client: CDNClient) -> None:
        self.endpoints = _RawEndpoints(client.endpoints)


class _RawEndpoints:
    def __init__(self, endpoints: Endpoints) -> None:
        self._endpoints = endpoints

    async def _call(
        self, fn: Callable[..., Awaitable[_T]], *args: Any, **kwargs: Any
    ) -> RawResponse[_T]:
        seen: list[ResponseMeta] = []
        token = CAPTURE.set(seen)
        try:
            parsed = await fn(*args, **kwargs)
        finally:
            CAPTURE.reset(token)
        return RawResponse(parsed, tuple(seen))

    async def get(self, cdn_id: str, **kwargs: Any) -> RawResponse[CDNEndpoint]:
        """``endpoints.get`` with its answers."""
        return await self._call(self._endpoints.get, cdn_id, **kwargs)

    async def create(self, origin: str, **kwargs: Any) -> RawResponse[CDNEndpoint]:
        """``endpoints.create`` with its answers."""
        return await self._call(self._endpoints.create, origin, **kwargs)

    async def update(self, cdn_id: str, **kwargs: Any) -> RawResponse[CDNEndpoint]:
        """``endpoints.update`` with its answers."""
        return await self._call(self._endpoints.update, cdn_id, **kwargs)

    async def delete(self, cdn_id: str, **kwargs: Any) -> RawResponse[None]:
        """``endpoints.delete`` with its answers."""
        return await self._call(self._endpoints.delete, cdn_id, **kwargs)


def session_of(client: CDNClient) -> Session:
    """The session a client sends through, for the package's own modules (the shared purge
    queue sends and waits with the session of the client given to it); not public API."""
    return client._session


def _token(token: str | None) -> str:
    """The token given, else ``$DIGITALOCEAN_TOKEN``, else doctl's; checked."""
    if token is None:
        # Ours first, then doctl's: a token set for cdn-async wins over a general one.
        token = os.environ.get(TOKEN_ENV) or os.environ.get(ACCESS_TOKEN_ENV)
    if not token:
        raise ValidationError(
            f"no API token: pass token=... or set ${TOKEN_ENV} (or ${ACCESS_TOKEN_ENV})"
        )
    if not token.isprintable() or any(c.isspace() for c in token):
        # Typically a token read from a file with its newline; never echo the token.
        raise ValidationError("the API token contains whitespace or control characters")
    return token


def _base_url_from_env() -> str:
    return os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL


def _limits(limits: RateLimits | None, reserve: float) -> RateLimits:
    """The budgets given (default the documented ones), less ``reserve``."""
    limits = limits if limits is not None else RateLimits.documented()
    if not reserve:
        return limits
    try:
        return limits.with_reserve(reserve)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


def _options(
    *,
    base_url: str,
    timeout: Any,
    max_retries: Any,
    max_rate_limit_wait: Any,
    max_budget_wait: Any,
    max_queued: Any,
    priority: Any,
) -> Options:
    if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
        raise ValidationError(
            f"timeout must be a positive number of seconds or None, got {timeout!r}"
        )
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValidationError(f"max_retries must be an int >= 0, got {max_retries!r}")
    if not isinstance(max_rate_limit_wait, int | float) or max_rate_limit_wait < 0:
        raise ValidationError(
            f"max_rate_limit_wait must be a number >= 0, got {max_rate_limit_wait!r}"
        )
    if max_budget_wait is not None and not (
        isinstance(max_budget_wait, int | float)
        and not isinstance(max_budget_wait, bool)
        and max_budget_wait >= 0
    ):
        raise ValidationError(
            f"max_budget_wait must be a number of seconds >= 0 or None, got {max_budget_wait!r}"
        )
    if max_queued is not None and (
        isinstance(max_queued, bool) or not isinstance(max_queued, int) or max_queued < 0
    ):
        raise ValidationError(f"max_queued must be an int >= 0 or None, got {max_queued!r}")
    if priority not in PRIORITIES:
        raise ValidationError(f"priority must be one of {PRIORITIES}, got {priority!r}")
    return Options(
        base_url=_check_base_url(base_url),
        timeout=timeout,
        max_retries=max_retries,
        max_rate_limit_wait=float(max_rate_limit_wait),
        max_budget_wait=None if max_budget_wait is None else float(max_budget_wait),
        max_queued=max_queued,
        priority=priority,
    )
