"""An aiohttp.web app that owns one ``CDNClient`` for its whole life (a cleanup context opens
and closes it), with the same routes as ``fastapi_app.py``:

- ``POST /endpoints/{endpoint_id}/purge`` with ``{"paths": [...], "urgent": false}``: all or
  nothing within the client's ``max_budget_wait`` (2 s): 200 once every path is purged, or 503
  with ``Retry-After`` and nothing sent.
- ``POST /endpoints/{endpoint_id}/purge/background`` with ``{"paths": [...]}``: 202 at once; the
  client purges them in the background, and at shutdown the cleanup context logs what
  ``close()`` reports was left.
- ``GET /endpoints``.

An unknown endpoint answers 404. ``fastapi_app.LOG_FORMAT`` shows the call id, client name and
request id every SDK log line carries. Run it (token in ``$DIGITALOCEAN_TOKEN``)::

    python -m aiohttp.web -P 8080 examples.aiohttp_app:init_app
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from aiohttp import web

from cdn_async import BudgetWaitTimeout, CDNClient, NotFoundError, PurgeError, PurgeReport

ClientFactory = Callable[[], AbstractAsyncContextManager[CDNClient]]
CDN = web.AppKey("cdn", CDNClient)
#: Background purges the shutdown cut short (what ``close()`` reported).
UNPURGED = web.AppKey("unpurged", list[PurgeReport])
log = logging.getLogger("aiohttp_app")


def create_app(make_client: ClientFactory | None = None) -> web.Application:
    """The app; ``make_client`` opens its client (default: from the environment, a handler
    waiting at most 2 s for rate budget)."""

    def default_client() -> CDNClient:
        return CDNClient(max_budget_wait=2.0, name="web")

    factory = make_client or default_client

    async def client_ctx(app: web.Application) -> AsyncIterator[None]:
        async with factory() as cdn:
            app[CDN] = cdn
            app[UNPURGED] = []
            yield
            # Background purges the shutdown cut short: logged (and kept, for the tests).
            app[UNPURGED].extend(await cdn.close())
            for report in app[UNPURGED]:
                log.warning(
                    "shutdown: %d path(s) of %s not purged: %s",
                    len(report.failed),
                    report.endpoint_id,
                    sorted(report.failed),
                )

    app = web.Application(middlewares=[errors_middleware])
    app.cleanup_ctx.append(client_ctx)
    app.router.add_post("/endpoints/{endpoint_id}/purge", purge)
    app.router.add_post("/endpoints/{endpoint_id}/purge/background", purge_later)
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
        # Every path failed for one reason (an unknown endpoint): map it.
        if isinstance(exc.reason, NotFoundError):
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
        # retry_after: when the budgets could have sent the whole call (a lower bound).
        retry_after = math.ceil(exc.retry_after or 1)
        return web.json_response(
            {"error": "rate budget busy, nothing was purged; retry later"},
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


async def purge_later(request: web.Request) -> web.Response:
    body = await request.json()
    # The handle is dropped: the client owns the purge and logs its outcome.
    handle = request.app[CDN].endpoints.purge_in_background(
        request.match_info["endpoint_id"], body["paths"]
    )
    return web.json_response({"accepted": len(handle.paths)}, status=202)


async def list_endpoints(request: web.Request) -> web.Response:
    endpoints = [
        {"id": e.id, "origin": e.origin, "endpoint": e.endpoint}
        async for e in request.app[CDN].endpoints.list()
    ]
    return web.json_response({"endpoints": endpoints})
