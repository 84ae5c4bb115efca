"""A purge that meets a deadline: ``plan_purge(..., manifest=, deadline=)`` and
``cdn.endpoints.purge(..., manifest=, deadline=)`` end to end against the fake server, whose
edge cache says which cached paths each purge covered. Virtual time (``looptime``): the
documented budgets' 20 s file windows pass instantly.
"""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import pytest

from cdn_async import CDNClient, PurgeProgress, RateLimits, plan_purge
from cdn_async._purge_plan import entries_within
from cdn_async.errors import ValidationError
from cdn_async.testing import FakeCDNServer

ORIGIN = "site.nyc3.digitaloceanspaces.com"


def site(seed: int = 5) -> tuple[list[str], list[str]]:
    """2,000 files in 10 sections of 20 directories; a release changing some directories
    whole, some in part and single files scattered over every section."""
    rng = random.Random(seed)
    manifest = [f"s{s}/d{d}/f{f}.html" for s in range(10) for d in range(20) for f in range(10)]
    manifest += [f"top{i}.html" for i in range(5)]
    changed: dict[str, None] = {}
    for s in rng.sample(range(10), 3):
        for d in rng.sample(range(20), 12):
            changed.update(dict.fromkeys(f"s{s}/d{d}/f{f}.html" for f in range(10)))
    changed.update(dict.fromkeys(rng.sample(manifest, 300)))
    return manifest, list(changed)


def covers(entry: str, path: str) -> bool:
    return entry == path or entry == "*" or (entry.endswith("/*") and path.startswith(entry[:-1]))


def purged_by(entries: tuple[str, ...], manifest: list[str]) -> set[str]:
    return {f for f in manifest if any(covers(e, f) for e in entries)}


# -- the budget a deadline gives -----------------------------------------------------------------


def test_a_deadline_allows_the_file_budgets_windows_until_then() -> None:
    limits = RateLimits.documented()
    assert entries_within(limits, 0) == 50  # one window now
    assert entries_within(limits, 19.9) == 50
    assert entries_within(limits, 60) == 200  # at 0, 20, 40 and 60 s
    assert entries_within(limits, 60, in_use=30) == 170  # what is used or pending comes first
    # The request budgets bound it too: 5 / 10 s of 50 files each is never the tighter here.
    assert entries_within(limits, 4020) == 50 * 202


def test_the_plan_fits_the_deadline_and_purges_the_fewest_unchanged_files() -> None:
    manifest, changed = site()
    plan = plan_purge(changed, manifest=manifest, deadline=60)
    assert plan.allowed == 200 and plan.fits and plan.late_by == 0.0
    assert len(plan.paths) <= 200 and plan.seconds <= 60
    assert plan.requests == -(-len(plan.paths) // 50)
    # Every changed path is sent or covered by a wildcard sent.
    assert set(changed) == {p for p in changed if p in plan.paths} | set(plan.covered)
    assert all(plan.covered[p] in plan.paths and covers(plan.covered[p], p) for p in plan.covered)
    # What it says it purges unchanged is what its entries purge.
    assert plan.unchanged == len(purged_by(plan.paths, manifest) - set(changed))
    assert plan.unchanged == sum(plan.unchanged_by.values())
    assert set(plan.wildcards) == {p for p in plan.paths if p.endswith("*")}
    # A later deadline never purges more unchanged files.
    later = plan_purge(changed, manifest=manifest, deadline=timedelta(minutes=2))
    assert later.allowed == 350 and later.unchanged <= plan.unchanged
    # The exact purge, when its deadline allows it: nothing unchanged purged.
    exact = plan_purge(changed, manifest=manifest, deadline=3600)
    assert exact.unchanged == 0 and len(exact.paths) <= len(changed)


def test_star_alone_only_when_allowed() -> None:
    manifest, changed = site()
    tight = plan_purge(changed, manifest=manifest, entries=1)
    assert "*" not in tight.paths and not tight.fits  # one entry per section at least
    assert len(tight.paths) == len({p.split("/")[0] for p in changed})
    assert plan_purge(changed, manifest=manifest, entries=1, allow_all=True).paths == ("*",)


def test_without_a_manifest_the_deadline_only_checks_the_fit() -> None:
    _, changed = site()
    plan = plan_purge(changed, deadline=60)
    assert plan.paths == tuple(changed) and plan.unchanged == 0  # nothing collapsed
    assert not plan.fits and plan.allowed == 200
    assert plan.late_by == plan.seconds - 60 > 0


def test_changed_paths_missing_from_the_manifest_are_sent_exactly_and_counted() -> None:
    manifest, changed = site()
    plan = plan_purge([*changed, "new/page.html"], manifest=manifest, deadline=60)
    assert plan.unlisted == ("new/page.html",)
    assert "new/page.html" in plan.paths


def test_a_manifest_alone_takes_only_wildcards_that_purge_nothing_unchanged() -> None:
    manifest, changed = site()
    plan = plan_purge(changed, manifest=manifest)
    assert plan.unchanged == 0 and plan.allowed is None
    assert len(plan.paths) < len(changed)  # whole directories changed: one entry each


def test_bad_deadlines_and_manifests_are_refused() -> None:
    with pytest.raises(ValidationError, match="deadline"):
        plan_purge(["a"], deadline=-1)
    with pytest.raises(ValidationError, match="deadline"):
        plan_purge(["a"], deadline=float("nan"))
    with pytest.raises(ValidationError, match="entries"):
        plan_purge(["a"], entries=0)
    with pytest.raises(ValidationError, match="wildcard"):
        plan_purge(["a"], manifest=["a", "b/*"])


# -- end to end against the fake ------------------------------------------------------------------


@pytest.mark.looptime
async def test_a_purge_planned_for_60_s_confirms_every_changed_path_within_60_s() -> None:
    manifest, changed = site()
    async with FakeCDNServer() as server, CDNClient(server.token, base_url=server.url) as cdn:
        ep = server.add_endpoint(ORIGIN)["id"]
        server.cache(ep, manifest)
        batches: list[PurgeProgress] = []
        progress: list[tuple[int, int]] = []
        loop = asyncio.get_running_loop()
        start = loop.time()
        report = await cdn.endpoints.purge(
            ep,
            changed,
            manifest=manifest,
            deadline=60,
            on_batch=batches.append,
            on_progress=lambda done, total: progress.append((done, total)),
        )
        elapsed = loop.time() - start
        # Every changed path was purged at the edge, within the deadline.
        assert all(r.at - start <= 60 for r in server.purges)
        left = server.cached(ep)
    assert elapsed <= 60 + 1
    assert not left & set(changed)
    assert sorted(report.purged) == sorted(changed) and not report.failed
    # The report names the wildcards sent, what each covered, and the unchanged files purged.
    sent = {p for r in server.purges for p in r.files}
    assert set(report.wildcards) == {p for p in sent if p.endswith("*")}
    for wildcard, paths in report.wildcards.items():
        assert set(paths) == {p for p in changed if covers(wildcard, p)}
    assert report.unchanged == len(manifest) - len(left) - len(changed)
    assert report.unlisted == ()
    # Progress counts changed paths, each confirmed once.
    assert progress[-1] == (len(changed), len(changed))
    confirmed = [p for b in batches for p in b.confirmed]
    assert sorted(confirmed) == sorted(changed)


@pytest.mark.looptime
async def test_the_report_counts_changed_paths_missing_from_the_manifest() -> None:
    manifest = [f"a/{i}.html" for i in range(10)] + ["b/1.html"]
    changed = [f"a/{i}.html" for i in range(8)] + ["b/1.html", "new/page.html"]
    async with FakeCDNServer() as server, CDNClient(server.token, base_url=server.url) as cdn:
        ep = server.add_endpoint(ORIGIN)["id"]
        report = await cdn.endpoints.purge(ep, changed, manifest=manifest, deadline=0)
        sent = [p for r in server.purges for p in r.files]
    assert report.unlisted == ("new/page.html",)
    assert sorted(report.purged) == sorted(changed)
    # Fifty entries fit at once: nothing collapsed, the unlisted path sent as itself.
    assert sorted(sent) == sorted(changed) and report.wildcards == {} and report.unchanged == 0


@pytest.mark.looptime
async def test_a_deadline_that_cannot_be_met_is_refused_before_anything_is_sent() -> None:
    manifest, changed = site()
    async with FakeCDNServer() as server, CDNClient(server.token, base_url=server.url) as cdn:
        ep = server.add_endpoint(ORIGIN)["id"]
        with pytest.raises(ValidationError, match=r"miss it by \d+ s"):
            await cdn.endpoints.purge(ep, changed, deadline=60)
        # With the file budget spent, a deadline of now leaves no entry at all.
        await cdn.endpoints.purge(ep, [f"x/{i}" for i in range(50)])
        with pytest.raises(ValidationError, match="allows 0"):
            await cdn.endpoints.purge(ep, changed, manifest=manifest, deadline=0)
        assert [len(e.body["files"]) for e in server.journal if e.op == "purge"] == [50]


@pytest.mark.looptime
async def test_the_fake_counts_a_wildcard_as_one_file_and_reports_what_it_covered() -> None:
    async with FakeCDNServer() as server, CDNClient(server.token, base_url=server.url) as cdn:
        ep = server.add_endpoint(ORIGIN)["id"]
        server.cache(ep, ["a/1", "a/b/2", "ab/3", "c", "d"])
        await cdn.endpoints.purge(ep, ["a/*", "c", "missing"])
        assert server.used(server.token, "purge_files") == 3
        (record,) = server.purges
        assert record.covered == {"a/*": ("a/1", "a/b/2"), "c": ("c",), "missing": ()}
        assert record.purged == {"a/1", "a/b/2", "c"}
        assert server.cached(ep) == {"ab/3", "d"}
        await cdn.endpoints.purge(ep, ["*"])
        assert server.purges[-1].covered == {"*": ("ab/3", "d")} and not server.cached(ep)
