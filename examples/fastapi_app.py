"""A FastAPI app that owns one ``CDNClient`` for its whole life (the lifespan opens and closes it).

Routes, two ways to purge from a handler side by side:

- ``POST /endpoints/{endpoint_id}/purge`` with ``{"paths": [...], "urgent": false}``: all or
  nothing. The client's ``max_budget_wait`` (2 s) bounds the whole purge: when its budgets
  cannot send every path within it, nothing is sent and the route answers 503 with
  ``Retry-After``; otherwise 200 once every path is purged. ``urgent`` sends the paths ahead of
  any bulk purge of the endpoint (``priority="high"``).
- ``POST /endpoints/{endpoint_id}/purge/background`` with ``{"paths": [...]}``: accepted for
  later. The client purges the paths in the background, whatever happens to this handler, and
  the route answers 202 at once. At shutdown the lifespan logs what ``close()`` reports was
  left unpurged.
- ``GET /endpoints``: the account's endpoints.

An unknown endpoint answers 404. Every log line of the SDK carries the call id of the SDK
call it belongs to (and its request id once the API answered, and the client's name):
``LOG_FORMAT`` shows them. Run it (token in ``$DIGITALOCEAN_TOKEN``)::

    uvicorn examples.fastapi_app:app

Tests (tests/test_examples.py) build it with ``create_app(lambda: fake_cdn.client(...))`` and
drive it with FastAPI's ``TestClient``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from cdn_async import BudgetWaitTimeout, CDNClient, NotFoundError, PurgeError

ClientFactory = Callable[[], AbstractAsyncContextManager[CDNClient]]

#: The SDK's records carry these fields (None outside a call, or before an answer).
LOG_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s [call=%(call_id)s client=%(client)s "
    "request=%(request_id)s] %(message)s"
)
log = logging.getLogger("fastapi_app")


class PurgeRequest(BaseModel):
    paths: list[str]
    urgent: bool = False


class BackgroundPurgeRequest(BaseModel):
    paths: list[str]


def create_app(make_client: ClientFactory | None = None) -> FastAPI:
    """The app; ``make_client`` opens its client (default: from the environment, a handler
    waiting at most 2 s for rate budget)."""

    def default_client() -> CDNClient:
        return CDNClient(max_budget_wait=2.0, name="web")

    factory = make_client or default_client

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with factory() as cdn:
            app.state.cdn = cdn
            yield
            # Background purges the shutdown cut short: logged (and kept, for the tests).
            app.state.unpurged = await cdn.close()
            for report in app.state.unpurged:
                log.warning(
                    "shutdown: %d path(s) of %s not purged: %s",
                    len(report.failed),
                    report.endpoint_id,
                    sorted(report.failed),
                )

    app = FastAPI(lifespan=lifespan)

    @app.exception_handler(BudgetWaitTimeout)
    async def budget_busy(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BudgetWaitTimeout)
        # retry_after: when the budgets could have sent the whole call (a lower bound).
        retry_after = math.ceil(exc.retry_after or 1)
        return JSONResponse(
            {"error": "rate budget busy, nothing was purged; retry later"},
            status_code=503,
            headers={"Retry-After": str(retry_after)},
        )

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "no such CDN endpoint"}, status_code=404)

    @app.post("/endpoints/{endpoint_id}/purge")
    async def purge(endpoint_id: str, body: PurgeRequest, request: Request) -> Any:
        cdn: CDNClient = request.app.state.cdn
        try:
            report = await cdn.endpoints.purge(
                endpoint_id, body.paths, priority="high" if body.urgent else None
            )
        except PurgeError as exc:
            # Every path failed for one reason (an unknown endpoint): map it.
            if isinstance(exc.reason, NotFoundError):
                raise exc.reason from exc
            return JSONResponse(
                {
                    "purged": list(exc.report.purged),
                    "failed": {path: str(err) for path, err in exc.report.failed.items()},
                },
                status_code=502,
            )
        return {"purged": list(report.purged), "requests": report.requests}

    @app.post("/endpoints/{endpoint_id}/purge/background", status_code=202)
    async def purge_later(
        endpoint_id: str, body: BackgroundPurgeRequest, request: Request
    ) -> dict[str, Any]:
        cdn: CDNClient = request.app.state.cdn
        # The handle is dropped: the client owns the purge and logs its outcome.
        handle = cdn.endpoints.purge_in_background(endpoint_id, body.paths)
        return {"accepted": len(handle.paths)}

    @app.get("/endpoints")
    async def list_endpoints(request: Request) -> dict[str, Any]:
        cdn: CDNClient = request.app.state.cdn
        return {
            "endpoints": [
                {"id": e.id, "origin": e.origin, "endpoint": e.endpoint}
                async for e in cdn.endpoints.list()
            ]
        }

    return app


app = create_app()
