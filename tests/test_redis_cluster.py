"""``RedisBudgetStore`` on a real Redis Cluster: 3 masters started by a fixture (once for the
module), each test on its own token id (so its own hash slot). The last test restarts the node
that owns its slot. Skipped without redis-server and redis-cli, except on CI (``CI=true``),
where they must be there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Literal

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from benchmarks._redis_server import RedisClusterServers, find_redis_cli, find_redis_server
from cdn_async._limits import Claim
from cdn_async.redis import BudgetStoreUnavailableError, RedisBudgetStore

from ._support import max_in_window


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    """A 3-master Redis Cluster on free loopback ports, no persistence."""
    binary, cli = find_redis_server(), find_redis_cli()
    if binary is None or cli is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server/redis-cli not installed (CI=true: .ci/run installs them)")
        pytest.skip("redis-server and redis-cli are not installed (apt-get install redis-server)")
    servers = RedisClusterServers(binary, cli)
    try:
        servers.start()
        yield servers
    finally:
        servers.close()


def claim(key: str, limit: int, period: float, units: int = 1) -> Claim:
    return Claim(key, limit, period, units, key)


def tag(token_id: str) -> str:
    return f"{{cdn-async:{token_id}}}"


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Poll ``condition`` every 10 ms until it holds (fail after ``within`` s)."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def hammer(stores: list[RedisBudgetStore], c: Claim, n: int) -> list[tuple[float, int]]:
    """``n`` requests per store at once, each stamped when admitted."""
    stamps: list[tuple[float, int]] = []

    async def one(store: RedisBudgetStore) -> None:
        lease = await store.acquire([c])
        stamps.append((time.monotonic(), 1))
        await asyncio.sleep(0.002)
        store.release(lease)

    await asyncio.gather(*(one(s) for s in stores for _ in range(n)))
    return stamps


@pytest.mark.parametrize("mode", [None, True])
async def test_a_url_of_a_node_without_the_slot_works(
    cluster: RedisClusterServers, mode: Literal[True] | None
) -> None:
    """The URL of a node that does not own the token's slot: with ``cluster=True``, or by
    default (the store switches to a cluster client on the first MOVED), two processes'
    stores share exact windows."""
    tid = f"url-{mode}"
    url = cluster.other(tag(tid)).url
    stores = [
        RedisBudgetStore(url, token_id=tid, cluster=mode, _restart_hold=False, recovery_grace=0)
        for _ in range(2)
    ]
    c = claim("cdn", 5, 0.1)
    stamps = await hammer(stores, c, 15)
    assert len(stamps) == 30 and max_in_window(stamps, 0.1) <= 5
    assert all(isinstance(s._link.client, RedisCluster) for s in stores)
    for s in stores:
        await s.aclose()


async def test_a_cluster_client_is_used_and_left_open(cluster: RedisClusterServers) -> None:
    """A ``RedisCluster`` client passed in is used as it is and not closed by the store."""
    tid = "client"
    rc = RedisCluster.from_url(cluster.nodes[0].url)
    try:
        a = RedisBudgetStore(rc, token_id=tid, _restart_hold=False, recovery_grace=0)
        b = RedisBudgetStore(rc, token_id=tid, _restart_hold=False, recovery_grace=0)
        c = claim("cdn", 2, 0.1)
        stamps = await hammer([a, b], c, 5)
        assert max_in_window(stamps, 0.1) <= 2
        for s in (a, b):
            await s.aclose()
        assert await rc.ping()
    finally:
        await rc.aclose()


async def test_a_plain_client_on_a_cluster_node_is_unavailability_not_a_raw_error(
    cluster: RedisClusterServers,
) -> None:
    """A plain ``redis.asyncio.Redis`` client on a node that answers MOVED: no raw
    ``MovedError`` reaches the caller; it is Redis being unavailable (the error says why)."""
    tid = "plain"
    plain = aioredis.Redis.from_url(cluster.other(tag(tid)).url)
    try:
        store = RedisBudgetStore(plain, token_id=tid, unavailable_timeout=0.2)
        with pytest.raises(BudgetStoreUnavailableError):
            await store.acquire([claim("cdn", 5, 0.1)])
        await store.aclose()
    finally:
        await plain.aclose()


async def test_restart_of_the_node_that_owns_the_slot(
    cluster: RedisClusterServers, caplog: pytest.LogCaptureFixture
) -> None:
    """The node serving the token's slot dies and comes back empty. Meanwhile
    ``fallback="error"`` raises ``BudgetStoreUnavailableError`` after ``unavailable_timeout``
    and ``fallback="memory"`` admits at once; no ERROR is logged (heartbeats included). After
    it, the window a process filled before it left is still kept: a newcomer waits until one
    period after the node started again (and says why)."""
    tid = "restart"
    owner = cluster.owner(tag(tid))
    url = cluster.other(tag(tid)).url
    period = 3.0  # longer than the cluster takes to be ok again after the restart
    c = claim("cdn", 3, period)
    warm = claim("warm", 100, 0.05)
    # A bound on each Redis call that a loaded machine (a suite in parallel workers, six
    # nodes) does not overrun on a node that is up; a stopped node refuses at once.
    bound = 0.5
    fast = {"token_id": tid, "cluster": True, "heartbeat_interval": 0.05, "call_timeout": bound}
    # Every store is closed however the test ends: a failure leaks no socket into the next.
    async with contextlib.AsyncExitStack() as stores:
        filler = RedisBudgetStore(url, _restart_hold=False, recovery_grace=0, **fast)  # type: ignore[arg-type]
        stores.push_async_callback(filler.aclose)
        for _ in range(3):
            filler.release(await filler.acquire([c]))
        await filler.aclose()  # the process that filled the window is gone
        strict = RedisBudgetStore(url, unavailable_timeout=0.3, recovery_grace=0.1, **fast)  # type: ignore[arg-type]
        stores.push_async_callback(strict.aclose)
        loose = RedisBudgetStore(url, fallback="memory", recovery_grace=0.1, **fast)  # type: ignore[arg-type]
        stores.push_async_callback(loose.aclose)
        for s in (strict, loose):
            s.release(await s.acquire([warm]))
        with caplog.at_level(logging.WARNING, logger="cdn_async"):
            await asyncio.to_thread(owner.stop)
            t0 = time.monotonic()
            with pytest.raises(BudgetStoreUnavailableError):
                await asyncio.wait_for(strict.acquire([warm]), 3.0)
            assert 0.3 - 0.02 <= time.monotonic() - t0 < 0.3 + 0.5
            t0 = time.monotonic()
            loose.release(await asyncio.wait_for(loose.acquire([warm]), 1.0))
            assert time.monotonic() - t0 < bound + 0.3
            await asyncio.to_thread(owner.start)
            await asyncio.to_thread(cluster.wait_ok)
            await until(lambda: strict._link.down_since is None and loose._link.down_since is None)
            asked = time.monotonic()
            newcomer = RedisBudgetStore(url, recovery_grace=0.1, **fast)  # type: ignore[arg-type]
            stores.push_async_callback(newcomer.aclose)
            lease = await asyncio.wait_for(newcomer.acquire([c]), 6.0)
            admitted = time.monotonic()
            newcomer.release(lease)
            strict.release(await asyncio.wait_for(strict.acquire([warm]), 1.0))
            for s in (strict, loose, newcomer):
                await s.aclose()
    assert admitted >= owner.started_at + period - 0.02
    if asked < owner.started_at + period - 0.1:  # it asked while the hold ran: it says why
        assert any("no budget history" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("Redis unreachable" in r.getMessage() for r in caplog.records)
