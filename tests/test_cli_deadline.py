"""``cdn-async purge ID --from-file changed.txt --manifest all.txt --deadline 60s``, run as a
subprocess against the fake server at a time scale (``test_cli``'s helpers)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from cdn_async.testing import FakeCDNServer

from .test_cli import (
    SCALE,
    assert_reports_what_the_server_purged,
    cli_env,
    run_cli,
)
from .test_cli_pipeline import start_purge, stop_mid_purge
from .test_deadline_purge import ORIGIN, covers, site


def write_site(tmp_path: Path) -> tuple[list[str], list[str], str, str]:
    manifest, changed = site()
    all_txt, changed_txt = tmp_path / "all.txt", tmp_path / "changed.txt"
    all_txt.write_text("\n".join(manifest) + "\n")
    changed_txt.write_text("# changed in this release\n" + "\n".join(changed) + "\n")
    return manifest, changed, str(all_txt), str(changed_txt)


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_dry_run_prints_the_plan_and_sends_nothing(
    fake_cdn: FakeCDNServer, tmp_path: Path
) -> None:
    _, changed, all_txt, changed_txt = write_site(tmp_path)
    ep = fake_cdn.add_endpoint(ORIGIN)["id"]
    args = ("purge", ep, "--from-file", changed_txt, "--manifest", all_txt, "--dry-run")
    no_token = cli_env(None)
    table = await run_cli(*args, "--deadline", "60s", server=None, env=no_token)
    assert table.code == 0, table.err
    assert "unchanged files purged" in table.out and "allows 200 entries" in table.out
    assert "fits" in table.out
    plan = (await run_cli(*args, "--deadline", "1m", "--json", server=None, env=no_token)).json()
    assert plan["fits"] and plan["allowed"] == 200 and len(plan["entries"]) <= 200
    for wildcard, what in plan["wildcards"].items():
        assert set(what["covers"]) == {p for p in changed if covers(wildcard, p)}
    assert plan["unchanged"] == sum(w["unchanged"] for w in plan["wildcards"].values())
    # Without a manifest nothing is collapsed: the plan misses, and says by how much.
    missed = await run_cli(
        "purge",
        ep,
        "--from-file",
        changed_txt,
        "--deadline",
        "60",
        "--dry-run",
        "--json",
        server=None,
        env=no_token,
    )
    assert missed.code == 1 and not missed.json()["fits"] and missed.json()["late_by"] > 0
    assert not fake_cdn.journal


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_purge_with_a_manifest_meets_its_deadline(
    fake_cdn: FakeCDNServer, tmp_path: Path
) -> None:
    manifest, changed, all_txt, changed_txt = write_site(tmp_path)
    ep = fake_cdn.add_endpoint(ORIGIN)["id"]
    fake_cdn.cache(ep, manifest)
    # 60 s at the real budget is 0.6 s at this scale.
    args = ("purge", ep, "--from-file", changed_txt, "--manifest", all_txt, "--json")
    result = await run_cli(*args, "--deadline", "0.6s", "--no-progress", server=fake_cdn)
    assert result.code == 0, result.err
    report = result.json()
    assert sorted(report["purged"]) == sorted(changed) and not report["failed"]
    assert not fake_cdn.cached(ep) & set(changed)
    assert report["unchanged"] == len(manifest) - len(fake_cdn.cached(ep)) - len(changed)
    sent = [p for r in fake_cdn.purges for p in r.files]
    assert set(report["wildcards"]) == {p for p in sent if p.endswith("*")}
    # What 0.6 s allows (the dry run's 200 entries, 4 requests a window apart): when the
    # last request goes is the engine's to keep (test_deadline_purge, in virtual time), the
    # plan the command's to make.
    assert len(sent) <= 200 and len(fake_cdn.purges) <= 4
    # Without the manifest the plan cannot meet the deadline: refused, nothing sent.
    before = len(fake_cdn.purges)
    late = await run_cli(
        "purge", ep, "--from-file", changed_txt, "--deadline", "0.6s", server=fake_cdn
    )
    assert late.code == 2 and "cannot meet its deadline" in late.err
    assert len(fake_cdn.purges) == before


@pytest.mark.fake_cdn(time_scale=SCALE, purge_duration=0.25)
async def test_sigterm_stops_a_purge_with_a_deadline_and_reports_every_path(
    fake_cdn: FakeCDNServer,
) -> None:
    """A pipeline's stop signal reaches a --deadline purge too, and is handled as for any
    purge: nothing more sent, the batch on the wire waited for (its paths reported purged,
    as the server confirmed them), exit 143, a JSON report with status "interrupted" in
    which every changed path is purged or failed, none dropped."""
    ep = fake_cdn.add_endpoint(ORIGIN)["id"]
    paths = [f"img/{i}.png" for i in range(600)]
    proc = await start_purge(fake_cdn, ep, paths, "--deadline", "1h", env=cli_env(fake_cdn))
    result = await stop_mid_purge(proc, fake_cdn, signal.SIGTERM)
    assert result.code == 143, result.err
    report = result.json()
    assert report["status"] == "interrupted"
    assert_reports_what_the_server_purged(report, fake_cdn, result.err)
    assert 0 < len(report["purged"]) < 600
    assert sorted([*report["purged"], *report["failed"]]) == sorted(paths)
    assert "Interrupted by SIGTERM" in result.err
    assert "waiting for the batch on the wire" in result.err
