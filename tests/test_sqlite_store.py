"""``SQLiteBudgetStore``: several stores on one file, in one process, in virtual time.

Each store stands for a process: its own connection to the file, its own local queue and
heartbeat. The clock injected is the loop's (looptime's virtual time), the same for every store,
as ``time.monotonic`` is for every process on a host. Real OS processes, a SIGKILL, and the
fake API over loopback: ``test_sqlite_processes.py``.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import cdn_async
from cdn_async import CDNClient, RateLimits, SQLiteBudgetStore
from cdn_async._limits import Claim
from cdn_async.errors import BudgetFileError, CDNError, RateLimitedError, ValidationError

from ._strict_server import StrictServer, install
from ._support import max_in_window

pytestmark = pytest.mark.looptime

ID = "6e7a3d8a-6f3e-4a57-9a1b-2b8f9f6f0b11"


def claim(key: str, limit: int, period: float, units: int = 1) -> Claim:
    return Claim(key, limit, period, units, key.split(":")[0])


CDN = claim("cdn", 5, 10.0)
FILES = claim("purge_files", 50, 20.0)


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Callable[..., SQLiteBudgetStore]]:
    """Make stores on one file, all on the loop's (virtual) clock; closed at the end."""
    made: list[SQLiteBudgetStore] = []
    clock = asyncio.get_running_loop().time

    def make(**options: object) -> SQLiteBudgetStore:
        store = SQLiteBudgetStore(tmp_path / "budgets.sqlite3", clock=clock, **options)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


def now() -> float:
    return asyncio.get_running_loop().time()


def test_public_name_and_repr(tmp_path: Path) -> None:
    """Exported from ``cdn_async``; the repr names the file only."""
    assert cdn_async.SQLiteBudgetStore is SQLiteBudgetStore
    assert "SQLiteBudgetStore" in cdn_async.__all__
    store = SQLiteBudgetStore(tmp_path / "b.sqlite3")
    assert repr(store) == f"<SQLiteBudgetStore {str(tmp_path / 'b.sqlite3')!r}>"
    assert store.path == str(tmp_path / "b.sqlite3")


def test_options_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    for bad in ({"inflight_timeout": 0}, {"lock_timeout": -1}, {"max_poll_interval": float("nan")}):
        with pytest.raises(ValueError):
            SQLiteBudgetStore(path, **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exceed heartbeat_interval"):
        SQLiteBudgetStore(path, inflight_timeout=1.0, heartbeat_interval=1.0)


# -- windows -------------------------------------------------------------------------------------


async def test_a_window_is_shared_and_frees_one_period_after_the_answer(
    stores: Callable[..., SQLiteBudgetStore],
) -> None:
    """Five units taken by two stores fill the window for both; a unit frees exactly one period
    after its answer, not after its admission."""
    a, b = stores(), stores()
    leases = [await a.acquire([CDN]) for _ in range(3)] + [await b.acquire([CDN]) for _ in range(2)]
    waiter = asyncio.create_task(b.acquire([CDN]))
    await asyncio.sleep(4.0)
    assert not waiter.done()  # five in flight: only an answer frees room
    answered = now()
    a.release(leases[0])
    lease = await waiter
    assert now() == pytest.approx(answered + 10.0, abs=0.001)
    for held in (*leases[1:], lease):
        (a if held.issued_by(a) else b).release(held)


async def test_stacked_claims_are_taken_at_once_or_not_at_all(
    stores: Callable[..., SQLiteBudgetStore],
) -> None:
    """A purge claims cdn and purge_files together: while cdn is full, it takes no file units,
    so another store can spend all 50 of them."""
    a, b = stores(), stores()
    full = [await a.acquire([CDN]) for _ in range(5)]
    purge = asyncio.create_task(b.acquire([CDN, claim("purge_files", 50, 20.0, 30)]))
    await asyncio.sleep(1.0)
    assert not purge.done()
    files = await asyncio.wait_for(a.acquire([claim("purge_files", 50, 20.0, 50)]), 0.1)
    assert b.snapshot()["purge_files"].used == 50
    a.give_back(files)
    for lease in full:
        a.release(lease)
    got = await purge
    assert {c.key for c in got.claims} == {"cdn", "purge_files"}
    assert b.snapshot()["purge_files"].used == 30


async def test_repeated_keys_add_up_and_bad_claims_fail(
    stores: Callable[..., SQLiteBudgetStore],
) -> None:
    a = stores()
    lease = await a.acquire([claim("k", 3, 1.0, 2), claim("k", 3, 1.0, 1)])
    assert a.snapshot()["k"].used == 3
    a.give_back(lease)
    with pytest.raises(ValidationError):
        await a.acquire([claim("k", 3, 1.0, 2), claim("k", 3, 1.0, 2)])
    with pytest.raises(ValidationError):
        await a.acquire([claim("k", 3, 1.0, 0)])


@pytest.mark.parametrize("seed", range(4))
async def test_clients_on_one_file_never_draw_a_429_and_use_the_whole_budget(
    seed: int, tmp_path: Path
) -> None:
    """Four clients (one store each, as four processes) against a strict server with random
    latencies: no window ever holds more than 5, no 429, and the calls take no longer than
    the budget allows plus one round trip per window."""
    rng = random.Random(seed)
    low = rng.choice([0.001, 0.01, 0.05])
    server = StrictServer(5, 10.0, rng, (low, 4 * low))
    loop = asyncio.get_running_loop()
    made = [SQLiteBudgetStore(tmp_path / "b.sqlite3", clock=loop.time) for _ in range(4)]
    calls = 40
    todo = list(range(calls))

    async def worker(cdn: CDNClient) -> None:
        while todo:
            todo.pop()
            await cdn.endpoints.get(ID)

    with pytest.MonkeyPatch.context() as mp:
        install(mp, server)
        clients = [
            CDNClient(
                "dop_v1_" + "e" * 56,
                base_url="https://api.example.test",
                limits=RateLimits.documented(),
                budget_store=store,
                max_retries=0,
            )
            for store in made
        ]
        for cdn in clients:
            cdn._session._wall_clock = server.wall
        started = loop.time()
        await asyncio.gather(*(worker(cdn) for cdn in clients for _ in range(rng.randint(2, 6))))
        elapsed = loop.time() - started
        for cdn in clients:
            await cdn.close()
    for store in made:
        await store.aclose()
    assert server.answers.count(429) == 0
    assert len(server.answers) == calls
    assert max_in_window(server.stamps, 10.0) <= 5
    # 40 calls: 8 windows of 5, the last one starting 7 periods in; each slot cycle also
    # spans the round trip before its release.
    assert elapsed <= 7 * (10.0 + 8 * low) + 10 * low


# -- give back, sync, pause ---------------------------------------------------------------------


async def test_give_back_frees_at_once_for_every_store(
    stores: Callable[..., SQLiteBudgetStore],
) -> None:
    a, b = stores(), stores()
    c = claim("cdn", 1, 10.0)
    lease = await a.acquire([c])
    waiter = asyncio.create_task(b.acquire([c]))
    await asyncio.sleep(0.5)
    t = now()
    a.give_back(lease)
    a.give_back(lease)  # idempotent
    a.release(lease)  # a no-op after give_back
    got = await waiter
    assert now() - t <= 0.03  # the waiter polls (max_poll_interval), then is admitted
    b.release(got)


async def test_a_lease_ends_once_and_only_in_the_store_that_issued_it(
    stores: Callable[..., SQLiteBudgetStore],
) -> None:
    """A give_back after release does not uncount the answered request; another store (say,
    another client's, on the same file) refuses the lease."""
    a, b = stores(), stores()
    c = claim("cdn", 1, 10.0)
    lease = await a.acquire([c])
    assert not lease.released
    with pytest.raises(ValueError, match="not a lease of this store"):
        b.release(lease)
    assert not lease.released and a.snapshot()["cdn"].used == 1
    a.release(lease)
    a.give_back(lease)  # a no-op after release: the unit stays counted
    assert lease.released and "released" in repr(lease)
    assert b.snapshot()["cdn"].used == 1
    t = now()
    b.release(await b.acquire([c]))
    assert now() - t == pytest.approx(10.0, abs=0.05)  # one period after the release


async def test_sync_holds_what_others_spent_for_every_store_and_never_lowers_it(
    stores: Callable[..., SQLiteBudgetStore],
) -> None:
    """A header showing 3 units the file does not count holds them for every store until the
    reset (at most a period); a later, lower reading does not lower the live hold."""
    a, b = stores(), stores()
    a.sync(CDN, remaining=2, reset_after=4.0)
    a.sync(CDN, remaining=4, reset_after=1.0)
    assert b.snapshot()["cdn"].used == 3
    leases = [await b.acquire([CDN]) for _ in range(2)]
    t = now()
    third = await b.acquire([CDN])
    assert now() - t == pytest.approx(4.0, abs=0.001)
    for lease in (*leases, third):
        b.release(lease)


async def test_a_unit_expiring_during_the_round_trip_is_not_taken_for_another_clients(
    stores: Callable[..., SQLiteBudgetStore],
) -> None:
    """The server stamped the answered request while one of our units was still in its
    window; that unit left the file before the answer came. The headers' count is ours alone:
    nothing is held (a hold would keep a unit idle for a whole period)."""
    a, b = stores(), stores()
    c = claim("cdn", 2, 10.0)
    a.release(await a.acquire([c]))  # frees at 10.0
    await asyncio.sleep(9.99)
    lease = await a.acquire([c])
    await asyncio.sleep(0.02)  # stamped at ~9.995 with both units counted; answered at 10.01
    a.release(lease)
    a.sync(c, remaining=0, reset_after=30.0)
    t = now()
    b.release(await b.acquire([c]))
    assert now() == t
    # Without a release just before (another client's answer), the same reading is held.
    b.sync(c, remaining=0, reset_after=30.0)
    assert b.snapshot()["cdn"].used == 2


async def test_sync_hold_is_capped_at_a_period(stores: Callable[..., SQLiteBudgetStore]) -> None:
    a, b = stores(), stores()
    a.sync(claim("cdn", 1, 2.0), remaining=0, reset_after=3600.0)
    t = now()
    b.release(await b.acquire([claim("cdn", 1, 2.0)]))
    assert now() - t == pytest.approx(2.0, abs=0.001)


async def test_a_pause_is_shared_capped_at_a_period_and_never_shortened(
    stores: Callable[..., SQLiteBudgetStore],
) -> None:
    a, b = stores(), stores()
    a.pause(CDN, 3600.0)  # a wrong reset: capped at the cdn period, 10 s
    a.pause(CDN, 1.0)  # shorter: ignored
    t = now()
    b.release(await b.acquire([CDN]))
    assert now() - t == pytest.approx(10.0, abs=0.001)
    assert b.snapshot()["cdn"].paused_for == 0.0


async def test_max_wait_refuses_a_longer_pause_at_once(
    stores: Callable[..., SQLiteBudgetStore],
) -> None:
    """Paused by another store: the first acquire learns it from the file; the pausing store
    refuses at once from what it knows."""
    a, b = stores(), stores()
    a.pause(CDN, 5.0)
    t = now()
    with pytest.raises(RateLimitedError) as info:
        await b.acquire([CDN], max_wait=1.0)
    assert info.value.budget == "cdn"
    with pytest.raises(RateLimitedError):
        await a.acquire([CDN], max_wait=1.0)
    assert now() == t
    b.release(await b.acquire([CDN], max_wait=6.0))
    assert now() - t == pytest.approx(5.0, abs=0.001)


# -- queues --------------------------------------------------------------------------------------


async def test_priorities_order_this_processs_waiters(
    stores: Callable[..., SQLiteBudgetStore],
) -> None:
    store = stores()
    c = claim("cdn", 1, 1.0)
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
    await asyncio.gather(*tasks)
    # "n1" came first and was the head, asking the file; "h1" arrived with an earlier virtual
    # time, so "n1" stepped back behind it (issue 23: the head is passed like any other).
    assert order == ["h1", "n1", "n2", "l1"]


async def test_cancelled_waiter_takes_nothing(stores: Callable[..., SQLiteBudgetStore]) -> None:
    a, b = stores(), stores()
    c = claim("cdn", 1, 1.0)
    lease = await a.acquire([c])
    waiter = asyncio.create_task(b.acquire([c]))
    await asyncio.sleep(0.5)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    a.release(lease)
    assert a.snapshot()["cdn"].used == 1  # only the released lease
    await asyncio.sleep(1.0)
    assert a.snapshot() == {} or a.snapshot()["cdn"].used == 0


async def test_closed_store_fails_its_waiters_and_refuses(
    stores: Callable[..., SQLiteBudgetStore],
) -> None:
    a, b = stores(), stores()
    c = claim("cdn", 1, 1.0)
    lease = await a.acquire([c])
    waiters = [asyncio.create_task(b.acquire([c])) for _ in range(2)]
    await asyncio.sleep(0.1)
    await b.aclose()
    for w in waiters:
        with pytest.raises(CDNError, match="closed"):
            await w
    with pytest.raises(CDNError, match="closed"):
        await b.acquire([c])
    a.release(lease)


# -- a dead process, a reset clock ----------------------------------------------------------------


async def test_a_dead_processs_units_free_after_the_bound_and_not_before(
    stores: Callable[..., SQLiteBudgetStore],
) -> None:
    """A store that stops heartbeating (its process died) holds its units until its last
    deadline (last heartbeat + inflight_timeout) plus a period; a live one keeps them as long
    as its request lasts."""
    dead, alive, other = stores(inflight_timeout=3.0), stores(inflight_timeout=3.0), stores()
    c = claim("cdn", 2, 10.0)
    held = await dead.acquire([c])
    slow = await alive.acquire([c])
    await asyncio.sleep(2.5)  # a heartbeat at 1 s and 2 s: the deadline is now 2 + 3 = 5
    assert dead._heartbeat is not None
    dead._heartbeat.cancel()  # die
    died = now()
    admitted: list[float] = []

    async def wait() -> None:
        other.release(await other.acquire([c]))
        admitted.append(now())

    waiter = asyncio.create_task(wait())
    await asyncio.sleep(60.0)  # the slow request is still live: heartbeats keep it counted
    assert waiter.done() and len(admitted) == 1
    t = admitted[0]
    # Dead at 2.5 s, last heartbeat at 2 s: free at 2 + 3 + 10 = 15 s from the start.
    assert t - died >= 2.0 + 3.0 + 10.0 - 2.5 - 0.001
    assert t - died <= 2.0 + 3.0 + 10.0 - 2.5 + 0.05
    assert held.released is False
    # 60 s on, far past any deadline it was given, the live slow request still counts.
    assert other.snapshot()["cdn"].used == 1
    alive.release(slow)


async def test_times_written_under_another_clock_are_capped(tmp_path: Path) -> None:
    """A reboot restarts the monotonic clock: deadlines, releases, holds and pauses written
    before it lie far ahead. None is kept beyond a period (plus the in-flight timeout) from
    when a store first meets it."""
    loop = asyncio.get_running_loop()
    path = tmp_path / "b.sqlite3"
    before = SQLiteBudgetStore(path, clock=lambda: loop.time() + 1e6, inflight_timeout=3.0)
    c = claim("cdn", 2, 10.0)
    before.release(await before.acquire([c]))  # released: frees at 1e6 + 10
    await before.acquire([c])  # in flight: deadline 1e6 + 3
    before.pause(claim("other", 1, 5.0), 5.0)
    before._closed = True  # the reboot: no heartbeat, no close
    if before._heartbeat is not None:
        before._heartbeat.cancel()
    after = SQLiteBudgetStore(path, clock=loop.time, inflight_timeout=3.0)
    t = now()
    lease = await after.acquire([claim("cdn", 2, 10.0, 2)])
    # The released lease: capped to a period, gone at 10 s. The in-flight one: capped to a
    # 3 s deadline, counted as answered then, gone 10 s later.
    assert now() - t == pytest.approx(13.0, abs=0.05)
    after.release(await after.acquire([claim("other", 1, 5.0)]))
    after.release(lease)
    await after.aclose()
    before._file.close()


# -- the file --------------------------------------------------------------------------------------


async def test_a_locked_file_is_retried_then_refused_never_admitted(
    stores: Callable[..., SQLiteBudgetStore], tmp_path: Path
) -> None:
    """Another program holds the write lock: acquire retries without blocking the loop, is
    admitted if the lock goes within ``lock_timeout``, and raises ``BudgetFileError`` (having
    admitted nothing) if not."""
    a = stores(lock_timeout=2.0)
    blocker = sqlite3.connect(tmp_path / "budgets.sqlite3", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.1)
            ticks += 1

    tick = asyncio.create_task(ticker())
    pending = asyncio.create_task(a.acquire([CDN]))
    await asyncio.sleep(1.0)
    assert not pending.done() and ticks >= 9  # the loop runs meanwhile
    blocker.execute("COMMIT")
    a.release(await pending)

    blocker.execute("BEGIN IMMEDIATE")
    t = now()
    with pytest.raises(BudgetFileError, match="locked") as info:
        await a.acquire([CDN])
    assert now() - t == pytest.approx(2.0, abs=0.05)
    assert info.value.path == str(tmp_path / "budgets.sqlite3")
    blocker.execute("ROLLBACK")
    tick.cancel()
    # Nothing was taken by the refused call: the released one alone is counted.
    assert a.snapshot()["cdn"].used == 1
    blocker.close()


async def test_a_release_met_by_a_locked_file_is_stamped_when_it_was_made(
    stores: Callable[..., SQLiteBudgetStore], tmp_path: Path
) -> None:
    a, b = stores(), stores()
    c = claim("cdn", 1, 10.0)
    lease = await a.acquire([c])
    blocker = sqlite3.connect(tmp_path / "budgets.sqlite3", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    answered = now()
    a.release(lease)  # kept: the file is locked
    await asyncio.sleep(2.0)
    blocker.execute("COMMIT")
    blocker.close()
    b.release(await b.acquire([c]))
    assert now() - answered == pytest.approx(10.0, abs=0.05)


@pytest.mark.looptime(False)
def test_a_file_that_is_not_a_budget_file_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database, " * 512)
    with pytest.raises(BudgetFileError, match=r"garbage\.sqlite3") as info:
        SQLiteBudgetStore(garbage)
    assert "delete it" in str(info.value)
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema', '99')")
    db.close()
    with pytest.raises(BudgetFileError, match="another version"):
        SQLiteBudgetStore(other)


@pytest.mark.looptime(False)
async def test_a_new_file_another_process_is_setting_up_is_waited_for(tmp_path: Path) -> None:
    """Processes opening a new file at once (parallel CLI jobs): one that meets the other's
    lock while switching the file to WAL waits for it, as opening does, instead of failing."""
    path = tmp_path / "b.sqlite3"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE setup (x)")
    other.execute("BEGIN IMMEDIATE")
    done = threading.Timer(0.2, lambda: other.execute("COMMIT"))
    done.start()
    try:
        await SQLiteBudgetStore(path, lock_timeout=5).aclose()
    finally:
        done.join()
        other.close()


@pytest.mark.looptime(False)
def test_a_missing_or_read_only_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BudgetFileError, match="directory exists and is writable"):
        SQLiteBudgetStore(tmp_path / "missing" / "b.sqlite3")
    # A directory nobody may create files in (root ignores permission bits, not /proc's).
    ro = Path("/proc") if Path("/proc/self").exists() else tmp_path / "ro"
    if ro != Path("/proc"):
        ro.mkdir()
        ro.chmod(0o500)
    with pytest.raises(BudgetFileError, match=r"cannot (open|use)"):
        SQLiteBudgetStore(ro / "cdn-async-budgets.sqlite3")


async def test_a_file_corrupted_while_in_use_refuses_every_acquire(
    stores: Callable[..., SQLiteBudgetStore], tmp_path: Path
) -> None:
    a, b = stores(), stores()
    lease = await a.acquire([CDN])
    a.release(lease)
    path = tmp_path / "budgets.sqlite3"

    def corrupt() -> None:
        for suffix in ("", "-wal"):
            target = Path(str(path) + suffix)
            if target.exists():
                target.write_bytes(b"\x00garbage" * (target.stat().st_size // 8 + 1))

    await asyncio.to_thread(corrupt)
    with pytest.raises(BudgetFileError, match=r"budgets\.sqlite3"):
        await b.acquire([CDN])
