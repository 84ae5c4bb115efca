"""The in-memory budget store and its window ledger, each behaviour proved in virtual time.

Async tests run under ``looptime``: ``asyncio.sleep(3600)`` takes no real time, and the loop
clock (which the store reads) advances exactly to each timer. The ledger's tests are async too
although they await nothing: with looptime 0.9 and pytest-asyncio 1.x every *sync* test leaves
an unclosed event loop behind (looptime's hook calls ``policy.get_event_loop()``), whose
ResourceWarning would fail a later test under ``filterwarnings = error``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import pytest
from aiolimiter import AsyncLimiter

from cdn_async._budgets import BudgetLease, MemoryBudgetStore
from cdn_async._ledger import WindowLedger
from cdn_async._limits import Budget, Claim, RateLimits, priority_lead
from cdn_async.errors import CDNError, RateLimitedError, ValidationError

from ._support import max_in_window


def claim(key: str, limit: int, period: float, units: int = 1, budget: str | None = None) -> Claim:
    return Claim(key, limit, period, units, budget or key.split(":")[0])


def now() -> float:
    return asyncio.get_running_loop().time()


async def settle() -> None:
    """Let every ready task run until it blocks (no virtual time passes)."""
    for _ in range(10):
        await asyncio.sleep(0)


def lift_hold(store: MemoryBudgetStore, key: str) -> None:
    """End a server-sync hold at this very instant (as its timer would), and dispatch."""
    k = store._table.keys[key]
    k.held, k.hold_until = 0, -math.inf
    store._dispatch([k])


def timers_of(store: MemoryBudgetStore) -> int:
    """Live loop timers that belong to ``store`` (its per-key timers and its idle sweep)."""
    loop = asyncio.get_running_loop()
    scheduled = loop._scheduled  # type: ignore[attr-defined]
    return sum(
        1
        for h in scheduled
        if not h.cancelled() and getattr(h._callback, "__self__", None) is store
    )


async def acquire_at(
    store: MemoryBudgetStore, claims: Sequence[Claim], log: list[tuple[str, float]], name: str
) -> BudgetLease:
    lease = await store.acquire(claims)
    log.append((name, now()))
    return lease


async def send_at(
    store: MemoryBudgetStore, claims: Sequence[Claim], log: list[tuple[str, float]], name: str
) -> None:
    """Acquire, log the admission time, and release at once (an instant answer)."""
    store.release(await acquire_at(store, claims, log, name))


# -- WindowLedger alone ---------------------------------------------------------------------


async def test_ledger_counts_a_released_unit_until_period_after_its_answer() -> None:
    ledger = WindowLedger(limit=2, period=10.0)
    ledger.take(1)
    assert ledger.used(0.0) == 1
    assert ledger.release(1, now=3.0) == 13.0  # answered at 3: counts until 13, not 10
    assert ledger.used(12.999) == 1
    assert ledger.used(13.0) == 0


async def test_ledger_fit_delay_walks_expiries_in_time_order() -> None:
    ledger = WindowLedger(limit=3, period=10.0)
    for t in (0.0, 1.0, 2.0):
        ledger.take(1)
        ledger.release(1, now=t)
    assert ledger.fit_delay(1, now=5.0) == 5.0  # the first expiry (10) frees one
    assert ledger.fit_delay(2, now=5.0) == 6.0  # two need the second (11)
    assert ledger.fit_delay(3, now=5.0) == 7.0
    assert ledger.fit_delay(1, now=10.0) == 0.0


async def test_ledger_fit_delay_is_infinite_when_only_an_answer_can_make_room() -> None:
    ledger = WindowLedger(limit=2, period=10.0)
    ledger.take(2)
    assert ledger.fit_delay(1, now=0.0) == math.inf


async def test_ledger_fit_delay_counts_hold_end_and_pause() -> None:
    ledger = WindowLedger(limit=3, period=10.0)
    ledger.take(1)
    ledger.release(1, now=0.0)  # expires at 10
    ledger.sync(remaining=0, reset_after=4.0, now=0.0)  # 2 phantom units until 4
    assert ledger.held == 2
    assert ledger.fit_delay(2, now=0.0) == 4.0  # the hold ends first and frees 2
    assert ledger.fit_delay(3, now=0.0) == 10.0  # then the expiry
    ledger.pause(20.0, now=0.0)
    assert ledger.fit_delay(1, now=0.0) == 20.0


async def test_ledger_sync_holds_what_another_client_spent_and_never_lowers_a_live_hold() -> None:
    ledger = WindowLedger(limit=5, period=10.0)
    ledger.take(1)
    ledger.sync(remaining=2, reset_after=8.0, now=0.0)  # server counts 3, we count 1
    assert (ledger.held, ledger.used(0.0)) == (2, 3)
    # Answers arrive out of order: an older one (more remaining) must not clear the hold.
    ledger.sync(remaining=3, reset_after=8.0, now=1.0)
    assert ledger.held == 2
    ledger.sync(remaining=5, reset_after=8.0, now=1.0)  # server counts less than we do
    assert ledger.held == 2
    ledger.sync(remaining=0, reset_after=8.0, now=1.0)  # a newer answer sees more spent
    assert ledger.held == 4 and ledger.used(1.0) == 5
    assert ledger.used(8.999) == 5
    assert ledger.used(9.0) == 1  # the hold ended: only our own unit counts
    ledger.sync(remaining=4, reset_after=2.0, now=9.0)  # no live hold: set afresh
    assert ledger.used(9.0) == 1 and ledger.held == 0


async def test_ledger_hold_steps_down_as_each_reading_ages_out() -> None:
    # One high reading is kept for its own memory only: later lower readings do not keep it
    # alive (they used to, and a single burst seen once held room back for as long as the
    # other client kept sending anything).
    ledger = WindowLedger(limit=5, period=10.0)
    ledger.sync(remaining=1, reset_after=30.0, now=0.0)  # 4 theirs, until 30
    ledger.sync(remaining=3, reset_after=30.0, now=20.0)  # 2 theirs, until 50
    assert ledger.used(20.0) == 4
    # fit_delay walks the steps down in time order.
    assert (ledger.fit_delay(2, now=20.0), ledger.fit_delay(4, now=20.0)) == (10.0, 30.0)
    assert ledger.used(29.9) == 4
    ledger.sync(remaining=4, reset_after=30.0, now=29.9)  # 1 theirs, until 59.9
    assert [ledger.used(t) for t in (30.0, 49.9, 50.0, 59.8, 59.9)] == [2, 2, 1, 1, 0]


async def test_ledger_hold_out_of_order_answers_never_lower_what_a_newer_one_saw() -> None:
    ledger = WindowLedger(limit=5, period=10.0)
    ledger.sync(remaining=3, reset_after=30.0, now=10.0)  # 2 until 40
    ledger.sync(remaining=1, reset_after=25.0, now=10.0)  # 4 until 35: higher, shorter
    assert [ledger.used(t) for t in (10.0, 34.9, 35.0, 39.9, 40.0)] == [4, 4, 2, 2, 0]


async def test_ledger_probes_after_a_refusal_while_others_are_held_and_in_its_first_period() -> (
    None
):
    ledger = WindowLedger(limit=5, period=10.0)
    assert not ledger.probing(0.0)  # a key no answer described: bursts as it likes
    ledger.take(1)
    ledger.release(1, now=0.0)
    ledger.sync(remaining=4, reset_after=30.0, now=0.0)  # our own unit: nobody else
    assert ledger.probing(9.9)  # first period of answers: readings still being learned
    assert not ledger.probing(10.0)
    ledger.sync(remaining=0, reset_after=10.0, now=12.0, refused=True)
    assert ledger.probing(12.0) and ledger.probing(100.0)  # until an answer not refused
    ledger.sync(remaining=5, reset_after=30.0, now=100.0)  # an empty window, not refused
    assert not ledger.probing(100.0)
    ledger.take(1)
    ledger.sync(remaining=2, reset_after=30.0, now=101.0)  # 3 counted, 1 ours: 2 theirs
    assert ledger.probing(101.0)
    assert ledger.waits_for_probe(0, now=101.0)  # one of ours is out: the next waits
    ledger.release(1, now=102.0)
    assert not ledger.waits_for_probe(0, now=102.0)
    assert ledger.waits_for_probe(1, now=102.0)  # one already let through: the next waits
    assert ledger.probing(130.9)
    assert not ledger.probing(131.0)  # their units aged out


async def test_ledger_pause_extends_and_never_shortens() -> None:
    ledger = WindowLedger(limit=5, period=10.0)
    ledger.pause(30.0, now=0.0)
    ledger.pause(10.0, now=0.0)
    assert ledger.paused_for(0.0) == 30.0
    ledger.pause(50.0, now=0.0)
    assert ledger.paused_for(0.0) == 50.0


# -- exact window ---------------------------------------------------------------------------


@pytest.mark.looptime
async def test_uncontended_acquire_completes_without_suspending() -> None:
    store = MemoryBudgetStore()
    coro = store.acquire(RateLimits.documented().claims("e1", files=3))
    with pytest.raises(StopIteration) as done:
        coro.send(None)
    lease = done.value.value
    assert isinstance(lease, BudgetLease)
    assert {c.budget for c in lease.claims} == {"hourly", "minute", "cdn", "purge_files"}
    store.release(lease)
    await store.aclose()


@pytest.mark.looptime
async def test_units_count_until_period_after_the_answer_not_after_the_send() -> None:
    store = MemoryBudgetStore()
    c = [claim("cdn", 5, 10.0)]
    leases = [await store.acquire(c) for _ in range(5)]
    await asyncio.sleep(3.0)  # answers take 3 s
    for lease in leases:
        store.release(lease)
    log: list[tuple[str, float]] = []
    task = asyncio.create_task(acquire_at(store, c, log, "sixth"))
    await task
    assert log == [("sixth", 13.0)]  # 3 + 10, not 0 + 10
    await store.aclose()


@pytest.mark.looptime
async def test_in_flight_units_block_until_answered() -> None:
    store = MemoryBudgetStore()
    c = [claim("cdn", 1, 10.0)]
    lease = await store.acquire(c)
    task = asyncio.create_task(store.acquire(c))
    await asyncio.sleep(100.0)
    assert not task.done()  # unanswered: still counted, however long
    store.release(lease)
    await task
    assert now() == 110.0
    await store.aclose()


@pytest.mark.looptime
async def test_ten_thousand_waiters_drain_at_exactly_the_budget_rate() -> None:
    store = MemoryBudgetStore()
    c = [claim("minute", 100, 1.0)]
    admitted: list[float] = []

    async def one() -> None:
        lease = await store.acquire(c)
        admitted.append(now())
        store.release(lease)

    await asyncio.gather(*(one() for _ in range(10_000)))
    assert admitted == [float(i // 100) for i in range(10_000)]
    await store.aclose()


@pytest.mark.looptime
async def test_aiolimiter_admits_nine_in_a_window_where_the_budget_admits_five() -> None:
    period = 10.0
    store = MemoryBudgetStore()
    c = [claim("cdn", 5, period)]
    ours: list[tuple[float, int]] = []
    theirs: list[tuple[float, int]] = []
    limiter = AsyncLimiter(5, period)

    async def with_store() -> None:
        lease = await store.acquire(c)
        ours.append((now(), 1))
        store.release(lease)  # instant answers: the most a limiter could ever admit

    async def with_aiolimiter() -> None:
        async with limiter:
            theirs.append((now(), 1))

    await asyncio.gather(*(with_store() for _ in range(30)))
    await asyncio.sleep(100.0)
    await asyncio.gather(*(with_aiolimiter() for _ in range(30)))
    assert max_in_window(ours, period) == 5
    assert max_in_window(theirs, period) >= 9  # a leaky bucket: burst + refill in one window
    await store.aclose()


# -- stacked and atomic ----------------------------------------------------------------------


@pytest.mark.looptime
async def test_request_blocked_on_one_budget_has_taken_nothing_from_the_others() -> None:
    store = MemoryBudgetStore()
    limits = RateLimits.documented()
    held = [await store.acquire(limits.claims("e1")) for _ in range(5)]  # cdn now full
    task = asyncio.create_task(store.acquire(limits.claims("e1", files=10)))
    await settle()
    state = store.snapshot()
    assert state["cdn"].waiters == 1
    assert state["hourly"].used == 5  # the five held, not six
    assert state["minute"].used == 5
    assert "purge_files" not in state or state["purge_files"].used == 0
    for lease in held:
        store.release(lease)
    lease = await task
    state = store.snapshot()
    assert (state["hourly"].used, state["purge_files"].used) == (6, 10)  # all at once
    store.release(lease)
    await store.aclose()


@pytest.mark.looptime
async def test_repeated_keys_in_one_request_add_up() -> None:
    store = MemoryBudgetStore()
    c = claim("k", 3, 10.0, units=2)
    task = asyncio.create_task(store.acquire([c, c]))  # 4 units on a 3-unit key
    with pytest.raises(ValidationError):
        await task
    lease = await store.acquire([claim("k", 3, 10.0), claim("k", 3, 10.0)])
    assert store.snapshot()["k"].used == 2
    store.release(lease)
    await store.aclose()


@pytest.mark.looptime
async def test_claim_larger_than_its_limit_is_rejected_instead_of_waiting_forever() -> None:
    store = MemoryBudgetStore()
    with pytest.raises(ValidationError):
        await store.acquire([claim("purge_files", 50, 20.0, units=51)])
    with pytest.raises(ValidationError):
        await store.acquire([claim("purge_files", 50, 20.0, units=0)])
    assert store.snapshot() == {}
    await store.aclose()


# -- FIFO within a key, no head-of-line blocking across keys ---------------------------------


@pytest.mark.looptime
async def test_fifty_file_purge_queued_first_is_served_before_later_small_purges() -> None:
    store = MemoryBudgetStore()
    files = [claim("purge_files", 50, 20.0, units=30)]
    first = await store.acquire(files)
    log: list[tuple[str, float]] = []
    big = asyncio.create_task(acquire_at(store, [claim("purge_files", 50, 20.0, 50)], log, "big"))
    await settle()
    smalls = [
        asyncio.create_task(acquire_at(store, [claim("purge_files", 50, 20.0, 1)], log, f"s{i}"))
        for i in range(5)
    ]
    await settle()
    assert log == []  # 20 units are free, but the big purge is first in line
    store.release(first)
    big_lease = await big
    store.release(big_lease)
    leases = await asyncio.gather(*smalls)
    assert [name for name, _ in log] == ["big", "s0", "s1", "s2", "s3", "s4"]
    assert log[0][1] == 20.0 and log[1][1] == 40.0
    for lease in leases:
        store.release(lease)
    await store.aclose()


@pytest.mark.looptime
async def test_waiting_on_endpoint_a_never_delays_endpoint_b() -> None:
    limits = RateLimits(
        (
            Budget("hourly", 5000, 3600.0),
            Budget("minute", 250, 60.0),
            Budget("cdn", 5, 10.0, scope="endpoint"),
        )
    )
    store = MemoryBudgetStore()
    held = [await store.acquire(limits.claims("A")) for _ in range(5)]
    log: list[tuple[str, float]] = []
    waiting_a = [
        asyncio.create_task(send_at(store, limits.claims("A"), log, f"a{i}")) for i in range(50)
    ]
    await settle()
    b = await acquire_at(store, limits.claims("B"), log, "b")
    assert log == [("b", 0.0)]
    assert store.snapshot()["cdn:A"].waiters == 50
    for lease in [*held, b]:
        store.release(lease)
    await asyncio.gather(*waiting_a)
    assert [name for name, _ in log[1:]] == [f"a{i}" for i in range(50)]  # FIFO within A
    await store.aclose()


@pytest.mark.looptime
async def test_fifo_across_a_shared_key_even_when_the_head_waits_elsewhere() -> None:
    # The head waits on X but fits on Y: it reserves its Y units, so a later request that
    # needs all of Y cannot take them first and starve it.
    store = MemoryBudgetStore()
    x, y = claim("x", 1, 10.0), claim("y", 2, 10.0)
    hold_x = await store.acquire([x])
    log: list[tuple[str, float]] = []
    head = asyncio.create_task(send_at(store, [x, claim("y", 2, 10.0, 2)], log, "head"))
    await settle()
    later = asyncio.create_task(send_at(store, [claim("y", 2, 10.0, 2)], log, "later"))
    small = asyncio.create_task(send_at(store, [y], log, "small"))
    await settle()
    assert log == []
    store.release(hold_x)
    await asyncio.gather(head, later, small)
    assert [name for name, _ in log] == ["head", "later", "small"]
    await store.aclose()


# -- cancellation ---------------------------------------------------------------------------


@pytest.mark.looptime
async def test_cancelled_waiter_takes_nothing_and_the_rest_keep_their_order() -> None:
    store = MemoryBudgetStore()
    c = [claim("cdn", 1, 10.0)]
    holder = await store.acquire(c)
    log: list[tuple[str, float]] = []
    tasks = [asyncio.create_task(acquire_at(store, c, log, f"w{i}")) for i in range(4)]
    await settle()
    tasks[1].cancel()
    await settle()
    assert tasks[1].cancelled()
    assert store.snapshot()["cdn"].waiters == 3
    assert store.snapshot()["cdn"].used == 1  # only the holder
    store.release(holder)
    for t in (tasks[0], tasks[2], tasks[3]):
        store.release(await t)
    assert log == [("w0", 10.0), ("w2", 20.0), ("w3", 30.0)]
    await store.aclose()


@pytest.mark.looptime
async def test_cancelled_head_gives_up_its_reservations_at_once() -> None:
    store = MemoryBudgetStore()
    x = claim("x", 1, 10.0)
    hold_x = await store.acquire([x])
    head = asyncio.create_task(store.acquire([x, claim("y", 2, 10.0, 1)]))
    await settle()
    log: list[tuple[str, float]] = []
    later = asyncio.create_task(acquire_at(store, [claim("y", 2, 10.0, 2)], log, "later"))
    await asyncio.sleep(1.0)
    assert log == []  # the head's reservation on y keeps it out
    head.cancel()
    lease = await later
    assert log == [("later", 1.0)]
    store.release(lease)
    store.release(hold_x)
    await store.aclose()


@pytest.mark.looptime
async def test_admission_in_the_same_instant_as_cancellation_gives_the_units_back() -> None:
    store = MemoryBudgetStore()
    c = claim("cdn", 1, 10.0)
    store.sync(c, remaining=0, reset_after=100.0)  # another client holds the only unit
    task = asyncio.create_task(store.acquire([c]))
    await settle()
    lift_hold(store, "cdn")  # the hold ends: admitted right here
    task.cancel()  # ... and cancelled before the task could run
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "cdn" not in store.snapshot()  # nothing in flight: the units came back
    coro = store.acquire([c])
    with pytest.raises(StopIteration):
        coro.send(None)  # the unit is free again at once
    await store.aclose()


@pytest.mark.looptime
async def test_waiter_cancelled_before_its_task_runs_is_skipped_by_dispatch() -> None:
    store = MemoryBudgetStore()
    c = claim("cdn", 1, 10.0)
    store.sync(c, remaining=0, reset_after=100.0)
    first = asyncio.create_task(store.acquire([c]))
    second = asyncio.create_task(store.acquire([c]))
    await settle()
    first.cancel()  # its future is cancelled; its handler has not run yet
    lift_hold(store, "cdn")  # dispatch must pass over it
    store.release(await second)
    assert first.cancelled()
    assert now() == 0.0
    await store.aclose()


@pytest.mark.looptime
async def test_release_is_idempotent_and_rejects_foreign_leases() -> None:
    store, other = MemoryBudgetStore(), MemoryBudgetStore()
    c = [claim("cdn", 2, 10.0)]
    lease = await store.acquire(c)
    store.release(lease)
    store.release(lease)
    assert store.snapshot()["cdn"].used == 1
    assert lease.released
    with pytest.raises(ValueError, match="not a lease of this store"):
        other.release(lease)
    await store.aclose()
    await other.aclose()


# -- server sync, pause, max_wait ------------------------------------------------------------


@pytest.mark.looptime
async def test_sync_holds_units_another_client_spent_until_the_reset() -> None:
    store = MemoryBudgetStore()
    c = claim("cdn", 5, 10.0)
    mine = await store.acquire([c])
    store.release(mine)
    store.sync(c, remaining=1, reset_after=6.0)  # server counts 4; we count 1: 3 phantom
    assert store.snapshot()["cdn"].used == 4
    second = await store.acquire([c])
    log: list[tuple[str, float]] = []
    third = asyncio.create_task(acquire_at(store, [c], log, "third"))
    await asyncio.sleep(1.0)
    store.release(second)  # while others' units are held, one request at a time
    await asyncio.sleep(4.9)
    assert log == []
    store.release(await third)
    assert log == [("third", 6.0)]
    await store.aclose()


@pytest.mark.looptime
async def test_a_described_key_forgotten_while_idle_probes_until_it_hears_again() -> None:
    store = MemoryBudgetStore()
    c = claim("cdn", 5, 10.0)
    store.release(await store.acquire([c]))
    store.sync(c, remaining=4, reset_after=30.0)  # the server describes this key: only ours
    await asyncio.sleep(60.0)  # quiet: the key is dropped, and what it knew is stale
    assert "cdn" not in store._table.keys
    first = await store.acquire([c])
    second = asyncio.create_task(store.acquire([c]))
    await settle()
    assert not second.done()  # one at a time: what others spend is unknown again
    store.release(first)
    store.sync(c, remaining=4, reset_after=30.0)
    store.release(await second)
    for _ in range(6):  # kept busy, one request every 2 s
        await asyncio.sleep(2.0)
        store.release(await store.acquire([c]))
    # A period after it heard again, and nobody else seen: bursts as before.
    leases = [await store.acquire([c]) for _ in range(3)]
    for lease in leases:
        store.release(lease)
    await store.aclose()


@pytest.mark.looptime
async def test_sync_raises_a_live_hold_but_never_lowers_it() -> None:
    store = MemoryBudgetStore()
    c = claim("cdn", 5, 10.0)
    store.sync(c, remaining=4, reset_after=60.0)
    assert store.snapshot()["cdn"].used == 1
    store.sync(c, remaining=0, reset_after=60.0)  # a newer answer: more spent
    assert store.snapshot()["cdn"].used == 5
    store.sync(c, remaining=5, reset_after=60.0)  # maybe an older answer: ignored
    assert store.snapshot()["cdn"].used == 5
    await asyncio.sleep(60.0)
    assert "cdn" not in store.snapshot()
    await store.aclose()


@pytest.mark.looptime
async def test_sync_adds_no_hold_when_we_count_more_than_the_server() -> None:
    store = MemoryBudgetStore()
    c = claim("cdn", 5, 10.0)
    leases = [await store.acquire([c]) for _ in range(3)]
    store.sync(c, remaining=4, reset_after=10.0)  # server saw 1 of our 3 so far
    assert store.snapshot()["cdn"].used == 3
    for lease in leases:
        store.release(lease)
    await store.aclose()


@pytest.mark.looptime
async def test_pause_admits_nothing_until_it_ends_and_is_never_shortened() -> None:
    store = MemoryBudgetStore()
    c = claim("cdn", 5, 60.0)
    store.pause(c, 30.0)
    store.pause(c, 10.0)
    assert store.snapshot()["cdn"].paused_for == 30.0
    log: list[tuple[str, float]] = []
    tasks = [asyncio.create_task(acquire_at(store, [c], log, f"w{i}")) for i in range(2)]
    for lease in await asyncio.gather(*tasks):
        store.release(lease)
    assert log == [("w0", 30.0), ("w1", 30.0)]
    await store.aclose()


@pytest.mark.looptime
async def test_pause_takes_back_reservations_and_restores_them_in_order() -> None:
    store = MemoryBudgetStore()
    x, y = claim("x", 1, 10.0), claim("y", 5, 30.0)
    hold_x = await store.acquire([x])
    log: list[tuple[str, float]] = []
    head = asyncio.create_task(acquire_at(store, [x, y], log, "head"))  # reserves on y
    await settle()
    store.pause(y, 20.0)
    later = asyncio.create_task(acquire_at(store, [y], log, "later"))
    await settle()
    store.release(hold_x)  # x frees at 10, but y is paused until 20
    for lease in await asyncio.gather(head, later):
        store.release(lease)
    assert log == [("head", 20.0), ("later", 20.0)]
    await store.aclose()


@pytest.mark.looptime
async def test_max_wait_shorter_than_a_pause_raises_at_once_with_reset_at() -> None:
    store = MemoryBudgetStore(wall_clock=lambda: 1_000_000.0)
    c = claim("cdn", 5, 60.0)
    store.pause(c, 30.0)
    await asyncio.sleep(5.0)
    with pytest.raises(RateLimitedError) as err:
        await store.acquire([claim("hourly", 5000, 3600.0), c], max_wait=10.0)
    assert err.value.reset_at == 1_000_025.0
    assert err.value.budget == "cdn"
    assert now() == 5.0
    assert "hourly" not in store.snapshot()  # nothing taken
    lease = await store.acquire([c], max_wait=25.0)  # long enough: waits
    assert now() == 30.0
    store.release(lease)
    await store.aclose()


@pytest.mark.looptime
async def test_queued_waiter_fails_when_a_longer_pause_than_its_max_wait_arrives() -> None:
    store = MemoryBudgetStore(wall_clock=lambda: 500.0)
    c = claim("cdn", 1, 60.0)
    holder = await store.acquire([c])
    patient = asyncio.create_task(store.acquire([c]))
    hasty = asyncio.create_task(store.acquire([c], max_wait=10.0))
    await settle()
    store.pause(c, 60.0)
    with pytest.raises(RateLimitedError) as err:
        await hasty
    assert err.value.reset_at == 560.0
    store.release(holder)
    store.release(await patient)
    assert now() == 60.0
    await store.aclose()


@pytest.mark.looptime
async def test_ordinary_budget_waits_never_raise_even_with_a_zero_max_wait() -> None:
    store = MemoryBudgetStore()
    c = [claim("cdn", 1, 10.0)]
    store.release(await store.acquire(c))
    lease = await store.acquire(c, max_wait=0.0)
    assert now() == 10.0
    store.release(lease)
    await store.aclose()


# -- scale: timers, idle keys, close ----------------------------------------------------------


@pytest.mark.looptime
async def test_one_timer_per_key_however_many_wait_and_none_when_nobody_waits() -> None:
    store = MemoryBudgetStore()
    c = [claim("cdn", 5, 10.0)]
    for _ in range(5):
        store.release(await store.acquire(c))
    assert sum(k.timer is not None for k in store._table.keys.values()) == 0
    tasks = [asyncio.create_task(store.acquire(c)) for _ in range(1000)]
    await settle()
    key_timers = sum(k.timer is not None for k in store._table.keys.values())
    assert key_timers == 1
    assert timers_of(store) <= 2  # the key's timer and the idle sweep
    for t in tasks:
        t.cancel()
    await settle()
    assert store._table.keys["cdn"].timer is None
    await store.aclose()


@pytest.mark.looptime
async def test_idle_sweeps_never_leave_more_than_one_sweep_timer() -> None:
    """A long-lived client's sweeps must not multiply timers (each would fire every sweep)."""
    store = MemoryBudgetStore()
    c = [claim("cdn", 5, 1.0), claim("minute", 250, 6.0)]
    for _ in range(300):
        store.release(await store.acquire(c))
        await asyncio.sleep(0.3)
        assert timers_of(store) <= 1
    await store.aclose()


@pytest.mark.looptime
async def test_idle_endpoint_keys_are_dropped_after_their_window() -> None:
    limits = RateLimits((Budget("cdn", 5, 10.0, scope="endpoint"), Budget("minute", 10**6, 60.0)))
    store = MemoryBudgetStore()
    for i in range(100_000):
        store.release(await store.acquire(limits.claims(f"ep{i}")))
    assert len(store._table.keys) == 100_001
    await asyncio.sleep(10.0)
    assert len(store._table.keys) == 1  # only "minute" is still counting
    assert list(store.snapshot()) == ["minute"]
    await asyncio.sleep(50.0)
    assert store._table.keys == {} and store._table.gc_heap == []
    assert timers_of(store) == 0
    await store.aclose()


@pytest.mark.looptime
async def test_aclose_fails_waiters_cancels_timers_and_refuses_new_requests() -> None:
    store = MemoryBudgetStore()
    c = [claim("cdn", 1, 10.0)]
    store.release(await store.acquire(c))
    waiters = [asyncio.create_task(store.acquire(c)) for _ in range(3)]
    await settle()
    await store.aclose()
    for w in waiters:
        with pytest.raises(CDNError, match="budget store closed"):
            await w
    assert timers_of(store) == 0
    with pytest.raises(CDNError, match="budget store closed"):
        await store.acquire(c)


@pytest.mark.looptime
async def test_snapshot_reports_used_remaining_waiters_and_next_free() -> None:
    store = MemoryBudgetStore()
    c = [claim("cdn", 2, 10.0)]
    a = await store.acquire(c)
    await asyncio.sleep(1.0)
    b = await store.acquire(c)
    store.release(a)
    waiter = asyncio.create_task(store.acquire(c))
    await settle()
    state = store.snapshot()["cdn"]
    assert (state.limit, state.used, state.remaining, state.waiters) == (2, 2, 0, 1)
    assert state.next_free_in == 10.0  # a's expiry: released at 1, frees at 11
    store.release(b)
    store.release(await waiter)
    await store.aclose()


@pytest.fixture
def store_built_outside_the_loop() -> MemoryBudgetStore:
    # Sync fixtures run before the test's loop starts: the client builds its store like this.
    return MemoryBudgetStore()


@pytest.mark.looptime
async def test_store_can_be_built_outside_a_running_loop(
    store_built_outside_the_loop: MemoryBudgetStore,
) -> None:
    store = store_built_outside_the_loop
    await asyncio.sleep(5.0)
    store.release(await store.acquire([claim("cdn", 1, 10.0)]))
    task = asyncio.create_task(store.acquire([claim("cdn", 1, 10.0)]))
    store.release(await task)
    assert now() == 15.0  # it reads the loop's (virtual) clock
    await store.aclose()


@pytest.mark.looptime
async def test_pause_in_the_same_tick_as_a_cancellation_does_not_fail() -> None:
    store = MemoryBudgetStore()
    c = claim("cdn", 1, 10.0)
    store.sync(c, remaining=0, reset_after=100.0)
    waiter = asyncio.create_task(store.acquire([c], max_wait=1.0))
    await settle()
    waiter.cancel()  # its future is cancelled; its handler has not run yet
    store.pause(c, 50.0)  # must pass over it, not set an exception on a done future
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await store.aclose()


@pytest.mark.looptime
async def test_a_pause_is_capped_at_the_period_of_its_budget() -> None:
    # A period from now every unit of any window has expired: no 429 justifies a longer
    # pause, whatever a wrong clock or header says.
    store = MemoryBudgetStore()
    c = claim("cdn", 5, 10.0)
    store.pause(c, 3600.0)
    assert store.snapshot()["cdn"].paused_for == 10.0
    log: list[tuple[str, float]] = []
    store.release(await acquire_at(store, [c], log, "w"))
    assert log == [("w", 10.0)]
    await store.aclose()


@pytest.mark.looptime
async def test_give_back_uncounts_at_once_and_lets_the_next_waiter_in() -> None:
    store = MemoryBudgetStore()
    c = claim("cdn", 1, 10.0)
    lease = await store.acquire([c])
    log: list[tuple[str, float]] = []
    waiter = asyncio.create_task(acquire_at(store, [c], log, "next"))
    await settle()
    store.give_back(lease)  # never sent: it cannot be in any window
    store.give_back(lease)  # idempotent
    store.release(lease)  # and a release after it does nothing
    store.release(await waiter)
    assert log == [("next", 0.0)]
    with pytest.raises(ValueError):
        store.give_back(object())  # type: ignore[arg-type]
    await store.aclose()


@pytest.mark.looptime
async def test_higher_priority_waiters_go_first_and_fifo_within_a_level() -> None:
    store = MemoryBudgetStore()
    c = claim("cdn", 1, 10.0)
    store.release(await store.acquire([c]))  # the window is full until 10
    log: list[tuple[str, float]] = []

    async def take(name: str, priority: str) -> None:
        lease = await store.acquire([c], priority=priority)  # type: ignore[arg-type]
        log.append((name, now()))
        store.release(lease)

    tasks = []
    for name, prio in [("n1", "normal"), ("l1", "low"), ("n2", "normal"), ("h1", "high")]:
        tasks.append(asyncio.create_task(take(name, prio)))
        await settle()
    await asyncio.gather(*tasks)
    assert [name for name, _ in log] == ["h1", "n1", "n2", "l1"]
    assert [t for _, t in log] == [10.0, 20.0, 30.0, 40.0]
    await store.aclose()


@pytest.mark.looptime
async def test_a_low_waiter_is_passed_only_by_calls_arriving_within_the_lead() -> None:
    # No level starves: a call queues at its arrival time moved the lead ahead (high) or
    # behind (low), so a low call waiting longer than twice the lead is passed by nobody.
    store = MemoryBudgetStore()
    c = claim("cdn", 1, 100.0)
    lead = priority_lead([c], "high")
    assert lead == 300.0  # 3 periods
    hold = await store.acquire([c])  # full until released below
    log: list[str] = []

    async def take(name: str, priority: str) -> None:
        lease = await store.acquire([c], priority=priority)  # type: ignore[arg-type]
        log.append(name)
        store.release(lease)

    low = asyncio.create_task(take("low", "low"))
    await asyncio.sleep(2 * lead - 1)
    early_high = asyncio.create_task(take("early-high", "high"))  # within 2 x lead: passes
    await asyncio.sleep(2)
    late_high = asyncio.create_task(take("late-high", "high"))  # after it: waits its turn
    await settle()
    store.release(hold)
    await asyncio.gather(low, early_high, late_high)
    assert log == ["early-high", "low", "late-high"]
    await store.aclose()


@pytest.mark.parametrize("scale", [1.0, 0.01])
@pytest.mark.looptime
async def test_the_priority_lead_is_three_cdn_periods_at_any_time_scale(scale: float) -> None:
    # The lead is in budget terms: 3 cdn periods (30 s at the documented budgets), scaled
    # with the budgets, so a test at a time scale sees what production does. A high call
    # arriving just within 3 periods of a waiting normal one goes first; just after, not.
    limits = RateLimits.documented().scaled(scale)
    claims = limits.claims()
    period = limits.get("cdn").period  # type: ignore[union-attr]
    assert priority_lead(claims, "high") == pytest.approx(3 * period)
    assert priority_lead(claims, "low") == pytest.approx(-3 * period)
    for gap, first in [(2.9, "high"), (3.1, "normal")]:
        store = MemoryBudgetStore()
        blocker = await store.acquire(claims)
        order: list[str] = []

        async def take(
            store: MemoryBudgetStore, order: list[str], name: str, priority: str
        ) -> None:
            lease = await store.acquire(claims, priority=priority)  # type: ignore[arg-type]
            order.append(name)
            store.release(lease)

        # The cdn budget admits 4 more: fill it so both calls below wait for the blocker.
        others = [await store.acquire(claims) for _ in range(4)]
        normal = asyncio.create_task(take(store, order, "normal", "normal"))
        await asyncio.sleep(gap * period)
        high = asyncio.create_task(take(store, order, "high", "high"))
        await settle()
        for lease in [blocker, *others]:
            store.release(lease)
        await asyncio.gather(normal, high)
        assert order[0] == first, (gap, order)
        await store.aclose()


@pytest.mark.looptime
async def test_a_high_call_overtakes_reservations_of_later_queued_calls() -> None:
    # "big" reserved its unit on y while it waits for x; a high call for y alone steps in
    # ahead of it (big queued later in virtual time), and big still goes next.
    store = MemoryBudgetStore()
    x, y = claim("x", 1, 10.0), claim("y", 1, 10.0)
    hold_x = await store.acquire([x])
    log: list[tuple[str, float]] = []
    big = asyncio.create_task(acquire_at(store, [x, y], log, "big"))
    await settle()

    async def urgent() -> None:
        lease = await store.acquire([y], priority="high")
        log.append(("urgent", now()))
        store.release(lease)

    await urgent()
    store.release(hold_x)
    store.release(await big)
    assert log == [("urgent", 0.0), ("big", 10.0)]
    await store.aclose()
