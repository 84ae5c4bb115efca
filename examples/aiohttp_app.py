"""An aiohttp.web app that owns one ``CDNClient`` for its whole life (a cleanup context opens
and closes it), with the same routes as ``fastapi_app.py``:

- ``POST /endpoints/{endpoint_id}/purge`` with ``{"paths": [...], "urgent": false}``.
- ``GET /endpoints``.

A call that cannot get its rate budget within ``max_budget_wait`` answers 503 with
``Retry-After``; an unknown endpoint answers 404. Run it (token in ``$DIGITALOCEAN_TOKEN``)::

    python -m aiohttp.web -P 8080 examples.aiohttp_app:init_app
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from aiohttp import web

from cdn_async import CDNClient
from cdn_async.errors import BudgetWaitTimeout, NotFoundError, PurgeError

ClientFactory = Callable[[], AbstractAsyncContextManager[CDNClient]]
CDN = web.AppKey("cdn", CDNClient)


def create_app(make_client: ClientFactory | None = None) -> web.Application:
    """The app; ``make_client`` opens its client (default: from the environment, a handler
    waiting at most 5 s for rate budget)."""

    def default_client() -> CDNClient:
        return CDNClient(max_budget_wait=5.0)

    factory = make_client or default_client

    async def client_ctx(app: web.Application) -> AsyncIterator[None]:
        async with factory() as cdn:
            app[CDN] = cdn
            yield

    app = web.Application(middlewares=[errors_middleware])
    app.cleanup_ctx.append(client_ctx)
    app.router.add_post("/endpoints/{endpoint_id}/purge", purge)
    app.router.add_get("/endpoints", list_endpoints)
    return app


def init_app(argv: list[str] | None = None) -> web.Application:
    """Entry point for ``python -m aiohttp.web``."""
    return create_app()


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except PurgeError as exc:
        # Every path failed for one reason (an unknown endpoint, a busy budget): map it.
        if isinstance(exc.reason, NotFoundError | BudgetWaitTimeout):
            return _error_response(exc.reason)
        body = {
            "purged": list(exc.report.purged),
            "failed": {path: str(err) for path, err in exc.report.failed.items()},
        }
        return web.json_response(body, status=502)
    except (BudgetWaitTimeout, NotFoundError) as exc:
        return _error_response(exc)
    return response


def _error_response(exc: Exception) -> web.Response:
    if isinstance(exc, BudgetWaitTimeout):
        retry_after = math.ceil(exc.retry_after or 1)
        return web.json_response(
            {"error": "rate budget busy, retry later"},
            status=503,
            headers={"Retry-After": str(retry_after)},
        )
    return web.json_response({"error": "no such CDN endpoint"}, status=404)


async def purge(request: web.Request) -> web.Response:
    body = await request.json()
    report = await request.app[CDN].endpoints.purge(
        request.match_info["endpoint_id"],
        body["paths"],
        priority="high" if body.get("urgent") else None,
    )
    return web.json_response({"purged": list(report.purged), "requests": report.requests})


async def list_endpoints(request: web.Request) -> web.Response:
    endpoints = [
        {"id": e.id, "origin": e.origin, "endpoint": e.endpoint}
        async for e in request.app[CDN].endpoints.list()
    ]
    return web.json_response({"endpoints": endpoints})
