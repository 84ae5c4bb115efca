"""pytest plugin (entry point ``cdn_async``): the ``fake_cdn`` fixture, and
``fake_cdn_fixture`` for one of another scope or on a thread of its own.

Loaded by every pytest run where cdn-async is installed, so it imports nothing heavy at import
time (the server and aiohttp load when the fixture is first used) and does not require
pytest-asyncio: without it, ``fake_cdn`` fails the test that asks for it with a hint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import pytest

if TYPE_CHECKING:
    from ._server import FakeCDNServer

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - exercised only without pytest-asyncio
    pytest_asyncio = None  # type: ignore[assignment]


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``fake_cdn`` marker (so ``--strict-markers`` accepts it).

    Args:
        config: The pytest config.
    """
    config.addinivalue_line(
        "markers",
        "fake_cdn(**options): FakeCDNServer keyword arguments for the fake_cdn fixture",
    )


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("fake_cdn")
    return dict(marker.kwargs) if marker is not None else {}


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def fake_cdn(request: pytest.FixtureRequest) -> AsyncIterator[FakeCDNServer]:
        """A running ``FakeCDNServer``; options from ``@pytest.mark.fake_cdn(...)``.

        ``async with fake_cdn.client(**options) as cdn:`` gives a ``CDNClient`` for it: its URL
        and token, budgets and retry backoff scaled by its ``time_scale``.

        Args:
            request: The pytest fixture request (for the marker).

        Returns:
            An async iterator yielding the server; it is closed after the test.
        """
        from ._server import FakeCDNServer

        async with FakeCDNServer(**_options(request)) as server:
            yield server

else:  # pragma: no cover - exercised only without pytest-asyncio

    @pytest.fixture
    def fake_cdn() -> None:
        """Placeholder that explains what is missing."""
        pytest.fail("the fake_cdn fixture needs pytest-asyncio: pip install pytest-asyncio")


Scope = Literal["function", "class", "module", "package", "session"]


def fake_cdn_fixture(
    *, scope: Scope = "function", in_thread: bool = False, **options: Any
) -> Callable[..., Any]:
    """Make a fixture that yields a running ``FakeCDNServer(**options)``, named after the
    variable it is assigned to in a test module or conftest.py::

        # one fake for the whole module, answering sync tests too (FastAPI's TestClient)
        fake_api = fake_cdn_fixture(scope="module", in_thread=True, time_scale=0.01)

        # one fake for the module on the module's event loop (pytest-asyncio): the tests
        # that use it run on that loop too, ``pytestmark = pytest.mark.asyncio(loop_scope=
        # "module")``, and so must any client made from it
        fake_api = fake_cdn_fixture(scope="module", time_scale=0.01)

    Args:
        scope: The fixture's pytest scope.
        in_thread: Run the fake on an event loop of its own in a thread
            (``fake_cdn_in_thread``): it then answers sync tests, whose app runs on another
            loop, and tests on any loop. Otherwise it runs on the event loop of ``scope``
            (pytest-asyncio's ``loop_scope``).
        options: ``FakeCDNServer`` keyword arguments.

    Returns:
        The fixture.
    """
    if in_thread:

        @pytest.fixture(scope=scope)
        def threaded() -> Iterator[FakeCDNServer]:
            from ._thread import fake_cdn_in_thread

            with fake_cdn_in_thread(**options) as server:
                yield server

        return threaded
    if pytest_asyncio is None:  # pragma: no cover - exercised only without pytest-asyncio
        raise RuntimeError("fake_cdn_fixture needs pytest-asyncio (or in_thread=True)")

    @pytest_asyncio.fixture(scope=scope, loop_scope=scope)
    async def on_loop() -> AsyncIterator[FakeCDNServer]:
        from ._server import FakeCDNServer

        async with FakeCDNServer(**options) as server:
            yield server

    return on_loop
