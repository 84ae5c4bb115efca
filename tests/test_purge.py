"""The purge engine: plan, batch, coalesce, report. Virtual time; mocked HTTP.

Integration against the fake server (faults, 409s, budgets) is in test_integration.py.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from aioresponses import CallbackResult, aioresponses

from cdn_async import CDNClient, RateLimits
from cdn_async._limits import Priority
from cdn_async._models import PurgeReport
from cdn_async._purge import PurgeProgress
from cdn_async._purge_plan import sent_for
from cdn_async.errors import (
    BudgetWaitTimeout,
    InternalServerError,
    NotFoundError,
    PurgeError,
    ValidationError,
)
from cdn_async.testing import FakeCDNServer

from ._support import BASE, TOKEN

pytestmark = pytest.mark.looptime

ID = "892071a0-bb95-49bc-8021-3afd67a210bf"
PURGE = re.compile(rf"^{re.escape(BASE)}/v2/cdn/endpoints/[0-9a-f-]+/cache$")


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (["a", "b", "a"], {"a": "a", "b": "b"}),
        (["a", "*", "b"], {"a": "*", "*": "*", "b": "*"}),
        (
            ["css/a.css", "css/*", "js/x.js"],
            {"css/a.css": "css/*", "css/*": "css/*", "js/x.js": "js/x.js"},
        ),
        (["a/b/c", "a/b/*", "a/*"], {"a/b/c": "a/*", "a/b/*": "a/*", "a/*": "a/*"}),
        (["css*", "css/a"], {"css*": "css*", "css/a": "css/a"}),  # only "dir/*" covers
        (["a/*", "ab/c"], {"a/*": "a/*", "ab/c": "ab/c"}),  # a prefix, not a directory
    ],
)
def test_plan_dedupes_and_drops_covered_paths(paths: list[str], expected: dict[str, str]) -> None:
    assert sent_for(paths) == expected


class Recorder:
    """A fake purge endpoint that records batches and how many were in flight at once."""

    def __init__(self, latency: float = 0.05, fail: int = 0, status: int = 500) -> None:
        self.batches: list[list[str]] = []
        self.in_flight: list[frozenset[str]] = []
        self.overlaps = 0
        self.latency = latency
        self.fail = fail
        self.status = status

    async def handle(self, url: Any, **kwargs: Any) -> CallbackResult:
        files = kwargs["json"]["files"]
        key = frozenset(files)
        if key in self.in_flight:
            self.overlaps += 1
        self.in_flight.append(key)
        self.batches.append(files)
        await asyncio.sleep(self.latency)
        self.in_flight.remove(key)
        if self.fail > 0:
            self.fail -= 1
            return CallbackResult(
                status=self.status, body=json.dumps({"id": "server_error", "message": "boom"})
            )
        return CallbackResult(status=204)


@pytest.fixture
async def cdn() -> Any:
    async with CDNClient(TOKEN, base_url=BASE, limits=RateLimits.documented()) as client:
        yield client


async def test_10000_unique_paths_make_200_requests_at_the_file_budget_pace(cdn: CDNClient) -> None:
    rec = Recorder(latency=0.0)
    paths = [f"img/{i}.png" for i in range(10_000)]
    loop = asyncio.get_running_loop()
    with aioresponses() as m:
        m.delete(PURGE, callback=rec.handle, repeat=True)
        start = loop.time()
        report = await cdn.endpoints.purge(ID, paths)
    assert len(rec.batches) == 200
    assert all(len(b) == 50 for b in rec.batches)
    assert sorted(p for b in rec.batches for p in b) == sorted(paths)
    assert report.requests == 200 and len(report.purged) == 10_000 and report.ok
    # 50 paths / 20 s: batch k may go at 20 s * k, so the last one leaves at 199 * 20 s.
    assert loop.time() - start == pytest.approx(199 * 20, rel=0.001)
    assert report.budget_wait == pytest.approx(199 * 20, rel=0.001)


async def test_20_concurrent_identical_purges_reach_the_server_at_most_twice(
    cdn: CDNClient,
) -> None:
    rec = Recorder()
    with aioresponses() as m:
        m.delete(PURGE, callback=rec.handle, repeat=True)
        reports = await asyncio.gather(
            *(cdn.endpoints.purge(ID, ["a.png", "b/*"]) for _ in range(20))
        )
    assert len(rec.batches) <= 2
    assert all(r.ok and set(r.purged) == {"a.png", "b/*"} for r in reports)
    assert rec.overlaps == 0


async def test_a_caller_never_joins_a_request_already_sent(cdn: CDNClient) -> None:
    rec = Recorder(latency=1.0)
    with aioresponses() as m:
        m.delete(PURGE, callback=rec.handle, repeat=True)
        first = asyncio.create_task(cdn.endpoints.purge(ID, ["a.png"]))
        await asyncio.sleep(0.5)  # the first request is on the wire now
        second = await cdn.endpoints.purge(ID, ["a.png"])
        await first
    assert rec.batches == [["a.png"], ["a.png"]]  # content changed after the first went out
    assert rec.overlaps == 0  # and the two identical requests never overlapped
    assert second.ok


async def test_pending_wildcard_covers_a_later_callers_path(cdn: CDNClient) -> None:
    rec = Recorder()
    with aioresponses() as m:
        m.delete(PURGE, callback=rec.handle, repeat=True)
        # Spend the file budget so the next batch waits (stays pending) for 20 s.
        await cdn.endpoints.purge(ID, [f"x/{i}" for i in range(50)])
        a = asyncio.create_task(cdn.endpoints.purge(ID, ["css/*"]))
        await asyncio.sleep(1)
        b = await cdn.endpoints.purge(ID, ["css/site.css", "js/app.js"])
        assert (await a).ok
    # css/site.css shared the pending wildcard; js/app.js arrived while the file budget was
    # full, before the next batch was cut, so it went in the same request.
    assert rec.batches[1:] == [["css/*", "js/app.js"]]
    assert set(b.purged) == {"css/site.css", "js/app.js"}


async def test_failed_batch_is_retried_then_every_path_reported(cdn: CDNClient) -> None:
    rec = Recorder(fail=7)  # 3 + 3 attempts fail two batches; the third succeeds on retry
    paths = [f"p{i}" for i in range(120)]
    with aioresponses() as m:
        m.delete(PURGE, callback=rec.handle, repeat=True)
        with pytest.raises(PurgeError) as info:
            await cdn.with_options(max_retries=2).endpoints.purge(ID, paths)
    report = info.value.report
    assert set(report.purged) | set(report.failed) == set(paths)  # nothing dropped
    assert len(report.failed) == 100 and len(report.purged) == 20
    assert all(
        isinstance(e, InternalServerError) and e.attempts == 3 for e in report.failed.values()
    )
    assert len(rec.batches) == 3 + 3 + 2


async def test_progress_is_reported_after_each_batch(cdn: CDNClient) -> None:
    rec = Recorder(latency=0.0)
    seen: list[tuple[int, int]] = []
    with aioresponses() as m:
        m.delete(PURGE, callback=rec.handle, repeat=True)
        await cdn.endpoints.purge(
            ID, [f"p{i}" for i in range(120)], on_progress=lambda d, t: seen.append((d, t))
        )
    assert seen == [(50, 120), (100, 120), (120, 120)]


async def test_cancelling_one_caller_never_cancels_the_shared_request(cdn: CDNClient) -> None:
    rec = Recorder(latency=1.0)
    with aioresponses() as m:
        m.delete(PURGE, callback=rec.handle, repeat=True)
        quitter = asyncio.create_task(cdn.endpoints.purge(ID, ["shared.png"]))
        stayer = asyncio.create_task(cdn.endpoints.purge(ID, ["shared.png"]))
        await asyncio.sleep(0.5)
        quitter.cancel()
        report = await stayer
    assert report.ok and report.purged == ("shared.png",)
    assert quitter.cancelled()
    assert rec.batches == [["shared.png"]]


async def test_purges_of_different_endpoints_do_not_wait_for_each_other(cdn: CDNClient) -> None:
    other = "2e8c8dc6-9d0c-4fd7-8b83-3e3c0c4ad2d2"
    rec = Recorder(latency=5.0)
    loop = asyncio.get_running_loop()
    with aioresponses() as m:
        m.delete(PURGE, callback=rec.handle, repeat=True)
        await cdn.endpoints.purge(ID, ["warm-up"])  # the first request of a client goes alone
        start = loop.time()
        await asyncio.gather(cdn.endpoints.purge(ID, ["a"]), cdn.endpoints.purge(other, ["a"]))
    assert loop.time() - start == pytest.approx(5.0, abs=0.1)  # in parallel, not 10 s


async def test_closing_the_client_reports_unsent_paths_failed() -> None:
    rec = Recorder(latency=0.0)
    cdn = CDNClient(TOKEN, base_url=BASE)
    with aioresponses() as m:
        m.delete(PURGE, callback=rec.handle, repeat=True)
        job = asyncio.create_task(cdn.endpoints.purge(ID, [f"p{i}" for i in range(200)]))
        await asyncio.sleep(30)  # the first two batches are through; the rest wait on budget
        await cdn.close()
        with pytest.raises(PurgeError) as info:
            await job
    report = info.value.report
    assert len(report.purged) == 100 and len(report.failed) == 100
    assert "closed" in str(next(iter(report.failed.values())))


async def test_a_cancelled_sole_caller_stops_its_unsent_paths(cdn: CDNClient) -> None:
    rec = Recorder(latency=0.0)
    with aioresponses() as m:
        m.delete(PURGE, callback=rec.handle, repeat=True)
        job = asyncio.create_task(cdn.endpoints.purge(ID, [f"p{i}" for i in range(2000)]))
        await asyncio.sleep(30)  # two batches are through; the rest wait on the file budget
        job.cancel()
        await asyncio.sleep(15 * 60)
    assert len(rec.batches) == 2  # nobody waits for the rest: they are not sent


async def test_a_cancelled_caller_leaves_shared_paths_to_the_others(cdn: CDNClient) -> None:
    rec = Recorder(latency=0.0)
    with aioresponses() as m:
        m.delete(PURGE, callback=rec.handle, repeat=True)
        await cdn.endpoints.purge(ID, [f"x{i}" for i in range(50)])  # spend the file budget
        quitter = asyncio.create_task(cdn.endpoints.purge(ID, ["shared", "mine"]))
        stayer = asyncio.create_task(cdn.endpoints.purge(ID, ["shared"]))
        await asyncio.sleep(1)
        quitter.cancel()
        report = await stayer
    assert report.purged == ("shared",)
    assert rec.batches[1:] == [["shared"]]  # "mine" was abandoned with its only caller


async def test_an_unexpected_exception_is_reported_not_a_hang(cdn: CDNClient) -> None:
    async def boom(url: Any, **kwargs: Any) -> CallbackResult:
        raise RuntimeError("unexpected")

    with aioresponses() as m:
        m.delete(PURGE, callback=boom, repeat=True)
        with pytest.raises(PurgeError) as info:
            await asyncio.wait_for(cdn.endpoints.purge(ID, [f"p{i}" for i in range(60)]), 120)
    assert len(info.value.report.failed) == 60


# -- priority, progress per batch, partial results, one reason -------------------------------


async def test_an_urgent_purge_goes_in_the_next_batch_ahead_of_a_bulk_purge() -> None:
    """Against the fake: a 1-path ``priority="high"`` purge asked while a 1,500-path bulk purge
    of the same endpoint is pending is answered within one file period (20 s) plus its round
    trip; a 1-path normal purge asked at the same moment waits behind the whole bulk."""
    async with FakeCDNServer() as server, CDNClient(server.token, base_url=server.url) as cdn:
        ep = server.add_endpoint("static.nyc3.digitaloceanspaces.com")["id"]
        loop = asyncio.get_running_loop()
        bulk = asyncio.create_task(cdn.endpoints.purge(ep, [f"bulk/{i}" for i in range(1500)]))
        await asyncio.sleep(105)  # six batches are through, 24 still pending

        async def timed(path: str, priority: Priority) -> float:
            start = loop.time()
            await cdn.endpoints.purge(ep, [path], priority=priority)
            return loop.time() - start

        normal = asyncio.create_task(timed("normal.png", "normal"))
        urgent = await timed("urgent.png", "high")
        assert urgent <= 20 + 0.5
        assert await normal >= 23 * 20  # FIFO: after the bulk purge's remaining batches
        assert (await bulk).ok
        batches = [e.body["files"] for e in server.journal if e.op == "purge"]
    assert batches[6][0] == "urgent.png" and len(batches[6]) == 50  # the very next batch
    assert batches[-1][-1] == "normal.png"


async def test_on_batch_reports_which_paths_each_batch_confirmed(cdn: CDNClient) -> None:
    rec = Recorder(latency=0.0)
    progress: list[PurgeProgress] = []
    counts: list[tuple[int, int]] = []
    paths = [f"p{i}" for i in range(120)]
    with aioresponses() as m:
        m.delete(PURGE, callback=rec.handle, repeat=True)
        await cdn.endpoints.purge(
            ID, paths, on_batch=progress.append, on_progress=lambda d, t: counts.append((d, t))
        )
    assert [p.confirmed for p in progress] == [tuple(b) for b in rec.batches]
    assert [(p.done, p.total) for p in progress] == counts == [(50, 120), (100, 120), (120, 120)]
    assert all(not p.failed for p in progress)


async def test_a_cancelled_purge_has_delivered_every_confirmed_path(cdn: CDNClient) -> None:
    rec = Recorder(latency=0.0)
    checkpoint: list[str] = []
    with aioresponses() as m:
        m.delete(PURGE, callback=rec.handle, repeat=True)
        job = asyncio.create_task(
            cdn.endpoints.purge(
                ID,
                [f"p{i}" for i in range(500)],
                on_batch=lambda p: checkpoint.extend(p.confirmed),
            )
        )
        await asyncio.sleep(50)  # three batches are through
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
    assert checkpoint == [p for b in rec.batches for p in b] == [f"p{i}" for i in range(150)]


async def test_an_interrupted_purge_reports_what_was_confirmed() -> None:
    rec = Recorder(latency=0.0)
    cdn = CDNClient(TOKEN, base_url=BASE)
    with aioresponses() as m:
        m.delete(PURGE, callback=rec.handle, repeat=True)
        job = asyncio.create_task(cdn.endpoints.purge(ID, [f"p{i}" for i in range(200)]))
        await asyncio.sleep(30)
        await cdn.close()
        with pytest.raises(PurgeError) as info:
            await job
    report = info.value.report
    assert report.purged == tuple(f"p{i}" for i in range(100))
    assert set(report.failed) == {f"p{i}" for i in range(100, 200)}
    assert all("not confirmed" in str(e) for e in report.failed.values())
    assert info.value.reason is report.failed["p100"]  # one reason for every failed path


async def test_purge_error_names_the_one_reason_every_path_failed_for(cdn: CDNClient) -> None:
    with aioresponses() as m:
        m.delete(PURGE, status=404, payload={"id": "not_found", "message": "gone"}, repeat=True)
        with pytest.raises(PurgeError) as info:
            await cdn.endpoints.purge(ID, [f"p{i}" for i in range(120)])
    assert isinstance(info.value.reason, NotFoundError)
    assert info.value.__cause__ is info.value.reason
    assert "NotFoundError" in str(info.value)


async def test_purge_error_has_no_reason_when_paths_failed_differently(cdn: CDNClient) -> None:
    statuses = iter([200, 500, 422])

    async def answer(url: Any, **kwargs: Any) -> CallbackResult:
        status = next(statuses)
        if status == 200:
            return CallbackResult(status=204)
        return CallbackResult(status=status, body=json.dumps({"id": "x", "message": "no"}))

    with aioresponses() as m:
        m.delete(PURGE, callback=answer, repeat=True)
        with pytest.raises(PurgeError) as info:
            await cdn.with_options(max_retries=0).endpoints.purge(ID, [f"p{i}" for i in range(150)])
    assert len(info.value.report.purged) == 50 and len(info.value.report.failed) == 100
    assert info.value.reason is None and info.value.__cause__ is None


async def test_an_unknown_priority_is_refused(cdn: CDNClient) -> None:
    with pytest.raises(ValidationError, match="priority"):
        await cdn.endpoints.purge(ID, ["a"], priority="urgent")  # type: ignore[arg-type]


async def test_an_urgent_path_lifts_a_waiting_batch_ahead_of_other_endpoints(
    cdn: CDNClient,
) -> None:
    """The file budget is the token's: another endpoint's bulk purge competes for it. A batch
    already waiting at "normal" when an urgent path joins waits again at "high", so the urgent
    path does not wait behind the other endpoint's batch too."""
    other = "2e8c8dc6-9d0c-4fd7-8b83-3e3c0c4ad2d2"
    rec = Recorder(latency=0.0)
    loop = asyncio.get_running_loop()
    waits: list[float] = []

    async def urgent() -> None:
        start = loop.time()
        await cdn.endpoints.purge(ID, ["urgent.png"], priority="high")
        waits.append(loop.time() - start)

    def after_a_batch(progress: PurgeProgress) -> None:
        if progress.done == 100:  # our next batch is now waiting, behind the other endpoint's
            loop.call_later(1.0, lambda: tasks.append(asyncio.create_task(urgent())))

    tasks: list[asyncio.Task[None]] = []
    with aioresponses() as m:
        m.delete(PURGE, callback=rec.handle, repeat=True)
        bulk_other = asyncio.create_task(cdn.endpoints.purge(other, [f"o{i}" for i in range(300)]))
        await asyncio.sleep(1)
        mine = await cdn.endpoints.purge(ID, [f"m{i}" for i in range(300)], on_batch=after_a_batch)
        await asyncio.gather(bulk_other, *tasks)
    assert mine.ok and waits and waits[0] <= 20.0  # not about 39 s behind the other's batch


def test_purge_error_reason_compares_the_kind_of_failure_not_its_text() -> None:
    # Paths refused by their deadline at slightly different moments carry messages that
    # differ by a millisecond: one failure, so one reason. Different kinds have none.
    def late(seconds: float) -> BudgetWaitTimeout:
        return BudgetWaitTimeout(
            f"the call would wait {seconds:.3f} s on budget 'cdn'",
            retry_after=seconds,
            budget="cdn",
        )

    timeouts = {"a": late(0.399), "b": late(0.400), "c": late(0.401)}
    error = PurgeError(PurgeReport(ID, ("d",), timeouts, 1, 0.0))
    assert error.reason is timeouts["a"] and error.__cause__ is timeouts["a"]
    assert "BudgetWaitTimeout" in str(error)
    five_hundreds = {p: InternalServerError(f"boom {p}", status=500) for p in "ab"}
    assert PurgeError(PurgeReport(ID, (), five_hundreds, 1, 0.0)).reason is five_hundreds["a"]
    mixed = {"a": NotFoundError("gone", status=404), "b": late(0.4)}
    assert PurgeError(PurgeReport(ID, (), mixed, 1, 0.0)).reason is None
    other_budget = {"a": late(0.4), "b": BudgetWaitTimeout("x", budget="purge_files")}
    assert PurgeError(PurgeReport(ID, (), other_budget, 1, 0.0)).reason is None


async def test_on_batch_never_fires_after_a_cancelled_purge_has_ended(cdn: CDNClient) -> None:
    # A checkpoint written when the call is cancelled has seen every batch it will see: the
    # batch on the wire at that moment was not confirmed, and is not reported later.
    rec = Recorder(latency=5.0)
    checkpoint: list[str] = []
    with aioresponses() as m:
        m.delete(PURGE, callback=rec.handle, repeat=True)
        job = asyncio.create_task(
            cdn.endpoints.purge(
                ID, [f"p{i}" for i in range(50)], on_batch=lambda p: checkpoint.extend(p.confirmed)
            )
        )
        await asyncio.sleep(2.0)  # the batch is on the wire
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        saved = list(checkpoint)
        await asyncio.sleep(10.0)  # the batch is answered
    assert len(rec.batches) == 1 and saved == checkpoint == []


async def test_paths_cut_from_a_refused_batch_are_not_sent_once_their_caller_left(
    cdn: CDNClient,
) -> None:
    """A batch refused with a 429 is cut smaller for its retry (the client's file share
    halves) and the rest goes back to the pending paths. If its only caller has left
    meanwhile (a stopped CLI purge), that rest is not sent: the caller reported it unsent."""
    rec = Recorder(latency=0.0, fail=1, status=429)
    with aioresponses() as m:
        m.delete(PURGE, callback=rec.handle, repeat=True)
        job = asyncio.create_task(cdn.endpoints.purge(ID, [f"p{i}" for i in range(50)]))
        await asyncio.sleep(1)  # refused; the batch waits to be cut and sent again
        assert [len(b) for b in rec.batches] == [50]
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        await asyncio.sleep(15 * 60)
    assert [len(b) for b in rec.batches] == [50, 25]  # the sealed batch, cut; nothing more
