"""``RedisPurgeQueue`` against a real redis-server, with several OS processes.

Each test starts a redis-server on a free port (``benchmarks/_redis_server.py``) and a
time-scaled ``FakeCDNServer`` (files budget: 50 paths / 0.2 s) in this process; the other
processes run ``_child``, forked from a fork server that imported this module once (``Child``),
each with its own ``CDNClient`` on a shared ``RedisBudgetStore`` and the queue plugged in
with ``CDNClient(purge_queue=queue)``. Assertions read the fake server's journal and 409/429 counters.
Without redis-server the tests skip, except on CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import multiprocessing
import random
import signal
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from benchmarks._redis_server import RedisServer, find_redis_server
from cdn_async import CDNClient, RateLimits
from cdn_async._purge import PurgeProgress
from cdn_async._purge_plan import sent_for
from cdn_async._purge_queue._ticket import submission_of
from cdn_async.errors import NotFoundError, PurgeError, ValidationError
from cdn_async.redis import RedisBudgetStore, RedisPurgeQueue
from cdn_async.testing import FakeCDNServer

SCALE = 0.01  # files budget: 50 paths / 0.2 s
TOKEN_ID = "t0"
PREFIX = "{cdn-async:t0}:"
ORIGIN = "static.nyc3.digitaloceanspaces.com"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client, to look at the queue's keys."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


def setup(url: str, token: str, server_url: str, **opts: Any) -> tuple[CDNClient, Any, Any]:
    """A client on a shared budget store with the queue plugged in (as in every process)."""
    store = RedisBudgetStore(
        url,
        token_id=TOKEN_ID,
        heartbeat_interval=0.05,
        inflight_timeout=0.5,  # a killed process's request stops counting 0.5 s after it died
        recovery_grace=float(opts.get("grace", 0.0)),
        _restart_hold=bool(opts.get("hold", False)),
    )
    queue = RedisPurgeQueue(
        url,
        token_id=TOKEN_ID,
        lease_ttl=float(opts.get("lease", 1.0)),
        result_ttl=float(opts.get("result_ttl", 60.0)),
        poll_interval=0.02,
    )
    limits = RateLimits.documented().scaled(SCALE)
    cdn = CDNClient(
        token, base_url=server_url, limits=limits, budget_store=store, purge_queue=queue
    )
    return cdn, queue, store


async def teardown(cdn: CDNClient, queue: Any, store: Any) -> None:
    await cdn.close()
    await queue.aclose()
    await store.aclose()


# Children are forked from one server process that has imported this module (and so the
# SDK) once: starting one costs a fork, not an interpreter and its imports.
_FORKS = multiprocessing.get_context("forkserver")
_FORKS.set_forkserver_preload([__name__])


async def _readable(fd: int) -> None:
    """Wait until ``fd`` can be read (a message, an end of file, a process's exit)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


class Child:
    """One OS process running ``_child`` with a JSON config; talks in messages over a pipe."""

    def __init__(self, proc: Any, conn: Any) -> None:
        self.proc = proc
        self.conn = conn
        self.err = ""  # its log (warnings), once finished

    @classmethod
    async def start(cls, **cfg: Any) -> Child:
        here, there = _FORKS.Pipe()
        proc = _FORKS.Process(target=_child_main, args=(cfg, there), daemon=True)
        await asyncio.to_thread(proc.start)  # the first start also starts the fork server
        there.close()
        return cls(proc, here)

    async def line(self, within: float = 20.0) -> Any:
        await asyncio.wait_for(_readable(self.conn.fileno()), within)
        try:
            data = self.conn.recv()
        except EOFError:
            data = {"log": "(no log)"}
        if isinstance(data, dict) and set(data) == {"log"}:
            raise AssertionError(f"child exited early:\n{data['log']}")
        return data

    def go(self) -> None:
        self.conn.send("go")

    def kill(self) -> None:
        self.proc.kill()

    async def wait(self, within: float = 30.0) -> int:
        """The exit code (minus the signal number when killed by one)."""
        await asyncio.wait_for(_readable(self.proc.sentinel), within)
        self.proc.join()
        return int(self.proc.exitcode)

    async def finish(self, within: float = 30.0) -> Any:
        result = await self.line(within)
        await asyncio.wait_for(_readable(self.conn.fileno()), within)
        self.err = self.conn.recv()["log"]
        code = await self.wait(within)
        assert code == 0, self.err
        return result


def cfg(redis: RedisServer, fake: FakeCDNServer, cdn_id: str, **extra: Any) -> dict[str, Any]:
    return {"redis": redis.url, "token": fake.token, "url": fake.url, "endpoint": cdn_id, **extra}


def purge_bodies(fake: FakeCDNServer) -> list[list[str]]:
    """The files of every purge the server carried out (204), in arrival order."""
    return [
        e.body["files"]
        for e in fake.journal
        if e.op == "purge" and e.status == 204 and isinstance(e.body, dict)
    ]


def no_409_no_429(fake: FakeCDNServer) -> None:
    assert fake.counters.conflicts == 0
    assert fake.counters.rate_limited.total() == 0


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def until_redis(read: Callable[[], Awaitable[Any]], within: float = 10.0) -> None:
    """Wait until what ``read`` reads from Redis is set (not None, not 0)."""
    deadline = time.monotonic() + within
    while not await read():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# -- several processes -------------------------------------------------------------------------


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_overlapping_submissions_from_four_processes_are_sent_once(
    redis_server: RedisServer, fake_cdn: FakeCDNServer
) -> None:
    """4 processes submit overlapping lists (shared paths, a wildcard covering some, duplicates,
    leading slashes): ceil(unique uncovered paths of the union / 50) requests, each path of
    the union sent exactly once, every process told each of its paths was purged; 0 x 409,
    0 x 429."""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    shared = [f"js/{i}.js" for i in range(100)] + ["css/*"] + [f"css/{i}.css" for i in range(20)]
    lists = []
    for k in range(4):
        own = [f"img{k}/{i}.png" for i in range(60)]
        paths = [*shared, *own, "/" + shared[k], own[0]]
        random.Random(k).shuffle(paths)
        lists.append(paths)
    union = [p.lstrip("/") for paths in lists for p in paths]
    targets = set(sent_for(union).values())
    assert len(targets) == 341  # 100 shared, css/*, 4 x 60 own

    children = [
        await Child.start(**cfg(redis_server, fake_cdn, cdn_id, mode="submit-wait", paths=p))
        for p in lists
    ]
    for child in children:
        assert (await child.line())["submitted"] == 181  # 121 shared + 60 own
    for child in children:  # every list is in Redis before any process drains
        child.go()
    reports = [await child.finish() for child in children]

    bodies = purge_bodies(fake_cdn)
    assert len(bodies) == math.ceil(len(targets) / 50) == 7
    sent = [p for body in bodies for p in body]
    assert sorted(sent) == sorted(targets)  # each once
    for paths, report in zip(lists, reports, strict=True):
        assert report["failed"] == {}
        assert set(report["purged"]) == set(sent_for([p.lstrip("/") for p in paths]))
        assert report["requests"] >= 1
    no_409_no_429(fake_cdn)


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_a_batch_is_fixed_only_when_the_budgets_admit_it_across_processes(
    redis_server: RedisServer, fake_cdn: FakeCDNServer
) -> None:
    """Process A's drainer waits for the files budget (held here); meanwhile process B
    purges two of A's paths and an urgent one at priority "high". Nothing was sent yet, so
    B's paths join A's pending entries, and the urgent ones lead the batch the budgets admit
    next: every path is sent exactly once, the urgent ones in the first request."""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    bulk = [f"bulk/{i}.png" for i in range(60)]
    urgent = [bulk[5], bulk[40], "urgent.png"]
    a = await Child.start(**cfg(redis_server, fake_cdn, cdn_id, mode="purge", paths=bulk))
    b = await Child.start(
        **cfg(redis_server, fake_cdn, cdn_id, mode="purge", paths=urgent, priority="high")
    )
    assert (await a.line())["ready"] and (await b.line())["ready"]
    cdn, queue, store = setup(redis_server.url, fake_cdn.token, fake_cdn.url)
    limits = RateLimits.documented().scaled(SCALE)
    try:
        files = [c for c in limits.claims(cdn_id, files=50) if c.budget == "purge_files"]
        spent = await store.acquire(files)  # the files budget is spent until released
        a.go()
        async with aioredis.Redis.from_url(redis_server.url) as raw:
            # A's drainer holds the lease, waiting; then B's submission is in the line.
            await until_redis(lambda: raw.exists(f"{PREFIX}pq:l:{cdn_id}"))
            b.go()
            await until_redis(lambda: raw.zscore(f"{PREFIX}pq:p:{cdn_id}", "urgent.png"))
        store.release(spent)
        reports = [await a.finish(), await b.finish()]
    finally:
        await teardown(cdn, queue, store)
    assert reports[0]["purged"] == bulk and reports[1]["purged"] == urgent
    bodies = purge_bodies(fake_cdn)
    sent = [p for body in bodies for p in body]
    assert sorted(sent) == sorted({*bulk, *urgent})  # each once
    assert [len(body) for body in bodies] == [50, 11]
    assert set(bodies[0][:3]) == set(urgent)
    no_409_no_429(fake_cdn)


@pytest.mark.fake_cdn(time_scale=SCALE, purge_duration=0.2)
async def test_four_processes_purging_the_same_paths_at_once_draw_no_409(
    redis_server: RedisServer, fake_cdn: FakeCDNServer
) -> None:
    """The issue's measurement: 4 processes purge the same 2 paths at the same moment, each
    purge taking 0.2 s at the server. One batch per endpoint in flight: no 409, at most 2
    requests (a path sent is never joined: it may be queued again once), and every process
    gets both paths purged. (On a loaded machine a process may wake after the second batch
    left: a third, never two in flight at once.)"""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    paths = ["img/logo.png", "css/site.css"]
    children = [
        await Child.start(**cfg(redis_server, fake_cdn, cdn_id, mode="purge", paths=paths))
        for _ in range(4)
    ]
    for child in children:
        assert (await child.line())["ready"]
    for child in children:
        child.go()
    reports = [await child.finish() for child in children]
    assert all(r["purged"] == paths and r["failed"] == {} for r in reports)
    bodies = purge_bodies(fake_cdn)
    assert 1 <= len(bodies) <= 3  # 4 processes, and at most one batch in flight at a time
    assert all(sorted(b) == sorted(paths) for b in bodies)
    no_409_no_429(fake_cdn)


@pytest.mark.fake_cdn(time_scale=SCALE, purge_duration=0.3)
async def test_drainer_killed_mid_batch_loses_nothing(
    redis_server: RedisServer, fake_cdn: FakeCDNServer
) -> None:
    """A process is SIGKILLed while its first batch is at the server. Its lease expires
    (lease_ttl 1 s) and another process's drainer sends that batch again, then the rest: every
    path purged, the killed batch at least twice (at least once), no 409 (the resend comes
    after the first request ended)."""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    paths = [f"img/{i}.png" for i in range(120)]
    child = await Child.start(**cfg(redis_server, fake_cdn, cdn_id, mode="purge", paths=paths))
    assert (await child.line())["ready"]
    child.go()
    # The first batch is admitted by the server (counted) and takes 0.3 s there.
    await until(lambda: fake_cdn.used(fake_cdn.token, "purge_files") > 0)
    child.kill()
    killed_at = time.monotonic()
    assert await child.wait() == -signal.SIGKILL

    cdn, queue, store = setup(redis_server.url, fake_cdn.token, fake_cdn.url)
    try:
        assert await queue.pending(cdn_id) == 120  # 50 in flight (orphaned) + 70 pending
        await asyncio.wait_for(queue.work(cdn, until_idle=True), 20)
        assert await queue.pending(cdn_id) == 0
    finally:
        await teardown(cdn, queue, store)

    entries = [e for e in fake_cdn.journal if e.op == "purge" and e.status == 204]
    first = set(entries[0].body["files"])
    assert len(first) == 50
    again = [e for e in entries[1:] if set(e.body["files"]) == first]
    assert again, "the killed batch was not sent again"
    assert again[0].arrival - killed_at > 0.5  # only after the lease expired
    assert {p for e in entries for p in e.body["files"]} == set(paths)
    assert len(entries) == 4  # the killed batch (answered to nobody), its resend, 50, 20
    no_409_no_429(fake_cdn)


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_submitter_that_exits_still_gets_its_paths_purged(
    redis_server: RedisServer, fake_cdn: FakeCDNServer, raw: aioredis.Redis
) -> None:
    """A process submits 70 paths and exits at once. Another process purging 30 other paths of
    the endpoint drains them too (first in, first out: 2 requests). The exited submitter's
    results are written (kept result_ttl = 0.5 s after the last write), then expire; nothing
    of the queue but its counter is left in Redis."""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    early = [f"early/{i}.png" for i in range(70)]
    late = [f"late/{i}.png" for i in range(30)]
    submitter = await Child.start(**cfg(redis_server, fake_cdn, cdn_id, mode="submit", paths=early))
    done = await submitter.finish()
    assert done["total"] == 70
    assert purge_bodies(fake_cdn) == []  # nothing sent by a process that only submits

    waiter = await Child.start(
        **cfg(redis_server, fake_cdn, cdn_id, mode="purge", paths=late, result_ttl=0.5)
    )
    assert (await waiter.line())["ready"]
    waiter.go()
    report = await waiter.finish()
    assert report["purged"] == late and report["failed"] == {}
    bodies = purge_bodies(fake_cdn)
    assert [len(b) for b in bodies] == [50, 50]
    assert bodies[0] == early[:50] and sorted(bodies[1]) == sorted(early[50:] + late)
    no_409_no_429(fake_cdn)

    results = f"{PREFIX}pq:r:{done['ticket']}"
    entries = await raw.lrange(results, 1, -1)  # type: ignore[misc]
    assert len(entries) == 2 and all('"s":1' in e and '"e"' not in e for e in entries)
    assert 0 < await raw.pttl(results) <= 500
    await asyncio.sleep(0.6)
    assert [k async for k in raw.scan_iter(f"{PREFIX}pq:*")] == [f"{PREFIX}pq:n"]


# -- one batch in flight: a batch that may have been sent is resent only after its lease ------


def second_client(queue: Any, store: Any, fake: FakeCDNServer, **options: Any) -> CDNClient:
    """Another client of this process on the same queue and budget store."""
    limits = RateLimits.documented().scaled(SCALE)
    return CDNClient(
        fake.token,
        base_url=fake.url,
        limits=limits,
        budget_store=store,
        purge_queue=queue,
        **options,
    )


def purge_entries(fake: FakeCDNServer, paths: list[str]) -> list[Any]:
    """Every purge request the server saw for exactly ``paths`` (answered or not)."""
    return [
        e
        for e in fake.journal
        if e.op == "purge" and isinstance(e.body, dict) and sorted(e.body["files"]) == sorted(paths)
    ]


@pytest.mark.fake_cdn(time_scale=SCALE, purge_duration=0.3)
async def test_two_drain_tasks_of_one_process_never_send_one_batch_twice_at_once(
    redis_server: RedisServer, fake_cdn: FakeCDNServer
) -> None:
    """Two clients of one process share a queue. The first one's drainer sends a batch and
    its client is closed while that request is at the server (0.3 s there): the request is
    not aborted (it may still be purged), so the batch may have been sent. The drain task the
    second client starts in the same process does not get that batch while its lease lives
    (a lease token is one drain task's, never the process's): it sends it again only once
    the lease expired (lease_ttl 1 s; at least once), never beside the first copy: no 409."""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    cdn1, queue, store = setup(redis_server.url, fake_cdn.token, fake_cdn.url)
    cdn2 = second_client(queue, store, fake_cdn)
    # Small batches: the files budget has room for a second copy at once (a full batch's
    # units would still count while the first copy is unanswered).
    first = [f"a/{i}.png" for i in range(10)]
    second = [f"b/{i}.png" for i in range(10)]
    try:
        one = asyncio.create_task(cdn1.endpoints.purge(cdn_id, first))
        await until(lambda: fake_cdn.used(fake_cdn.token, "purge_files") > 0)
        two = asyncio.create_task(cdn2.endpoints.purge(cdn_id, second))
        await asyncio.sleep(0.05)  # its ticket waits on the same lane of the same queue
        await cdn1.close()
        closed_at = time.monotonic()
        with pytest.raises(PurgeError):
            await one  # its client was closed before the outcome came back
        report = await asyncio.wait_for(two, 20)
    finally:
        await cdn2.close()
        await teardown(cdn1, queue, store)
    assert report.purged == tuple(second) and report.failed == {}
    copies = purge_entries(fake_cdn, first)
    assert len(copies) == 2  # the cut request, then the takeover
    assert copies[1].arrival - closed_at > 0.8  # only once the lease expired
    no_409_no_429(fake_cdn)


@pytest.mark.fake_cdn(time_scale=SCALE, purge_duration=0.3)
async def test_a_queue_closed_with_its_batch_on_the_wire_leaves_it_to_its_lease(
    redis_server: RedisServer, fake_cdn: FakeCDNServer
) -> None:
    """A cancelled send is not an unsent one: aclose() cancels the drainer while its request
    is at the server, and the session leaves that request to finish. The batch stays in
    flight under its lease, so another process's drainer (another queue) sends it again only
    once the lease expired, never while the first copy is at the server: no 409."""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    cdn1, queue1, store1 = setup(redis_server.url, fake_cdn.token, fake_cdn.url)
    cdn2, queue2, store2 = setup(redis_server.url, fake_cdn.token, fake_cdn.url)
    # Small batches: the files budget has room for a second copy at once (a full batch's
    # units would still count while the first copy is unanswered).
    first = [f"a/{i}.png" for i in range(10)]
    second = [f"b/{i}.png" for i in range(10)]
    try:
        one = asyncio.create_task(cdn1.endpoints.purge(cdn_id, first))
        await until(lambda: fake_cdn.used(fake_cdn.token, "purge_files") > 0)
        two = asyncio.create_task(cdn2.endpoints.purge(cdn_id, second))
        await asyncio.sleep(0.05)  # the other queue's drainer waits for the lease
        await queue1.aclose()
        closed_at = time.monotonic()
        with pytest.raises(PurgeError):
            await one
        report = await asyncio.wait_for(two, 20)
    finally:
        await teardown(cdn1, queue1, store1)
        await teardown(cdn2, queue2, store2)
    assert report.purged == tuple(second) and report.failed == {}
    copies = purge_entries(fake_cdn, first)
    assert len(copies) == 2
    assert copies[1].arrival - closed_at > 0.8
    no_409_no_429(fake_cdn)


@pytest.mark.fake_cdn(time_scale=SCALE, purge_duration=0.5)
async def test_queued_tells_paths_in_flight_from_paths_waiting(
    redis_server: RedisServer, fake_cdn: FakeCDNServer
) -> None:
    """An interrupted CLI purge reports a path queued only while it is (never both purged and
    queued): queued() counts a batch on the wire, queued(in_flight=False) only what waits to
    be sent, and once the batch completes its paths are in neither."""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    cdn, queue, store = setup(redis_server.url, fake_cdn.token, fake_cdn.url)
    paths = [f"img/{i}.png" for i in range(80)]  # a batch of 50 on the wire, 30 waiting
    try:
        job = asyncio.create_task(cdn.endpoints.purge(cdn_id, paths))
        await until(lambda: fake_cdn.used(fake_cdn.token, "purge_files") > 0)
        everything = await queue.queued(cdn_id, paths)
        waiting = await queue.queued(cdn_id, paths, in_flight=False)
        report = await asyncio.wait_for(job, 20)
        after = await queue.queued(cdn_id, paths)
    finally:
        await teardown(cdn, queue, store)
    assert everything == set(paths)
    assert len(waiting) == 30 and waiting < everything
    assert sorted(report.purged) == sorted(paths) and after == set()


@pytest.mark.fake_cdn(time_scale=SCALE, purge_duration=0.3)
async def test_a_stopped_worker_completes_the_batch_it_sent(
    redis_server: RedisServer, fake_cdn: FakeCDNServer, raw: aioredis.Redis
) -> None:
    """Cancelling work() (what SIGTERM does to a purge-worker) while a batch is at the server
    waits for its answer and records it before returning, then the client closes: the batch
    counts once, nothing is sent twice, and the next batch is left, unsent and unleased, for
    the next worker, which sends only that one."""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    paths = [f"img/{i}.png" for i in range(80)]
    submitter = await Child.start(**cfg(redis_server, fake_cdn, cdn_id, mode="submit", paths=paths))
    await submitter.finish()
    batches: list[tuple[int, str | None]] = []
    cdn, queue, store = setup(redis_server.url, fake_cdn.token, fake_cdn.url)
    try:
        work = asyncio.create_task(
            queue.work(cdn, on_batch=lambda _, n, e: batches.append((n, str(e) if e else None)))
        )
        await until(lambda: fake_cdn.used(fake_cdn.token, "purge_files") > 0)
        work.cancel()
        with pytest.raises(asyncio.CancelledError):
            await work
        assert batches == [(50, None)]  # answered and completed before work() returned
    finally:
        await teardown(cdn, queue, store)
    assert await raw.exists(f"{PREFIX}pq:l:{cdn_id}") == 0  # no lease left behind
    cdn, queue, store = setup(redis_server.url, fake_cdn.token, fake_cdn.url)
    try:
        assert await queue.pending(cdn_id) == 30
        await asyncio.wait_for(queue.work(cdn, until_idle=True), 10)
    finally:
        await teardown(cdn, queue, store)
    bodies = purge_bodies(fake_cdn)
    assert [len(b) for b in bodies] == [50, 30]
    assert sorted(p for b in bodies for p in b) == sorted(paths)
    no_409_no_429(fake_cdn)


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_a_stopped_worker_gives_back_a_batch_still_waiting_for_its_budget(
    redis_server: RedisServer,
    fake_cdn: FakeCDNServer,
    raw: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker stopped while its batch waits for the files budget (held here until the
    worker has stopped) returns without waiting for the budget, and the batch, surely not
    sent, is given back: the next worker sends it at once, once, and not as a takeover of a
    batch that may have been sent."""
    caplog.set_level(logging.INFO, logger="cdn_async")
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    cdn, queue, store = setup(redis_server.url, fake_cdn.token, fake_cdn.url)
    limits = RateLimits.documented().scaled(SCALE)
    files = [c for c in limits.claims(cdn_id, files=50) if c.budget == "purge_files"]
    later = [f"b/{i}.png" for i in range(50)]
    try:
        spent = await store.acquire(files)  # no batch fits until this is released
        await queue.submit(cdn_id, later)
        work = asyncio.create_task(queue.work(cdn))
        # The drainer took the endpoint's lease; its batch waits for the budget.
        await until_redis(lambda: raw.exists(f"{PREFIX}pq:l:{cdn_id}"))
        await asyncio.sleep(0.03)
        work.cancel()
        stopped, _ = await asyncio.wait({work}, timeout=10)  # the budget is still held
        assert stopped, "the stopped worker waited for the budget"
        with pytest.raises(asyncio.CancelledError):
            await work
        assert await queue.pending(cdn_id) == 50
        assert purge_bodies(fake_cdn) == []
        store.release(spent)
        await asyncio.wait_for(queue.work(cdn, until_idle=True), 10)
    finally:
        await teardown(cdn, queue, store)
    assert purge_bodies(fake_cdn) == [later]
    assert not [r for r in caplog.records if "taking over" in r.getMessage()]
    no_409_no_429(fake_cdn)


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_a_batch_whose_retry_was_refused_is_sent_again_only_after_its_lease(
    redis_server: RedisServer, fake_cdn: FakeCDNServer
) -> None:
    """The server carries out a purge and drops the connection before answering; the
    session's retry is refused by the client's own max_budget_wait (the files budget counts
    the first attempt). The batch may have been sent (here it was), so it is not given back
    as unsent: it waits for its lease to expire (1 s), then is sent again and confirmed."""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    cdn, queue, store = setup(redis_server.url, fake_cdn.token, fake_cdn.url)
    impatient = cdn.with_options(max_budget_wait=0.01)
    paths = [f"img/{i}.png" for i in range(50)]
    fake_cdn.faults.drop_next(when="after", op="purge")
    try:
        report = await asyncio.wait_for(impatient.endpoints.purge(cdn_id, paths), 20)
    finally:
        await teardown(cdn, queue, store)
    assert report.failed == {} and sorted(report.purged) == sorted(paths)
    copies = purge_entries(fake_cdn, paths)
    assert [e.status for e in copies] == [None, 204]  # dropped, then the takeover
    assert copies[1].arrival - copies[0].arrival > 0.8
    no_409_no_429(fake_cdn)


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_a_worker_cancelled_during_a_redis_call_stops(
    redis_server: RedisServer, fake_cdn: FakeCDNServer
) -> None:
    """redis-py (8.1) often swallows a cancellation that lands while one of its commands is
    under way: work() cancelled then (a purge-worker's SIGTERM while it polls Redis for
    endpoints) must stop all the same, not poll on for ever. Polling every millisecond, a
    cancel at a random moment lands in a command about half the time."""
    cdn, queue, store = setup(redis_server.url, fake_cdn.token, fake_cdn.url)
    busy = RedisPurgeQueue(redis_server.url, token_id=TOKEN_ID, poll_interval=0.001)
    rng = random.Random(17)
    try:
        for _ in range(30):
            work = asyncio.create_task(busy.work(cdn))
            await asyncio.sleep(0.002 + rng.random() * 0.01)
            work.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(work, 2)
    finally:
        await busy.aclose()
        await teardown(cdn, queue, store)


# -- Redis restarts ----------------------------------------------------------------------------


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_restart_without_persistence_loses_paths_nobody_waits_for(
    redis_server: RedisServer, fake_cdn: FakeCDNServer
) -> None:
    """Stated limit: a Redis without persistence that restarts forgets what was queued. Paths
    of a process that submitted and exited are never sent."""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    paths = [f"img/{i}.png" for i in range(60)]
    submitter = await Child.start(**cfg(redis_server, fake_cdn, cdn_id, mode="submit", paths=paths))
    await submitter.finish()
    redis_server.restart()
    cdn, queue, store = setup(redis_server.url, fake_cdn.token, fake_cdn.url)
    try:
        assert await queue.pending(cdn_id) == 0
        await asyncio.wait_for(queue.work(cdn, until_idle=True), 10)
    finally:
        await teardown(cdn, queue, store)
    assert purge_bodies(fake_cdn) == []


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_restart_without_persistence_waiters_queue_their_paths_again(
    redis_server: RedisServer, fake_cdn: FakeCDNServer
) -> None:
    """A process waiting in purge() when Redis restarts (and loses the queue) notices its
    results are gone and queues its unconfirmed paths again: every path purged (some maybe
    twice), the call succeeds, no 409, no 429 (the budget store holds purges after the
    restart)."""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    paths = [f"img/{i}.png" for i in range(200)]
    child = await Child.start(
        **cfg(redis_server, fake_cdn, cdn_id, mode="purge", paths=paths, grace=0.25, hold=True)
    )
    assert (await child.line())["ready"]
    child.go()
    await until(lambda: len(purge_bodies(fake_cdn)) >= 1)
    redis_server.restart()
    report = await child.finish()
    assert "Redis lost" in child.err and "queueing them again" in child.err
    assert report["failed"] == {} and sorted(report["purged"]) == sorted(paths)
    assert {p for b in purge_bodies(fake_cdn) for p in b} == set(paths)
    no_409_no_429(fake_cdn)


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_restart_with_aof_keeps_what_was_queued(
    redis_server: RedisServer, fake_cdn: FakeCDNServer
) -> None:
    """With appendonly yes / appendfsync always every acknowledged submit survives a restart
    (even a SIGKILL of Redis): a worker started afterwards purges it all."""
    binary = find_redis_server()
    assert binary is not None
    durable = RedisServer(binary, extra=("--appendonly", "yes", "--appendfsync", "always"))
    durable.start()
    try:
        cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
        paths = [f"img/{i}.png" for i in range(60)]
        submitter = await Child.start(**cfg(durable, fake_cdn, cdn_id, mode="submit", paths=paths))
        await submitter.finish()
        durable.restart()  # SIGKILL, then start again from the append-only file
        cdn, queue, store = setup(durable.url, fake_cdn.token, fake_cdn.url)
        try:
            assert await queue.pending(cdn_id) == 60
            await asyncio.wait_for(queue.work(cdn, until_idle=True), 10)
        finally:
            await teardown(cdn, queue, store)
    finally:
        durable.close()
    assert sorted(p for b in purge_bodies(fake_cdn) for p in b) == sorted(paths)
    no_409_no_429(fake_cdn)


# -- one process: the engine's contract ----------------------------------------------------------


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_purge_through_the_queue_reports_like_the_engine(
    redis_server: RedisServer, fake_cdn: FakeCDNServer, raw: aioredis.Redis
) -> None:
    """endpoints.purge() through the queue: the same report (covered paths purged by their
    wildcard, progress to the total), PurgeError with the API's error class per path for an
    unknown endpoint, ValidationError before anything is queued; every key of the queue is
    under the token's hash tag (one cluster slot with the budgets)."""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    cdn, queue, store = setup(redis_server.url, fake_cdn.token, fake_cdn.url)
    try:
        seen: list[tuple[int, int]] = []
        batches: list[PurgeProgress] = []
        paths = ["css/*", "css/a.css", "/img/1.png", "img/1.png", "img/2.png"]
        report = await cdn.endpoints.purge(
            cdn_id, paths, on_progress=lambda d, t: seen.append((d, t)), on_batch=batches.append
        )
        assert report.purged == ("css/*", "css/a.css", "img/1.png", "img/2.png")
        assert report.failed == {} and report.requests == 1 and report.endpoint_id == cdn_id
        assert seen[-1] == (4, 4)
        assert [(b.done, b.total, sorted(b.confirmed), b.failed) for b in batches] == [
            (4, 4, ["css/*", "css/a.css", "img/1.png", "img/2.png"], {})
        ]
        assert purge_bodies(fake_cdn) == [["css/*", "img/1.png", "img/2.png"]]

        with pytest.raises(PurgeError) as caught:
            await cdn.endpoints.purge(UNKNOWN_ID, ["a.png", "b.png"])
        failed = caught.value.report.failed
        assert set(failed) == {"a.png", "b.png"}
        assert all(isinstance(e, NotFoundError) and e.status == 404 for e in failed.values())
        assert isinstance(caught.value.reason, NotFoundError)

        with pytest.raises(ValidationError):
            await queue.submit(cdn_id, ["ok.png", "bad\x00.png"])
        ticket = await queue.submit(cdn_id, ["later.png", "/later.png"])  # nobody drains yet
        assert (ticket.endpoint_id, ticket.total, ticket.done, ticket.high) == (cdn_id, 1, 0, False)
        assert repr(ticket) == f"<PurgeTicket {cdn_id} 0/1>"
        assert await queue.pending(cdn_id) == 1
        keys = [k async for k in raw.scan_iter("*")]
        assert keys and all(k.startswith(PREFIX) for k in keys)
        assert (await queue.wait(ticket, cdn)).purged == ("later.png",)
        assert ticket.done == 1
        # Waiting again (as an interrupted CLI purge does) reads the same outcome at once.
        assert (await queue.wait(ticket)).purged == ("later.png",)
        urgent = await queue.submit(cdn_id, ["urgent.png"], priority="high")
        assert urgent.high and (await queue.wait(urgent, cdn)).requests == 1
    finally:
        await teardown(cdn, queue, store)
    no_409_no_429(fake_cdn)


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_cancelled_purge_leaves_its_paths_queued(
    redis_server: RedisServer, fake_cdn: FakeCDNServer
) -> None:
    """Unlike the in-process engine, cancelling purge() only stops the wait: the paths are
    durable and a worker purges them."""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    cdn, queue, store = setup(redis_server.url, fake_cdn.token, fake_cdn.url)
    paths = [f"img/{i}.png" for i in range(150)]
    try:
        task = asyncio.create_task(cdn.endpoints.purge(cdn_id, paths))
        await until(lambda: len(purge_bodies(fake_cdn)) >= 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await queue.pending(cdn_id) > 0
        await asyncio.wait_for(queue.work(cdn, until_idle=True), 10)
    finally:
        await teardown(cdn, queue, store)
    assert sorted(p for b in purge_bodies(fake_cdn) for p in b) == sorted(paths)
    no_409_no_429(fake_cdn)


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_a_client_that_will_not_wait_leaves_the_batch_queued(
    redis_server: RedisServer, fake_cdn: FakeCDNServer
) -> None:
    """A drainer's own max_budget_wait bounds its wait for one batch, not the paths' life in
    the shared queue: refused while the files budget is spent, it records no failure, and the
    batch goes out once the budget frees."""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    cdn, queue, store = setup(redis_server.url, fake_cdn.token, fake_cdn.url)
    impatient = cdn.with_options(max_budget_wait=0.01)
    try:
        await cdn.endpoints.purge(cdn_id, [f"a/{i}.png" for i in range(50)])  # budget spent
        report = await impatient.endpoints.purge(cdn_id, ["b/1.png"])
    finally:
        await teardown(cdn, queue, store)
    assert report.purged == ("b/1.png",) and report.failed == {}
    assert [len(b) for b in purge_bodies(fake_cdn)] == [50, 1]
    no_409_no_429(fake_cdn)


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_high_priority_goes_to_the_front_of_the_shared_line(
    redis_server: RedisServer, fake_cdn: FakeCDNServer
) -> None:
    """priority="high" puts a call's paths ahead of every process's bulk purge: a new path,
    and a path already pending far back in the line (shared and moved forward), both go in
    the very next batch; the bulk follows in order."""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    bulk = [f"bulk/{i}.png" for i in range(150)]
    submitter = await Child.start(**cfg(redis_server, fake_cdn, cdn_id, mode="submit", paths=bulk))
    await submitter.finish()
    cdn, queue, store = setup(redis_server.url, fake_cdn.token, fake_cdn.url)
    try:
        report = await cdn.endpoints.purge(cdn_id, ["urgent.png", bulk[120]], priority="high")
        assert report.requests == 1 and report.failed == {}
        await asyncio.wait_for(queue.work(cdn, until_idle=True), 10)
    finally:
        await teardown(cdn, queue, store)
    bodies = purge_bodies(fake_cdn)
    assert sorted(bodies[0][:2]) == sorted(["urgent.png", bulk[120]])  # high: by first queued
    assert bodies[0][2:] == bulk[:48]
    assert [p for b in bodies for p in b][2:] == [p for p in bulk if p != bulk[120]]
    no_409_no_429(fake_cdn)


def test_public_name() -> None:
    """The queue is public in cdn_async.redis, under that module's name."""
    import cdn_async.redis

    assert "RedisPurgeQueue" in cdn_async.redis.__all__
    assert RedisPurgeQueue.__module__ == "cdn_async.redis"
    with pytest.raises(ValueError, match="lease_ttl"):
        RedisPurgeQueue("redis://127.0.0.1:1/0", lease_ttl=0)


# -- the other processes ---------------------------------------------------------------------------


def _child_main(config: dict[str, Any], conn: Any) -> None:
    """A forked child: runs ``_child``, then sends its log (WARNING and up, as a process's
    stderr would show them) and exits 0, or 1 with the traceback in the log."""
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setLevel(logging.WARNING)
    logging.getLogger("cdn_async").addHandler(handler)
    code = 0
    try:
        asyncio.run(_child(config, conn))
    except BaseException:
        traceback.print_exc(file=log)
        code = 1
    conn.send({"log": log.getvalue()})
    sys.exit(code)


async def _child(config: dict[str, Any], conn: Any) -> None:
    """One process: ``mode`` is ``submit`` (queue, say the ticket, exit), ``submit-wait``
    (queue, say so, wait for "go", then wait draining) or ``purge`` (say ready, wait for
    "go", then ``endpoints.purge``). The last message is the result."""

    def say(data: Any) -> None:
        conn.send(data)

    async def go() -> None:
        await asyncio.to_thread(conn.recv)

    opts = {k: config[k] for k in ("grace", "hold", "lease", "result_ttl") if k in config}
    cdn, queue, store = setup(config["redis"], config["token"], config["url"], **opts)
    try:
        mode, cdn_id, paths = config["mode"], config["endpoint"], config["paths"]
        if mode == "submit":
            ticket = await queue.submit(cdn_id, paths)
            say({"ticket": submission_of(ticket).parts[0].id, "total": ticket.total})
            return
        if mode == "submit-wait":
            ticket = await queue.submit(cdn_id, paths)
            say({"submitted": ticket.total})
            await go()
            call = queue.wait(ticket, cdn)
        else:
            say({"ready": True})
            await go()
            call = cdn.endpoints.purge(cdn_id, paths, priority=config.get("priority"))
        try:
            report = await call
        except PurgeError as exc:
            report = exc.report
        say(
            {
                "purged": list(report.purged),
                "failed": {p: str(e) for p, e in report.failed.items()},
                "requests": report.requests,
            }
        )
    finally:
        await teardown(cdn, queue, store)
