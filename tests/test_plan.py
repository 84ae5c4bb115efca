"""Planning a purge (which paths are sent for which), and large purges prepared a chunk at a time.

The engine tests run against the package's fake server over loopback, in virtual time
(``looptime``): the documented budgets' 20 s file periods pass instantly.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdn_async import CDNClient, RateLimits, plan_purge
from cdn_async._purge_plan import sent_for
from cdn_async._validation import CHUNK
from cdn_async.errors import NotFoundError, PurgeError, ValidationError
from cdn_async.testing import FakeCDNServer

ORIGIN = "static.nyc3.digitaloceanspaces.com"


def by_definition(paths: Sequence[str]) -> dict[str, str]:
    """What ``sent_for`` must answer, spelled out: each path against every wildcard."""
    unique = list(dict.fromkeys(paths))
    if "*" in unique:
        return dict.fromkeys(unique, "*")
    dirs = sorted({p[:-1] for p in unique if p.endswith("/*")}, key=len)
    return {p: next((d + "*" for d in dirs if p.startswith(d) and p != d + "*"), p) for p in unique}


# -- sent_for ------------------------------------------------------------------------------------


def test_a_wildcard_covers_paths_at_any_depth_below_its_directory() -> None:
    paths = ["img/a.png", "img/2024/05/b.png", "img/*", "imgs/c.png", "img.png", "css/a/*"]
    assert sent_for(paths) == {
        "img/a.png": "img/*",
        "img/2024/05/b.png": "img/*",
        "img/*": "img/*",
        "imgs/c.png": "imgs/c.png",  # a sibling directory sharing the prefix: not covered
        "img.png": "img.png",
        "css/a/*": "css/a/*",
    }


def test_a_wildcard_covered_by_a_shorter_one_is_sent_as_the_shorter() -> None:
    paths = ["a/b/c/*", "a/b/c/d", "a/b/*", "a/*", "a/x"]
    assert sent_for(paths) == dict.fromkeys(paths, "a/*")


def test_a_wildcard_is_not_covered_by_itself_nor_by_a_deeper_one() -> None:
    assert sent_for(["a/b/*", "a/b/c/*"]) == {"a/b/*": "a/b/*", "a/b/c/*": "a/b/*"}
    assert sent_for(["a/b/c/*", "a/b/c/d"]) == {"a/b/c/*": "a/b/c/*", "a/b/c/d": "a/b/c/*"}


def test_star_covers_everything() -> None:
    assert sent_for(["a", "b/*", "*", "c/d"]) == {"a": "*", "b/*": "*", "*": "*", "c/d": "*"}


def test_order_of_first_appearance_is_kept_and_duplicates_dropped() -> None:
    paths = ["z", "m/1", "a", "z", "m/*", "b", "m/2", "a"]
    got = sent_for(paths)
    assert list(got) == ["z", "m/1", "a", "m/*", "b", "m/2"]
    assert list(dict.fromkeys(got.values())) == ["z", "m/*", "a", "b"]


_segment = st.sampled_from(["a", "b", "ab", "*", ""])


@given(
    st.lists(
        st.lists(_segment, min_size=1, max_size=4).map("/".join).filter(bool),
        min_size=1,
        max_size=40,
    )
)
def test_plan_answers_what_the_definition_says(paths: list[str]) -> None:
    """Whatever the mix of nested wildcards, duplicates, "*" and odd slashes."""
    assert sent_for(paths) == by_definition(paths)
    assert list(sent_for(paths)) == list(dict.fromkeys(paths))


# -- large purges against the fake server ----------------------------------------------------


def large_input() -> tuple[list[str], set[str]]:
    """Over three chunks of paths to send, with wildcards whose covered paths come both long
    before and long after them (so in other chunks), duplicates and leading slashes."""
    early_covered = [f"late/{i}.css" for i in range(300)]  # before their wildcard
    files = [f"f/{i:05d}.png" for i in range(3 * CHUNK)]
    late_covered = [f"early/{i}/x.js" for i in range(300)]  # after their wildcard
    paths = [
        "early/*",
        *early_covered,
        *files,
        *("/" + f for f in files[:500]),
        *late_covered,
        "late/*",
        *files[-500:],
    ]
    return paths, {"early/*", "late/*", *files}


@pytest.mark.looptime
async def test_a_large_purge_sends_each_path_once_in_full_batches() -> None:
    paths, must = large_input()
    async with FakeCDNServer() as server:
        ep = server.add_endpoint(ORIGIN)["id"]
        async with CDNClient(server.token, base_url=server.url) as cdn:
            report = await cdn.endpoints.purge(ep, paths)
        batches = [e.body["files"] for e in server.journal if e.op == "purge"]
    sent = Counter(p for batch in batches for p in batch)
    assert set(sent) == must and max(sent.values()) == 1  # no wildcard sent twice
    assert len(batches) == math.ceil(len(must) / 50) == report.requests
    assert all(len(b) == 50 for b in batches[:-1])
    # Sent in the order of the first path each stands for; every path reported purged once.
    assert batches[0][:3] == ["early/*", "late/*", "f/00000.png"]
    assert report.ok and sorted(report.purged) == sorted({p.lstrip("/") for p in paths})


@pytest.mark.looptime
async def test_preparing_a_large_purge_lets_other_tasks_run() -> None:
    """Checking, planning and queueing 50 chunks of paths yields to the loop between chunks:
    another task (a web backend's handlers, say) runs many times before the first request."""
    paths = [f"img/{i}.png" for i in range(50 * CHUNK)]

    async with FakeCDNServer() as server:

        async def other_task() -> int:
            """Its turns on the loop until the purge's first request reaches the server."""
            turns = 0
            while True:
                if server.journal:
                    return turns
                turns += 1
                await asyncio.sleep(0)

        ep = server.add_endpoint(ORIGIN)["id"]
        async with CDNClient(server.token, base_url=server.url) as cdn:
            other = asyncio.create_task(other_task())
            purge = asyncio.create_task(cdn.endpoints.purge(ep, paths))
            before_first_request = await other
            purge.cancel()
            with pytest.raises(asyncio.CancelledError):
                await purge
    # At least one turn per chunk checked and per chunk planned.
    assert before_first_request >= 2 * 50


@pytest.mark.looptime
async def test_a_purge_cancelled_while_being_prepared_sends_nothing() -> None:
    async with FakeCDNServer() as server:
        ep = server.add_endpoint(ORIGIN)["id"]
        async with CDNClient(server.token, base_url=server.url) as cdn:
            purge = asyncio.create_task(
                cdn.endpoints.purge(ep, [f"img/{i}.png" for i in range(10 * CHUNK)])
            )
            for _ in range(5):  # a few chunks in: still checking the paths
                await asyncio.sleep(0)
            purge.cancel()
            with pytest.raises(asyncio.CancelledError):
                await purge
            await asyncio.sleep(600)
    assert server.journal == []


@pytest.mark.looptime
async def test_a_large_purge_of_a_missing_endpoint_sends_one_request() -> None:
    """The 404 fails every path, those not yet queued included: none is sent after it."""
    missing = "892071a0-bb95-49bc-8021-3afd67a210bf"
    paths = [f"img/{i}.png" for i in range(5 * CHUNK)]
    async with FakeCDNServer() as server, CDNClient(server.token, base_url=server.url) as cdn:
        with pytest.raises(PurgeError) as info:
            await cdn.endpoints.purge(missing, paths)
        await asyncio.sleep(600)
    assert len(server.journal) == 1 and server.journal[0].status == 404
    report = info.value.report
    assert not report.purged and set(report.failed) == set(paths)
    assert all(isinstance(e, NotFoundError) for e in report.failed.values())
    # The one reason, reachable directly (a handler maps it to a 404).
    assert isinstance(info.value.reason, NotFoundError)
    assert info.value.__cause__ is info.value.reason


# -- plan_purge: the public estimate ---------------------------------------------------------


def test_plan_purge_says_what_is_sent_and_what_a_wildcard_covers() -> None:
    got = plan_purge(["/css/a.css", "css/*", "js/app.js", "js/app.js"])
    assert got.paths == ("css/*", "js/app.js")
    assert got.covered == {"css/a.css": "css/*"}
    assert got.requests == 1 and got.seconds == 0.0


def test_plan_purge_estimates_requests_and_seconds_at_the_budgets_pace() -> None:
    got = plan_purge([f"img/{i}.png" for i in range(10_000)])
    assert got.requests == 200
    assert got.seconds == 199 * 20.0  # 50 paths / 20 s: the last batch leaves after 199 periods
    scaled = plan_purge([f"img/{i}.png" for i in range(120)], RateLimits.documented().scaled(0.01))
    assert scaled.requests == 3 and scaled.seconds == pytest.approx(2 * 0.2)


def test_plan_purge_checks_paths_as_purge_does() -> None:
    with pytest.raises(ValidationError):
        plan_purge("img/a.png")  # a bare string would be purged letter by letter


@pytest.mark.looptime
async def test_plan_purge_matches_a_real_purge() -> None:
    paths = [f"img/{i}.png" for i in range(1_000)] + ["css/*", "css/a.css"]
    estimate = plan_purge(paths)
    async with FakeCDNServer() as server, CDNClient(server.token, base_url=server.url) as cdn:
        ep = server.add_endpoint(ORIGIN)["id"]
        loop = asyncio.get_running_loop()
        start = loop.time()
        report = await cdn.endpoints.purge(ep, paths)
        elapsed = loop.time() - start
        sent = [p for e in server.journal if e.op == "purge" for p in e.body["files"]]
    assert report.requests == estimate.requests == 21
    assert tuple(sent) == estimate.paths
    assert elapsed == pytest.approx(estimate.seconds, abs=1.0)
