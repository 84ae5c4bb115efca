"""What counts as "Redis cannot answer now", and the error ``acquire`` raises for it."""

from __future__ import annotations

import time

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._limits import Claim
from ..errors import CDNError, RateLimitedError


class BudgetStoreUnavailableError(CDNError):
    """Redis could not be reached, so no request can be admitted without risking a budget.

    Pass ``fallback="memory"`` to ``RedisBudgetStore`` to fall back to in-process budgets
    instead (each process then spends the whole budget on its own).
    """


class Unavailable(Exception):
    """Internal: a Redis call failed to connect, timed out, or met a cluster error.

    ``sent``: the failed call may have reached Redis (and may still run there).
    ``started``: loop time when the failed call began.
    """

    def __init__(self, reason: str, *, sent: bool, started: float) -> None:
        super().__init__(reason)
        self.sent = sent
        self.started = started


# Errors that mean "Redis cannot answer now" (not "the script is wrong"): retried, then a
# fallback or BudgetStoreUnavailableError. A call past call_timeout is redis-py's TimeoutError
# (``Connection``); OSError covers a socket error redis-py lets through.
UNAVAILABLE = (
    RedisConnectionError,  # also BusyLoadingError (LOADING), MaxConnectionsError
    RedisTimeoutError,
    OSError,
    ClusterError,  # ClusterDownError, MasterDownError
    AskError,  # MovedError: a cluster client that gave up following the slot
    TryAgainError,
    ReadOnlyError,  # a replica that has not been promoted yet
    OutOfMemoryError,
    RedisClusterException,  # SlotNotCoveredError and topology errors
    BusyLoadingError,
)


def outage_reason(exc: BaseException, client: object) -> str | None:
    """Why ``exc`` means "Redis cannot answer now", for a log line; None for a real error (a
    script bug, no permission).

    ``UNAVAILABLE``, and the replies with no class of their own that mean the same: another
    client's script is running (BUSY), or a cluster node is busy failing over. ``client``:
    the client that met it (an ``ASK``/``MOVED`` to a plain client gets a hint).
    """
    text = str(exc)
    if not isinstance(exc, UNAVAILABLE) and not text.startswith(
        ("BUSY", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "LOADING")
    ):
        return None
    why = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if isinstance(exc, AskError) and not isinstance(client, RedisCluster):
        why += " (this Redis is a cluster node: pass a RedisCluster client)"
    return why


def paused_error(c: Claim, paused: float) -> RateLimitedError:
    """``acquire`` would wait longer than ``max_wait`` for a 429 pause on ``c``'s key."""
    return RateLimitedError.paused(c.budget, c.key, paused, time.time())
