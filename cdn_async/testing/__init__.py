"""Test helpers: a fake of DigitalOcean's CDN Endpoints API.

``FakeCDNServer`` serves the six CDN operations over real HTTP on loopback, with the official
response shapes, scopes, validation, the documented rate-limit budgets as exact sliding
windows (periods multiplied by ``time_scale``), the identical-purge rule, switchable faults
(``server.faults``), a journal of every request (``server.journal``, ``server.counters``) and
an edge cache: ``server.cache(id, paths)`` marks paths cached, each purge records which of them
it covered (``server.purges``, a wildcard counted as one file against the budget, as
documented) and ``server.cached(id)`` says what is left::

    from cdn_async.testing import FakeCDNServer

    async with FakeCDNServer(time_scale=0.01) as server:
        ...  # point a client at server.url with server.token

With pytest and pytest-asyncio, the ``fake_cdn`` fixture (installed with the package as a
pytest plugin) yields a running server; ``@pytest.mark.fake_cdn(time_scale=0.01)`` passes
constructor options. ``fake_cdn_fixture(scope=..., in_thread=...)`` makes one of another scope,
or on a thread of its own for sync tests (FastAPI's ``TestClient``); ``fake_cdn_in_thread()``
is that thread as a context manager. ``python -m cdn_async.testing --port 8080`` runs one from
the shell.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .._public import publish

if TYPE_CHECKING:
    from ._cache import PurgeRecord
    from ._faults import FaultRule, Faults
    from ._journal import Counters, JournalEntry
    from ._plugin import fake_cdn_fixture
    from ._server import ALL_SCOPES, FakeCDNServer, serve
    from ._thread import fake_cdn_in_thread
    from ._windows import DOCUMENTED_BUDGETS, BudgetSpec

__all__ = [
    "ALL_SCOPES",
    "DOCUMENTED_BUDGETS",
    "BudgetSpec",
    "Counters",
    "FakeCDNServer",
    "FaultRule",
    "Faults",
    "JournalEntry",
    "PurgeRecord",
    "fake_cdn_fixture",
    "fake_cdn_in_thread",
    "serve",
]

# Loaded on first use: the pytest plugin imports this package in every pytest run, and the
# server pulls in aiohttp.web, which a run that never uses the fake should not pay for.
_HOME = {
    "ALL_SCOPES": "._server",
    "DOCUMENTED_BUDGETS": "._windows",
    "BudgetSpec": "._windows",
    "Counters": "._journal",
    "FakeCDNServer": "._server",
    "FaultRule": "._faults",
    "Faults": "._faults",
    "JournalEntry": "._journal",
    "PurgeRecord": "._cache",
    "fake_cdn_fixture": "._plugin",
    "fake_cdn_in_thread": "._thread",
    "serve": "._server",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name], __name__), name)
    publish(__name__, [value])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
