"""The session layer: the one place a request is sent.

Every call goes through ``Session.request``, which takes the request's budgets, sends it,
applies the answer's rate-limit headers, retries what is safe to retry and maps failures to
the typed errors of ``cdn_async.errors``. Resources above it only validate and structure.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Concatenate, ParamSpec, cast

import aiohttp
import attrs

from ._answers import api_error, no_answer, parse_body, wait_timeout
from ._budgets import MemoryBudgetStore
from ._constants import ANSWER_HORIZON
from ._events import (
    CAPTURE,
    Emitter,
    ResponseMeta,
    Telemetry,
)
from ._file_share import FileShare, Outcome
from ._headers import RequestClaims, apply_headers, pause, server_now
from ._limits import BudgetStore, Claim, EstimatesAdmission, Lease, Priority, RateLimits
from ._logs import logger
from ._models import RateLimitInfo
from ._observer import Observer
from ._pool import Pool, Wire, consume
from ._retry import Attempt, Failure, Verdict, backoff, decide, parse_retry_after
from ._version import __version__
from .errors import QueueFullError, TooManyRequestsError

_P = ParamSpec("_P")

#: The shortest sleep between 404 retries after a create (full jitter alone can be ~0).
NOT_FOUND_MIN_DELAY = 0.25


def _one_at_first(
    send: Callable[Concatenate[Session, str, str, _P], Coroutine[Any, Any, Response]],
) -> Callable[Concatenate[Session, str, str, _P], Coroutine[Any, Any, Response]]:
    """Wrap ``Session.request`` in the call's telemetry span, and send calls one at a time
    until the server has answered once: the first answer's ``ratelimit-*`` headers tell what
    other clients of the token already spent, and a burst sent blind into their units would
    draw 429s (docs/design.md, "Budgets", 6)."""

    @functools.wraps(send)
    async def request(
        self: Session, method: str, path: str, /, *args: _P.args, **kwargs: _P.kwargs
    ) -> Response:
        with self.observer.span(method, path):
            pool = self._pool
            pool.check_loop()
            if not pool.heard:
                async with pool.first_answer:
                    if not pool.heard:
                        return await send(self, method, path, *args, **kwargs)
            return await send(self, method, path, *args, **kwargs)

    return request


@attrs.frozen
class Options:
    """What a client can change per copy (``CDNClient.with_options``)."""

    base_url: str
    timeout: float | None
    max_retries: int
    max_rate_limit_wait: float
    max_budget_wait: float | None = None
    max_queued: int | None = None
    priority: Priority = "normal"


@attrs.frozen
class Response:
    """A successful answer.

    Args:
        status: The HTTP status (2xx).
        data: The parsed JSON body, or None for an empty body (204).
        rate_limit: The answer's rate-limit headers.
        attempts: Attempts made, this one included.
        budget_wait: Seconds spent waiting on budgets, over all attempts.
        request_id: The answer's ``x-request-id``, when given.
    """

    status: int
    data: Any
    rate_limit: RateLimitInfo
    attempts: int
    budget_wait: float
    request_id: str | None = None


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
        events: Emitter | None = None,
        telemetry: Telemetry | None = None,
        polite_purges: bool = False,
    ) -> None:
        self.options = options
        self.limits = limits
        self.store = store
        # Only the in-process store tells another client's units apart (BudgetState.others):
        # asked once per answer until the warning is said, so it must be a lookup, not a
        # snapshot (a shared store's reads the file or Redis, and says 0).
        self._memory = store if isinstance(store, MemoryBudgetStore) else None
        # Whether the store can estimate a wait (for max_budget_wait, max_queued): decided
        # once, as a runtime protocol check costs as much as an uncontended acquire.
        self._estimator = store if isinstance(store, EstimatesAdmission) else None
        self._pool = Pool(http, owns_http)
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._rand = rand
        #: Logs, hooks and telemetry of every call (and of the purge engine's batches).
        self.observer = Observer(events if events is not None else Emitter(()), telemetry)
        # The token lives only inside this header dict: never in a repr, log or error.
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "User-Agent": f"cdn-async/{__version__}",
        }
        self.last_rate_limit: RateLimitInfo | None = None
        self._queued = 0  # calls of this session waiting for their budgets
        #: Endpoint id -> loop time of its creation by this client (for the 404 lag rule).
        self.recently_created: dict[str, float] = {}
        self._timeout = _exchange_timeout(options.timeout)
        file_periods = [b.period for b in limits.budgets if b.unit == "file"]
        #: This client's own ceiling on purged files per window (None without a file budget).
        self.file_share = (
            FileShare(limits.purge_batch_size, max(file_periods), self.now, polite=polite_purges)
            if file_periods
            else None
        )
        #: Claims by purge-file count; only when no budget is keyed by endpoint (else the
        #: cache would grow with every endpoint id).
        self._claimed_by_files: dict[int, RequestClaims] | None = (
            None if any(b.scope != "token" for b in limits.budgets) else {}
        )

    def __repr__(self) -> str:
        return f"<Session base_url={self.options.base_url!r}>"

    def copy(self, options: Options) -> Session:
        """A session with other options that shares the connection pool, budgets and state."""
        clone = object.__new__(Session)
        clone.__dict__.update(self.__dict__)
        clone.options = options
        clone._timeout = _exchange_timeout(options.timeout)
        clone._queued = 0  # max_queued counts each copy's own calls
        return clone

    @property
    def closed(self) -> bool:
        """Whether the client was closed (shared by every copy of the session)."""
        return self._pool.closed

    def check_usable(self) -> None:
        """Raise ``CDNError`` now if a call could not be sent: the client is closed, or this
        is another event loop than the first call's."""
        self._pool.check_open()
        self._pool.check_loop()

    def shut(self) -> None:
        """Stop every call of this session and its copies: see ``Pool.shut``."""
        self._pool.shut()

    async def aclose(self) -> None:
        """Stop every call, end exchanges left on the wire, and close the connection pool if
        this session opened it."""
        await self._pool.aclose()

    def now(self) -> float:
        """The event loop's clock (virtual under looptime)."""
        return asyncio.get_running_loop().time()

    # Over 60 lines for its docstring, which documents every option of a call; the loop
    # itself is the dozen lines at the end (an attempt, the verdict, the act).
    @_one_at_first
    async def request(
        self,
        method: str,
        path: str,
        *,
        endpoint_id: str | None = None,
        files: int | Callable[[], int] = 0,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
        retry_not_found: float = 0.0,
        gone_is_done: bool = False,
        max_retries: int | None = None,
        priority: Priority | None = None,
        seal: Callable[[], Any] | None = None,
        retry_conflict: bool = False,
    ) -> Response:
        """Send one logical request, retrying what is safe, and return its successful answer.

        Args:
            method: The HTTP method.
            path: The URL path below ``base_url``.
            endpoint_id: The CDN endpoint the request is about (for per-endpoint budgets).
            files: How many purge paths it carries (for the file budget); or a function
                called before each attempt that cuts the batch and says how many (a purge
                refused with a 429 was counted by nobody and may be cut again, smaller).
            json: The JSON body, if any.
            seal: Instead of ``json``: a function that makes the body, called once, when the
                budgets first admit the request (the purge engine seals its batch then; it
                may return an awaitable of the body: the purge queue fixes it in Redis). If
                it raises, the request is not sent and its units are given back.
            params: Query parameters.
            retry_not_found: For this many seconds from the first attempt, treat a 404 as the
                API's lag after a create and retry (with backoff).
            gone_is_done: A 404 after an attempt that may have reached the server (a 5xx or
                a broken connection) means that attempt did the work: return it as success.
            max_retries: Retries allowed for this call; None: the client's ``max_retries``.
            priority: The call's place among waiters for the same budgets; None: the
                client's ``priority``.
            retry_conflict: A 409 means an identical request is in progress (a purge):
                retry it with backoff, within ``max_retries``.

        Returns:
            The 2xx answer.

        Raises:
            APIError: The final answer was an error status (a subclass per status).
            APIConnectionError: No answer arrived, after the retries allowed.
            RateLimitedError: The server paused a budget for longer than allowed to wait.
            APIResponseError: A 2xx answer whose body is not JSON.
            CDNError: The client was closed ("client closed").
        """
        opts = self.options
        self._pool.check_open()
        cut = files if callable(files) else None
        call = _Call(
            method,
            path,
            opts.base_url + path,
            endpoint_id,
            cut,
            0 if cut is not None else cast(int, files),
            json,
            params,
            seal,
            priority or opts.priority,
            opts.max_retries if max_retries is None else max_retries,
            gone_is_done,
            retry_conflict,
            self.now() + retry_not_found,
        )
        if cut is None:
            call.claimed = self._claims_for(endpoint_id, call.count)
        while True:
            call.attempt += 1
            outcome = await self._attempt(call)
            verdict = self._judge(call, outcome)
            if verdict in ("retry", "retry_paused", "retry_not_found"):
                await self._before_retry(verdict, call, outcome)
                continue
            return self._conclude(verdict, call, outcome)

    async def _attempt(self, call: _Call) -> _Outcome:
        """One attempt: the file share's room and the cut (a purge's first attempt, or after
        a 429), the budgets, the body, the exchange and its settlement. The file share's
        reservation is settled once on every path: "unsent" when the body could not be made,
        "counted" when the attempt ends in an exception (it may be on the wire), else by the
        outcome (``_share_outcome``)."""
        opts = self.options
        share = self.file_share
        started = self.now()
        if call.cut is not None and call.recut:
            # The batch is cut when this client's file share has room for it, and again
            # after a 429 (the server counted none of it); any other retry resends it.
            if share is not None and opts.max_budget_wait is None:
                # (Under a deadline the store's wait, which it bounds, does the waiting.)
                await self._pool.while_open(share.room())
            call.count = call.cut()
            call.claimed = self._claims_for(call.endpoint_id, call.count)
            call.make_body = call.seal
        # What the file share counts in flight for this attempt, settled once.
        reserved = call.count if share is not None else 0
        lease, trial = await self._acquire(call.claimed.claims, opts, call.priority, reserved)
        settled_as: Outcome = "counted"  # ended by an exception: it may be on the wire
        try:
            sent = self.now()
            call.budget_wait += sent - started
            if sent - started >= 0.001:
                budget = getattr(lease, "waited_on", None)
                self.observer.waited(call.method, call.path, call.attempt, budget, sent - started)
            try:
                http = self._pool.get()
                await self._make_body(call)
            except BaseException:
                self.store.give_back(lease)  # nothing was sent
                settled_as = "unsent"
                raise
            outcome = await self._send(call, http, lease, trial, sent)
            settled_as = _share_outcome(outcome.status, outcome.failure)
        finally:
            if share is not None and reserved:
                share.settle(reserved, trial, settled_as)
        return outcome

    @staticmethod
    async def _make_body(call: _Call) -> None:
        """Seal the body, once per cut: the purge engine's batch is fixed only now."""
        if call.make_body is not None:
            json, call.make_body = call.make_body(), None
            call.json = json
            if inspect.isawaitable(json):  # a body fixed elsewhere (the purge queue)
                call.json = await json

    async def _send(
        self, call: _Call, http: aiohttp.ClientSession, lease: Lease, trial: bool, sent: float
    ) -> _Outcome:
        """Run the exchange as a task and wait for it, then settle the lease."""
        opts, claimed = self.options, call.claimed
        wire = Wire(written=not self._pool.traced)
        loop = asyncio.get_running_loop()
        # Set when the exchange ends, or when the timeout passes. The caller waits on it, not
        # on the task: a cancelled caller must not cancel an exchange that is already on the
        # wire (see _abandon). The exchange sets it from inside its own step, so the caller
        # wakes one loop iteration after the answer (a done callback, as asyncio.wait uses,
        # would cost two).
        ended = loop.create_future()
        exchange = loop.create_task(self._exchange_until(ended, http, call, wire))
        timer = None if opts.timeout is None else loop.call_later(opts.timeout, _wake, ended)
        self.observer.sent(call.method, call.path, call.attempt)
        try:
            await ended
        except asyncio.CancelledError:
            self._abandon(exchange, wire, lease, claimed)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        outcome = _Outcome(claimed)
        if not exchange.done():
            self._abandon(exchange, wire, lease, claimed)
            outcome.failure = "transport" if wire.written else "connect"
            outcome.error = TimeoutError(f"no answer within {opts.timeout} s")
        else:
            try:
                outcome.status, outcome.body, outcome.headers = exchange.result()
            except aiohttp.ClientConnectorError as exc:
                outcome.failure, outcome.error = "connect", exc
            except (TimeoutError, aiohttp.ClientError) as exc:
                outcome.failure = "transport" if wire.written else "connect"
                outcome.error = exc
            except BaseException:
                self.store.release(lease)
                raise
            outcome.info, call.wait = self._settle(
                lease, claimed, outcome.status, outcome.headers, outcome.failure, trial
            )
        self.observer.answered(
            call.method,
            call.path,
            call.attempt,
            outcome.status,
            outcome.error,
            self.now() - sent,
            outcome.headers,
            outcome.info,
        )
        return outcome

    def _judge(self, call: _Call, outcome: _Outcome) -> Verdict:
        """Note what the attempt tells about the call, and ask the retry policy."""
        status, failure, now = outcome.status, outcome.failure, self.now()
        call.maybe_done = call.maybe_done or failure == "transport" or status >= 500
        call.recut = status == 429
        if call.recut and call.limited_since is None:
            call.limited_since = now
        return decide(
            Attempt(
                call.method,
                status if outcome.error is None else None,
                failure,
                retries=call.retries,
                max_retries=call.max_retries,
                maybe_done=call.maybe_done,
                gone_is_done=call.gone_is_done,
                not_found_open=now < call.not_found_until,
                rate_limited_for=(
                    now - call.limited_since + call.wait if call.limited_since is not None else 0.0
                ),
                max_pause=self.options.max_rate_limit_wait,
                retry_conflict=call.retry_conflict,
            )
        )

    async def _before_retry(self, verdict: Verdict, call: _Call, outcome: _Outcome) -> None:
        """Wait as the verdict says before the next attempt."""
        method, path, attempt = call.method, call.path, call.attempt
        if verdict == "retry":
            self._pool.check_open()
            call.retries += 1
            why = type(outcome.error).__name__ if outcome.error is not None else str(outcome.status)
            await self._pool.while_open(self.backoff(method, path, call.retries, why))
        elif verdict == "retry_paused":
            assert outcome.info is not None  # a 429 is an answer
            budget = outcome.claimed.budget_for(outcome.info)
            self.observer.paused(method, path, attempt, budget, call.wait, attempt)
        else:  # "retry_not_found"
            delay = (
                max(NOT_FOUND_MIN_DELAY, backoff(attempt, self._rand())) * self.limits.time_scale
            )
            logger.info("%s %s: 404 soon after create; retry in %.3f s", method, path, delay)
            await self._pool.while_open(self._sleep(delay))

    def _conclude(self, verdict: Verdict, call: _Call, outcome: _Outcome) -> Response:
        """The call's answer for a final verdict ("return", "gone"), or its typed error."""
        status, info, attempt = outcome.status, outcome.info, call.attempt
        if outcome.error is not None:
            self._pool.check_open()
            raise no_answer(call.method, call.path, attempt, outcome.error) from None
        assert info is not None  # an answer: _settle read its headers
        if verdict == "gone":
            logger.info(
                "%s %s: 404 after an ambiguous attempt; it was done", call.method, call.path
            )
            return Response(status, None, info, attempt, call.budget_wait)
        request_id = outcome.headers.get("x-request-id")
        if verdict == "return":
            capture = CAPTURE.get()
            if capture is not None:
                capture.append(ResponseMeta(status, request_id, info, attempt, call.budget_wait))
            body_data = parse_body(status, outcome.body)
            return Response(status, body_data, info, attempt, call.budget_wait, request_id)
        err = api_error(
            status, outcome.body, outcome.headers, info, attempt, call.method, call.path
        )
        if isinstance(err, TooManyRequestsError):
            err.reset_at = self._wall_clock() + call.wait
            err.budget = outcome.claimed.budget_for(info)
        raise err

    async def _acquire(
        self, claims: tuple[Claim, ...], opts: Options, priority: Priority, files: int = 0
    ) -> tuple[Lease, bool]:
        """Wait for the budgets, within the call's ``max_budget_wait`` and ``max_queued``:
        the file share's room for ``files`` purged paths first, then the store. Returns the
        lease and whether the request is a file share trial (``FileShare.reserve``)."""
        deadline, cap = opts.max_budget_wait, opts.max_queued
        if deadline is None and cap is None:  # nothing to bound or count
            return await self._pool.while_open(self._admit(claims, opts, priority, files))
        estimator = self._estimator
        delay, budget = (
            estimator.admission_delay(claims, priority) if estimator is not None else (1.0, "")
        )
        # Queued: waits for budget. A call the budgets admit at once is not, even while it is
        # held back to go one at a time (a first call, a probe): it never meets the cap.
        queued = delay > 0
        if cap is not None and queued and self._queued >= cap:
            raise QueueFullError(
                f"{self._queued} calls already wait for their budgets (max_queued={cap})"
            )
        if deadline is not None and estimator is not None and delay > deadline:
            raise wait_timeout(delay, budget, deadline, early=True)
        self._queued += queued
        try:
            if deadline is None:
                return await self._pool.while_open(self._admit(claims, opts, priority, files))
            try:
                async with asyncio.timeout(deadline):
                    return await self._pool.while_open(self._admit(claims, opts, priority, files))
            except TimeoutError:
                # The store took nothing: a waiter cancelled before admission never does.
                late, budget = (
                    estimator.admission_delay(claims, priority)
                    if estimator is not None
                    else (None, "")
                )
                raise wait_timeout(late, budget, deadline, early=False) from None
        finally:
            self._queued -= queued

    async def _admit(
        self, claims: tuple[Claim, ...], opts: Options, priority: Priority, files: int
    ) -> tuple[Lease, bool]:
        share = self.file_share if files else None
        trial = await share.reserve(files) if share is not None else False
        try:
            lease = await self.store.acquire(
                claims, max_wait=opts.max_rate_limit_wait, priority=priority
            )
        except BaseException:
            if share is not None:
                share.settle(files, trial, "unsent")
            raise
        return lease, trial

    async def _exchange_until(
        self,
        ended: asyncio.Future[None],
        http: aiohttp.ClientSession,
        call: _Call,
        wire: Wire,
    ) -> tuple[int, bytes, Mapping[str, str]]:
        """The exchange, then ``ended`` set (the task's result is set in the same step)."""
        try:
            return await self._exchange(http, call.method, call.url, call.json, call.params, wire)
        finally:
            _wake(ended)

    async def _exchange(
        self,
        http: aiohttp.ClientSession,
        method: str,
        url: str,
        json: Any,
        params: Mapping[str, str | int] | None,
        wire: Wire,
    ) -> tuple[int, bytes, Mapping[str, str]]:
        """One HTTP exchange: send, read the whole answer."""
        # No redirects: the token must not follow a Location header, and one budget unit
        # must mean one request. No raise_for_status: statuses are mapped by the caller.
        async with http.request(
            method,
            url,
            json=json,
            params=params,
            headers=self._headers,
            timeout=self._timeout,
            allow_redirects=False,
            raise_for_status=False,
            trace_request_ctx={"wire": wire},
        ) as resp:
            return resp.status, await resp.read(), resp.headers

    def _abandon(
        self, exchange: asyncio.Task[Any], wire: Wire, lease: Lease, claimed: RequestClaims
    ) -> None:
        """The caller stopped waiting (cancelled, or its timeout passed) for an exchange.

        A request that was never written cannot be stamped by the server: the exchange is
        cancelled and its units given back at once. One that may have been written can still
        be stamped, after any uplink delay, until the server answers or closes the connection,
        so the exchange is left to finish on its own and its units count until one period
        after that (docs/design.md, "An attempt that got no answer").
        """
        if not exchange.done() and not wire.written:
            exchange.cancel()
            exchange.add_done_callback(consume)
            self.store.give_back(lease)
            return
        self._pool.detached.add(exchange)
        exchange.add_done_callback(lambda task: self._finish_detached(task, lease, claimed))

    def _finish_detached(
        self, task: asyncio.Task[Any], lease: Lease, claimed: RequestClaims
    ) -> None:
        self._pool.detached.discard(task)
        if task.cancelled():  # the client closed: the connection is gone, count from now
            self.store.release(lease)
            return
        exc = task.exception()
        if exc is None:
            status, _, headers = task.result()
            self._settle(lease, claimed, status, headers, None)
        elif isinstance(exc, aiohttp.ClientConnectorError):
            self.store.give_back(lease)
        else:
            self.store.release(lease)

    def _settle(
        self,
        lease: Lease,
        claimed: RequestClaims,
        status: int,
        headers: Mapping[str, str],
        failure: Failure | None,
        trial: bool = False,
    ) -> tuple[RateLimitInfo | None, float]:
        """Account for one finished exchange; returns the answer's rate-limit headers (None
        without an answer) and the pause a 429 set (else 0.0).

        Units of a request never written are given back; so are a 429's, which the server
        refused without counting (counting them would make this client think another one
        spent them). Every other outcome counts until one period from now. The answer's
        headers are applied after that, so the server's count is compared with ours alone.
        A refused trial of the file share (``_file_share``) pauses and holds nothing: it
        asked for room beyond what this client knows fits, which explains the refusal, and
        its share is sent at once.
        """
        if failure == "connect":
            self.store.give_back(lease)
            return None, 0.0
        if failure is not None:
            self.store.release(lease)
            return None, 0.0
        # Waits are read against the server's clock (the answer's Date), not ours.
        now = server_now(headers, self._wall_clock())
        info = RateLimitInfo.from_headers(headers, now)
        self.last_rate_limit = info
        self._pool.heard = True
        if status != 429:
            self.store.release(lease)
            apply_headers(self.store, info, claimed, refused=False)
            if self._memory is not None and not self.observer.others_seen:
                self._look_for_others(info, claimed, self._memory)
            return info, 0.0
        if trial:
            self.store.give_back(lease)
            return info, 0.0
        self.observer.another_client("a 429 this client's own requests do not explain")
        # No usable reset: any budget of the request surely frees something within its period.
        wait = parse_retry_after(headers, now) or min(c.period for c in claimed.claims)
        # The server counted nothing: the units go back once the pause is set (else a waiter
        # is admitted into the room the server just called full), and before the headers are
        # compared with our count (which must not include this request). Paused even when
        # this call gives up, so the others wait instead of drawing more 429s.
        paused = pause(self.store, info, claimed, wait)
        self.store.give_back(lease)
        apply_headers(self.store, info, claimed, refused=True)
        return info, paused

    def _look_for_others(
        self, info: RateLimitInfo, claimed: RequestClaims, store: MemoryBudgetStore
    ) -> None:
        """Warn once when the store holds units the headers showed another client spent."""
        claim = claimed.described(info)
        if claim is None or info.remaining is None or info.remaining >= claim.limit:
            return
        others = store.held_for_others(claim.key)
        if others > 0:
            self.observer.another_client(
                f"the server counts {others} more on the {claim.budget} budget than this "
                "client sent"
            )

    async def backoff(self, method: str, path: str, retry: int, why: str) -> None:
        """Sleep before retry number ``retry``, as the retry policy says, and log why."""
        delay = backoff(retry, self._rand()) * self.limits.time_scale
        self.observer.retry(method, path, retry, why, delay)
        await self._sleep(delay)

    def _claims_for(self, endpoint_id: str | None, files: int) -> RequestClaims:
        """The claims of a request (and their header lookup), cached when they cannot depend
        on ``endpoint_id``: the same few tuples serve every request of a session."""
        limits = self.limits
        if self._claimed_by_files is None:
            return RequestClaims(limits.claims(endpoint_id, files), limits)
        claimed = self._claimed_by_files.get(files)
        if claimed is None:
            claimed = self._claimed_by_files[files] = RequestClaims(
                limits.claims(endpoint_id, files), limits
            )
        return claimed


def _wake(ended: asyncio.Future[None]) -> None:
    if not ended.done():
        ended.set_result(None)


def _share_outcome(status: int, failure: Failure | None) -> Outcome:
    if failure == "connect":
        return "unsent"
    if failure is not None:
        return "counted"
    return "accepted" if 200 <= status < 300 else "refused" if status == 429 else "counted"


def _exchange_timeout(timeout: float | None) -> aiohttp.ClientTimeout:
    # The caller stops waiting after ``timeout``; the exchange itself may go on, so its
    # units are counted until the server answers (see Session._abandon), for at most
    # ANSWER_HORIZON. Without a timeout, neither is bounded.
    if timeout is None:
        return aiohttp.ClientTimeout(total=None)
    return aiohttp.ClientTimeout(total=max(timeout, ANSWER_HORIZON))


@attrs.define
class _Call:
    """One logical request across its attempts: what it sends, and what its attempts so far
    tell the retry policy."""

    method: str
    path: str
    url: str
    endpoint_id: str | None
    #: Cuts a purge batch before an attempt and says how many paths it carries; or None.
    cut: Callable[[], int] | None
    count: int  # purged paths this attempt carries
    json: Any
    params: Mapping[str, str | int] | None
    seal: Callable[[], Any] | None
    priority: Priority
    max_retries: int
    gone_is_done: bool
    retry_conflict: bool
    not_found_until: float  # loop time until which a 404 may be the lag after a create
    #: The claims of the current cut: set before the first attempt (by the first cut for a
    #: purge batch).
    claimed: RequestClaims = attrs.field(init=False)
    make_body: Callable[[], Any] | None = attrs.field(init=False)
    attempt: int = 0
    retries: int = 0
    budget_wait: float = 0.0
    wait: float = 0.0  # the pause the last 429 set (kept through an attempt with no answer)
    limited_since: float | None = None  # when the call drew its first 429
    recut: bool = True  # cut the batch before this attempt: the first, or after a 429
    maybe_done: bool = False  # an earlier attempt may have been carried out

    def __attrs_post_init__(self) -> None:
        self.make_body = self.seal


@attrs.define
class _Outcome:
    """What one attempt came to: an answer (status, body, headers, rate-limit headers) or a
    failure with the error that explains it."""

    claimed: RequestClaims  # the claims the attempt was sent under
    status: int = 0
    body: bytes = b""
    headers: Mapping[str, str] = attrs.field(factory=dict)
    info: RateLimitInfo | None = None
    failure: Failure | None = None
    error: BaseException | None = None
