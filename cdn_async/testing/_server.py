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
import re
import secrets
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs
from aiohttp import web

from ._endpoints import (
    DEFAULT_TTL,
    BodyError,
    Endpoint,
    cdn_hostname,
    check_domain_fields,
    check_origin,
    check_purge_files,
    check_ttl,
    now_iso,
    purge_cost,
)
from ._faults import FaultRule, Faults
from ._journal import Counters, JournalEntry
from ._windows import DOCUMENTED_BUDGETS, BudgetSpec, SlidingWindow

if TYPE_CHECKING:
    from .._client import CDNClient

#: Every scope the CDN operations use.
ALL_SCOPES: tuple[str, ...] = ("cdn:read", "cdn:create", "cdn:update", "cdn:delete")
#: The scope each operation needs (purge is a DELETE, hence ``cdn:delete``, as in the spec).
SCOPE_OF: Mapping[str, str] = {
    "list": "cdn:read",
    "get": "cdn:read",
    "create": "cdn:create",
    "update": "cdn:update",
    "delete": "cdn:delete",
    "purge": "cdn:delete",
}
#: The success status of each operation.
SUCCESS_STATUS: Mapping[str, int] = {
    "list": 200,
    "get": 200,
    "create": 201,
    "update": 200,
    "delete": 204,
    "purge": 204,
}
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 200

CdnBudgetScope = Literal["token", "endpoint"]
HeaderBudget = Literal["cdn", "hourly"]

_PREFIX = "/v2/cdn/endpoints"
_ITEM = re.compile(r"/v2/cdn/endpoints/(?P<id>[^/]+)(?P<cache>/cache)?")
_HTML_ERROR = (
    "<html><head><title>{status} Service Unavailable</title></head>"
    "<body><center><h1>{status} Service Unavailable</h1></center></body></html>"
)
_HTML_OK = "<html><body><p>OK</p></body></html>"


@attrs.frozen
class _Route:
    """What a method and path address."""

    op: str | None  # None: outside the six operations
    cdn_id: str | None
    is_cdn: bool  # under /v2/cdn/endpoints: the cdn budget applies
    #: The methods the path answers (the 405's ``Allow`` header); empty: no such path.
    allowed: tuple[str, ...] = ()

    @property
    def method_allowed(self) -> bool:
        return self.op is not None or not self.allowed


_COLLECTION = {"GET": "list", "HEAD": "list", "POST": "create"}
_ENDPOINT = {"GET": "get", "HEAD": "get", "PUT": "update", "DELETE": "delete"}
_CACHE = {"DELETE": "purge"}


def _route(method: str, path: str) -> _Route:
    # HEAD is GET without the body: same operation, budgets and headers (aiohttp leaves the
    # body out of a HEAD answer and keeps its Content-Length).
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    if path == _PREFIX:
        return _Route(_COLLECTION.get(method), None, True, tuple(sorted(_COLLECTION)))
    m = _ITEM.fullmatch(path)
    if m is None:
        return _Route(None, None, path.startswith(_PREFIX + "/"))
    table = _CACHE if m["cache"] else _ENDPOINT
    return _Route(table.get(method), m["id"], True, tuple(sorted(table)))


@attrs.define
class _Reply:
    """An answer being built (or a dropped connection)."""

    status: int
    rule: str
    body: Any = None  # dict -> JSON; str -> HTML; None -> empty
    retry_after: int | None = None
    drop: bool = False
    headers: dict[str, str] = attrs.Factory(dict)


def _error(status: int, error_id: str, message: str, rule: str) -> _Reply:
    return _Reply(status, rule, {"id": error_id, "message": message})


_NOT_FOUND = ("not_found", "The resource you requested could not be found.")


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
        self.time_scale = time_scale
        self.cdn_budget_scope: CdnBudgetScope = cdn_budget_scope
        self.header_budget: HeaderBudget = header_budget
        self.purge_duration = purge_duration
        self.invisible_after_create = invisible_after_create
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.faults = Faults(seed)
        self.journal: list[JournalEntry] = []
        self.counters = Counters()
        self._clock = clock
        self._wall = wall_clock
        self._budgets = tuple(budgets)
        self._tokens: dict[str, frozenset[str]] = {}
        self._windows: dict[tuple[str, str, str], SlidingWindow] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._origins: dict[str, str] = {}
        self._purging: set[tuple[str, frozenset[str]]] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.token = self.add_token()
        for token, scopes in (tokens or {}).items():
            self.add_token(scopes, token=token)
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

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
        options.setdefault("limits", RateLimits.documented().scaled(self.time_scale))
        async with CDNClient(**options) as cdn:
            cdn._session.time_scale = self.time_scale
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
        visible_at = -math.inf if visible else self._now() + self.invisible_after_create
        return self._create(body, visible_at=visible_at).to_json()

    @property
    def endpoints(self) -> list[dict[str, Any]]:
        """Every endpoint, in creation order, as the API would return it."""
        return [ep.to_json() for ep in self._endpoints.values()]

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
        spec = self._spec(budget)
        self._window(token, spec, endpoint_id).add(units, self._now())

    def used(self, token: str, budget: str, *, endpoint_id: str | None = None) -> int:
        """Units currently counted in a token's budget window.

        Args:
            token: The token.
            budget: The budget name.
            endpoint_id: As for ``spend``.

        Returns:
            The units in the window now.
        """
        return self._window(token, self._spec(budget), endpoint_id).used(self._now())

    def reset_journal(self) -> None:
        """Forget the journal and zero the counters (budgets and endpoints are kept)."""
        self.journal.clear()
        self.counters = Counters()

    # -- budgets -------------------------------------------------------------------------------

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()

    def _spec(self, name: str) -> BudgetSpec:
        for spec in self._budgets:
            if spec.name == name:
                return spec
        raise ValueError(f"unknown budget {name!r}; known: {[b.name for b in self._budgets]}")

    def _window(self, token: str, spec: BudgetSpec, endpoint_id: str | None) -> SlidingWindow:
        key = ""
        if spec.name == "cdn" and self.cdn_budget_scope == "endpoint":
            key = endpoint_id or "-"
        window = self._windows.get((token, spec.name, key))
        if window is None:
            window = SlidingWindow(spec.limit, spec.period * self.time_scale)
            self._windows[(token, spec.name, key)] = window
        return window

    def _claims(
        self, token: str, route: _Route, files: int
    ) -> list[tuple[BudgetSpec, SlidingWindow, int]]:
        claims = []
        for spec in self._budgets:
            if spec.name == "cdn" and not route.is_cdn:
                continue
            cost = spec.cost(files)
            if cost > 0:
                claims.append((spec, self._window(token, spec, route.cdn_id), cost))
        return claims

    def _admit(self, token: str, route: _Route, files: int, now: float) -> _Reply | None:
        """Count the request in all its windows at once, or refuse it with 429 (counting none)."""
        claims = self._claims(token, route, files)
        for spec, window, cost in claims:
            if not window.fits(cost, now):
                reply = _error(
                    429, "too_many_requests", "API rate limit exceeded.", f"rate_limit:{spec.name}"
                )
                if spec.name == "minute":
                    # As documented: only the per-minute burst limit says how long to wait.
                    wait = window.time_until_fits(cost, now)
                    reply.retry_after = max(1, math.ceil(wait)) if math.isfinite(wait) else None
                return reply
        for _, window, cost in claims:
            window.add(cost, now)
        return None

    def _rate_headers(self, token: str | None, route: _Route, refused: bool) -> dict[str, str]:
        name = self.header_budget if route.is_cdn else "hourly"
        spec = self._spec(name)
        now = self._now()
        wall = self._wall()
        if token is None or token not in self._tokens:
            return {
                "ratelimit-limit": str(spec.limit),
                "ratelimit-remaining": str(spec.limit),
                "ratelimit-reset": str(math.ceil(wall)),
            }
        window = self._window(token, spec, route.cdn_id)
        expiry = window.oldest_expiry(now)
        reset = math.ceil(wall + (expiry - now)) if expiry is not None else math.ceil(wall)
        return {
            "ratelimit-limit": str(spec.limit),
            # A refused request says 0 whichever budget refused it, as the docs describe for
            # the burst limit ("ratelimit-remaining reaching zero can also indicate...").
            "ratelimit-remaining": "0" if refused else str(window.remaining(now)),
            "ratelimit-reset": str(reset),
        }

    # -- request handling ----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        delay = self.faults.delay("up")
        if delay > 0:
            await asyncio.sleep(delay)
        arrival = self._now()
        request_id = str(uuid.uuid4())
        raw = await request.read()
        body: Any = None
        body_ok = True
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body, body_ok = raw.decode("utf-8", "replace"), False
        route = _route(request.method, request.path)
        auth = request.headers.get("Authorization", "")
        scheme, _, token_value = auth.partition(" ")
        token = token_value.strip() if scheme.lower() == "bearer" and token_value.strip() else None

        counted = False
        if token is None or token not in self._tokens:
            reply = _error(401, "unauthorized", "Unable to authenticate you.", "auth")
        else:
            files = purge_cost(body) if route.op == "purge" else 0
            refused = self._admit(token, route, files, arrival)
            if refused is not None:
                reply = refused
            else:
                counted = True
                reply = await self._process(request, route, token, body, body_ok, arrival)

        headers = self._rate_headers(token, route, reply.status == 429)
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

    async def _process(
        self, request: web.Request, route: _Route, token: str, body: Any, body_ok: bool, now: float
    ) -> _Reply:
        rule = self.faults.take("before", route.op)
        if rule is not None:
            return self._fault_reply(rule, route)
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
        reply = await self._operate(request, route, body, now)
        if reply.rule == "ok":
            rule = self.faults.take("after", route.op)
            if rule is not None:
                return self._fault_reply(rule, route)
        return reply

    def _fault_reply(self, rule: FaultRule, route: _Route) -> _Reply:
        if rule.kind == "drop":
            return _Reply(0, f"fault:drop_{rule.when}", drop=True)
        if rule.kind == "non_json":
            status = rule.status or SUCCESS_STATUS.get(route.op or "", 200)
            return _Reply(200 if status == 204 else status, "fault:non_json", _HTML_OK)
        status = rule.status or 503
        if rule.html:
            return _Reply(status, f"fault:5xx_{rule.when}", _HTML_ERROR.format(status=status))
        return _error(
            status, "server_error", "Unexpected server-side error", f"fault:5xx_{rule.when}"
        )

    async def _operate(self, request: web.Request, route: _Route, body: Any, now: float) -> _Reply:
        op = route.op
        if op == "list":
            return self._list(request)
        if op == "create":
            if not isinstance(body, dict):
                return _error(
                    422,
                    "unprocessable_entity",
                    "The request body must be a JSON object.",
                    "validation",
                )
            try:
                created = self._create(body, visible_at=now + self.invisible_after_create)
            except BodyError as exc:
                return _error(422, "unprocessable_entity", str(exc), "validation")
            return _Reply(201, "ok", {"endpoint": created.to_json()})
        endpoint = self._endpoints.get(route.cdn_id or "")
        if endpoint is None:
            return _error(404, *_NOT_FOUND, "not_found")
        if op == "get":
            if now < endpoint.visible_at:
                return _error(404, *_NOT_FOUND, "invisible")
            return _Reply(200, "ok", {"endpoint": endpoint.to_json()})
        if op == "delete":
            del self._endpoints[endpoint.id]
            self._origins.pop(endpoint.origin, None)
            return _Reply(204, "ok")
        if not isinstance(body, dict):
            return _error(
                422, "unprocessable_entity", "The request body must be a JSON object.", "validation"
            )
        if op == "update":
            try:
                self._update(endpoint, body)
            except BodyError as exc:
                return _error(422, "unprocessable_entity", str(exc), "validation")
            return _Reply(200, "ok", {"endpoint": endpoint.to_json()})
        return await self._purge(endpoint, body)

    def _list(self, request: web.Request) -> _Reply:
        try:
            per_page = int(request.query.get("per_page", DEFAULT_PER_PAGE))
            page = int(request.query.get("page", 1))
        except ValueError:
            return _error(400, "bad_request", "page and per_page must be integers.", "bad_request")
        if not 1 <= per_page <= MAX_PER_PAGE:
            return _error(400, "bad_request", "per_page must be between 1 and 200.", "bad_request")
        if page < 1:
            return _error(400, "bad_request", "page must be at least 1.", "bad_request")
        items = list(self._endpoints.values())
        total = len(items)
        last = max(1, math.ceil(total / per_page))
        chunk = items[(page - 1) * per_page : page * per_page]

        def url(n: int) -> str:
            return str(request.url.with_query({"page": str(n), "per_page": str(per_page)}))

        pages: dict[str, str] = {}
        if page > 1:
            pages["first"] = url(1)
            pages["prev"] = url(min(page - 1, last))
        if page < last:
            pages["next"] = url(page + 1)
            pages["last"] = url(last)
        links: dict[str, Any] = {"pages": pages} if pages else {}
        return _Reply(
            200,
            "ok",
            {"endpoints": [ep.to_json() for ep in chunk], "links": links, "meta": {"total": total}},
        )

    def _create(self, body: Mapping[str, Any], *, visible_at: float) -> Endpoint:
        origin = check_origin(body.get("origin"))
        # Absent means the default; null is refused (the spec's ttl is an integer, not nullable).
        ttl = check_ttl(body["ttl"]) if "ttl" in body else DEFAULT_TTL
        domain, cert = check_domain_fields(body)
        if domain and not cert:
            raise BodyError("certificate_id is required with custom_domain")
        if origin in self._origins:
            raise BodyError(f"origin {origin} already has a CDN endpoint")
        endpoint = Endpoint(
            id=str(uuid.uuid4()),
            origin=origin,
            endpoint=cdn_hostname(origin),
            ttl=ttl,
            created_at=now_iso(),
            certificate_id=cert or None,
            custom_domain=domain or None,
            visible_at=visible_at,
        )
        self._endpoints[endpoint.id] = endpoint
        self._origins[origin] = endpoint.id
        return endpoint

    def _update(self, endpoint: Endpoint, body: Mapping[str, Any]) -> None:
        ttl = check_ttl(body["ttl"]) if "ttl" in body else endpoint.ttl
        domain, cert = check_domain_fields(body)
        # "" removes the field (what the official clients send to drop a custom domain).
        new_domain = endpoint.custom_domain if domain is None else (domain or None)
        new_cert = endpoint.certificate_id if cert is None else (cert or None)
        if new_domain and not new_cert:
            raise BodyError("certificate_id is required with custom_domain")
        endpoint.ttl, endpoint.custom_domain, endpoint.certificate_id = ttl, new_domain, new_cert

    async def _purge(self, endpoint: Endpoint, body: Mapping[str, Any]) -> _Reply:
        try:
            files = check_purge_files(body)
        except BodyError as exc:
            return _error(422, "unprocessable_entity", str(exc), "validation")
        key = (endpoint.id, frozenset(files))
        if key in self._purging:
            return _error(
                409, "conflict", "An identical purge request is already in progress.", "conflict"
            )
        self._purging.add(key)
        try:
            if self.purge_duration > 0:
                await asyncio.sleep(self.purge_duration)
        finally:
            self._purging.discard(key)
        return _Reply(204, "ok")


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
