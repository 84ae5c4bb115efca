"""``cdn-async`` as a CI job runs it: stopped by SIGTERM or SIGHUP, exit codes a pipeline can
act on, a heartbeat in logs, doctl's token variable, truthful waits, and the fake server's
faults from a shell. Real processes and real signals; helpers from ``test_cli``."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Callable

import aiohttp
import pytest
import redis.asyncio as aioredis

from cdn_async import CDNClient
from cdn_async._cli._output import EXIT_STATUSES
from cdn_async._cli._progress import HeartbeatProgress
from cdn_async.redis import token_id_for
from cdn_async.testing import FakeCDNServer

from ._cli_launcher import Child, launcher
from .test_cli import (
    REPORT_KEYS,
    SCALE,
    UNKNOWN_ID,
    Result,
    assert_reports_what_the_server_purged,
    cli_env,
    confirmed,
    finish,
    kill_children,
    new_redis_for,
    purge_bodies,
    redis_url,
    run_cli,
    start_cli,
)

__all__ = ["kill_children", "redis_url"]  # fixtures, used by name

ORIGIN = "static.nyc3.digitaloceanspaces.com"


async def start_purge(
    server: FakeCDNServer, cdn_id: str, paths: list[str], *extra: str, env: dict[str, str]
) -> Child:
    return await start_cli(
        "purge",
        cdn_id,
        "--from-file",
        "-",
        "--json",
        *extra,
        server=server,
        env=env,
        stdin="\n".join(paths) + "\n",
    )


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition()`` every 20 ms, for up to 30 s (a real process is on the other side)."""
    for _ in range(1500):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def stop_mid_purge(proc: Child, server: FakeCDNServer, sig: int) -> Result:
    """Send ``sig`` once the server has had a purge request, and the job's result; nothing
    was sent after the signal (the batch on the wire aside)."""
    await until(lambda: len(purge_bodies(server)) >= 1)
    proc.send_signal(sig)
    answered = len(purge_bodies(server))
    result = await finish(proc, server.token)
    assert len(purge_bodies(server)) <= answered + 1  # nothing sent after the signal
    return result


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
@pytest.mark.fake_cdn(time_scale=SCALE, purge_duration=0.25)
async def test_sigterm_and_sighup_stop_a_purge_like_ctrl_c(
    fake_cdn: FakeCDNServer, sig: signal.Signals, code: int
) -> None:
    """A pipeline's stop signal: the purge stops sending, waits for the batch on the wire,
    prints the partial report on stdout and exits 128 + the signal."""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    paths = [f"img/{i}.png" for i in range(600)]
    proc = await start_purge(fake_cdn, cdn_id, paths, env=cli_env(fake_cdn))
    result = await stop_mid_purge(proc, fake_cdn, sig)
    assert result.code == code, result.err
    report = result.json()
    assert set(report) == REPORT_KEYS and report["status"] == "interrupted"
    assert_reports_what_the_server_purged(report, fake_cdn, result.err)  # the batch on the wire
    assert 0 < len(report["purged"]) < 600
    assert sorted([*report["purged"], *report["failed"]]) == sorted(paths)
    assert f"Interrupted by {sig.name}" in result.err and f"exit {code}" in result.err


@pytest.mark.fake_cdn(time_scale=SCALE, purge_duration=0.25)
async def test_sigterm_with_redis_reports_queued_paths_as_queued(
    fake_cdn: FakeCDNServer, redis_url: str
) -> None:
    """With --redis, an interrupted purge's unsent paths stay in the shared queue: they are
    reported queued (JSON and table), not failed, and a purge-worker sends exactly them."""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    paths = [f"img/{i}.png" for i in range(200)]
    env = cli_env(fake_cdn, CDN_ASYNC_REDIS_URL=redis_url)
    await new_redis_for(redis_url, fake_cdn.token)
    json_job = await start_purge(fake_cdn, cdn_id, paths, env=env)
    result = await stop_mid_purge(json_job, fake_cdn, signal.SIGTERM)
    assert result.code == 143, result.err
    report = result.json()
    sent = confirmed(fake_cdn)
    assert set(report["purged"]) == sent and report["failed"] == {}
    assert sorted([*report["purged"], *report["queued"]]) == sorted(paths)
    assert report["queued"] and "still queued in the shared purge queue" in result.err
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        tag = f"{{cdn-async:{token_id_for(fake_cdn.token)}}}:pq"
        pending = set(await redis.zrange(f"{tag}:p:{cdn_id}", 0, -1))
        flying = set(await redis.hkeys(f"{tag}:f:{cdn_id}")) - {""}
    finally:
        await redis.aclose()
    assert pending | flying == set(report["queued"])

    # The table says the same without --json; then a worker sends the queued paths, once.
    table_job = await start_cli(
        "purge", cdn_id, "extra/a.png", "extra/b.png", "--no-progress", server=fake_cdn, env=env
    )
    await until(lambda: len(purge_bodies(fake_cdn)) > len(sent) // 50)
    table_job.send_signal(signal.SIGTERM)
    table = await finish(table_job, fake_cdn.token)
    # Its own paths are behind the first job's queued ones, which it drains as it waits.
    assert table.code == 143, table.err
    for path in ("extra/a.png", "extra/b.png"):
        assert re.search(rf"queued\W+{path}\W+still in the shared purge queue", table.out)
    fake_cdn.purge_duration = 0.0  # no more batches to stop on the wire
    worker = await run_cli("purge-worker", "--until-idle", server=fake_cdn, env=env)
    assert worker.code == 0, worker.err
    every = [p for body in purge_bodies(fake_cdn) for p in body]
    assert len(every) == len(set(every))  # nothing sent twice
    assert set(every) == set(paths) | {"extra/a.png", "extra/b.png"}


async def test_a_second_signal_stops_waiting_for_the_batch_on_the_wire() -> None:
    """A purge waiting for a slow batch after SIGTERM stops at a second signal, reporting
    that batch's paths as not confirmed."""
    async with FakeCDNServer(time_scale=SCALE, purge_duration=30.0) as server:
        cdn_id = server.add_endpoint(ORIGIN)["id"]
        proc = await start_purge(server, cdn_id, ["a.png", "b.png"], env=cli_env(server))
        await until(lambda: _arrived(server))
        assert proc.stderr is not None
        proc.send_signal(signal.SIGTERM)
        line = await asyncio.wait_for(proc.stderr.readline(), 20)
        while b"waiting for the batch on the wire" not in line:
            line = await asyncio.wait_for(proc.stderr.readline(), 20)
        proc.send_signal(signal.SIGTERM)
        result = await finish(proc, server.token)
    assert result.code == 143, result.err
    failed = result.json()["failed"]
    assert set(failed) == {"a.png", "b.png"}
    assert set(failed.values()) == {"interrupted before this path was confirmed purged"}


async def test_an_inherited_ignored_sigint_stays_ignored() -> None:
    """A job started with SIGINT ignored (a shell's background job; nohup does the same for
    SIGHUP) keeps ignoring it; SIGTERM still stops it."""
    async with FakeCDNServer(time_scale=SCALE, purge_duration=0.15) as server:
        cdn_id = server.add_endpoint(ORIGIN)["id"]
        paths = [f"img/{i}.png" for i in range(500)]
        proc = await start_cli("purge", cdn_id, *paths, "--json", server=server, sigint="ignore")
        try:
            await until(lambda: len(purge_bodies(server)) >= 1)
            proc.send_signal(signal.SIGINT)
            with pytest.raises(TimeoutError):  # still purging
                await asyncio.wait_for(proc.wait(), 0.2)
            before = len(purge_bodies(server))
            await until(lambda: len(purge_bodies(server)) > before)  # and still sending
            proc.send_signal(signal.SIGTERM)
            result = await finish(proc, server.token)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert result.code == 143, result.err  # 130 had SIGINT stopped it, however late it exited
    assert_reports_what_the_server_purged(result.json(), server, result.err)


def _arrived(server: FakeCDNServer) -> bool:
    """A purge request is at the server (being served: the journal has it only once it is
    answered); read from the budget window it was counted in."""
    return server.used(server.token, "purge_files") > 0


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_exit_codes_tell_what_happened(fake_cdn: FakeCDNServer) -> None:
    """Each failure a pipeline must tell apart has its own exit code and --json status."""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    reader = fake_cdn.add_token(["cdn:read"])
    env = cli_env(fake_cdn)
    closed_port = f"http://127.0.0.1:{_free_port()}"
    results = await asyncio.gather(
        run_cli("purge", cdn_id, "a.png", "--json", server=fake_cdn),
        run_cli("purge", cdn_id, "--json", server=fake_cdn),
        run_cli(
            "endpoints",
            "list",
            "--json",
            server=fake_cdn,
            env={**env, "DIGITALOCEAN_TOKEN": "dop_v1_bad"},
        ),
        run_cli(
            "purge",
            cdn_id,
            "a.png",
            "--json",
            server=fake_cdn,
            env={**env, "DIGITALOCEAN_TOKEN": reader},
        ),
        run_cli("purge", UNKNOWN_ID, "a.png", "--json", server=fake_cdn),
        run_cli("endpoints", "get", UNKNOWN_ID, "--json", server=fake_cdn),
        run_cli(
            "endpoints",
            "list",
            "--json",
            server=fake_cdn,
            env={**env, "CDN_ASYNC_BASE_URL": closed_port},
        ),
        run_cli("endpoints", "create", ORIGIN, "--json", server=fake_cdn),
    )
    ok, _, unauthorized, _, purge_404, _, _, _ = results
    expected = [0, 2, 4, 5, 6, 6, 7, 1]
    assert [r.code for r in results] == expected, [r.err for r in results]
    for result, code in zip(results, expected, strict=True):
        if code != 2:  # a usage error stops before --json output
            assert result.json()["status"] == EXIT_STATUSES[code][0], result.out
    assert ok.json()["purged"] == ["a.png"]
    assert purge_404.json()["failed"]["a.png"].startswith("404 not_found")
    assert "401" in unauthorized.json()["error"]


async def test_partial_failure_and_a_rate_limit_that_never_clears() -> None:
    """Some paths purged and some failed: exit 3, status "partial", the failed paths in a
    table. Every request refused with 429: exit 8, "rate_limited". (A fake server each, so
    that the three run at once.)"""
    paths = [f"img/{i}.png" for i in range(60)]
    async with (
        FakeCDNServer(time_scale=SCALE) as for_json,
        FakeCDNServer(time_scale=SCALE) as for_table,
        FakeCDNServer(time_scale=SCALE) as refusing,
    ):
        ids = [server.add_endpoint(ORIGIN)["id"] for server in (for_json, for_table, refusing)]
        for server in (for_json, for_table):
            # The second batch fails, its retries too.
            server.faults.fail_next(4, op="purge", skip=1)
        refusing.faults.refuse_randomly(1.0)
        partial, shown, limited = await asyncio.gather(
            run_cli("purge", ids[0], *paths, "--json", server=for_json),
            run_cli("purge", ids[1], *paths, server=for_table),
            # A purge waits out 429s as long as the job needs, unless told when to give up.
            run_cli(
                "purge", ids[2], "a.png", "--json", "--max-rate-limit-wait", "0.1", server=refusing
            ),
        )
    assert partial.code == 3, partial.err
    assert partial.json()["status"] == "partial"
    failed_paths = set(partial.json()["failed"])
    assert failed_paths and set(partial.json()["purged"]) and len(failed_paths) <= 50
    assert failed_paths | set(partial.json()["purged"]) == set(paths)
    assert "exit 3 (partial)" in partial.err
    assert shown.code == 3 and re.search(r"failed\W+img/\d+\.png\W+503", shown.out), shown.out
    assert limited.code == 8, limited.err
    assert limited.json()["status"] == "rate_limited"
    assert refusing.counters.by_rule["fault:429"] >= 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_help_lists_every_exit_code() -> None:
    top = await run_cli("--help", server=None, env=cli_env(None))
    assert top.code == 0
    for code, (status, _) in EXIT_STATUSES.items():
        assert re.search(rf"^\s+{code}\s+{status}: ", top.out, re.MULTILINE), top.out
    assert "143" in top.out and "129" in top.out


@pytest.mark.looptime
async def test_heartbeat_prints_a_line_at_a_steady_pace() -> None:
    """Without a terminal a progress line comes every interval (virtual time here), with the
    counts so far and the rest's estimate from the plan."""
    lines: list[str] = []
    beat = HeartbeatProgress(30.0, description="purging", write=lines.append)
    async with beat:
        beat.announce(5000, "Purging 5000 paths...", requests=100, seconds=99 * 20.0)
        await asyncio.sleep(29.9)
        assert lines == ["Purging 5000 paths..."]
        beat.update(150, 3, failed=0)
        await asyncio.sleep(0.2)
        beat.update(350, 7, failed=50)
        await asyncio.sleep(60)
    assert lines[1:] == [
        "purging: 150 of 5000 paths done (0 failed), 3 of 100 requests, 30 s elapsed, "
        "about 32 min 20 s left at the budgets' pace",
        "purging: 350 of 5000 paths done (50 failed), 7 of 100 requests, 1 min 00 s elapsed, "
        "about 31 min 00 s left at the budgets' pace",
        "purging: 350 of 5000 paths done (50 failed), 7 of 100 requests, 1 min 30 s elapsed, "
        "about 31 min 00 s left at the budgets' pace",
    ]


@pytest.mark.fake_cdn(time_scale=SCALE, purge_duration=0.1)
async def test_heartbeat_lines_in_a_log_not_with_no_progress(fake_cdn: FakeCDNServer) -> None:
    """A purge whose stderr is a pipe prints progress lines at the --heartbeat pace;
    --no-progress and --heartbeat 0 print none."""
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    # Paths of their own: identical purges at once would be answered 409 (one in progress).
    paths, others, more = ([f"{d}/{i}.png" for i in range(120)] for d in ("img", "css", "js"))
    # One token each: three clients on one token without a shared store would draw 429s.
    env = [cli_env(fake_cdn, DIGITALOCEAN_TOKEN=fake_cdn.add_token()) for _ in range(3)]
    logged, quiet, off = await asyncio.gather(
        run_cli("purge", cdn_id, *paths, "--heartbeat", "0.1", server=fake_cdn, env=env[0]),
        run_cli(
            "purge",
            cdn_id,
            *others,
            "--heartbeat",
            "0.2",
            "--no-progress",
            server=fake_cdn,
            env=env[1],
        ),
        run_cli(
            "purge", cdn_id, *more, server=fake_cdn, env={**env[2], "CDN_ASYNC_HEARTBEAT": "0"}
        ),
    )
    assert logged.code == quiet.code == off.code == 0, logged.err + quiet.err + off.err
    beats = re.findall(
        r"^purging: (\d+) of 120 paths done \(0 failed\), (\d+) of \d+ requests",
        logged.err,
        re.MULTILINE,
    )
    assert len(beats) >= 2, logged.err
    assert [int(d) for d, _ in beats] == sorted(int(d) for d, _ in beats)
    assert "purging:" not in quiet.err and "purging:" not in off.err


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_doctl_token_variable_is_read_and_ours_wins(fake_cdn: FakeCDNServer) -> None:
    """$DIGITALOCEAN_ACCESS_TOKEN works alone; with both set, $DIGITALOCEAN_TOKEN wins (in
    the CLI and in CDNClient); neither is ever printed."""
    fake_cdn.add_endpoint(ORIGIN)
    base = cli_env(fake_cdn)
    del base["DIGITALOCEAN_TOKEN"]
    wrong = "dop_v1_" + "0" * 64
    alone, both, swapped = await asyncio.gather(
        run_cli(
            "endpoints",
            "list",
            "--json",
            server=fake_cdn,
            env={**base, "DIGITALOCEAN_ACCESS_TOKEN": fake_cdn.token},
        ),
        run_cli(
            "endpoints",
            "list",
            "--json",
            server=fake_cdn,
            env={**base, "DIGITALOCEAN_TOKEN": fake_cdn.token, "DIGITALOCEAN_ACCESS_TOKEN": wrong},
        ),
        run_cli(
            "endpoints",
            "list",
            "--json",
            server=fake_cdn,
            env={**base, "DIGITALOCEAN_TOKEN": wrong, "DIGITALOCEAN_ACCESS_TOKEN": fake_cdn.token},
        ),
    )
    assert alone.code == both.code == 0, alone.err + both.err
    assert swapped.code == 4 and wrong not in swapped.out + swapped.err

    saved = {
        k: os.environ.pop(k, None) for k in ("DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN")
    }
    try:
        os.environ["DIGITALOCEAN_ACCESS_TOKEN"] = fake_cdn.token
        async with CDNClient(base_url=fake_cdn.url) as cdn:
            assert [ep.origin async for ep in cdn.endpoints.list()] == [ORIGIN]
        os.environ["DIGITALOCEAN_TOKEN"] = wrong
        async with CDNClient(base_url=fake_cdn.url, max_retries=0) as cdn:
            with pytest.raises(Exception, match="401"):
                [ep async for ep in cdn.endpoints.list()]
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value
    assert [e.token for e in fake_cdn.journal[-2:]] == [fake_cdn.token, wrong]


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_a_new_redis_wait_is_counted_in_the_summary(
    fake_cdn: FakeCDNServer, redis_url: str
) -> None:
    """On a Redis with no budget history the first requests wait its recovery grace (3 s;
    0.3 s in these commands): the summary and the JSON count it, in every process, whoever
    sent the batch."""
    grace = 0.3
    cdn_id = fake_cdn.add_endpoint(ORIGIN)["id"]
    env = cli_env(fake_cdn, CDN_ASYNC_REDIS_URL=redis_url)
    args = ("purge", cdn_id, "a.png", "b.png", "--json")
    first, second = await asyncio.gather(
        run_cli(*args, server=fake_cdn, env=env, recovery_grace=grace),
        run_cli(*args, server=fake_cdn, env=env, recovery_grace=grace),
    )
    for result in (first, second):
        assert result.code == 0, result.err
        waited = result.json()["budget_wait"]
        assert waited >= grace * 0.95, result.err
        summary = re.search(
            r"\(([\d.]+) s waiting for rate budgets and the shared queue\)", result.err
        )
        assert summary and float(summary.group(1)) >= grace * 0.95 - 0.05, result.err


async def test_fake_server_injects_429s_and_a_cotenant() -> None:
    """refuse_next refuses without counting (ratelimit-remaining 0, journal rule
    "fault:429"); a co-tenant spending 3 of the cdn budget's 5 units a period leaves 2, and a
    raw client sending 5 at once after our own request sees 4 refused. The server's clock is
    stepped by hand: the windows do not depend on how fast this machine runs."""
    clock = [0.0]
    period = 10 * SCALE
    async with FakeCDNServer(time_scale=SCALE, clock=lambda: clock[0]) as fake_cdn:
        headers = {"Authorization": f"Bearer {fake_cdn.token}"}
        url = f"{fake_cdn.url}/v2/cdn/endpoints"
        fake_cdn.faults.refuse_next(2, retry_after=7)
        async with aiohttp.ClientSession() as http:
            answers = []
            for _ in range(3):
                async with http.get(url, headers=headers) as resp:
                    answers.append(
                        (
                            resp.status,
                            resp.headers.get("Retry-After"),
                            resp.headers["ratelimit-remaining"],
                        )
                    )
            assert answers == [(429, "7", "0"), (429, "7", "0"), (200, None, "4")]
            assert fake_cdn.used(fake_cdn.token, "cdn") == 1  # refused requests count nowhere
            assert [e.rule for e in fake_cdn.journal] == ["fault:429", "fault:429", "ok"]

            clock[0] += period  # the window empties
            tenant = fake_cdn.faults.cotenant(3, budget="cdn")
            async with http.get(url, headers=headers) as resp:
                # The co-tenant spends from this request on: one unit now, and one every
                # third of a period.
                assert resp.status == 200 and resp.headers["ratelimit-remaining"] == "3"
            clock[0] += period * 0.9  # two more of its units, ours still in the window
            statuses = []
            for resp in await asyncio.gather(*(http.get(url, headers=headers) for _ in range(5))):
                statuses.append(resp.status)
                resp.release()
    assert tenant.spent == 3
    assert sorted(statuses) == [200, 429, 429, 429, 429]


@pytest.mark.parametrize("entry", ["cdn-async", "python -m cdn_async.testing"])
async def test_fake_server_from_a_shell_with_faults_prints_totals_on_sigterm(entry: str) -> None:
    """The fake server takes its faults as options (here: a fixed token, the first two
    requests refused with 429, a co-tenant), serves a pipeline, and on SIGTERM prints its
    totals (requests by status, 429s, paths purged) and exits 0."""
    token = "dop_v1_" + "ab" * 32
    options = [
        "--port",
        "0",
        "--time-scale",
        str(SCALE),
        "--token",
        token,
        "--refuse-next",
        "2",
        "--cotenant",
        "cdn=1",
    ]
    if entry == "cdn-async":
        proc = await start_cli("fake-server", *options, server=None, env=cli_env(None))
    else:
        proc = await launcher().spawn(options, cli_env(None), module="cdn_async.testing")
    assert proc.stdout is not None
    banner = ""
    url = None
    while url is None:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
        assert line, "fake server exited early"
        banner += line.decode()
        url = re.search(r"http://127\.0\.0\.1:\d+", banner)
    env = cli_env(
        None, DIGITALOCEAN_TOKEN=token, CDN_ASYNC_BASE_URL=url[0], CDN_ASYNC_TIME_SCALE=str(SCALE)
    )
    created = await run_cli("endpoints", "create", ORIGIN, "--json", server=None, env=env)
    assert created.code == 0, created.err  # the two 429s were retried
    purged = await run_cli("purge", created.json()["id"], "a.png", "b.png", server=None, env=env)
    assert purged.code == 0, purged.err
    proc.send_signal(signal.SIGTERM)
    stopped = await finish(proc, None)
    assert stopped.code == 0, stopped.err
    assert re.search(
        r"Totals: 4 requests \(1 x 201, 1 x 204, 2 x 429\); 2 x 429 \(2 injected, 0 over a "
        r"budget\); 0 dropped; 2 paths purged; co-tenant spent \d+ units of cdn\.",
        stopped.out,
    ), stopped.out
