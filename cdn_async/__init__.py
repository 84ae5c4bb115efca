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
from ._purge_handle import PurgeHandle
from ._sentinel import NOT_GIVEN
from ._sqlite import SQLiteBudgetStore
from ._version import __version__
from .errors import (
    APIConnectionError,
    APIError,
    APIResponseError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BudgetFileError,
    BudgetWaitTimeout,
    CDNError,
    ConflictError,
    CreateUnconfirmedError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    PurgeError,
    QueueFullError,
    RateLimitedError,
    TooManyRequestsError,
    UnprocessableEntityError,
    ValidationError,
)

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "NOT_GIVEN",
    "TTL",
    "APIConnectionError",
    "APIError",
    "APIResponseError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "Budget",
    "BudgetFileError",
    "BudgetSnapshot",
    "BudgetState",
    "BudgetStore",
    "BudgetWaitTimeout",
    "CDNClient",
    "CDNEndpoint",
    "CDNError",
    "ConflictError",
    "CreateUnconfirmedError",
    "InternalServerError",
    "MemoryBudgetStore",
    "NotFoundError",
    "Page",
    "PermissionDeniedError",
    "PurgeError",
    "PurgeHandle",
    "PurgePlan",
    "PurgeProgress",
    "PurgeReport",
    "QueueFullError",
    "RateLimitedError",
    "RateLimits",
    "SQLiteBudgetStore",
    "TooManyRequestsError",
    "UnprocessableEntityError",
    "ValidationError",
    "__version__",
    "plan_purge",
]

_publish(__name__, [globals()[name] for name in __all__])

_setup_logging()
