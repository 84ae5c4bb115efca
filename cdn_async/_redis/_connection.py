"""The Redis client of a store: made from a URL or given, one script per operation, every
call bounded by ``call_timeout``, and a plain client swapped for a cluster client on the
first ``MOVED`` (when the store made it from a URL)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AskError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._logs import logger
from . import _scripts
from ._errors import UNAVAILABLE, Unavailable, busy, reason

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript


class Connection:
    """One store's client and scripts.

    Args:
        redis: A URL (a client is made, and closed by ``aclose``) or a client (used as is).
        cluster: With a URL: ``True`` a cluster client, ``None`` a plain one that may become
            a cluster client on ``MOVED``, ``False`` a plain one for good.
        call_timeout: The longest one call may take.
        spawn: Runs a coroutine in the background (closing a replaced client).

    Raises:
        ValueError: ``cluster`` given with a client.
    """

    def __init__(
        self,
        redis: aioredis.Redis | RedisCluster | str,
        *,
        cluster: bool | None,
        call_timeout: float,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self._call_timeout = call_timeout
        self._spawn = spawn
        self._url: str | None = None
        self.client: aioredis.Redis | RedisCluster
        if isinstance(redis, str):
            self._url = redis
            self.client = self._make_client(cluster is True)
            self.owns_client = True
            self._may_upgrade = cluster is None
        else:
            if cluster is not None:
                raise ValueError("cluster= applies to a URL; a client is used as it is")
            self.client = redis
            self.owns_client = False
            self._may_upgrade = False
        self._scripts = self._register()

    def _make_client(self, cluster: bool) -> aioredis.Redis | RedisCluster:
        assert self._url is not None
        timeout = self._call_timeout
        if cluster:
            # One retry: a MOVED after a failover refreshes the slot map and follows it.
            return RedisCluster.from_url(
                self._url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 1),
            )
        # One retry on a connection error only: a pooled connection that a Redis restart
        # closed is replaced at once. Timeouts are not retried: call_timeout bounds a call.
        return aioredis.Redis.from_url(
            self._url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )

    def _register(self) -> dict[str, AsyncScript]:
        # No round trip: redis-py sends EVALSHA, and loads a script the first time Redis
        # answers NOSCRIPT.
        return {op: self.client.register_script(_scripts.source(op)) for op in _scripts.OPERATIONS}

    async def run(self, op: str, keys: list[str], argv: list[str], started: float) -> list[Any]:
        """One script call (one EVALSHA, or a NOSCRIPT reload).

        Raises:
            Unavailable: Redis could not answer within ``call_timeout`` (``started`` is the
                loop time the call began).
        """
        try:
            try:
                async with asyncio.timeout(self._call_timeout):
                    res: list[Any] = await self._scripts[op](keys=keys, args=argv)
            except AskError:
                if not self._upgrade():
                    raise
                async with asyncio.timeout(self._call_timeout):
                    res = await self._scripts[op](keys=keys, args=argv)
        except (*UNAVAILABLE, ResponseError) as exc:
            if not isinstance(exc, UNAVAILABLE) and not busy(exc):
                raise  # a real error (a script bug, no permission): not an outage
            why = reason(exc)
            if isinstance(exc, AskError) and not isinstance(self.client, RedisCluster):
                why += " (this Redis is a cluster node: pass a RedisCluster client)"
            elif isinstance(exc, TimeoutError) and not isinstance(exc, RedisTimeoutError):
                why = f"no answer within {self._call_timeout:g} s"
            raise Unavailable(why, sent=True, started=started) from exc
        return res

    def _upgrade(self) -> bool:
        """Redis answered MOVED to a plain client made from a URL: it is a cluster node, so
        switch to a cluster client once. Returns False when that is not allowed."""
        if not self._may_upgrade:
            return False
        self._may_upgrade = False
        old = self.client
        logger.info("the Redis URL names a Redis Cluster node; using a cluster client")
        self.client = self._make_client(True)
        self._scripts = self._register()
        self._spawn(old.aclose())
        return True

    async def aclose(self) -> None:
        """Close the client if this connection made it."""
        if self.owns_client:
            await self.client.aclose()
