"""Suite-wide: skip the aioresponses-based tests where aioresponses cannot mock this aiohttp.

aioresponses 0.7.9 builds ``ClientResponse`` objects itself and cannot build aiohttp 3.14's
(``stream_writer`` became a required argument), so the test extra pins ``aiohttp<3.14`` and
the main test run has every test. CI also runs the suite on the newest aiohttp, what
``pip install cdn-async`` gives users; there, and only there, the tests that mock HTTP with
aioresponses are skipped, each with the reason. Every other test (the fake server over real
HTTP, the budgets, the CLI...) runs on that aiohttp too.

The check is a real mocked request, not a version number: once aioresponses can mock the
newest aiohttp, nothing is skipped any more. A failure on an aiohttp older than 3.14 is never
turned into a skip: it fails the tests as it should.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import warnings
from collections.abc import Iterator

import aiohttp
import pytest

from benchmarks._redis_server import RedisServer, find_redis_server

#: The first aiohttp release aioresponses 0.7.9 cannot mock.
_FIRST_UNMOCKABLE = (3, 14)


@functools.cache
def aioresponses_problem() -> str | None:
    """Why aioresponses cannot mock a request with the installed aiohttp, or None."""
    version = tuple(int(part) for part in aiohttp.__version__.split(".")[:2] if part.isdigit())
    if version < _FIRST_UNMOCKABLE:
        return None
    try:
        from aioresponses import aioresponses
    except ImportError as exc:
        return f"aioresponses cannot be imported with aiohttp {aiohttp.__version__}: {exc}"

    async def probe() -> None:
        with aioresponses() as mocked:
            mocked.get("https://probe.example.test/", payload={"ok": True})
            async with (
                aiohttp.ClientSession() as http,
                http.get("https://probe.example.test/") as resp,
            ):
                await resp.json()

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            asyncio.run(probe())
    except Exception as exc:
        return (
            f"aioresponses cannot mock aiohttp {aiohttp.__version__} "
            f"({type(exc).__name__}: {exc}); the main run (aiohttp<3.14) runs this test"
        )
    return None


def _uses_aioresponses(function: object) -> bool:
    try:
        return "aioresponses(" in inspect.getsource(function)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return False


#: Modules whose tests share a module-scoped fixture: costly ones (the benchmark smoke runs,
#: a Redis cluster), or one the tests are about (a fake on the module's loop, a threaded
#: one). Under pytest-xdist's ``--dist loadgroup`` each runs whole on one worker, so its
#: fixture is set up once and its tests see it in order; other tests go one by one to
#: whichever worker is free.
ONE_WORKER_MODULES = frozenset(
    {
        "test_benchmarks.py",
        "test_redis_cluster.py",
        "test_endpoints.py",
        "test_fake_cdn_module_loop.py",
        "test_fake_cdn_scopes.py",
    }
)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        for item in items:
            if item.path.name in ONE_WORKER_MODULES:
                item.add_marker(pytest.mark.xdist_group(item.path.name))
    problem = aioresponses_problem()
    if problem is None:
        return
    skip = pytest.mark.skip(reason=problem)
    for item in items:
        function = getattr(item, "function", None)
        if function is not None and _uses_aioresponses(function):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _budget_files(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cdn-async`` commands share their budgets through a file in the user's runtime
    directory: every test gets its own, never the real user's."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path_factory.mktemp("runtime")))


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server on a free port, no persistence; skipped (or, on CI, failed) when
    redis-server is not installed."""
    binary = find_redis_server()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed (CI=true: .ci/run installs it)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.close()
