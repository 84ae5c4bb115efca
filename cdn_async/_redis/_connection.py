"""The Redis foundation of the budget store and the purge queue: one client (made from a URL
or given), its Lua scripts, and every call bounded and guarded.

``Connection`` is all either of them knows of redis-py. A script call is ``EVALSHA`` (redis-py
loads the script the first time Redis answers ``NOSCRIPT``, after a restart too), and its
reply is decoded into a typed value by the caller's decoder, in one place. The helpers below
are the two units of time the scripts read, and the text of a reply.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AskError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._logs import logger

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

_T = TypeVar("_T")


@functools.cache
def lua(package: str, name: str, common: str | None = None) -> str:
    """The source of ``<package>/lua/<name>.lua``, after ``lua/<common>.lua`` if given."""
    folder = resources.files(package).joinpath("lua")
    text = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    if common is None:
        return text
    return folder.joinpath(f"{common}.lua").read_text(encoding="utf-8") + "\n" + text


def ms(seconds: float) -> str:
    """Seconds as milliseconds with 3 decimals: a time the budget scripts compare and add to
    ``TIME`` (sub-millisecond, so a window is never cut short by rounding)."""
    return format(seconds * 1000.0, ".3f")


def ttl_ms(seconds: float) -> str:
    """Seconds as whole milliseconds, rounded up, at least 1: a TTL for ``PEXPIRE`` or
    ``SET PX``, which take integers > 0 (rounded up, so nothing expires early)."""
    return str(max(1, math.ceil(seconds * 1000)))


def text(value: Any) -> str:
    """A reply's bulk string (bytes from a client without ``decode_responses``) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class Connection:
    """A Redis client and its scripts.

    Every call (``script``, ``command``) is bounded by ``call_timeout`` (an ``asyncio.timeout``,
    and the socket timeouts of a client made here; a late call raises redis-py's
    ``TimeoutError``, a ``RedisError``) and runs in a task of its own: redis-py (8.1) often
    swallows a cancellation that lands while a command is on its connection, so the caller's
    cancellation is raised in the caller, always, once the call itself has ended (within
    ``call_timeout``: what it did in Redis is then known to the caller's cleanup).

    Args:
        redis: A URL (a client is made, and closed by ``aclose``) or a client (used as is).
        cluster: With a URL: ``True`` a cluster client, ``None`` a plain one that becomes a
            cluster client on the first ``MOVED``, ``False`` a plain one for good.
        call_timeout: The longest one call may take.
        scripts: Name -> Lua source of every script ``script`` may run.

    Raises:
        ValueError: ``cluster`` given with a client.
    """

    def __init__(
        self,
        redis: aioredis.Redis | RedisCluster | str,
        *,
        cluster: bool | None,
        call_timeout: float,
        scripts: dict[str, str],
    ) -> None:
        self._call_timeout = call_timeout
        self._sources = scripts
        self._url: str | None = None
        self._closing: set[asyncio.Task[None]] = set()
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

    @property
    def call_timeout(self) -> float:
        """The longest one call may take."""
        return self._call_timeout

    async def script(
        self,
        name: str,
        keys: Sequence[str],
        args: Iterable[str],
        decode: Callable[[Any], _T],
    ) -> _T:
        """Run script ``name`` (one ``EVALSHA``, or a ``NOSCRIPT`` reload) and decode its reply.

        Raises:
            RedisError: Redis refused, failed or did not answer within ``call_timeout``
                (``OSError`` too, from the socket).
        """
        argv = list(args)
        try:
            res = await self._guarded(self._scripts[name](keys=keys, args=argv))
        except AskError:  # also MovedError: the URL names a Redis Cluster node
            if not self._upgrade():
                raise
            res = await self._guarded(self._scripts[name](keys=keys, args=argv))
        return decode(res)

    async def command(self, call: Callable[[Any], Awaitable[_T]]) -> _T:
        """One plain command, ``call(client)`` (a read of the queue's keys), bounded and
        guarded as a script is."""
        return await self._guarded(call(self.client))

    async def _guarded(self, aw: Awaitable[_T]) -> _T:
        task = asyncio.ensure_future(self._bounded(aw))
        task.add_done_callback(_consume)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # The call ends within call_timeout, unless redis-py swallowed the bound's own
            # cancellation too: the caller waits no longer than that either way.
            await asyncio.wait((task,), timeout=self._call_timeout)
            raise

    async def _bounded(self, aw: Awaitable[_T]) -> _T:
        try:
            async with asyncio.timeout(self._call_timeout):
                return await aw
        except TimeoutError:
            raise RedisTimeoutError(f"no answer within {self._call_timeout:g} s") from None

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
        return {name: self.client.register_script(src) for name, src in self._sources.items()}

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
        task = asyncio.get_running_loop().create_task(old.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return True

    async def aclose(self) -> None:
        """Close the client if this connection made it (and one it replaced)."""
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self.owns_client:
            await self.client.aclose()
