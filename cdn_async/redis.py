"""Budgets shared by every process on one API token, kept in Redis.

Needs the ``redis`` extra (``pip install 'cdn-async[redis]'``)::

    from cdn_async import CDNClient
    from cdn_async.redis import RedisBudgetStore, token_id_for

    store = RedisBudgetStore("redis://localhost:6379/0", token_id=token_id_for(token))
    async with CDNClient(token, budget_store=store) as cdn:
        ...

Every process (web workers, purge workers, other hosts) that uses the token points its store
at the same Redis with the same ``token_id``; together they never exceed a budget. The windows
are the exact ones of the in-process store (docs/design.md, "Budgets"), changed by one
Lua script per attempt, stamped with Redis's clock, hash-tagged for Redis Cluster, and expiring
when idle. For a Redis Cluster, pass the URL of any node with ``cluster=True`` (or a
``redis.asyncio.cluster.RedisCluster``). Restarts, outages and stalls of Redis: see
``RedisBudgetStore``.
"""

from __future__ import annotations

try:
    import redis as _redis_py  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("cdn_async.redis needs redis-py: pip install 'cdn-async[redis]'") from exc

from ._public import publish as _publish
from ._purge_queue import RedisPurgeQueue
from ._redis import (
    BudgetStoreUnavailableError,
    RedisBudgetStore,
    RedisLease,
    token_id_for,
)

__all__ = [
    "BudgetStoreUnavailableError",
    "RedisBudgetStore",
    "RedisLease",
    "RedisPurgeQueue",
    "token_id_for",
]

_publish(__name__, [globals()[name] for name in __all__])
