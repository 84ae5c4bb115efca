"""The six operations of the fake CDN API: list, get, create, update, delete and purge."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from ._cache import EdgeCache, PurgeRecord
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
)
from ._routes import _NOT_FOUND, _error, _Reply, _Route

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 200


class Operations:
    """``FakeCDNServer``'s endpoints and edge caches, and the six operations on them once a
    request is admitted. The server holds one.

    Args:
        purge_duration: Seconds (real) a purge takes before its 204.
        invisible_after_create: Seconds (real) a new endpoint answers GET with 404.
    """

    def __init__(self, *, purge_duration: float, invisible_after_create: float) -> None:
        self.purge_duration = purge_duration
        self.invisible_after_create = invisible_after_create
        self.endpoints: dict[str, Endpoint] = {}
        self._origins: dict[str, str] = {}
        # (endpoint id, files) of the purges being carried out: an identical one is a 409.
        self._purging: set[tuple[str, frozenset[str]]] = set()
        self._caches: dict[str, EdgeCache] = {}
        #: Every purge applied, with the cached paths it covered.
        self.purges: list[PurgeRecord] = []

    def cache(self, endpoint_id: str, paths: Iterable[str]) -> None:
        """Mark ``paths`` cached at ``endpoint_id``'s edge: each purge then records which of
        them it covered (``purges``) and removes them (``cached``).

        Args:
            endpoint_id: The endpoint.
            paths: Paths now cached (files; a leading ``/`` dropped).
        """
        self._caches.setdefault(endpoint_id, EdgeCache()).add(paths)

    def cached(self, endpoint_id: str) -> frozenset[str]:
        """The paths still cached at ``endpoint_id``'s edge (what no purge covered yet)."""
        cache = self._caches.get(endpoint_id)
        return cache.paths if cache is not None else frozenset()

    async def operate(self, request: web.Request, route: _Route, body: Any, now: float) -> _Reply:
        """Carry out an admitted request on ``route`` and make its answer."""
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
                created = self.create(body, visible_at=now + self.invisible_after_create)
            except BodyError as exc:
                return _error(422, "unprocessable_entity", str(exc), "validation")
            return _Reply(201, "ok", {"endpoint": created.to_json()})
        endpoint = self.endpoints.get(route.cdn_id or "")
        if endpoint is None:
            return _error(404, *_NOT_FOUND, "not_found")
        if op == "get":
            if now < endpoint.visible_at:
                return _error(404, *_NOT_FOUND, "invisible")
            return _Reply(200, "ok", {"endpoint": endpoint.to_json()})
        if op == "delete":
            del self.endpoints[endpoint.id]
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
        return await self._purge(endpoint, body, now)

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
        items = list(self.endpoints.values())
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

    def create(self, body: Mapping[str, Any], *, visible_at: float) -> Endpoint:
        """Make an endpoint from a create body.

        Raises:
            BodyError: The API would refuse it with 422.
        """
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
        self.endpoints[endpoint.id] = endpoint
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

    async def _purge(self, endpoint: Endpoint, body: Mapping[str, Any], now: float) -> _Reply:
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
        cache = self._caches.setdefault(endpoint.id, EdgeCache())
        self.purges.append(PurgeRecord(endpoint.id, tuple(files), cache.purge(files), now))
        return _Reply(204, "ok")
