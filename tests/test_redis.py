"""``RedisBudgetStore`` against a real redis-server (started per test on a free loopback port).

Real time with small periods; assertions are on counts (a strict window checker, the fake
server's 429 counters), not on exact timings. Without redis-server the tests skip, except on
CI (``CI=true``), where a missing redis-server fails the run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
import redis.asyncio as aioredis

import cdn_async.redis
from cdn_async._limits import Claim
from cdn_async.errors import CDNError, RateLimitedError, ValidationError
from cdn_async.redis import (
    BudgetStoreUnavailableError,
    RedisBudgetStore,
    RedisLease,
    token_id_for,
)
from cdn_async.testing import FakeCDNServer

from ._support import max_in_window
from .redis_server import RedisServer, find_redis_server, free_port

WORKER = Path(__file__).with_name("redis_server.py")
# Small settings so restarts and dead processes resolve within a test's budget of time.
FAST = {"heartbeat_interval": 0.05, "recovery_grace": 0.25}


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server on a free port, no persistence; skipped (or, on CI, failed) when
    redis-server is not installed."""
    binary = find_redis_server()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed (CI=true: .ci/run installs it)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A raw redis-py client on the test server, for inspecting keys."""
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        yield r
    finally:
        await r.aclose()


def claim(key: str, limit: int, period: float, units: int = 1) -> Claim:
    return Claim(key, limit, period, units, key.split(":")[0])


def store_for(server: RedisServer, **kwargs: object) -> RedisBudgetStore:
    options: dict[str, object] = {**FAST, "recovery_grace": 0.0, **kwargs}
    return RedisBudgetStore(server.url, **options)  # type: ignore[arg-type]


async def hammer(
    stores: Sequence[RedisBudgetStore],
    claims: Sequence[Claim],
    n: int,
    stamps: list[tuple[float, int]],
    latency: float = 0.002,
) -> None:
    """``n`` requests per store, all at once; each is "stamped by the server" the moment it
    is sent (a strict stamp: the earliest the server could count it)."""

    async def one(store: RedisBudgetStore) -> None:
        lease = await store.acquire(claims)
        stamps.append((time.monotonic(), claims[0].units))
        await asyncio.sleep(latency)
        store.release(lease)

    await asyncio.gather(*(one(s) for s in stores for _ in range(n)))


# -- the public module -----------------------------------------------------------------------


def test_public_module_exports() -> None:
    """``cdn_async.redis`` exports a small ``__all__`` under its own name."""
    assert set(cdn_async.redis.__all__) == {
        "DEFAULT_HEARTBEAT_INTERVAL",
        "DEFAULT_INFLIGHT_TIMEOUT",
        "DEFAULT_MARKER_TTL",
        "DEFAULT_MAX_POLL_INTERVAL",
        "DEFAULT_RECOVERY_GRACE",
        "DEFAULT_UNAVAILABLE_TIMEOUT",
        "BudgetStoreUnavailableError",
        "RedisBudgetStore",
        "RedisLease",
        "token_id_for",
    }
    assert RedisBudgetStore.__module__ == "cdn_async.redis"
    for name in cdn_async.redis.__all__:
        assert hasattr(cdn_async.redis, name)


def test_token_id_is_a_hash_not_the_token() -> None:
    """``token_id_for`` is stable and never contains the token."""
    token = "dop_v1_" + "ab" * 32
    tid = token_id_for(token)
    assert tid == token_id_for(token) and len(tid) == 16 and tid not in token


def test_options_are_validated() -> None:
    """Out-of-range options and braces in names are refused at construction."""
    with pytest.raises(ValueError, match="fallback"):
        RedisBudgetStore("redis://127.0.0.1:1/0", fallback="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="inflight_timeout"):
        RedisBudgetStore("redis://127.0.0.1:1/0", inflight_timeout=0.5, heartbeat_interval=1)
    with pytest.raises(ValueError, match="braces"):
        RedisBudgetStore("redis://127.0.0.1:1/0", token_id="{x}")


async def test_repr_shows_no_password(redis_server: RedisServer) -> None:
    """The repr names the key prefix, never the URL (which may carry a password)."""
    store = RedisBudgetStore("redis://:s3cret-pw@127.0.0.1:1/0", token_id="abc")
    assert "s3cret" not in repr(store) and "{cdn-async:abc}" in repr(store)
    await store.aclose()


# -- exact windows -----------------------------------------------------------------------------


async def test_one_script_call_per_uncontended_acquire(
    redis_server: RedisServer, client: aioredis.Redis
) -> None:
    """An acquire that fits costs one EVALSHA: one round trip (commands the script runs
    inside Redis count in commandstats too, so only top-level script calls are compared)."""
    store = store_for(redis_server, heartbeat_interval=30.0)
    claims = [claim("hourly", 5000, 3600), claim("minute", 250, 60), claim("cdn", 5, 10)]
    store.release(await store.acquire(claims))  # loads the script
    await asyncio.sleep(0.05)

    def calls(stats: dict[str, dict[str, int]]) -> tuple[int, int]:
        evalsha = stats.get("cmdstat_evalsha", {}).get("calls", 0)
        others = sum(
            stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("eval", "script")
        )
        return evalsha, others

    try:
        for _ in range(3):
            before = calls(await client.info("commandstats"))
            lease = await store.acquire(claims)
            after = calls(await client.info("commandstats"))
            assert (after[0] - before[0], after[1] - before[1]) == (1, 0)
            store.release(lease)
            await asyncio.sleep(0.02)
    finally:
        await store.aclose()


async def test_two_processes_never_exceed_the_window(redis_server: RedisServer) -> None:
    """Two stores (two processes' worth) on one token: no window of ``period`` ever sees more
    than ``limit`` requests, and the work gets done."""
    stores = [store_for(redis_server) for _ in range(2)]
    c = claim("cdn", 5, 0.1)
    stamps: list[tuple[float, int]] = []
    await hammer(stores, [c], 15, stamps)
    assert len(stamps) == 30
    assert max_in_window(stamps, 0.1) <= 5
    for s in stores:
        await s.aclose()


async def test_units_count_per_file(redis_server: RedisServer) -> None:
    """A purge of 30 paths and one of 25 cannot share a 50-unit window."""
    stores = [store_for(redis_server) for _ in range(2)]
    stamps: list[tuple[float, int]] = []

    async def purge(store: RedisBudgetStore, files: int) -> None:
        lease = await store.acquire([claim("purge_files", 50, 0.15, files)])
        stamps.append((time.monotonic(), files))
        store.release(lease)

    await asyncio.gather(*(purge(stores[i % 2], 25 + 5 * (i % 2)) for i in range(6)))
    assert max_in_window(stamps, 0.15) <= 50
    for s in stores:
        await s.aclose()


async def test_all_or_nothing_across_keys(redis_server: RedisServer) -> None:
    """A request that waits on a full key takes nothing from its other keys meanwhile."""
    a, b = store_for(redis_server), store_for(redis_server)
    full = claim("cdn", 1, 0.3)
    other = claim("minute", 2, 0.3)
    held = await a.acquire([full])  # cdn is full (in flight)
    waiter = asyncio.create_task(b.acquire([full, other]))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    # minute still has both units free: the waiter reserved nothing there.
    got = await asyncio.wait_for(a.acquire([claim("minute", 2, 0.3, 2)]), 0.5)
    a.release(got)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    a.release(held)
    for s in (a, b):
        await s.aclose()


async def test_repeated_keys_add_up_and_bad_claims_fail(redis_server: RedisServer) -> None:
    """Claims on one key add up; a claim that could never fit is a ValidationError."""
    store = store_for(redis_server)
    with pytest.raises(ValidationError):
        await store.acquire([claim("cdn", 5, 1, 6)])
    with pytest.raises(ValidationError):
        await store.acquire([claim("cdn", 5, 1, 3), claim("cdn", 5, 1, 3)])
    lease = await store.acquire([claim("cdn", 5, 1, 2), claim("cdn", 5, 1, 3)])
    assert store.snapshot()["cdn"].used == 5
    store.release(lease)
    store.release(lease)  # idempotent
    with pytest.raises(ValueError, match="not a lease"):
        store.release(object())
    await store.aclose()


async def test_slot_frees_one_period_after_the_answer(redis_server: RedisServer) -> None:
    """Held while in flight however long; freed ``period`` after the release, not before."""
    a, b = store_for(redis_server), store_for(redis_server)
    c = claim("cdn", 1, 0.2)
    lease = await a.acquire([c])
    waiter = asyncio.create_task(b.acquire([c]))
    await asyncio.sleep(0.3)  # longer than a period: in flight still counts
    assert not waiter.done()
    released_at = time.monotonic()
    a.release(lease)
    got = await asyncio.wait_for(waiter, 2)
    assert time.monotonic() - released_at >= 0.2 - 0.01
    b.release(got)
    for s in (a, b):
        await s.aclose()


async def test_cancelled_waiter_takes_nothing(redis_server: RedisServer) -> None:
    """Cancelling queued acquires (also mid-script) leaves the full budget to others."""
    store = store_for(redis_server)
    c = claim("cdn", 2, 0.2)
    first = await store.acquire([c, c])
    waiters = [asyncio.create_task(store.acquire([c])) for _ in range(20)]
    for i, w in enumerate(waiters):
        await asyncio.sleep(0.001 * (i % 3))
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    store.release(first)
    await asyncio.sleep(0.05)
    other = store_for(redis_server)
    t0 = time.monotonic()
    leases = [await other.acquire([c]) for _ in range(2)]
    assert time.monotonic() - t0 < 0.5  # both units free right after the window
    for lease in leases:
        other.release(lease)
    for s in (store, other):
        await s.aclose()


# -- sync, pause, dead processes ------------------------------------------------------------------


async def test_pause_is_shared(redis_server: RedisServer) -> None:
    """A 429 pause set by one process holds every process, and ``max_wait`` applies."""
    a, b = store_for(redis_server), store_for(redis_server)
    c = claim("cdn", 5, 0.1)
    a.pause(c, 0.3)
    await asyncio.sleep(0.03)
    with pytest.raises(RateLimitedError) as info:
        await b.acquire([c], max_wait=0.1)
    assert info.value.budget == "cdn"
    t0 = time.monotonic()
    b.release(await b.acquire([c]))
    assert time.monotonic() - t0 >= 0.2
    for s in (a, b):
        await s.aclose()


async def test_sync_hold_is_shared(redis_server: RedisServer) -> None:
    """Headers read by one process ("0 remaining for 0.3 s") hold every process."""
    a, b = store_for(redis_server), store_for(redis_server)
    c = claim("cdn", 5, 0.1)
    a.sync(c, 0, 0.3)
    await asyncio.sleep(0.03)
    t0 = time.monotonic()
    b.release(await b.acquire([c]))
    assert time.monotonic() - t0 >= 0.2
    for s in (a, b):
        await s.aclose()


async def test_a_later_sync_never_lowers_a_live_hold(redis_server: RedisServer) -> None:
    """Answers arrive out of order: an older one (all remaining) must not clear a newer hold."""
    a, b = store_for(redis_server), store_for(redis_server)
    c = claim("cdn", 5, 0.1)
    a.sync(c, 0, 0.3)
    b.sync(c, 5, 0.3)
    await asyncio.sleep(0.03)
    t0 = time.monotonic()
    b.release(await b.acquire([c]))
    assert time.monotonic() - t0 >= 0.2
    for s in (a, b):
        await s.aclose()


async def test_dead_process_frees_its_slots_in_bounded_time(redis_server: RedisServer) -> None:
    """A process that dies with requests in flight holds them ``inflight_timeout + period`` at
    most, and no less than its heartbeat kept them."""
    dead = store_for(redis_server, inflight_timeout=0.3)
    c = claim("cdn", 2, 0.1)
    for _ in range(2):
        await dead.acquire([c])
    # Die: the heartbeat stops, nothing is released.
    dead._closed = True
    if dead._heartbeat is not None:
        dead._heartbeat.cancel()
    t0 = time.monotonic()
    alive = store_for(redis_server)
    lease = await asyncio.wait_for(alive.acquire([c]), 2)
    waited = time.monotonic() - t0
    assert 0.3 + 0.1 - 0.06 <= waited < 1.5
    alive.release(lease)
    await alive.aclose()
    await dead._redis.aclose()


async def test_heartbeat_keeps_slow_requests_held(redis_server: RedisServer) -> None:
    """A live request slower than ``inflight_timeout`` stays counted (its process heartbeats)."""
    slow = store_for(redis_server, inflight_timeout=0.15)
    other = store_for(redis_server)
    c = claim("cdn", 1, 0.1)
    lease = await slow.acquire([c])
    waiter = asyncio.create_task(other.acquire([c]))
    await asyncio.sleep(0.5)
    assert not waiter.done()
    slow.release(lease)
    other.release(await asyncio.wait_for(waiter, 2))
    for s in (slow, other):
        await s.aclose()


# -- keys --------------------------------------------------------------------------------------------


async def test_keys_are_hash_tagged_and_expire(
    redis_server: RedisServer, client: aioredis.Redis
) -> None:
    """Every key of a token shares one Cluster hash tag, has a TTL, and vanishes when idle."""
    store = store_for(redis_server, token_id="t1", inflight_timeout=0.2, marker_ttl=0.3)
    lease = await store.acquire([claim("cdn:ep1", 5, 0.1), claim("minute", 250, 0.2)])
    store.release(lease)
    await store.aclose()
    keys = sorted(k.decode() if isinstance(k, bytes) else k for k in await client.keys("*"))
    assert keys and all(k.startswith("{cdn-async:t1}:") for k in keys)
    assert any(k.endswith(":cdn:ep1") for k in keys)
    for k in keys:
        assert 0 < await client.pttl(k) <= 2000
    await asyncio.sleep(1.6)
    assert await client.keys("*") == []


async def test_tokens_do_not_share_budgets(redis_server: RedisServer) -> None:
    """Stores with different ``token_id`` keep separate windows in one Redis."""
    a = store_for(redis_server, token_id="a")
    b = store_for(redis_server, token_id="b")
    c = claim("cdn", 1, 5)
    la = await a.acquire([c])
    lb = await asyncio.wait_for(b.acquire([c]), 0.5)
    a.release(la)
    b.release(lb)
    for s in (a, b):
        await s.aclose()


# -- Redis unreachable ------------------------------------------------------------------------------


async def test_unreachable_redis_is_an_error_by_default() -> None:
    """No Redis: acquire raises a clear CDNError instead of admitting anything."""
    store = RedisBudgetStore(f"redis://127.0.0.1:{free_port()}/0", unavailable_timeout=0.2)
    with pytest.raises(BudgetStoreUnavailableError, match="fallback='memory'") as info:
        await store.acquire([claim("cdn", 5, 1)])
    assert isinstance(info.value, CDNError)
    await store.aclose()


async def test_memory_fallback_is_explicit_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """``fallback="memory"``: in-process budgets at once, with a WARNING."""
    store = RedisBudgetStore(f"redis://127.0.0.1:{free_port()}/0", fallback="memory")
    c = claim("cdn", 2, 0.1)
    with caplog.at_level(logging.WARNING, logger="cdn_async"):
        leases = [await store.acquire([c]) for _ in range(2)]
        t0 = time.monotonic()
        for lease in leases:
            store.release(lease)
        store.release(await store.acquire([c]))  # the in-process window still holds
    assert time.monotonic() - t0 >= 0.09
    assert any("in-process budgets" in r.getMessage() for r in caplog.records)
    assert all(r.levelno == logging.WARNING for r in caplog.records if "Redis" in r.getMessage())
    assert all(isinstance(lease, RedisLease) for lease in leases)
    await store.aclose()


async def test_closed_store_refuses(redis_server: RedisServer) -> None:
    """After ``aclose``: acquire raises CDNError, release/sync/pause do nothing."""
    store = store_for(redis_server)
    lease = await store.acquire([claim("cdn", 5, 1)])
    await store.aclose()
    store.release(lease)
    store.sync(claim("cdn", 5, 1), 0, 1)
    store.pause(claim("cdn", 5, 1), 1)
    with pytest.raises(CDNError, match="closed"):
        await store.acquire([claim("cdn", 5, 1)])


# -- restarts ------------------------------------------------------------------------------------------


async def test_restart_keeps_every_held_slot(redis_server: RedisServer) -> None:
    """Redis restarts while one process holds the whole window (some in flight, some
    released): another process, even a newly started one, is admitted only after those
    units free, never into the straddling window."""
    period = 0.4
    c = claim("cdn", 4, period)
    holder = RedisBudgetStore(redis_server.url, **FAST)  # type: ignore[arg-type]
    await asyncio.sleep(0.3)  # past the first-use recovery window
    leases = [await holder.acquire([c]) for _ in range(4)]
    holder.release(leases[0])
    holder.release(leases[1])
    await asyncio.sleep(0.02)
    released_at = time.monotonic()
    await asyncio.to_thread(redis_server.restart)
    newcomer = RedisBudgetStore(redis_server.url, **FAST)  # type: ignore[arg-type]
    waiter = asyncio.create_task(newcomer.acquire([c]))
    await asyncio.sleep(0.05)
    holder.release(leases[2])
    holder.release(leases[3])
    got = await asyncio.wait_for(waiter, 3)
    assert time.monotonic() - released_at >= period - 0.02
    newcomer.release(got)
    # Exactly the window again: 4 units hold until the last release + period.
    stamps = [(time.monotonic(), 1)]
    more = [await newcomer.acquire([c]) for _ in range(3)]
    stamps += [(time.monotonic(), 1) for _ in more]
    assert max_in_window(stamps, period) <= 4
    for lease in more:
        newcomer.release(lease)
    for s in (holder, newcomer):
        await s.aclose()


# -- many OS processes against the fake API ---------------------------------------------------------


async def run_workers(
    fake: FakeCDNServer, redis_url: str, processes: int, tasks: int, requests: int, scale: float
) -> list[dict[str, object]]:
    ids = [fake.add_endpoint(f"space-{i}.nyc3.digitaloceanspaces.com")["id"] for i in range(4)]
    cfg = {
        "store": "redis",
        "redis_url": redis_url,
        "token_id": token_id_for(fake.token),
        "url": fake.url,
        "token": fake.token,
        "ids": ids,
        "time_scale": scale,
        "tasks": tasks,
        "requests": requests,
        "max_retries": 0,  # a 429 fails the call: it cannot hide behind a retry
    }
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, str(WORKER), json.dumps(cfg), stdout=asyncio.subprocess.PIPE
        )
        for _ in range(processes)
    ]
    results = []
    for p in procs:
        out, _ = await p.communicate()
        assert p.returncode == 0
        results.append(json.loads(out))
    return results


async def test_processes_together_draw_no_429(redis_server: RedisServer) -> None:
    """4 OS processes x 10 tasks hammering one fake server: 0 x 429, all work done."""
    async with FakeCDNServer(time_scale=0.005) as fake:
        results = await run_workers(fake, redis_server.url, 4, 10, 4, 0.005)
        assert fake.counters.rate_limited == {}
    assert [r["failed"] for r in results] == [0] * 4, results
    assert sum(int(r["ok"]) for r in results) == 160  # type: ignore[call-overload]


async def test_restart_mid_run_loses_nothing_and_draws_no_429(redis_server: RedisServer) -> None:
    """Redis restarts while 4 processes hammer the fake server: every request is still made,
    none is refused."""
    async with FakeCDNServer(time_scale=0.005) as fake:
        run = asyncio.create_task(run_workers(fake, redis_server.url, 4, 10, 6, 0.005))
        while fake.counters.requests < 80 and not run.done():  # noqa: ASYNC110 (no event to wait on)
            await asyncio.sleep(0.01)
        await asyncio.to_thread(redis_server.restart)
        results = await run
        assert fake.counters.rate_limited == {}
    assert [r["failed"] for r in results] == [0] * 4, results
    assert sum(int(r["ok"]) for r in results) == 240  # type: ignore[call-overload]
