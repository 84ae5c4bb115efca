"""``FakeCDNServer``: an aiohttp.web application faithful to DigitalOcean's CDN Endpoints API.

Order in which a request is handled (each step may answer and stop):

1. uplink latency (fault), then the request is stamped with the event-loop clock;
2. ``401 auth``: no known bearer token (not counted: there is no token to count against);
3. ``429 rate_limit:<budget>``: the request does not fit one of its token's budget windows
   (refused requests are not counted); otherwise it is counted in all of them at once;
4. ``fault:*_before``: a switched-on 5xx or dropped connection (nothing changes);
5. ``404``/``405`` for a path or method outside the API (a 405 names the path's methods in
   ``Allow``; ``HEAD`` is answered as ``GET`` without the body), ``403 scope`` for a missing
   scope;
6. the operation: ``400 bad_request`` (query, malformed JSON), ``404 not_found``/``invisible``,
   ``422 validation``, ``409 conflict`` (identical purge in progress), else the change is
   applied (``ok``);
7. ``fault:*_after`` on successful requests: a 5xx, a dropped connection or a non-JSON body;
8. downlink latency (fault), then the answer goes out.

Every answer carries ``x-request-id`` and ``ratelimit-limit/-remaining/-reset``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ._admission import Admission, CdnBudgetScope, HeaderBudget
from ._cache import PurgeRecord
from ._endpoints import DEFAULT_TTL, purge_cost
from ._faults import Faults
from ._journal import Counters, JournalEntry
from ._operations import Operations
from ._routes import _NOT_FOUND, SCOPE_OF, _error, _fault_reply, _Reply, _Route, _route
from ._windows import DOCUMENTED_BUDGETS, BudgetSpec

if TYPE_CHECKING:
    from .._client import CDNClient

#: Every scope the CDN operations use.
ALL_SCOPES: tuple[str, ...] = ("cdn:read", "cdn:create", "cdn:update", "cdn:delete")


class FakeCDNServer:
    """A fake of DigitalOcean's CDN Endpoints API, served over real HTTP on loopback.

    Use it as an async context manager::

        async with FakeCDNServer(time_scale=0.01) as server:
            async with aiohttp.ClientSession() as http:
                await http.get(f"{server.url}/v2/cdn/endpoints",
                               headers={"Authorization": f"Bearer {server.token}"})

    Args:
        time_scale: Multiplies every budget period (0.01 turns 10 s into 0.1 s).
        cdn_budget_scope: ``"token"`` (default, as documented): one 5 / 10 s window per token
            for all ``/v2/cdn/endpoints*`` requests. ``"endpoint"``: one per token and
            endpoint id (list and create share a window of their own).
        header_budget: Which window ``ratelimit-*`` headers describe on CDN paths: ``"cdn"``
            (default, as seen on the real API: ``ratelimit-limit: 5``) or ``"hourly"``.
            Other paths always report the hourly budget.
        purge_duration: Seconds (real, not scaled) a purge takes before its 204.
        seed: Seed for every random choice (fault probabilities, latency jitter).
        host: Interface to listen on.
        port: Port to listen on; 0 picks a free one.
        tokens: Extra tokens and their scopes (``{"tok": ["cdn:read"]}``). ``server.token``,
            with all scopes, is always generated as well.
        invisible_after_create: Seconds (real) during which a GET of a newly created endpoint
            answers 404, like the real API shortly after a create. Also settable later.
        clock: Monotonic clock for the budget windows; default: the running loop's ``time()``
            (so virtual-time tests work).
        wall_clock: Epoch clock used to express ``ratelimit-reset``; default ``time.time``.
        budgets: Override the documented budgets (names ``hourly``, ``minute``, ``cdn``,
            ``purge_files`` drive the special rules; periods are scaled by ``time_scale``).
        ssl_context: Serve HTTPS with this server-side context (``url`` is then
            ``https://...``); None serves plain HTTP.
    """

    def __init__(
        self,
        *,
        time_scale: float = 1.0,
        cdn_budget_scope: CdnBudgetScope = "token",
        header_budget: HeaderBudget = "cdn",
        purge_duration: float = 0.0,
        seed: int | None = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens: Mapping[str, Iterable[str]] | None = None,
        invisible_after_create: float = 0.0,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] = time.time,
        budgets: Iterable[BudgetSpec] = DOCUMENTED_BUDGETS,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale must be a positive number, got {time_scale!r}")
        if cdn_budget_scope not in ("token", "endpoint"):
            raise ValueError(
                f"cdn_budget_scope must be 'token' or 'endpoint', got {cdn_budget_scope!r}"
            )
        if header_budget not in ("cdn", "hourly"):
            raise ValueError(f"header_budget must be 'cdn' or 'hourly', got {header_budget!r}")
        if purge_duration < 0:
            raise ValueError("purge_duration must be >= 0")
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.faults = Faults(seed)
        self.journal: list[JournalEntry] = []
        self.counters = Counters()
        self._tokens: dict[str, frozenset[str]] = {}
        self._admission = Admission(
            budgets=tuple(budgets),
            time_scale=time_scale,
            cdn_budget_scope=cdn_budget_scope,
            header_budget=header_budget,
            clock=clock,
            wall_clock=wall_clock,
            faults=self.faults,
            tokens=self._tokens,
        )
        self._operations = Operations(
            purge_duration=purge_duration, invisible_after_create=invisible_after_create
        )
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.token = self.add_token()
        for token, scopes in (tokens or {}).items():
            self.add_token(scopes, token=token)
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    @property
    def time_scale(self) -> float:
        """What every budget period is multiplied by."""
        return self._admission.time_scale

    @property
    def cdn_budget_scope(self) -> CdnBudgetScope:
        """One cdn window per token (``"token"``) or per token and endpoint."""
        return self._admission.cdn_budget_scope

    @property
    def header_budget(self) -> HeaderBudget:
        """Which window the ``ratelimit-*`` headers of CDN paths describe."""
        return self._admission.header_budget

    @property
    def purge_duration(self) -> float:
        """Seconds (real, not scaled) a purge takes before its 204; settable."""
        return self._operations.purge_duration

    @purge_duration.setter
    def purge_duration(self, seconds: float) -> None:
        self._operations.purge_duration = seconds

    @property
    def invisible_after_create(self) -> float:
        """Seconds (real) a new endpoint answers GET with 404; settable."""
        return self._operations.invisible_after_create

    @invisible_after_create.setter
    def invisible_after_create(self, seconds: float) -> None:
        self._operations.invisible_after_create = seconds

    @property
    def purges(self) -> list[PurgeRecord]:
        """Every purge applied, with the cached paths it covered."""
        return self._operations.purges

    def cache(self, endpoint_id: str, paths: Iterable[str]) -> None:
        """Mark ``paths`` cached at ``endpoint_id``'s edge: each purge then records which of
        them it covered (``purges``) and removes them (``cached``).

        Args:
            endpoint_id: The endpoint.
            paths: Paths now cached (files; a leading ``/`` dropped).
        """
        self._operations.cache(endpoint_id, paths)

    def cached(self, endpoint_id: str) -> frozenset[str]:
        """The paths still cached at ``endpoint_id``'s edge (what no purge covered yet)."""
        return self._operations.cached(endpoint_id)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening; sets ``url`` (``http(s)://<host>:<port>``) and ``port``."""
        if self._runner is not None:
            raise RuntimeError("FakeCDNServer is already running")
        # A short shutdown timeout: a purge still sleeping when the test ends is abandoned
        # rather than holding the test up for aiohttp's default 60 s.
        runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=0.25
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.ssl_context is not None else "http"
        self.url = f"{scheme}://{host}:{self.port}"

    async def close(self) -> None:
        """Stop listening and close every connection."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeCDNServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def client(self, **options: Any) -> AsyncIterator[CDNClient]:
        """A ``CDNClient`` for this server, closed on exit::

            async with fake_cdn.client(max_retries=1) as cdn:
                await cdn.endpoints.purge(endpoint_id, ["*"])

        The client gets the server's ``url`` and ``token``, the documented budgets scaled by
        ``time_scale`` (``RateLimits.documented().scaled(time_scale)``), and retry backoff
        scaled the same way, so a test at ``time_scale=0.01`` waits 1/100 of every delay.

        Args:
            **options: ``CDNClient`` keyword arguments; they override the defaults above
                (``token=``, ``base_url=``, ``limits=``...).

        Yields:
            The open client.
        """
        from .._client import CDNClient
        from .._limits import RateLimits

        if not self.url:
            raise RuntimeError("the FakeCDNServer is not started: use it as 'async with'")
        options.setdefault("token", self.token)
        options.setdefault("base_url", self.url)
        options.setdefault("limits", RateLimits.documented().scaled(self._admission.time_scale))
        async with CDNClient(**options) as cdn:
            yield cdn

    # -- configuration and inspection --------------------------------------------------------

    def add_token(self, scopes: Iterable[str] = ALL_SCOPES, *, token: str | None = None) -> str:
        """Register a bearer token with the given scopes.

        Args:
            scopes: Scopes granted (``"cdn:read"``, ``"cdn:create"``, ``"cdn:update"``,
                ``"cdn:delete"``); default all four.
            token: The token string; default a fresh ``dop_v1_...`` one.

        Returns:
            The token.
        """
        token = token or f"dop_v1_{secrets.token_hex(32)}"
        self._tokens[token] = frozenset([scopes] if isinstance(scopes, str) else scopes)
        return token

    def add_endpoint(
        self,
        origin: str,
        ttl: int = DEFAULT_TTL,
        *,
        custom_domain: str | None = None,
        certificate_id: str | None = None,
        visible: bool = True,
    ) -> dict[str, Any]:
        """Create an endpoint directly, bypassing HTTP, budgets, faults and the journal.

        Args:
            origin: A Space FQDN (``name.nyc3.digitaloceanspaces.com``), not yet used.
            ttl: One of 60, 600, 3600, 86400, 604800.
            custom_domain: Optional custom domain (needs ``certificate_id``).
            certificate_id: Optional certificate UUID or ``needs-cloudflare-cert``.
            visible: False applies ``invisible_after_create`` as a real create would.

        Returns:
            The endpoint as the API would return it.

        Raises:
            ValueError: If the API would refuse it with 422.
        """
        body: dict[str, Any] = {"origin": origin, "ttl": ttl}
        if custom_domain is not None:
            body["custom_domain"] = custom_domain
        if certificate_id is not None:
            body["certificate_id"] = certificate_id
        visible_at = -math.inf if visible else self._admission.now() + self.invisible_after_create
        return self._operations.create(body, visible_at=visible_at).to_json()

    @property
    def endpoints(self) -> list[dict[str, Any]]:
        """Every endpoint, in creation order, as the API would return it."""
        return [ep.to_json() for ep in self._operations.endpoints.values()]

    def spend(self, token: str, budget: str, units: int, *, endpoint_id: str | None = None) -> None:
        """Count ``units`` phantom units in a token's budget window, now.

        Simulates another client spending the same token's budget. No limit check: the window
        may go over its limit, and requests are refused until enough units expire.

        Args:
            token: A token (known or not).
            budget: ``"hourly"``, ``"minute"``, ``"cdn"`` or ``"purge_files"``.
            units: Units to add.
            endpoint_id: For the ``cdn`` budget with ``cdn_budget_scope="endpoint"``: which
                endpoint's window (None: the window of list and create).
        """
        spec = self._admission.spec(budget)
        self._admission.window(token, spec, endpoint_id).add(units, self._admission.now())

    def used(self, token: str, budget: str, *, endpoint_id: str | None = None) -> int:
        """Units currently counted in a token's budget window.

        Args:
            token: The token.
            budget: The budget name.
            endpoint_id: As for ``spend``.

        Returns:
            The units in the window now.
        """
        return self._admission.window(token, self._admission.spec(budget), endpoint_id).used(
            self._admission.now()
        )

    def reset_journal(self) -> None:
        """Forget the journal and zero the counters (budgets and endpoints are kept)."""
        self.journal.clear()
        self.counters = Counters()

    # -- request handling ----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one request: the steps of the module docstring, in their order."""
        delay = self.faults.delay("up")
        if delay > 0:
            await asyncio.sleep(delay)
        arrival = self._admission.now()
        request_id = str(uuid.uuid4())
        body, body_ok = _parse_body(await request.read())
        route = _route(request.method, request.path)
        token = _bearer_token(request.headers.get("Authorization", ""))
        reply, counted = await self._decide(request, route, token, body, body_ok, arrival)
        # The headers describe the windows as this request left them, whatever comes after.
        headers = self._admission.rate_headers(token, route, reply.status == 429)
        headers["x-request-id"] = request_id
        if reply.retry_after is not None:
            headers["Retry-After"] = str(reply.retry_after)
        headers.update(reply.headers)
        entry = JournalEntry(
            arrival=arrival,
            method=request.method,
            path=request.path,
            query=dict(request.query),
            body=body,
            status=None if reply.drop else reply.status,
            rule=reply.rule,
            op=route.op,
            endpoint_id=route.cdn_id,
            request_id=request_id,
            counted=counted,
            token=token,
        )
        self.journal.append(entry)
        self.counters.record(entry)
        delay = self.faults.delay("down")
        if delay > 0:
            await asyncio.sleep(delay)
        return _response(request, reply, headers, request_id)

    async def _decide(
        self,
        request: web.Request,
        route: _Route,
        token: str | None,
        body: Any,
        body_ok: bool,
        now: float,
    ) -> tuple[_Reply, bool]:
        """The reply (authentication, then the budgets, then ``_process``), and whether the
        request was counted in its budgets."""
        if token is None or token not in self._tokens:
            return _error(401, "unauthorized", "Unable to authenticate you.", "auth"), False
        files = purge_cost(body) if route.op == "purge" else 0
        refused = self._admission.admit(token, route, files, now)
        if refused is not None:
            return refused, False
        return await self._process(request, route, token, body, body_ok, now), True

    async def _process(
        self, request: web.Request, route: _Route, token: str, body: Any, body_ok: bool, now: float
    ) -> _Reply:
        rule = self.faults.take("before", route.op)
        if rule is not None:
            return _fault_reply(rule, route)
        if route.op is None:
            if not route.method_allowed:
                reply = _error(405, "method_not_allowed", "Method not allowed.", "not_found")
                reply.headers["Allow"] = ", ".join(route.allowed)  # RFC 9110 15.5.6: required
                return reply
            return _error(404, *_NOT_FOUND, "not_found")
        if SCOPE_OF[route.op] not in self._tokens[token]:
            return _error(
                403, "forbidden", "You are not authorized to perform this operation.", "scope"
            )
        if route.op in ("create", "update", "purge") and not body_ok:
            return _error(400, "bad_request", "The request body is not valid JSON.", "bad_request")
        reply = await self._operations.operate(request, route, body, now)
        if reply.rule == "ok":
            rule = self.faults.take("after", route.op)
            if rule is not None:
                return _fault_reply(rule, route)
        return reply


def _parse_body(raw: bytes) -> tuple[Any, bool]:
    """The request body as JSON (None when empty), and whether it was valid JSON; invalid
    JSON is kept as text for the journal."""
    if not raw:
        return None, True
    try:
        return json.loads(raw), True
    except ValueError:
        return raw.decode("utf-8", "replace"), False


def _bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _response(
    request: web.Request, reply: _Reply, headers: dict[str, str], request_id: str
) -> web.StreamResponse:
    """The answer on the wire: JSON (errors carry ``request_id``), HTML, empty, or none at all
    (a dropped connection)."""
    if reply.drop:
        if request.transport is not None:
            request.transport.close()
        # Writing to the closed transport fails; aiohttp treats that as a client gone away.
        return web.Response()
    if isinstance(reply.body, dict):
        if reply.status >= 400:
            reply.body["request_id"] = request_id
        return web.Response(
            status=reply.status,
            text=json.dumps(reply.body),
            content_type="application/json",
            headers=headers,
        )
    if isinstance(reply.body, str):
        return web.Response(
            status=reply.status, text=reply.body, content_type="text/html", headers=headers
        )
    return web.Response(status=reply.status, headers=headers)


async def serve(
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    on_ready: Callable[[FakeCDNServer], object] | None = None,
    **options: Any,
) -> None:
    """Run a ``FakeCDNServer`` until cancelled (what ``cdn-async fake-server`` runs).

    Args:
        host: Interface to listen on.
        port: Port to listen on (0: a free one; read it from the server in ``on_ready``).
        on_ready: Called with the running server, e.g. to print its URL and token.
        **options: Any other ``FakeCDNServer`` keyword argument.
    """
    async with FakeCDNServer(host=host, port=port, **options) as server:
        if on_ready is not None:
            on_ready(server)
        await asyncio.Event().wait()
