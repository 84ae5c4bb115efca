"""``cdn-async`` commands share their budgets on one host by default (a SQLite file per user and
token), run as real parallel processes against the fake API.

``XDG_RUNTIME_DIR`` is a fresh directory per test (``conftest.py``), so the budget file lives
there.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from cdn_async.redis import token_id_for
from cdn_async.testing import FakeCDNServer

from .test_cli import SCALE, cli_env, finish, run_cli, start_cli


def budget_file(token: str) -> Path:
    return (
        Path(os.environ["XDG_RUNTIME_DIR"]) / "cdn-async" / f"budgets-{token_id_for(token)}.sqlite3"
    )


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_parallel_purge_jobs_share_the_budgets_with_no_flags(
    fake_cdn: FakeCDNServer,
) -> None:
    """4 jobs at once, 40 distinct paths each (more than one window of the files budget
    between them), no --redis: 0 x 429, every job exits 0, every path reaches the server
    once, and the budgets lived in the token's file."""
    ep = fake_cdn.add_endpoint("static.nyc3.digitaloceanspaces.com")["id"]
    jobs = [
        await start_cli("purge", ep, *(f"job{j}/p{i}.png" for i in range(40)), server=fake_cdn)
        for j in range(4)
    ]
    results = await asyncio.gather(*(finish(p, fake_cdn.token) for p in jobs))
    assert [r.code for r in results] == [0] * 4, [r.err for r in results]
    assert fake_cdn.counters.rate_limited == {}
    sent = [p for e in fake_cdn.journal if e.op == "purge" for p in e.body["files"]]
    assert sorted(sent) == sorted(f"job{j}/p{i}.png" for j in range(4) for i in range(40))
    assert budget_file(fake_cdn.token).exists()


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_the_budget_file_is_named_by_the_tokens_id_and_can_be_turned_off(
    fake_cdn: FakeCDNServer,
) -> None:
    ep = fake_cdn.add_endpoint("static.nyc3.digitaloceanspaces.com")["id"]
    path = budget_file(fake_cdn.token)
    off = await run_cli("purge", ep, "a.png", "--no-share-budgets", server=fake_cdn)
    assert off.code == 0, off.err
    env = cli_env(fake_cdn, CDN_ASYNC_SHARE_BUDGETS="0")
    off_env = await run_cli("purge", ep, "b.png", server=fake_cdn, env=env)
    assert off_env.code == 0, off_env.err
    assert not path.parent.exists()
    on = await run_cli("endpoints", "list", server=fake_cdn)
    assert on.code == 0, on.err
    assert [p.name for p in path.parent.iterdir() if p.suffix == ".sqlite3"] == [path.name]
    assert fake_cdn.token not in str(path)


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_a_directory_that_cannot_be_made_falls_back_to_this_process_with_a_warning(
    fake_cdn: FakeCDNServer, tmp_path: Path
) -> None:
    ep = fake_cdn.add_endpoint("static.nyc3.digitaloceanspaces.com")["id"]
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")  # the runtime "directory" is a file: nothing can be made in it
    env = cli_env(fake_cdn, XDG_RUNTIME_DIR=str(blocker))
    result = await run_cli("purge", ep, "a.png", server=fake_cdn, env=env)
    assert result.code == 0, result.err
    assert "rate budgets kept in this process only" in result.err
    assert str(blocker) in result.err
    assert [e.status for e in fake_cdn.journal] == [204]


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_a_corrupt_budget_file_is_a_clear_error_and_nothing_is_sent(
    fake_cdn: FakeCDNServer,
) -> None:
    ep = fake_cdn.add_endpoint("static.nyc3.digitaloceanspaces.com")["id"]
    path = budget_file(fake_cdn.token)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage " * 1024)
    result = await run_cli("purge", ep, "a.png", server=fake_cdn)
    assert result.code == 1
    assert str(path) in result.err and "delete it" in result.err
    assert fake_cdn.journal == []
