"""``fake_cdn.client()`` and the web framework examples, each under its framework's own test
client (FastAPI's ``TestClient``, aiohttp's ``TestClient``), against the fake server over
loopback. The README's "Testing a web app" shows these tests; a test below checks that its
code is the code here."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from aiohttp import test_utils
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cdn_async import CDNError, RateLimits
from cdn_async.testing import FakeCDNServer, fake_cdn_fixture

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ORIGIN = "static.nyc3.digitaloceanspaces.com"
MISSING = "892071a0-bb95-49bc-8021-3afd67a210bf"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- fake_cdn.client ---------------------------------------------------------------------------


@pytest.mark.looptime
@pytest.mark.fake_cdn(time_scale=0.01)
async def test_fake_cdn_client_is_ready_for_the_fake(fake_cdn: FakeCDNServer) -> None:
    ep = fake_cdn.add_endpoint(ORIGIN)["id"]
    loop = asyncio.get_running_loop()
    async with fake_cdn.client(max_retries=1) as cdn:
        assert [e.id async for e in cdn.endpoints.list()] == [ep]
        assert cdn.limits == RateLimits.documented().scaled(0.01)
        # 120 paths: three batches at the scaled file budget (50 / 0.2 s), not 40 s.
        start = loop.time()
        report = await cdn.endpoints.purge(ep, [f"p{i}" for i in range(120)])
        assert report.ok and report.requests == 3
        assert 2 * 0.2 <= loop.time() - start < 3 * 0.2


@pytest.mark.looptime
@pytest.mark.fake_cdn(time_scale=0.01)
async def test_fake_cdn_client_scales_retry_backoff(fake_cdn: FakeCDNServer) -> None:
    fake_cdn.faults.fail_next(2, op="list")
    loop = asyncio.get_running_loop()
    async with fake_cdn.client(max_retries=2) as cdn:
        cdn._session._rand = lambda: 0.99  # the longest jitter: 0.495 s + 0.99 s unscaled
        start = loop.time()
        assert [e async for e in cdn.endpoints.list()] == []
        elapsed = loop.time() - start
    assert [e.status for e in fake_cdn.journal] == [503, 503, 200]
    assert elapsed == pytest.approx(0.01485)  # scaled: (0.495 + 0.99) x 0.01, not 1.485 s


async def test_fake_cdn_client_needs_a_started_server() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        async with FakeCDNServer().client():
            pass


# -- the FastAPI example, under FastAPI's TestClient -----------------------------------------

# README: testing a FastAPI app
fake_api = fake_cdn_fixture(in_thread=True, time_scale=0.01)


def test_purge_route(fake_api: FakeCDNServer) -> None:
    endpoint = fake_api.add_endpoint("static.nyc3.digitaloceanspaces.com")["id"]
    app = create_app(lambda: fake_api.client(max_budget_wait=2.0))
    with TestClient(app) as http:  # runs the app's lifespan, on a loop of its own
        resp = http.post(f"/endpoints/{endpoint}/purge", json={"paths": ["/a.css", "img/*"]})
    assert resp.status_code == 200
    assert resp.json() == {"purged": ["a.css", "img/*"], "requests": 1}
    assert [e.op for e in fake_api.journal] == ["purge"]


# README: end


def create_app(make_client: Any) -> Any:
    return load("fastapi_app").create_app(make_client)


def test_fastapi_app_lists_and_answers_404_for_an_unknown_endpoint(
    fake_api: FakeCDNServer,
) -> None:
    ep = fake_api.add_endpoint(ORIGIN)["id"]
    app = create_app(lambda: fake_api.client())
    with TestClient(app) as http:
        resp = http.post(f"/endpoints/{ep}/purge", json={"paths": ["b"], "urgent": True})
        assert resp.status_code == 200
        assert [e["id"] for e in http.get("/endpoints").json()["endpoints"]] == [ep]
        resp = http.post(f"/endpoints/{MISSING}/purge", json={"paths": ["a"]})
        assert resp.status_code == 404


def test_fastapi_app_refuses_a_purge_it_cannot_send_whole_with_503_and_sends_nothing(
    fake_api: FakeCDNServer,
) -> None:
    # 200 paths need 3 file periods (0.6 s at this scale) past the first request: more than
    # the 0.3 s the handler may wait, so nothing is sent.
    ep = fake_api.add_endpoint(ORIGIN)["id"]
    paths = [f"img/{i}.png" for i in range(200)]
    app = create_app(lambda: fake_api.client(max_budget_wait=0.3))
    with TestClient(app) as http:
        resp = http.post(f"/endpoints/{ep}/purge", json={"paths": paths})
        assert resp.status_code == 503
        assert int(resp.headers["Retry-After"]) >= 1
        assert fake_api.journal == []
        resp = http.post(f"/endpoints/{ep}/purge", json={"paths": paths[:50]})
        assert resp.status_code == 200  # one batch fits


def test_fastapi_app_accepts_a_background_purge_and_loses_no_path_at_shutdown(
    fake_api: FakeCDNServer,
) -> None:
    # 202 at once; the app shuts down while the purge still waits for the file budget:
    # close() reports every path, purged (sent and confirmed) or not confirmed.
    ep = fake_api.add_endpoint(ORIGIN)["id"]
    paths = [f"img/{i}.png" for i in range(200)]
    app = create_app(lambda: fake_api.client(max_budget_wait=0.3))
    with TestClient(app) as http:
        resp = http.post(f"/endpoints/{ep}/purge/background", json={"paths": paths})
        assert resp.status_code == 202 and resp.json() == {"accepted": 200}
    sent = [p for e in fake_api.journal if e.op == "purge" for p in e.body["files"]]
    (left,) = app.state.unpurged
    assert set(left.purged) <= set(sent)
    assert sorted([*left.purged, *left.failed]) == sorted(paths)
    assert all("not confirmed" in str(e) for e in left.failed.values())


def test_fastapi_app_log_lines_join_up_by_call_id(
    fake_api: FakeCDNServer, caplog: pytest.LogCaptureFixture
) -> None:
    # 8 concurrent list requests on a 5-per-window budget: some wait. Each SDK line names its
    # call; each call has one answer line, with its request id.
    caplog.set_level(logging.DEBUG, logger="cdn_async")
    fake_api.add_endpoint(ORIGIN)
    app = create_app(lambda: fake_api.client(name="web"))
    with TestClient(app) as http:

        async def eight() -> None:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://app"
            ) as client:
                got = await asyncio.gather(*(client.get("/endpoints") for _ in range(8)))
            assert all(r.status_code == 200 for r in got)

        http.portal.call(eight)  # on the app's own loop, where its client lives
    records = [r for r in caplog.records if r.name == "cdn_async"]
    formatter = logging.Formatter(load("fastapi_app").LOG_FORMAT)
    lines = [formatter.format(r) for r in records]
    assert all("client=web" in line for line in lines)
    calls: dict[str, list[logging.LogRecord]] = {}
    for r in records:
        calls.setdefault(r.call_id, []).append(r)  # type: ignore[attr-defined]
    assert len(calls) == 8
    for call in calls.values():
        (answer,) = [r for r in call if getattr(r, "status", None) == 200]
        assert re.fullmatch(r"[0-9a-f-]{36}", answer.request_id)  # type: ignore[attr-defined]
    assert any("waited" in r.getMessage() for r in records)


async def test_a_client_used_from_another_event_loop_says_so(fake_cdn: FakeCDNServer) -> None:
    async with fake_cdn.client() as cdn:
        await cdn.endpoints.get(fake_cdn.add_endpoint(ORIGIN)["id"])

        def elsewhere() -> None:
            asyncio.run(cdn.endpoints.get(MISSING))

        with pytest.raises(CDNError, match="another event loop"):
            await asyncio.to_thread(elsewhere)


# -- the FastAPI example in an async test: httpx's ASGITransport ------------------------------


# README: testing a FastAPI app from an async test
@asynccontextmanager
async def asgi_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):  # ASGITransport does not run the lifespan
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            yield http


@pytest.mark.fake_cdn(time_scale=0.01)
async def test_purge_route_async(fake_cdn: FakeCDNServer) -> None:
    endpoint = fake_cdn.add_endpoint("static.nyc3.digitaloceanspaces.com")["id"]
    app = create_app(lambda: fake_cdn.client())
    async with asgi_client(app) as http:
        resp = await http.post(f"/endpoints/{endpoint}/purge", json={"paths": ["a.css"]})
    assert resp.status_code == 200


# README: end


@pytest.mark.looptime
async def test_fastapi_app_answers_503_with_retry_after_when_the_budget_is_busy(
    fake_cdn: FakeCDNServer,
) -> None:
    # The real time scale: the cdn budget (5 requests / 10 s) stays spent during the test.
    app = create_app(lambda: fake_cdn.client(max_budget_wait=1.0))
    loop = asyncio.get_running_loop()
    async with asgi_client(app) as http:
        for _ in range(5):
            assert (await http.get("/endpoints")).status_code == 200
        start = loop.time()
        resp = await http.get("/endpoints")
        waited = loop.time() - start
    assert resp.status_code == 503
    assert 1 <= int(resp.headers["Retry-After"]) <= 10
    # At once, not at the deadline: the budgets can tell the window frees too late (README).
    assert waited == 0
    assert len(fake_cdn.journal) == 5  # the refused call sent nothing


# -- the aiohttp example, under aiohttp's TestClient -------------------------------------------


# README: testing an aiohttp.web app
@pytest.mark.fake_cdn(time_scale=0.01)
async def test_purge_route_aiohttp(fake_cdn: FakeCDNServer) -> None:
    endpoint = fake_cdn.add_endpoint("static.nyc3.digitaloceanspaces.com")["id"]
    app = create_aiohttp_app(lambda: fake_cdn.client(max_budget_wait=2.0))
    async with test_utils.TestClient(test_utils.TestServer(app)) as http:  # cleanup contexts run
        resp = await http.post(f"/endpoints/{endpoint}/purge", json={"paths": ["a.css"]})
        assert resp.status == 200
    assert [e.op for e in fake_cdn.journal] == ["purge"]


# README: end


AIOHTTP_APP = load("aiohttp_app")


def create_aiohttp_app(make_client: Any) -> Any:
    return AIOHTTP_APP.create_app(make_client)


def aiohttp_client(server: FakeCDNServer, **options: Any) -> test_utils.TestClient[Any, Any]:
    app = create_aiohttp_app(lambda: server.client(**options))
    return test_utils.TestClient(test_utils.TestServer(app))


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


@pytest.mark.fake_cdn(time_scale=0.01)
async def test_aiohttp_app_refuses_a_purge_it_cannot_send_whole_and_accepts_it_for_later(
    fake_cdn: FakeCDNServer,
) -> None:
    ep = fake_cdn.add_endpoint(ORIGIN)["id"]
    paths = [f"img/{i}.png" for i in range(200)]
    async with aiohttp_client(fake_cdn, max_budget_wait=0.3) as http:
        resp = await http.post(f"/endpoints/{ep}/purge", json={"paths": paths})
        assert resp.status == 503 and fake_cdn.journal == []
        resp = await http.post(f"/endpoints/{ep}/purge/background", json={"paths": paths})
        assert resp.status == 202 and await resp.json() == {"accepted": 200}
        app = http.app
    # Shut down while it waits for the file budget: every path is reported, purged (sent and
    # confirmed) or not confirmed.
    sent = [p for e in fake_cdn.journal if e.op == "purge" for p in e.body["files"]]
    (left,) = app[AIOHTTP_APP.UNPURGED]
    assert set(left.purged) <= set(sent)
    assert sorted([*left.purged, *left.failed]) == sorted(paths)


# -- the README's code is this code ------------------------------------------------------------


def readme_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Testing a web app", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_testing_code_is_the_code_these_tests_run() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 3
    source = (Path(__file__)).read_text()
    shown = re.findall(r"# README: [^\n]*\n(.*?)\n\n# README: end", source, re.S)
    normalised = {re.sub(r"\s+", " ", b).strip() for b in shown}
    for block in blocks:
        code = "\n".join(
            line for line in block.splitlines() if not line.startswith(("import ", "from "))
        )
        assert re.sub(r"\s+", " ", code).strip() in normalised, block[:200]
