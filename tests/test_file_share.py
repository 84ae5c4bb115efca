"""The file share (``_file_share.FileShare``): one client's own ceiling on purged files per
window beside clients it cannot see, and what a 429 blames (``_headers.pause``). Virtual time.
"""

from __future__ import annotations

import asyncio

import pytest

from cdn_async import RateLimits
from cdn_async._budgets import MemoryBudgetStore
from cdn_async._file_share import MAX_QUIET, MAX_TRIAL_GAP, TRIAL_GAP, FileShare
from cdn_async._headers import RequestClaims, pause
from cdn_async._models import RateLimitInfo

pytestmark = pytest.mark.looptime

P = 20.0


def share() -> FileShare:
    return FileShare(50, P, asyncio.get_running_loop().time, polite=True)


async def send(fs: FileShare, files: int, outcome: str = "accepted") -> bool:
    trial = await fs.reserve(files)
    fs.settle(files, trial, outcome)  # type: ignore[arg-type]
    return trial


async def test_a_purge_that_fits_in_a_window_goes_whole_and_at_once() -> None:
    fs = share()
    assert fs.batch_size(50) == 50
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await send(fs, 50) is False
    assert loop.time() == start and fs.share == 50


async def test_a_bulk_purge_starts_at_a_quarter_and_doubles_from_a_quarter_period() -> None:
    fs = share()
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert fs.batch_size(500) == 12
    await send(fs, 12)
    await fs.room()  # nothing more fits under the share until the first trial is due
    assert loop.time() - start == pytest.approx(P / 4)
    assert fs.batch_size(500) == 12  # the trial: 24 in the window
    assert await send(fs, 12) is True and fs.share == 24
    assert fs.batch_size(500) == 24  # accepted: the next trial at once
    assert await send(fs, 24) is True and fs.share == 48
    assert fs.batch_size(500) == 2
    assert await send(fs, 2) is True and fs.share == 50
    assert loop.time() - start == pytest.approx(P / 4)  # the first window full by then


async def test_a_refused_trial_keeps_the_share_and_spaces_the_next_trials() -> None:
    fs = share()
    loop = asyncio.get_running_loop()
    fs.batch_size(500)
    await send(fs, 12)
    await fs.room()  # the first trial is due
    gaps = []
    for _ in range(4):
        assert fs.batch_size(500) == 12
        refused_at = loop.time()
        assert await send(fs, 12, "refused") is True
        assert fs.share == 12  # a refused trial loses no room
        # The share's own request goes every period meanwhile; the next trial waits.
        while fs._ceiling(loop.time()) == 12:
            await asyncio.sleep(P)
            await send(fs, 12)
        gaps.append(round((loop.time() - refused_at) / P))
    assert gaps == [TRIAL_GAP, 2 * TRIAL_GAP, MAX_TRIAL_GAP, MAX_TRIAL_GAP]


async def test_a_refusal_within_the_share_halves_it_and_goes_quiet() -> None:
    fs = share()
    loop = asyncio.get_running_loop()
    await send(fs, 50)  # not engaged yet: the whole budget
    await asyncio.sleep(P)
    quiet = []
    for expected_share in (25, 12, 6):
        refused_at = loop.time()
        await send(fs, fs.share, "refused")
        assert fs.share == expected_share
        await fs.reserve(1)  # waits out the quiet time
        quiet.append(round((loop.time() - refused_at) / P))
        fs.settle(1, False, "unsent")
    assert quiet == [1, 2, MAX_QUIET]


async def test_after_being_squeezed_an_accepted_request_tries_to_grow_at_once() -> None:
    fs = share()
    loop = asyncio.get_running_loop()
    await send(fs, 50, "refused")  # share 25, quiet a period
    await fs.reserve(25)
    fs.settle(25, False, "accepted")
    assert fs._ceiling(loop.time()) == 50  # whoever squeezed it may be gone


async def test_what_is_in_flight_holds_its_room_until_its_answer() -> None:
    fs = share()
    loop = asyncio.get_running_loop()
    await fs.reserve(50)
    waiter = asyncio.ensure_future(fs.reserve(10))
    await asyncio.sleep(P * 3)
    assert not waiter.done()  # only an answer frees what is in flight
    fs.settle(50, False, "accepted")
    await asyncio.sleep(0)
    assert not waiter.done()  # ... and then a period later, as the budgets count it
    start = loop.time()
    await waiter
    assert loop.time() - start == pytest.approx(P)


def purge_claims() -> RequestClaims:
    limits = RateLimits.documented()
    return RequestClaims(limits.claims("ep", files=50), limits)


def get_claims() -> RequestClaims:
    limits = RateLimits.documented()
    return RequestClaims(limits.claims("ep"), limits)


def paused(store: MemoryBudgetStore) -> dict[str, float]:
    return {k: round(s.paused_for, 3) for k, s in store.snapshot().items() if s.paused_for}


async def test_a_purge_refused_with_room_on_the_described_budget_pauses_its_files_a_period() -> (
    None
):
    store = MemoryBudgetStore()
    info = RateLimitInfo(limit=5, remaining=3, reset=None)
    for c in purge_claims().claims:  # make the keys, as an acquire would
        store.release(await store.acquire([c]))
    assert pause(store, info, purge_claims(), wait=4.0) == P
    assert paused(store) == {"purge_files": P}


async def test_a_purge_refused_with_none_left_pauses_the_described_budget_and_its_files() -> None:
    store = MemoryBudgetStore()
    info = RateLimitInfo(limit=5, remaining=0, reset=None)
    for c in purge_claims().claims:
        store.release(await store.acquire([c]))
    assert pause(store, info, purge_claims(), wait=4.0) == P
    assert paused(store) == {"cdn": 4.0, "purge_files": P}


async def test_a_get_refused_with_room_pauses_the_shortest_undescribed_budget() -> None:
    store = MemoryBudgetStore()
    for c in get_claims().claims:
        store.release(await store.acquire([c]))
    with_retry = RateLimitInfo(limit=5, remaining=3, reset=None, retry_after=7.0)
    assert pause(store, with_retry, get_claims(), wait=1.0) == 7.0
    assert paused(store) == {"minute": 7.0}  # never the hourly budget for an hour
    store2 = MemoryBudgetStore()
    for c in get_claims().claims:
        store2.release(await store2.acquire([c]))
    without = RateLimitInfo(limit=5, remaining=3, reset=None)
    assert pause(store2, without, get_claims(), wait=1.0) == 60.0
    assert paused(store2) == {"minute": 60.0}
