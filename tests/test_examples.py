"""``fake_cdn.client()`` and the web framework examples, each under its framework's own test
client, against the fake server over loopback."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestClient, TestServer

from cdn_async import RateLimits
from cdn_async.testing import FakeCDNServer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ORIGIN = "static.nyc3.digitaloceanspaces.com"
MISSING = "892071a0-bb95-49bc-8021-3afd67a210bf"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- fake_cdn.client ---------------------------------------------------------------------------


@pytest.mark.fake_cdn(time_scale=0.01)
async def test_fake_cdn_client_is_ready_for_the_fake(fake_cdn: FakeCDNServer) -> None:
    ep = fake_cdn.add_endpoint(ORIGIN)["id"]
    async with fake_cdn.client(max_retries=1) as cdn:
        assert [e.id async for e in cdn.endpoints.list()] == [ep]
        assert cdn.limits == RateLimits.documented().scaled(0.01)
        # 120 paths: three batches at the scaled file budget (50 / 0.2 s), not 40 s.
        start = time.monotonic()
        report = await cdn.endpoints.purge(ep, [f"p{i}" for i in range(120)])
        assert report.ok and report.requests == 3
        assert time.monotonic() - start < 2.0


@pytest.mark.fake_cdn(time_scale=0.01)
async def test_fake_cdn_client_scales_retry_backoff(fake_cdn: FakeCDNServer) -> None:
    fake_cdn.faults.fail_next(2, op="list")
    async with fake_cdn.client(max_retries=2) as cdn:
        cdn._session._rand = lambda: 0.99  # the longest jitter: 0.495 s + 0.99 s unscaled
        start = time.monotonic()
        assert [e async for e in cdn.endpoints.list()] == []
        elapsed = time.monotonic() - start
    assert [e.status for e in fake_cdn.journal] == [503, 503, 200]
    assert elapsed < 0.5  # scaled: about 0.015 s of backoff, not 1.5 s


async def test_fake_cdn_client_needs_a_started_server() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        async with FakeCDNServer().client():
            pass


# -- the FastAPI example -----------------------------------------------------------------------


class FastAPIApp:
    """The FastAPI example app, its lifespan running, under httpx's ASGI transport (the
    fake server shares the test's event loop, which FastAPI's thread-based TestClient would
    block)."""

    def __init__(self, server: FakeCDNServer, **options: Any) -> None:
        self.app = load("fastapi_app").create_app(lambda: server.client(**options))

    async def __aenter__(self) -> httpx.AsyncClient:
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self._http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://app"
        )
        return self._http

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()
        await self._lifespan.__aexit__(None, None, None)


@pytest.mark.fake_cdn(time_scale=0.01)
async def test_fastapi_app_purges_and_lists(fake_cdn: FakeCDNServer) -> None:
    ep = fake_cdn.add_endpoint(ORIGIN)["id"]
    async with FastAPIApp(fake_cdn) as http:
        resp = await http.post(f"/endpoints/{ep}/purge", json={"paths": ["/a.css", "img/*"]})
        assert resp.status_code == 200
        assert resp.json() == {"purged": ["a.css", "img/*"], "requests": 1}
        resp = await http.post(f"/endpoints/{ep}/purge", json={"paths": ["b"], "urgent": True})
        assert resp.status_code == 200
        resp = await http.get("/endpoints")
        assert resp.status_code == 200
        assert [e["id"] for e in resp.json()["endpoints"]] == [ep]


@pytest.mark.fake_cdn(time_scale=0.01)
async def test_fastapi_app_answers_404_for_an_unknown_endpoint(fake_cdn: FakeCDNServer) -> None:
    async with FastAPIApp(fake_cdn) as http:
        resp = await http.post(f"/endpoints/{MISSING}/purge", json={"paths": ["a"]})
    assert resp.status_code == 404


async def test_fastapi_app_answers_503_with_retry_after_when_the_budget_is_busy(
    fake_cdn: FakeCDNServer,
) -> None:
    # The real time scale: the cdn budget (5 requests / 10 s) stays spent during the test.
    async with FastAPIApp(fake_cdn, max_budget_wait=1.0) as http:
        for _ in range(5):
            assert (await http.get("/endpoints")).status_code == 200
        start = time.monotonic()
        resp = await http.get("/endpoints")
    assert resp.status_code == 503
    assert 1 <= int(resp.headers["Retry-After"]) <= 10
    assert time.monotonic() - start < 1.5  # never more than the deadline
    assert len(fake_cdn.journal) == 5  # the refused call sent nothing


# -- the aiohttp example -----------------------------------------------------------------------


def aiohttp_client(server: FakeCDNServer, **options: Any) -> TestClient[Any, Any]:
    app = load("aiohttp_app").create_app(lambda: server.client(**options))
    return TestClient(TestServer(app))


@pytest.mark.fake_cdn(time_scale=0.01)
async def test_aiohttp_app_purges_and_lists(fake_cdn: FakeCDNServer) -> None:
    ep = fake_cdn.add_endpoint(ORIGIN)["id"]
    async with aiohttp_client(fake_cdn) as http:
        resp = await http.post(f"/endpoints/{ep}/purge", json={"paths": ["/a.css", "img/*"]})
        assert resp.status == 200
        assert await resp.json() == {"purged": ["a.css", "img/*"], "requests": 1}
        resp = await http.get("/endpoints")
        assert resp.status == 200
        assert [e["id"] for e in (await resp.json())["endpoints"]] == [ep]


@pytest.mark.fake_cdn(time_scale=0.01)
async def test_aiohttp_app_answers_404_for_an_unknown_endpoint(fake_cdn: FakeCDNServer) -> None:
    async with aiohttp_client(fake_cdn) as http:
        resp = await http.post(f"/endpoints/{MISSING}/purge", json={"paths": ["a"]})
        assert resp.status == 404


async def test_aiohttp_app_answers_503_with_retry_after_when_the_budget_is_busy(
    fake_cdn: FakeCDNServer,
) -> None:
    async with aiohttp_client(fake_cdn, max_budget_wait=1.0) as http:
        for _ in range(5):
            assert (await http.get("/endpoints")).status == 200
        resp = await http.get("/endpoints")
        assert resp.status == 503
        assert 1 <= int(resp.headers["Retry-After"]) <= 10
    assert len(fake_cdn.journal) == 5
