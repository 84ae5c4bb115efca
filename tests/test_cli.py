"""The ``cdn-async`` command, run as a real process against a fake API server.

Every run goes through ``run_cli``, which also checks that the API token appears nowhere in
the command's stdout or stderr. The processes are forked from one launcher that imported the
command once (``_cli_launcher``). Children restore SIGINT's handler (pytest may run with
SIGINT ignored, which a child would inherit) and any still running are killed in teardown, so
a test never hangs on a child that ignored its signal.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import redis.asyncio as aioredis

from benchmarks._redis_server import RedisServer
from cdn_async import RateLimits
from cdn_async._cli import EXTRA_HINT
from cdn_async.redis import RedisBudgetStore, token_id_for
from cdn_async.testing import FakeCDNServer

from ._cli_launcher import Child, launcher

SCALE = 0.01  # budgets 100x faster: the files budget is 50 paths / 0.2 s
ENDPOINT_KEYS = {"id", "origin", "endpoint", "ttl", "created_at", "certificate_id", "custom_domain"}
REPORT_KEYS = {"status", "endpoint_id", "purged", "failed", "queued", "requests", "budget_wait"}
# "error: " and str(APIError): status, error id, method and path, message, request id.
API_ERROR_LINE = re.compile(
    r"^error: 404 not_found (GET|DELETE) /v2/cdn/endpoints/\S+: .+ \(request_id=[0-9a-f-]{36}\)$"
)
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


@attrs.frozen
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def cli_env(server: FakeCDNServer | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDN_ASYNC", "DIGITALOCEAN"))}
    env.pop("COLUMNS", None)
    if server is not None:
        env.update(
            DIGITALOCEAN_TOKEN=server.token,
            CDN_ASYNC_BASE_URL=server.url,
            CDN_ASYNC_TIME_SCALE=str(SCALE),
        )
    env.update(extra)
    return env


_children: list[Child] = []
launcher()  # started at collection: its imports overlap the other modules'


@pytest.fixture(autouse=True)
async def kill_children() -> AsyncIterator[None]:
    """Kill any child a test left running (a failed assertion before its signal)."""
    yield
    while _children:
        proc = _children.pop()
        proc.kill()
        await proc.communicate()


async def start_cli(
    *args: str,
    server: FakeCDNServer | None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    sigint: str = "default",
    recovery_grace: float | None = None,
) -> Child:
    """``cdn-async ARGS`` as a real process, forked from the launcher (``_cli_launcher``):
    ``stdin`` is its standard input; SIGINT's handler is restored (pytest may run with
    SIGINT ignored, which a child would inherit), unless ``sigint="ignore"``;
    ``recovery_grace`` replaces the 3 s a RedisBudgetStore waits on a new Redis."""
    proc = await launcher().spawn(
        list(args),
        env if env is not None else cli_env(server),
        stdin=stdin,
        sigint=sigint,
        recovery_grace=recovery_grace,
    )
    _children.append(proc)
    return proc


async def finish(proc: Child, secret: str | None) -> Result:
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    result = Result(proc.returncode or 0, out.decode(), err.decode())
    if secret is not None:
        assert secret not in result.out, "token leaked to stdout"
        assert secret not in result.err, "token leaked to stderr"
    return result


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A fresh redis-server's URL (the server fixture is in conftest.py)."""
    return redis_server.url


async def new_redis_for(redis_url: str, token: str) -> None:
    """Tell the budgets this Redis is new (no process can have lost units in it), so the
    commands' stores skip the wait a store applies to an empty Redis (``recovery_grace``)."""
    store = RedisBudgetStore(
        redis_url, token_id=token_id_for(token), recovery_grace=0.0, _restart_hold=False
    )
    try:
        store.release(await store.acquire(RateLimits.documented().scaled(SCALE).claims()))
    finally:
        await store.aclose()


async def run_cli(
    *args: str,
    server: FakeCDNServer | None,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    recovery_grace: float | None = None,
) -> Result:
    proc = await start_cli(
        *args, server=server, env=env, stdin=stdin, recovery_grace=recovery_grace
    )
    return await finish(proc, server.token if server is not None else None)


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_endpoint_commands_print_tables_and_json(fake_cdn: FakeCDNServer) -> None:
    """create, list, get and update print a table by default and the endpoint JSON with --json."""
    origin = "static.nyc3.digitaloceanspaces.com"
    created = await run_cli("endpoints", "create", origin, "--ttl", "600", server=fake_cdn)
    assert created.code == 0, created.err
    assert origin in created.out and "600" in created.out and "created_at" in created.out

    made = await run_cli(
        "endpoints", "create", "assets.ams3.digitaloceanspaces.com", "--json", server=fake_cdn
    )
    assert made.code == 0, made.err
    assert set(made.json()) == ENDPOINT_KEYS
    assert made.json()["ttl"] == 3600  # the server's default: --ttl not sent

    listed, table = await asyncio.gather(
        run_cli("endpoints", "list", "--json", server=fake_cdn),
        run_cli("endpoints", "list", server=fake_cdn),
    )
    assert listed.code == table.code == 0
    assert [e["origin"] for e in listed.json()] == [origin, "assets.ams3.digitaloceanspaces.com"]
    assert all(set(e) == ENDPOINT_KEYS for e in listed.json())
    for column in ("id", "origin", "endpoint", "ttl", "custom_domain", "created_at"):
        assert column in table.out
    assert made.json()["id"] in table.out

    cdn_id = made.json()["id"]
    got, updated = await asyncio.gather(
        run_cli("endpoints", "get", cdn_id, "--json", server=fake_cdn),
        run_cli("endpoints", "update", cdn_id, "--ttl", "60", "--json", server=fake_cdn),
    )
    assert got.json()["id"] == cdn_id
    assert updated.code == 0 and updated.json()["ttl"] == 60
    assert fake_cdn.counters.rate_limited.total() == 0


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_exit_codes_and_error_lines(fake_cdn: FakeCDNServer) -> None:
    """An API error is one line with status, error id and request_id (an unknown endpoint
    exits 6); bad input, a missing token and unknown commands are usage errors (exit 2)."""
    cdn_id = fake_cdn.add_endpoint("static.nyc3.digitaloceanspaces.com")["id"]
    not_found, bad_id, nothing, bad_ttl, no_token, unknown, purge_404 = await asyncio.gather(
        run_cli("endpoints", "get", UNKNOWN_ID, server=fake_cdn),
        run_cli("endpoints", "get", "not-a-uuid", server=fake_cdn),
        run_cli("endpoints", "update", cdn_id, server=fake_cdn),
        run_cli("endpoints", "update", cdn_id, "--ttl", "61", server=fake_cdn),
        run_cli(
            "endpoints",
            "list",
            server=fake_cdn,
            env=cli_env(fake_cdn, DIGITALOCEAN_TOKEN=""),
        ),
        run_cli("endpoint", "list", server=fake_cdn),
        run_cli("purge", UNKNOWN_ID, "a.png", server=fake_cdn),
    )
    assert not_found.code == 6 and not_found.out == ""
    assert API_ERROR_LINE.match(not_found.err.strip()), not_found.err
    assert (bad_id.code, nothing.code, bad_ttl.code, no_token.code, unknown.code) == (2,) * 5
    assert bad_id.err.startswith("error: cdn_id must be a UUID")
    assert "at least one of ttl" in nothing.err
    assert "ttl must be one of" in bad_ttl.err
    assert "no API token: set $DIGITALOCEAN_TOKEN or pass --token" in no_token.err
    assert "$DIGITALOCEAN_ACCESS_TOKEN" in no_token.err
    assert "No such command" in unknown.err
    assert purge_404.code == 6
    assert any(API_ERROR_LINE.match(line) for line in purge_404.err.splitlines()), purge_404.err


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_token_option_and_base_url_option(fake_cdn: FakeCDNServer) -> None:
    """--token, --base-url and --time-scale work without the environment, and --token is
    never echoed back."""
    env = cli_env(None)
    result = await run_cli(
        "endpoints",
        "list",
        "--json",
        "--token",
        fake_cdn.token,
        "--base-url",
        fake_cdn.url,
        "--time-scale",
        str(SCALE),
        server=fake_cdn,
        env=env,
    )
    assert result.code == 0, result.err
    assert result.json() == []
    insecure = await run_cli(
        "endpoints", "list", "--base-url", "http://example.com", server=fake_cdn
    )
    assert insecure.code == 2 and "https" in insecure.err


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_delete_asks_unless_yes(fake_cdn: FakeCDNServer) -> None:
    """delete asks on stderr; "n" keeps the endpoint (exit 1), "y" and --yes delete it."""
    ids = [fake_cdn.add_endpoint(f"site{i}.nyc3.digitaloceanspaces.com")["id"] for i in range(3)]
    declined = await run_cli("endpoints", "delete", ids[0], server=fake_cdn, stdin="n\n")
    confirmed, forced = await asyncio.gather(
        run_cli("endpoints", "delete", ids[1], server=fake_cdn, stdin="y\n"),
        run_cli("endpoints", "delete", ids[2], "--yes", "--json", server=fake_cdn),
    )
    assert declined.code == 1 and "Delete CDN endpoint" in declined.err
    assert "Not deleted" in declined.err
    assert confirmed.code == 0 and f"Deleted CDN endpoint {ids[1]}" in confirmed.out
    assert forced.code == 0 and forced.json() == {"deleted": ids[2]}
    assert "Delete CDN endpoint" not in forced.err
    assert [e["id"] for e in fake_cdn.endpoints] == [ids[0]]


def purge_bodies(server: FakeCDNServer) -> list[list[str]]:
    return [
        e.body["files"]
        for e in server.journal
        if e.op == "purge" and e.status == 204 and isinstance(e.body, dict)
    ]


def confirmed(server: FakeCDNServer) -> set[str]:
    return {p for body in purge_bodies(server) for p in body}


def assert_reports_what_the_server_purged(
    report: dict[str, Any], server: FakeCDNServer, err: str
) -> None:
    """A stopped purge reports purged exactly the paths the server confirmed: it waits for
    the batch on the wire. If that batch outlasts the wait (5 s, said on stderr: a very loaded
    machine), its paths are reported not confirmed instead, never dropped."""
    purged, by_server = set(report["purged"]), confirmed(server)
    if "did not finish within" not in err:
        assert purged == by_server
        return
    assert purged <= by_server
    for path in by_server - purged:
        assert report["failed"][path] == "interrupted before this path was confirmed purged"


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_purge_paths_prints_the_report_as_json(fake_cdn: FakeCDNServer) -> None:
    """--json prints the PurgeReport; duplicates and covered paths are not sent."""
    cdn_id = fake_cdn.add_endpoint("static.nyc3.digitaloceanspaces.com")["id"]
    result = await run_cli(
        "purge", cdn_id, "a.png", "/a.png", "css/*", "css/site.css", "--json", server=fake_cdn
    )
    assert result.code == 0, result.err
    report = result.json()
    assert set(report) == REPORT_KEYS
    assert report["endpoint_id"] == cdn_id
    assert sorted(report["purged"]) == ["a.png", "css/*", "css/site.css"]
    assert report["failed"] == {} and report["requests"] == 1
    assert [sorted(b) for b in purge_bodies(fake_cdn)] == [["a.png", "css/*"]]
    assert "Purged 3 of 3 paths" in result.err  # the summary goes to stderr with --json


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_purge_from_stdin_in_batches(fake_cdn: FakeCDNServer) -> None:
    """--from-file - reads paths from stdin (blank lines, comments skipped), each sent once,
    at most 50 a request, with no 429; the summary goes to stdout."""
    cdn_id = fake_cdn.add_endpoint("static.nyc3.digitaloceanspaces.com")["id"]
    lines = ["# changed files", ""] + [f"img/{i}.png" for i in range(120)]
    result = await run_cli(
        "purge", cdn_id, "--from-file", "-", server=fake_cdn, stdin="\n".join(lines) + "\n"
    )
    assert result.code == 0, result.err
    bodies = purge_bodies(fake_cdn)
    assert f"Purged 120 of 120 paths of endpoint {cdn_id} in {len(bodies)} requests" in result.out
    assert all(len(b) <= 50 for b in bodies) and sum(len(b) for b in bodies) == 120
    assert {p for b in bodies for p in b} == {f"img/{i}.png" for i in range(120)}
    assert fake_cdn.counters.rate_limited.total() == 0


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_purge_all_is_explicit(fake_cdn: FakeCDNServer) -> None:
    """--all sends "*"; no paths, or --all with paths, is a usage error (nothing sent)."""
    cdn_id = fake_cdn.add_endpoint("static.nyc3.digitaloceanspaces.com")["id"]
    everything, nothing, mixed = await asyncio.gather(
        run_cli("purge", cdn_id, "--all", server=fake_cdn),
        run_cli("purge", cdn_id, server=fake_cdn),
        run_cli("purge", cdn_id, "--all", "a.png", server=fake_cdn),
    )
    assert everything.code == 0, everything.err
    assert purge_bodies(fake_cdn) == [["*"]]
    assert nothing.code == 2 and "no paths to purge" in nothing.err
    assert mixed.code == 2 and "--all" in mixed.err


@pytest.mark.fake_cdn(time_scale=SCALE, purge_duration=0.25)
async def test_ctrl_c_reports_what_was_purged(fake_cdn: FakeCDNServer) -> None:
    """Ctrl-C during a bulk purge waits for the batch on the wire, then exits 130 after
    reporting the paths purged; with --json the partial report accounts for every path, and
    says exactly what the server purged."""
    cdn_id = fake_cdn.add_endpoint("static.nyc3.digitaloceanspaces.com")["id"]
    paths = [f"img/{i}.png" for i in range(1000)]
    proc = await start_cli(
        "purge",
        cdn_id,
        "--from-file",
        "-",
        "--json",
        "--no-progress",
        server=fake_cdn,
        stdin="\n".join(paths) + "\n",
    )
    for _ in range(200):
        if len(purge_bodies(fake_cdn)) >= 2:
            break
        await asyncio.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    result = await finish(proc, fake_cdn.token)
    assert result.code == 130, result.err
    report = result.json()
    purged = len(report["purged"])
    # The batch on the wire was waited for: the report has every path the server purged.
    assert_reports_what_the_server_purged(report, fake_cdn, result.err)
    assert 0 < purged < 1000
    assert len(report["purged"]) + len(report["failed"]) == 1000 and report["queued"] == []
    assert report["status"] == "interrupted"
    if "did not finish within" not in result.err:  # the batch on the wire was waited for
        assert set(report["failed"].values()) == {"interrupted before this path was sent"}
    assert f"Interrupted by SIGINT: {purged} of 1000 paths of endpoint {cdn_id} were purged" in (
        result.err
    )


async def test_missing_extra_prints_the_install_hint() -> None:
    """Without click (or rich) the command prints one line saying how to install them, exits
    2, and the package itself still imports."""
    code = (
        "import sys; sys.modules['click'] = None; sys.modules['rich'] = None\n"
        "import cdn_async, cdn_async.testing\n"
        "from cdn_async._cli import main\n"
        "sys.exit(main(['endpoints', 'list']))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(None),
    )
    result = await finish(proc, None)
    assert result.code == 2
    assert result.err.strip() == EXTRA_HINT
    assert result.out == ""


async def test_fake_server_command_prints_url_and_a_token_that_works() -> None:
    """fake-server prints its URL and its own throwaway token; the other commands work
    against it; Ctrl-C stops it with exit 0."""
    proc = await start_cli(
        "fake-server", "--port", "0", "--time-scale", str(SCALE), server=None, env=cli_env(None)
    )
    assert proc.stdout is not None
    banner = ""
    while "Ctrl-C" not in banner:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
        assert line, "fake-server exited early"
        banner += line.decode()
    url = re.search(r"http://127\.0\.0\.1:\d+", banner)
    token = re.search(r"dop_v1_[0-9a-f]+", banner)
    assert url is not None and token is not None
    env = cli_env(None, DIGITALOCEAN_TOKEN=token[0])
    created = await run_cli(
        "endpoints",
        "create",
        "static.nyc3.digitaloceanspaces.com",
        "--json",
        "--base-url",
        url[0],
        "--time-scale",
        str(SCALE),
        server=None,
        env=env,
    )
    assert created.code == 0, created.err
    assert token[0] not in created.out + created.err
    proc.send_signal(signal.SIGINT)
    stopped = await finish(proc, None)
    assert stopped.code == 0
    assert "Totals: 1 requests (1 x 201); 0 x 429" in stopped.out, stopped.out


async def test_demo_runs_the_whole_job_without_a_429() -> None:
    """demo starts a fake API, creates and lists endpoints, bulk-purges from concurrent
    tasks, and reports 0 x 429."""
    proc = await start_cli(
        "demo",
        "--paths",
        "300",
        "--tasks",
        "4",
        "--time-scale",
        "0.005",
        server=None,
        env=cli_env(None),
    )
    result = await finish(proc, None)
    assert result.code == 0, result.err
    counted = re.search(r"429s from the server\s+(\d+)\b", result.out)
    assert counted and counted.group(1) == "0", result.out
    assert "demo-assets.nyc3.digitaloceanspaces.com" in result.out
    assert re.search(r"paths purged\s+\d+, 0 failed", result.out)
    use = re.search(r"budget use\s+(\d+)% of the files budget's pace", result.out)
    assert use, result.out
    # The closing line: the same budget figure, the server's own 429 count, the charts.
    assert re.search(
        rf"^5\. {use.group(1)}% of the files budget's pace, and the server counted "
        rf"{counted.group(1)} x 429\. "
        r"Charts of every window: benchmarks/budget-window\.svg and "
        r"benchmarks/purge-window\.svg in the cdn-async repository\.$",
        result.out,
        re.MULTILINE,
    ), result.out
    assert "dop_v1_" not in result.out + result.err  # the demo's token stays inside it


async def test_help_is_written_for_users() -> None:
    """--help lists the commands and purge's options; --version works."""
    top, purge, version = await asyncio.gather(
        run_cli("--help", server=None, env=cli_env(None)),
        run_cli("purge", "--help", server=None, env=cli_env(None)),
        run_cli("--version", server=None, env=cli_env(None)),
    )
    assert top.code == purge.code == version.code == 0
    for command in ("endpoints", "purge", "purge-worker", "fake-server", "demo"):
        assert command in top.out
    for option in (
        "--from-file",
        "--all",
        "--json",
        "--token",
        "DIGITALOCEAN_TOKEN",
        "--redis",
        "CDN_ASYNC_REDIS_URL",
        "--no-wait",
        "--heartbeat",
        "SIGTERM",
    ):
        assert option in purge.out
    assert "cdn-async" in version.out


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_redis_option_shares_budgets_and_the_purge_queue(
    fake_cdn: FakeCDNServer, redis_url: str
) -> None:
    """$CDN_ASYNC_REDIS_URL (or --redis) on any command keeps the budgets in Redis under the
    token's id, and purge goes through the shared queue with the same report."""
    cdn_id = fake_cdn.add_endpoint("static.nyc3.digitaloceanspaces.com")["id"]
    env = cli_env(fake_cdn, CDN_ASYNC_REDIS_URL=redis_url)
    await new_redis_for(redis_url, fake_cdn.token)
    listed = await run_cli("endpoints", "list", "--json", server=fake_cdn, env=env)
    assert listed.code == 0, listed.err
    assert [e["id"] for e in listed.json()] == [cdn_id]
    purged = await run_cli(
        "purge",
        cdn_id,
        "a.png",
        "/a.png",
        "css/*",
        "css/site.css",
        "--json",
        server=fake_cdn,
        env=env,
    )
    assert purged.code == 0, purged.err
    report = purged.json()
    assert set(report) == REPORT_KEYS and report["failed"] == {} and report["requests"] == 1
    assert sorted(report["purged"]) == ["a.png", "css/*", "css/site.css"]
    assert [sorted(b) for b in purge_bodies(fake_cdn)] == [["a.png", "css/*"]]
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = {k async for k in redis.scan_iter(f"{{cdn-async:{token_id_for(fake_cdn.token)}}}:*")}
    finally:
        await redis.aclose()
    tag = f"{{cdn-async:{token_id_for(fake_cdn.token)}}}"
    assert f"{tag}:m:cdn" in keys and f"{tag}:m:purge_files" in keys  # shared budgets
    assert f"{tag}:pq:n" in keys  # the shared queue numbered the paths


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_purge_no_wait_then_purge_worker_sends_each_path_once(
    fake_cdn: FakeCDNServer, redis_url: str
) -> None:
    """Two jobs queue overlapping lists with purge --no-wait and exit; a purge-worker sends
    the union once (ceil(90 / 50) = 2 requests, no 409, no 429) and stops on SIGTERM with a
    summary. Without --redis both are usage errors."""
    cdn_id = fake_cdn.add_endpoint("static.nyc3.digitaloceanspaces.com")["id"]
    shared = [f"js/{i}.js" for i in range(30)]
    lists = [shared + [f"img{k}/{i}.png" for i in range(30)] for k in range(2)]
    env = cli_env(fake_cdn, CDN_ASYNC_REDIS_URL=redis_url)
    await new_redis_for(redis_url, fake_cdn.token)
    queued = await asyncio.gather(
        *(
            run_cli(
                "purge",
                cdn_id,
                "--from-file",
                "-",
                "--no-wait",
                "--json",
                server=fake_cdn,
                env=env,
                stdin="\n".join(paths) + "\n",
            )
            for paths in lists
        )
    )
    for result in queued:
        assert result.code == 0, result.err
        assert result.json() == {"endpoint_id": cdn_id, "queued": 60}
        assert "Queued 60 paths" in result.err
    assert purge_bodies(fake_cdn) == []  # nothing sent by jobs that only queue

    worker = await start_cli("purge-worker", server=fake_cdn, env=env)
    union = set(lists[0]) | set(lists[1])
    for _ in range(2400):  # up to 60 s on a loaded machine; done in well under 1 s here
        if {p for b in purge_bodies(fake_cdn) for p in b} == union:
            break
        await asyncio.sleep(0.025)
    worker.send_signal(signal.SIGTERM)
    stopped = await finish(worker, fake_cdn.token)
    assert stopped.code == 0, stopped.err
    assert "purge-worker: 2 batches, 90 paths purged, 0 failed." in stopped.out
    assert f"endpoint {cdn_id}: purged 50 paths" in stopped.err
    bodies = purge_bodies(fake_cdn)
    assert [len(b) for b in bodies] == [50, 40]
    assert sorted(p for b in bodies for p in b) == sorted(union)
    assert fake_cdn.counters.conflicts == 0 and fake_cdn.counters.rate_limited.total() == 0

    no_redis = cli_env(fake_cdn)
    no_worker, no_queue = await asyncio.gather(
        run_cli("purge-worker", server=fake_cdn, env=no_redis),
        run_cli("purge", cdn_id, "a.png", "--no-wait", server=fake_cdn, env=no_redis),
    )
    assert no_worker.code == 2 and "CDN_ASYNC_REDIS_URL" in no_worker.err
    assert no_queue.code == 2 and "--redis" in no_queue.err


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_verbose_prints_one_line_per_request(fake_cdn: FakeCDNServer) -> None:
    fake_cdn.add_endpoint("static.nyc3.digitaloceanspaces.com")
    fake_cdn.faults.fail_next(1, status=503, op="list")
    listed = await run_cli("endpoints", "list", "--verbose", server=fake_cdn)
    assert listed.code == 0, listed.err
    lines = [line for line in listed.err.splitlines() if line.startswith("GET /v2/cdn/endpoints")]
    ids = [r.request_id for r in fake_cdn.journal]
    assert len(lines) == 2 == len(ids)  # the 503, then the retried list
    assert "-> 503 in" in lines[0] and f"request_id={ids[0]}" in lines[0]
    assert "-> 200 in" in lines[1] and "attempt 2" in lines[1] and "waited" in lines[1]
    quiet = await run_cli("endpoints", "list", server=fake_cdn)
    assert "GET /v2/cdn/endpoints" not in quiet.err
