"""pytest plugin (entry point ``cdn_async``): the ``fake_cdn`` fixture.

Loaded by every pytest run where cdn-async is installed, so it imports nothing heavy at import
time (the server and aiohttp load when the fixture is first used) and does not require
pytest-asyncio: without it, ``fake_cdn`` fails the test that asks for it with a hint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

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
