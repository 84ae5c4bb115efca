"""A FastAPI app that owns one ``CDNClient`` for its whole life (the lifespan opens and closes it).

Routes:

- ``POST /endpoints/{endpoint_id}/purge`` with ``{"paths": [...], "urgent": false}``: purges;
  ``urgent`` sends the paths ahead of any bulk purge of the endpoint (``priority="high"``).
- ``GET /endpoints``: the account's endpoints.

A call that cannot get its rate budget within ``max_budget_wait`` answers 503 with
``Retry-After``; an unknown endpoint answers 404. Run it (token in ``$DIGITALOCEAN_TOKEN``)::

    uvicorn examples.fastapi_app:app

Tests (tests/test_examples.py) build it with ``create_app(lambda: fake_cdn.client())``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from cdn_async import CDNClient
from cdn_async.errors import BudgetWaitTimeout, NotFoundError, PurgeError

ClientFactory = Callable[[], AbstractAsyncContextManager[CDNClient]]


class PurgeRequest(BaseModel):
    paths: list[str]
    urgent: bool = False


def create_app(make_client: ClientFactory | None = None) -> FastAPI:
    """The app; ``make_client`` opens its client (default: from the environment, a handler
    waiting at most 5 s for rate budget)."""

    def default_client() -> CDNClient:
        return CDNClient(max_budget_wait=5.0)

    factory = make_client or default_client

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with factory() as cdn:
            app.state.cdn = cdn
            yield

    app = FastAPI(lifespan=lifespan)

    @app.exception_handler(BudgetWaitTimeout)
    async def budget_busy(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BudgetWaitTimeout)
        retry_after = math.ceil(exc.retry_after or 1)
        return JSONResponse(
            {"error": "rate budget busy, retry later"},
            status_code=503,
            headers={"Retry-After": str(retry_after)},
        )

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "no such CDN endpoint"}, status_code=404)

    @app.post("/endpoints/{endpoint_id}/purge")
    async def purge(endpoint_id: str, body: PurgeRequest, request: Request) -> dict[str, Any]:
        cdn: CDNClient = request.app.state.cdn
        try:
            report = await cdn.endpoints.purge(
                endpoint_id, body.paths, priority="high" if body.urgent else None
            )
        except PurgeError as exc:
            # Every path failed for one reason (an unknown endpoint, a busy budget): map it.
            if isinstance(exc.reason, NotFoundError | BudgetWaitTimeout):
                raise exc.reason from exc
            return JSONResponse(
                {
                    "purged": list(exc.report.purged),
                    "failed": {path: str(err) for path, err in exc.report.failed.items()},
                },
                status_code=502,
            )
        return {"purged": list(report.purged), "requests": report.requests}

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
