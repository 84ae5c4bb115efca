"""cdn-async: an asyncio SDK for DigitalOcean's CDN Endpoints API.

Exact rate budgets (the SDK never provokes a 429, yet uses the whole budget), a purge
engine that de-duplicates and batches, typed errors, and a fake API for tests.
"""

from ._budgets import MemoryBudgetStore
from ._client import BudgetSnapshot, CDNClient
from ._constants import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from ._limits import Budget, BudgetState, BudgetStore, RateLimits
from ._logs import setup_from_env as _setup_logging
from ._models import TTL, CDNEndpoint, Page, PurgeReport
from ._public import publish as _publish
from ._purge import PurgePlan, PurgeProgress, plan_purge
from ._sentinel import NOT_GIVEN
from ._sqlite import SQLiteBudgetStore
from ._version import __version__

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "NOT_GIVEN",
    "TTL",
    "Budget",
    "BudgetSnapshot",
    "BudgetState",
    "BudgetStore",
    "CDNClient",
    "CDNEndpoint",
    "MemoryBudgetStore",
    "Page",
    "PurgePlan",
    "PurgeProgress",
    "PurgeReport",
    "RateLimits",
    "SQLiteBudgetStore",
    "__version__",
    "plan_purge",
]

_publish(__name__, [globals()[name] for name in __all__])

_setup_logging()
