"""``RedisBudgetStore`` against a real redis-server (started per test on a free loopback port).

Real time with small periods; assertions are on counts (a strict window checker, the fake
server's 429 counters) and on lower bounds of waits, with generous upper bounds. Redis
misbehaves for real: killed (``stop``), restarted empty, or stalled with SIGSTOP. Without
redis-server the tests skip, except on CI (``CI=true``), where a missing redis-server fails
the run. Redis Cluster: ``test_redis_cluster.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

import cdn_async.redis
from benchmarks._redis_server import RedisServer, fork_workers, free_port
from cdn_async import CDNClient, RateLimits
from cdn_async._limits import Claim
from cdn_async.errors import BudgetWaitTimeout, CDNError, RateLimitedError, ValidationError
from cdn_async.redis import (
    BudgetStoreUnavailableError,
    RedisBudgetStore,
    RedisLease,
    token_id_for,
)
from cdn_async.testing import FakeCDNServer

from ._support import max_in_window

ROOT = Path(__file__).resolve().parent.parent
# Small settings so restarts and dead processes resolve within a test's budget of time.
ORIGIN = "static.nyc3.digitaloceanspaces.com"
FAST = {"heartbeat_interval": 0.05, "recovery_grace": 0.25}


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A raw redis-py client on the test server, for inspecting keys."""
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        yield r
    finally:
        await r.aclose()


async def until(condition: Callable[[], bool], within: float = 3.0) -> None:
    """Poll ``condition`` every 10 ms until it holds (fail after ``within`` s): for state of
    other tasks and processes, which no event announces."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def redis_ms(client: aioredis.Redis) -> float:
    """Redis's clock (``TIME``), in ms: what its scripts stamp with."""
    sec, usec = await client.time()
    return sec * 1000.0 + usec / 1000.0


def claim(key: str, limit: int, period: float, units: int = 1) -> Claim:
    return Claim(key, limit, period, units, key.split(":")[0])


def store_for(server: RedisServer, **kwargs: object) -> RedisBudgetStore:
    """A store on the test server; the server is new, so no restart wait unless asked."""
    options: dict[str, object] = {**FAST, "recovery_grace": 0.0, "_restart_hold": False, **kwargs}
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
        "BudgetStoreUnavailableError",
        "RedisBudgetStore",
        "RedisLease",
        "RedisPurgeQueue",
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
    with pytest.raises(ValueError, match="call_timeout"):
        RedisBudgetStore("redis://127.0.0.1:1/0", call_timeout=0)
    with pytest.raises(ValueError, match="cluster= applies to a URL"):
        RedisBudgetStore(aioredis.Redis(), cluster=True)


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


async def test_units_count_from_the_answer_not_from_when_the_release_script_runs(
    redis_server: RedisServer, client: aioredis.Redis
) -> None:
    """The release script runs after ``release()`` (a task, then the trip to Redis; here the
    store's clock moves 40 ms before it goes out, as when the loop is busy): it takes that
    delay, measured before the call is sent, off Redis's clock, so the units free one period
    after ``release()``, not a period after the script ran. Read from the expiry Redis
    stored, so the check does not depend on the machine's speed."""
    loop = asyncio.get_running_loop()
    late = 0.0
    store = store_for(redis_server, clock=lambda: loop.time() + late)
    c = claim("cdn", 1, 0.2)
    lease = await store.acquire([c])

    before = await redis_ms(client)
    store.release(lease)
    late = 0.04  # 40 ms pass, for the store, before its release script is sent
    member = f"{lease.id}:1"
    deadline = time.monotonic() + 3.0
    while (frees := await client.zscore("{cdn-async:default}:r:cdn", member)) is None:
        assert time.monotonic() < deadline, "the release never reached Redis"
    after = await redis_ms(client)
    # The script ran at some Redis time between ``before`` and ``after``, and took 40 ms off.
    assert before + 200 - 40 - 0.01 <= frees <= after + 200 - 40 + 0.01
    await store.aclose()


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
    c = claim("cdn", 5, 0.5)
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
    c = claim("cdn", 5, 0.5)
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
    c = claim("cdn", 5, 0.5)
    a.sync(c, 0, 0.3)
    b.sync(c, 5, 0.3)
    await asyncio.sleep(0.03)
    t0 = time.monotonic()
    b.release(await b.acquire([c]))
    assert time.monotonic() - t0 >= 0.2
    for s in (a, b):
        await s.aclose()


async def test_a_unit_expiring_during_the_round_trip_is_not_taken_for_another_clients(
    redis_server: RedisServer, client: aioredis.Redis
) -> None:
    """The server stamped the answered request while one of our units was still in its
    window; that unit left Redis's window before the answer came. The headers' count is ours
    alone: nothing is held (a hold would keep a unit idle for a whole period). Another
    process's answer with the same reading (it settled nothing) is held. Read from the hold
    Redis stored, so the check does not depend on the machine's speed."""
    a, b = store_for(redis_server), store_for(redis_server)

    async def written(store: RedisBudgetStore) -> None:
        while store._link._tasks:  # the release and sync calls run in tasks
            await asyncio.gather(*store._link._tasks)

    for attempt in range(3):  # the admission must come before the unit leaves: retried if late
        c = claim(f"cdn:{attempt}", 2, 0.5)
        meta = f"{{cdn-async:default}}:m:cdn:{attempt}"
        first = await a.acquire([c])
        a.release(first)
        await written(a)
        frees = await client.zscore(f"{{cdn-async:default}}:r:cdn:{attempt}", f"{first.id}:1")
        assert frees is not None
        await asyncio.sleep(0.1)
        lease = await a.acquire([c])
        if await redis_ms(client) < frees - 200:  # the sync's script may run that much later
            break
        a.release(lease)
    else:
        pytest.fail("could not admit a request before the first unit left, in 3 tries")
    while await redis_ms(client) <= frees + 1:  # noqa: ASYNC110 (Redis's clock, no event)
        await asyncio.sleep(0.01)
    a.release(lease)  # answered after the first unit left: the server had counted both
    a.sync(c, remaining=0, reset_after=30.0)
    await written(a)
    assert await client.hget(meta, "h") in (None, b"0")
    b.sync(c, remaining=0, reset_after=30.0)
    await written(b)
    assert await client.hget(meta, "h") == b"1"  # 2 counted, 1 released: 1 is another's
    for s in (a, b):
        await s.aclose()


async def test_give_back_frees_units_at_once_for_every_process(redis_server: RedisServer) -> None:
    """``give_back`` (never sent, or a 429 the server did not count) uncounts the units in
    Redis at once, not a period later; it is idempotent and does nothing after ``release``."""
    a, b = store_for(redis_server), store_for(redis_server)
    c = claim("cdn", 2, 5.0)  # a released unit would hold for 5 s
    first, second = await a.acquire([c]), await a.acquire([c])
    a.give_back(first)
    a.give_back(first)
    a.release(first)  # after give_back: nothing
    assert a.snapshot()["cdn"].used == 1
    got = await asyncio.wait_for(b.acquire([c]), 1.0)
    a.release(second)
    a.give_back(second)  # after release: nothing, the unit stays counted
    late = asyncio.create_task(b.acquire([c]))
    await asyncio.sleep(0.3)
    assert not late.done()
    late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late
    with pytest.raises(ValueError, match="not a lease"):
        a.give_back(got)
    b.release(got)
    for s in (a, b):
        await s.aclose()


async def test_a_late_acquire_call_after_its_give_back_admits_nothing(
    redis_server: RedisServer, client: aioredis.Redis
) -> None:
    """An acquire call that timed out may still run when Redis wakes. Its lease is given back
    with the re-seed (a tombstone), so a call that runs after that takes nothing."""
    store = store_for(redis_server)
    c = claim("cdn", 1, 5.0)
    lease = RedisLease("late-1", (c,), ((c, 1),), store)
    store._mirror.give_backs[lease.id] = lease  # what a timed-out acquire call leaves behind
    store._link._needs_restore = True
    await store._link._restore()  # Redis answers again: the re-seed writes the give-back
    res = await store._acquire_call(lease)  # the stale call runs at last
    assert int(res[0]) == 0
    assert await client.zcard("{cdn-async:default}:f:cdn") == 0
    store.release(await asyncio.wait_for(store.acquire([c]), 1.0))  # the unit is free
    await store.aclose()


async def test_a_pause_never_outlasts_the_period(
    redis_server: RedisServer, client: aioredis.Redis
) -> None:
    """A 429 pause is capped at its key's period: asked for an hour (a wrong clock), or found
    in Redis for an hour (written by another version), every process resumes a period later,
    and ``max_wait`` is judged against the capped pause."""
    a, b = store_for(redis_server), store_for(redis_server)
    c = claim("cdn", 5, 0.3)
    a.pause(c, 3600.0)
    assert a.snapshot()["cdn"].paused_for <= 0.3
    await asyncio.sleep(0.02)
    t0 = time.monotonic()
    b.release(await asyncio.wait_for(b.acquire([c], max_wait=1.0), 2.0))
    assert 0.2 <= time.monotonic() - t0 <= 0.3 + 0.4
    secs, micros = await client.time()
    now_ms = secs * 1000 + micros / 1000
    await client.hset("{cdn-async:default}:m:cdn", "p", f"{now_ms + 3_600_000:.3f}")
    t0 = time.monotonic()
    b.release(await asyncio.wait_for(b.acquire([c], max_wait=1.0), 2.0))
    assert 0.2 <= time.monotonic() - t0 <= 0.3 + 0.4
    stored = float(await client.hget("{cdn-async:default}:m:cdn", "p") or 0)
    assert stored <= now_ms + 300 + 200  # the first reader wrote the cap back for everyone
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
    dead._closed = dead._link._closed = True
    if dead._link._heartbeat is not None:
        dead._link._heartbeat.cancel()
    t0 = time.monotonic()
    alive = store_for(redis_server)
    lease = await asyncio.wait_for(alive.acquire([c]), 2)
    waited = time.monotonic() - t0
    assert 0.3 + 0.1 - 0.06 <= waited < 1.5
    alive.release(lease)
    await alive.aclose()
    await dead._link.client.aclose()


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
    store = store_for(redis_server, token_id="t1", inflight_timeout=0.2, _marker_ttl=0.3)
    lease = await store.acquire([claim("cdn:ep1", 5, 0.1), claim("minute", 250, 0.2)])
    store.release(lease)
    await store.aclose()
    keys = sorted(k.decode() if isinstance(k, bytes) else k for k in await client.keys("*"))
    assert keys and all(k.startswith("{cdn-async:t1}:") for k in keys)
    assert any(k.endswith(":cdn:ep1") for k in keys)
    # Each key expires once idle: the epoch marker after _marker_ttl (0.3 s) or the longest
    # period plus the in-flight timeout plus the grace, the others after their period plus
    # the in-flight timeout, plus a second. Redis drops a key when its TTL runs out.
    for k in keys:
        assert 0 < await client.pttl(k) <= 200 + 200 + 1000


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


async def test_fallback_starts_from_this_process_units(redis_server: RedisServer) -> None:
    """Redis dies right after this process filled a window: the in-process fallback counts
    those units (and waits for them to expire), then honours a 429 pause, ``max_wait`` and a
    server-sync hold, as the in-memory store does."""
    store = store_for(redis_server, fallback="memory", call_timeout=0.2)
    c = claim("cdn", 2, 0.4)
    leases = [await store.acquire([c]) for _ in range(2)]
    for lease in leases:
        store.release(lease)
    released = time.monotonic()
    redis_server.stop()
    store.release(await asyncio.wait_for(store.acquire([c]), 2.0))
    assert time.monotonic() - released >= 0.4 - 0.01
    p = claim("minute", 5, 0.5)
    store.pause(p, 0.3)
    with pytest.raises(RateLimitedError):
        await store.acquire([p], max_wait=0.1)
    t0 = time.monotonic()
    store.release(await asyncio.wait_for(store.acquire([p]), 2.0))
    assert time.monotonic() - t0 >= 0.3 - 0.02
    h = claim("hourly", 3, 0.5)
    store.sync(h, 0, 0.3)  # the server says another client spent all 3
    t0 = time.monotonic()
    store.release(await asyncio.wait_for(store.acquire([h]), 2.0))
    assert time.monotonic() - t0 >= 0.3 - 0.02
    await store.aclose()


async def test_lone_process_draws_no_429_across_an_outage(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """One process with ``fallback="memory"``, 10 tasks doing 60 gets against the fake server
    while Redis is killed and later comes back empty: every call succeeds, 0 x 429, one
    WARNING each way and no ERROR."""
    scale = 0.01  # cdn: 5 per 0.1 s
    async with FakeCDNServer(time_scale=scale) as fake:
        ids = [fake.add_endpoint(f"space-{i}.nyc3.digitaloceanspaces.com")["id"] for i in range(4)]
        store = RedisBudgetStore(
            redis_server.url,
            token_id=token_id_for(fake.token),
            fallback="memory",
            heartbeat_interval=0.05,
            recovery_grace=0.1,
            call_timeout=0.2,
        )
        limits = RateLimits.documented().scaled(scale)
        with caplog.at_level(logging.WARNING, logger="cdn_async"):
            try:
                async with CDNClient(
                    fake.token, base_url=fake.url, limits=limits, budget_store=store, max_retries=0
                ) as cdn:

                    async def task(n: int) -> None:
                        for i in range(6):
                            await cdn.endpoints.get(ids[(n + i) % len(ids)])

                    run = asyncio.gather(*(task(n) for n in range(10)))
                    await until(lambda: fake.counters.requests >= 15)
                    redis_server.stop()
                    await until(lambda: fake.counters.requests >= 35)
                    await asyncio.to_thread(redis_server.start)
                    await run
            finally:
                await store.aclose()
        assert fake.counters.rate_limited == {}
        assert fake.counters.requests == 60
    messages = [r.getMessage() for r in caplog.records]
    assert sum("Redis unreachable" in m for m in messages) == 1, messages
    assert sum("reachable again" in m for m in messages) == 1, messages
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_stalled_redis_raises_after_unavailable_timeout(redis_server: RedisServer) -> None:
    """A stopped Redis (SIGSTOP: connections accepted, nothing answered): every queued acquire
    raises ``unavailable_timeout`` after the first call stalled, not a socket timeout per
    retry later; when Redis wakes the store admits again."""
    store = store_for(redis_server, unavailable_timeout=0.4, call_timeout=0.1)
    c = claim("cdn", 5, 1.0)
    store.release(await store.acquire([claim("warm", 5, 0.05)]))  # connected
    redis_server.stall()
    try:
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(store.acquire([c]) for _ in range(5)), return_exceptions=True
        )
        elapsed = time.monotonic() - t0
    finally:
        redis_server.resume()
    assert all(isinstance(r, BudgetStoreUnavailableError) for r in results), results
    assert 0.4 - 0.02 <= elapsed < 0.4 + 0.5
    await asyncio.sleep(0.3)  # the probe finds Redis again
    store.release(await asyncio.wait_for(store.acquire([c]), 1.0))
    await store.aclose()


async def test_stalled_redis_falls_back_at_once_and_reseeds_when_it_wakes(
    redis_server: RedisServer,
) -> None:
    """``fallback="memory"`` with a stalled Redis: the first acquire is admitted once its
    call stalled (one ``call_timeout``), the next ones without asking Redis; when Redis wakes,
    what was admitted meanwhile is re-seeded, so other processes count it. ``aclose`` never
    hangs."""
    call_timeout = 0.3
    a = store_for(redis_server, fallback="memory", call_timeout=call_timeout)
    c = claim("cdn", 3, 0.5)
    a.release(await a.acquire([claim("warm", 5, 0.05)]))
    asked: list[str] = []  # the acquire calls sent to Redis (the probe's re-seeds aside)
    script = a._link._conn.script

    async def counting(name: str, *args: Any) -> Any:
        if name == "acquire":
            asked.append(name)
        return await script(name, *args)

    a._link._conn.script = counting  # type: ignore[method-assign]
    redis_server.stall()
    try:
        t0 = time.monotonic()
        first = await asyncio.wait_for(a.acquire([c]), 2.0)
        assert time.monotonic() - t0 >= call_timeout - 0.02 and asked == ["acquire"]
        leases = [first] + [await a.acquire([c]) for _ in range(2)]
        assert asked == ["acquire"]  # Redis is unreachable: nobody asks it
    finally:
        redis_server.resume()
    await until(lambda: a._link.down_since is None)
    b = store_for(redis_server)
    waiter = asyncio.create_task(b.acquire([c]))
    await asyncio.sleep(0.3)
    assert not waiter.done()  # the 3 units admitted during the stall are in Redis now
    released = time.monotonic()
    for lease in leases:
        a.release(lease)
    b.release(await asyncio.wait_for(waiter, 2.0))
    assert time.monotonic() - released >= 0.5 - 0.02
    lease = await a.acquire([claim("warm", 5, 0.05)])
    redis_server.stall()
    try:
        a.release(lease)
        t0 = time.monotonic()
        await a.aclose()
        assert time.monotonic() - t0 < 2 * call_timeout
    finally:
        redis_server.resume()
    await b.aclose()


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


async def test_restart_hold_only_where_no_other_budget_bounds(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that just started may have lost the units of processes that are gone. With the
    documented budgets: cdn admits nothing until one of its periods after Redis started,
    purges wait for purge_files' period, minute and hourly (which cdn bounds) add no wait of
    their own, and a budget claimed with nothing to bound it waits its own period."""
    limits = RateLimits.documented().scaled(0.03)  # cdn 0.3 s, purge_files 0.6 s, minute 1.8 s
    store = store_for(redis_server, _restart_hold=True)
    started = redis_server.started_at
    plain = limits.claims("ep")
    alone = [c for c in plain if c.budget == "minute"]
    with caplog.at_level(logging.WARNING, logger="cdn_async"):
        waiter = asyncio.create_task(store.acquire(alone))
        lease = await asyncio.wait_for(store.acquire(plain), 2.0)
        admitted = time.monotonic()
        purge = await asyncio.wait_for(store.acquire(limits.claims("ep", files=10)), 2.0)
        purged = time.monotonic()
        assert not waiter.done()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert started + 0.3 <= admitted < started + 0.3 + 0.8
    assert purged >= started + 0.6
    assert sum("no budget history" in r.getMessage() for r in caplog.records) == 1
    store.release(lease)
    store.release(purge)
    await store.aclose()


async def test_restart_after_the_filler_is_gone_draws_no_429(redis_server: RedisServer) -> None:
    """A process fills the cdn window and exits; Redis restarts empty; a newcomer is admitted
    only once the lost units have left every window (0 x 429), and no later: minute and
    hourly hold nothing."""
    scale = 0.05  # cdn: 5 per 0.5 s; minute 3 s, hourly 180 s
    period = 10.0 * scale
    async with FakeCDNServer(time_scale=scale) as fake:
        ids = [fake.add_endpoint(f"space-{i}.nyc3.digitaloceanspaces.com")["id"] for i in range(4)]
        filler = await run_workers(fake, redis_server.url, 1, 5, 1, scale, ids=ids, grace=0.25)
        assert filler[0]["failed"] == 0 and fake.counters.requests == 5
        restarting = time.monotonic()
        await asyncio.to_thread(redis_server.restart)
        store = RedisBudgetStore(redis_server.url, token_id=token_id_for(fake.token), **FAST)  # type: ignore[arg-type]
        limits = RateLimits.documented().scaled(scale)
        try:
            async with CDNClient(
                fake.token, base_url=fake.url, limits=limits, budget_store=store, max_retries=0
            ) as cdn:
                await asyncio.gather(*(cdn.endpoints.get(ids[i % len(ids)]) for i in range(5)))
        finally:
            await store.aclose()
        assert fake.counters.rate_limited == {}
        newcomer = [e.arrival for e in fake.journal[5:]]
    assert len(newcomer) == 5
    assert min(newcomer) >= restarting + period - 0.02
    assert max(newcomer) < restarting + period + 1.0


# -- many OS processes against the fake API ---------------------------------------------------------


async def run_workers(
    fake: FakeCDNServer,
    redis_url: str,
    processes: int,
    tasks: int,
    requests: int,
    scale: float,
    ids: Sequence[str] | None = None,
    **extra: object,
) -> list[dict[str, object]]:
    """Run ``processes`` worker processes (``benchmarks/_redis_server.py``) to the end;
    ``extra`` goes into their config (``grace``, ``fallback``, ``restart_hold``...)."""
    if ids is None:
        ids = [fake.add_endpoint(f"space-{i}.nyc3.digitaloceanspaces.com")["id"] for i in range(4)]
    cfg = {
        **extra,
        "store": "redis",
        "redis_url": redis_url,
        "token_id": token_id_for(fake.token),
        "url": fake.url,
        "token": fake.token,
        "ids": list(ids),
        "time_scale": scale,
        "tasks": tasks,
        "requests": requests,
        "max_retries": 0,  # a 429 fails the call: it cannot hide behind a retry
    }
    return await fork_workers(cfg, processes)


async def test_processes_together_draw_no_429(redis_server: RedisServer) -> None:
    """4 OS processes x 10 tasks hammering one fake server: 0 x 429, all work done."""
    async with FakeCDNServer(time_scale=0.005) as fake:
        results = await run_workers(fake, redis_server.url, 4, 10, 2, 0.005)
        assert fake.counters.rate_limited == {}
    assert [r["failed"] for r in results] == [0] * 4, results
    assert sum(int(r["ok"]) for r in results) == 80  # type: ignore[call-overload]


async def test_restart_mid_run_loses_nothing_and_draws_no_429(redis_server: RedisServer) -> None:
    """Redis restarts while 4 processes hammer the fake server: every request is still made,
    none is refused."""
    async with FakeCDNServer(time_scale=0.005) as fake:
        run = asyncio.create_task(run_workers(fake, redis_server.url, 4, 10, 3, 0.005))
        while fake.counters.requests < 40 and not run.done():  # noqa: ASYNC110 (no event to wait on)
            await asyncio.sleep(0.01)
        await asyncio.to_thread(redis_server.restart)
        results = await run
        assert fake.counters.rate_limited == {}
    assert [r["failed"] for r in results] == [0] * 4, results
    assert sum(int(r["ok"]) for r in results) == 120  # type: ignore[call-overload]


async def test_priorities_order_this_processs_waiters(redis_server: RedisServer) -> None:
    """Within a process, calls for the same budgets go higher first, FIFO within a level; the
    call that started waiting first (the head, asking Redis) is passed like any other."""
    store = store_for(redis_server)
    c = claim("cdn", 1, 0.1)
    holder = await store.acquire([c])
    order: list[str] = []

    async def take(name: str, priority: str) -> None:
        lease = await store.acquire([c], priority=priority)  # type: ignore[arg-type]
        order.append(name)
        store.release(lease)

    tasks = []
    for name, priority in [("n1", "normal"), ("l1", "low"), ("n2", "normal"), ("h1", "high")]:
        tasks.append(asyncio.create_task(take(name, priority)))
        await asyncio.sleep(0.01)
    store.release(holder)
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    # "n1" came first and was the head, asking Redis; "h1" arrived with an earlier virtual
    # time, so "n1" stepped back behind it.
    assert order == ["h1", "n1", "n2", "l1"]
    await store.aclose()


# -- deadlines and the queue cap on the shared store (issue 23) ------------------------------------

SCALE = 0.02  # cdn budget: 5 requests / 0.2 s


async def _fill_and_queue(cdn: Any, cdn_id: str, waiting: int) -> list[asyncio.Task[Any]]:
    """The cdn window full, then ``waiting`` normal calls queued behind it."""
    await asyncio.gather(*(cdn.endpoints.get(cdn_id) for _ in range(5)))
    queued = [asyncio.create_task(cdn.endpoints.get(cdn_id)) for _ in range(waiting)]
    await until(lambda: sum(g.count for g in cdn._session.store._queue.groups.values()) == waiting)
    return queued


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_redis_store_refuses_with_retry_after_and_spares_high_calls(
    redis_server: RedisServer, fake_cdn: FakeCDNServer
) -> None:
    """With 12 normal calls queued behind a full cdn window, a hasty call is refused at once
    with a retry_after (never None) of at least the two windows the line fills; a high call
    with a deadline of 1.5 periods passes them all and is served."""
    period = 10.0 * SCALE
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    store = store_for(redis_server)
    async with fake_cdn.client(budget_store=store) as cdn:
        await cdn.endpoints.get(cdn_id)
        await asyncio.sleep(period * 1.1)
        queued = await _fill_and_queue(cdn, cdn_id, 12)
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(BudgetWaitTimeout) as refused:
            await cdn.with_options(max_budget_wait=0.1 * period).endpoints.get(cdn_id)
        assert loop.time() - start < 0.05 * period  # at once
        assert refused.value.retry_after is not None
        assert refused.value.retry_after >= 2 * period
        urgent = cdn.with_options(priority="high", max_budget_wait=1.5 * period)
        await urgent.endpoints.get(cdn_id)
        assert loop.time() - start <= 1.5 * period
        await asyncio.gather(*queued)
    await store.aclose()
    assert fake_cdn.counters.rate_limited.total() == 0


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_redis_store_max_queued_counts_only_calls_that_wait_for_budget(
    redis_server: RedisServer, fake_cdn: FakeCDNServer
) -> None:
    """An idle budget takes a burst of 5 at once: none is shed by max_queued=2, though the
    store's local line sends them to Redis one after another."""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    store = store_for(redis_server)
    async with fake_cdn.client(budget_store=store) as cdn:
        await cdn.endpoints.get(cdn_id)
        await asyncio.sleep(10.0 * SCALE * 1.1)
        capped = cdn.with_options(max_queued=2)
        burst = await asyncio.gather(
            *(capped.endpoints.get(cdn_id) for _ in range(5)), return_exceptions=True
        )
        assert not [r for r in burst if isinstance(r, BaseException)], burst
    await store.aclose()
