"""Per-request cost of cdn_async vs raw aiohttp vs pydo.aio, side by side in one run.

Run from the repository root: ``python -m benchmarks.bench_overhead`` (about 95 s; ``--quick``
for a shorter, noisier run, about 15 s; ``--smoke`` tiny sizes in a few seconds). The pydo rows
need the ``bench`` extra (``pip install -e '.[bench]'``); without pydo they are left out. Prints
markdown tables; the figures in ``benchmarks/RESULTS.md`` come from it.

Set-up:

* ``FakeCDNServer(time_scale=1e-6)`` over TLS on 127.0.0.1, in a **separate process** (so the
  server's CPU never counts as the client's), holding 2,000 endpoints (400 with ``--smoke``). The TLS certificate is a
  throwaway self-signed one made at start-up in a temporary directory and deleted at exit.
* The three clients run in this process, on one event loop, each with its own
  ``aiohttp.ClientSession`` whose connector trusts the certificate:
  - raw aiohttp: ``async with http.get(url, headers=auth) as r: await r.json()``;
  - cdn_async: ``CDNClient(session=http, limits=RateLimits.documented().scaled(1e-6))``, so the
    budgets never bind but their code runs on every request (part of our cost);
  - pydo.aio: ``pydo.aio.Client(token, endpoint=url, transport=AioHttpTransport(session=http,
    session_owner=False))``: azure-core's public way to hand in a session. A second pydo row
    trusts the certificate with ``connection_verify=<ca.pem>`` instead, the way most users of a
    private CA would; azure-core then builds a new ``SSLContext`` per request, and aiohttp keys
    its pool on it, so every request opens a new TLS connection.
* First, the overhead ratios (issue 24's case): raw aiohttp against cdn_async with budgets of
  limit 1e9 at their **real periods** (they never bind, but every request goes through them),
  with hooks and telemetry off, with a no-op event hook, and with OpenTelemetry (SDK tracer and
  meter, no exporter); plus a no-op budget store (the session layer alone). Each round runs
  every client in a rotated order, sequentially then from 100 concurrent tasks; each round's
  figure is divided by raw aiohttp's in the same round, and the table gives the **median** over
  the rounds (the machine is shared, so single rounds are noisy; the median of same-round
  ratios cancels slow drifts of the machine).
* Last, the SDK's own CPU per get with the exchange answered in process (``Session._exchange``
  replaced by a canned answer: no socket, TLS or server), beside a bare ``json.loads`` of the
  same body. It hardly moves with the machine's load, so it is the figure to compare across
  commits; the wall-time ratios show what a user sees.
* The other tables are taken in rounds too, the clients in a rotated order each round, and
  every figure is the best round (least disturbed). Latency is the median of per-request wall times
  in that round; CPU is this process's ``time.process_time()`` over the round per request (the
  client's own cost, TLS and aiohttp included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import email.utils
import functools
import gc
import ipaddress
import json
import math
import multiprocessing as mp
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

import aiohttp

from benchmarks._report import SMOKE_HELP, machine, table
from cdn_async import Budget, BudgetState, CDNClient, CDNEndpoint, RateLimits
from cdn_async._limits import Claim  # no public name: what a store is asked for
from cdn_async._models import converter  # no public name: the SDK's own cattrs converter
from cdn_async._session import Session  # its exchange is answered in process by own_cost
from cdn_async.testing import FakeCDNServer

try:
    import pydo.aio
    from azure.core.pipeline.transport import AioHttpTransport
except ImportError:  # pragma: no cover
    pydo = None  # type: ignore[assignment]

SCALE = 1e-6
N_ENDPOINTS = 2000
CONCURRENCY = 100

Get = Callable[[str], Awaitable[Any]]
CDN_UNCAPPED = "(diag) cdn_async, budgets of limit 1e9, real periods"
CDN_NOBUDGET = "(diag) cdn_async, no-op budget store (session layer only)"
CDN_HOOKED = "(diag) cdn_async, budgets of limit 1e9, a no-op event hook"
CDN_OTEL = "(diag) cdn_async, budgets of limit 1e9, OpenTelemetry (SDK, no exporter)"


# -- machine, certificate, server process ---------------------------------------------------


def make_cert(directory: str) -> tuple[str, str]:
    """A throwaway self-signed certificate for 127.0.0.1 and localhost; (cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cdn-async benchmark")])
    now = dt.datetime.now(dt.UTC)
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


def serve(conn: Connection, cert: str, key: str, endpoints: int = N_ENDPOINTS) -> None:
    """The server process: a TLS FakeCDNServer with ``endpoints`` endpoints, until told to stop."""

    async def run() -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        async with FakeCDNServer(time_scale=SCALE, ssl_context=ctx) as server:
            ids = [
                server.add_endpoint(f"bench-{i}.nyc3.digitaloceanspaces.com")["id"]
                for i in range(endpoints)
            ]
            conn.send((server.url, server.token, ids))
            loop = asyncio.get_running_loop()
            while True:
                msg = await loop.run_in_executor(None, conn.recv)
                if msg == "stats":
                    statuses: dict[int, int] = {}
                    for e in server.journal:
                        statuses[e.status or 0] = statuses.get(e.status or 0, 0) + 1
                    server.journal.clear()
                    conn.send(statuses)
                else:
                    return

    asyncio.run(run())


# -- clients ---------------------------------------------------------------------------------

#: The documented budgets with limits nothing reaches and real periods: the store's work per
#: request without the documented 5-request cdn cap on requests in flight (the exactness rule
#: holds a unit from send to answer, so 100 tasks get at most 5 in flight at any time scale).
UNCAPPED = RateLimits(
    (
        Budget("hourly", 10**9, 3600.0),
        Budget("minute", 10**9, 60.0),
        Budget("cdn", 10**9, 10.0),
        Budget("purge_files", 10**9, 20.0, unit="file"),
    )
)


class NoBudgets:
    """A budget store that admits everything and keeps nothing: the session layer alone."""

    async def acquire(
        self, claims: Any, *, max_wait: float | None = None, priority: str = "normal"
    ) -> object:
        return self

    def release(self, lease: object) -> None:
        pass

    def give_back(self, lease: object) -> None:
        pass

    def sync(self, claim: Claim, remaining: int, reset_after: float, refused: bool = False) -> None:
        pass

    def pause(self, claim: Claim, resume_after: float) -> None:
        pass

    def snapshot(self) -> dict[str, BudgetState]:
        return {}

    async def aclose(self) -> None:
        pass


class Clients:
    """The three clients (plus pydo with a per-request CA file), ready to ``get`` an id."""

    def __init__(self, url: str, token: str, ctx: ssl.SSLContext, ca_file: str) -> None:
        self.url, self.token, self.ctx, self.ca_file = url, token, ctx, ca_file
        self.auth = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._closers: list[Callable[[], Awaitable[Any]]] = []

    def _http(self) -> aiohttp.ClientSession:
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ctx))
        self._closers.append(http.close)
        return http

    async def open(self) -> None:
        self.raw_http = self._http()
        self.cdn = CDNClient(
            self.token,
            base_url=self.url,
            limits=RateLimits.documented().scaled(SCALE),
            session=self._http(),
        )
        self.cdn_uncapped = CDNClient(
            self.token, base_url=self.url, limits=UNCAPPED, session=self._http()
        )
        self.cdn_nobudget = CDNClient(
            self.token,
            base_url=self.url,
            limits=RateLimits.documented().scaled(SCALE),
            budget_store=NoBudgets(),
            session=self._http(),
        )
        self.cdn_hooked = CDNClient(
            self.token,
            base_url=self.url,
            limits=UNCAPPED,
            session=self._http(),
            event_hooks=[lambda event: None],
        )
        self._closers += [self.cdn.close, self.cdn_uncapped.close, self.cdn_nobudget.close]
        self._closers.append(self.cdn_hooked.close)
        self.cdn_otel: Any = None
        telemetry = _otel()
        if telemetry is not None:
            self.cdn_otel = CDNClient(
                self.token,
                base_url=self.url,
                limits=UNCAPPED,
                session=self._http(),
                telemetry=telemetry,
            )
            self._closers.append(self.cdn_otel.close)
        self.pydo: Any = None
        self.pydo_verify: Any = None
        if pydo is not None:
            transport = AioHttpTransport(session=self._http(), session_owner=False)
            self.pydo = pydo.aio.Client(self.token, endpoint=self.url, transport=transport)
            self.pydo_verify = pydo.aio.Client(
                self.token, endpoint=self.url, connection_verify=self.ca_file
            )
            self._closers += [self.pydo.close, self.pydo_verify.close]

    async def close(self) -> None:
        for close in reversed(self._closers):
            await close()

    # One request each, returning the endpoint (an attrs object or a dict).
    async def raw_get(self, cdn_id: str) -> Any:
        async with self.raw_http.get(
            f"{self.url}/v2/cdn/endpoints/{cdn_id}", headers=self.auth
        ) as r:
            if r.status != 200:
                raise RuntimeError(f"raw aiohttp got {r.status}")
            return (await r.json())["endpoint"]

    async def cdn_get(self, cdn_id: str) -> Any:
        return await self.cdn.endpoints.get(cdn_id)

    async def cdn_uncapped_get(self, cdn_id: str) -> Any:
        return await self.cdn_uncapped.endpoints.get(cdn_id)

    async def cdn_nobudget_get(self, cdn_id: str) -> Any:
        return await self.cdn_nobudget.endpoints.get(cdn_id)

    async def cdn_hooked_get(self, cdn_id: str) -> Any:
        return await self.cdn_hooked.endpoints.get(cdn_id)

    async def cdn_otel_get(self, cdn_id: str) -> Any:
        return await self.cdn_otel.endpoints.get(cdn_id)

    async def pydo_get(self, cdn_id: str) -> Any:
        return (await self.pydo.cdn.get_endpoint(cdn_id))["endpoint"]

    async def pydo_verify_get(self, cdn_id: str) -> Any:
        return (await self.pydo_verify.cdn.get_endpoint(cdn_id))["endpoint"]

    # A whole listing of every endpoint, 200 a page.
    async def raw_list(self) -> list[Any]:
        out: list[Any] = []
        page = 1
        while True:
            async with self.raw_http.get(
                f"{self.url}/v2/cdn/endpoints",
                params={"page": page, "per_page": 200},
                headers=self.auth,
            ) as r:
                data = await r.json()
            out.extend(data["endpoints"])
            if not data["endpoints"] or "next" not in (data.get("links") or {}).get("pages", {}):
                return out
            page += 1

    async def cdn_list(self) -> list[Any]:
        return [ep async for ep in self.cdn.endpoints.list(per_page=200)]

    async def pydo_list(self) -> list[Any]:
        out: list[Any] = []
        page = 1
        while True:
            data = await self.pydo.cdn.list_endpoints(per_page=200, page=page)
            out.extend(data["endpoints"])
            if not data["endpoints"] or "next" not in (data.get("links") or {}).get("pages", {}):
                return out
            page += 1


# -- measurements ----------------------------------------------------------------------------


def rotations(names: list[str], rounds: int) -> list[list[str]]:
    return [names[r % len(names) :] + names[: r % len(names)] for r in range(rounds)]


async def sequential(get: Get, ids: list[str], n: int, offset: int) -> tuple[float, float]:
    """n sequential gets; (median wall us per request, CPU us per request)."""
    times: list[int] = []
    gc.collect()
    cpu0 = time.process_time()
    for i in range(n):
        t0 = time.perf_counter_ns()
        await get(ids[(offset + i) % len(ids)])
        times.append(time.perf_counter_ns() - t0)
    cpu = time.process_time() - cpu0
    return statistics.median(times) / 1000, cpu / n * 1e6


async def concurrent(get: Get, ids: list[str], n: int, tasks: int) -> tuple[float, float]:
    """n gets from ``tasks`` concurrent tasks; (requests per second, CPU us per request)."""
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            await get(ids[i % len(ids)])

    gc.collect()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return n / wall, cpu / n * 1e6


async def listing(fetch: Callable[[], Awaitable[list[Any]]], expected: int) -> tuple[float, float]:
    """One full listing; (wall ms, CPU ms)."""
    gc.collect()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    got = await fetch()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    if len(got) != expected:
        raise RuntimeError(f"listed {len(got)} endpoints, expected {expected}")
    return wall * 1000, cpu * 1000


def structuring(dicts: list[dict[str, Any]], rounds: int) -> dict[str, float]:
    """Per-endpoint cost (us) of turning parsed JSON into what a caller gets."""
    out: dict[str, float] = {}
    cases: dict[str, Callable[[], object]] = {
        "dict (as parsed; pydo, raw)": lambda: list(dicts),
        "cattrs structure -> CDNEndpoint": lambda: [
            converter.structure(d, CDNEndpoint) for d in dicts
        ],
    }
    for name, fn in cases.items():
        best = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        out[name] = best / len(dicts) * 1e6
    blob = json.dumps({"endpoints": dicts}).encode()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        json.loads(blob)
        best = min(best, time.perf_counter() - t0)
    out["json.loads (for scale)"] = best / len(dicts) * 1e6
    return out


#: The rows of the overhead table: (label, Clients attribute of the get), raw aiohttp first.
OVERHEAD_ROWS = [
    ("raw aiohttp", "raw_get"),
    ("cdn_async, hooks and telemetry off", "cdn_uncapped_get"),
    ("cdn_async, a no-op event hook", "cdn_hooked_get"),
    ("cdn_async, OpenTelemetry (SDK, no exporter)", "cdn_otel_get"),
    ("cdn_async, no-op budget store (session layer only)", "cdn_nobudget_get"),
]


async def overhead(clients: Clients, ids: list[str], args: Any) -> None:
    """The overhead ratios of issue 24: median over interleaved rounds of same-round ratios."""
    gets = {
        label: getattr(clients, attr)
        for label, attr in OVERHEAD_ROWS
        if attr != "cdn_otel_get" or clients.cdn_otel is not None
    }
    names = list(gets)
    seq: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    conc: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for r, order in enumerate(rotations(names, args.ratio_rounds)):
        for name in order:
            seq[name].append(await sequential(gets[name], ids, args.ratio_seq, r * args.ratio_seq))
            conc[name].append(await concurrent(gets[name], ids, args.ratio_conc, args.concurrency))
    raw = "raw aiohttp"

    def med(values: list[float]) -> float:
        return statistics.median(values)

    rows = []
    for n in names:
        lat = med([s[0] for s in seq[n]])
        lat_x = med([s[0] / b[0] for s, b in zip(seq[n], seq[raw], strict=True)])
        cpu = med([s[1] for s in seq[n]])
        cpu_x = med([s[1] / b[1] for s, b in zip(seq[n], seq[raw], strict=True)])
        rps = med([c[0] for c in conc[n]])
        rps_x = med([b[0] / c[0] for c, b in zip(conc[n], conc[raw], strict=True)])
        ccpu = med([c[1] for c in conc[n]])
        ccpu_x = med([c[1] / b[1] for c, b in zip(conc[n], conc[raw], strict=True)])
        rows.append(
            [
                n,
                f"{lat:.0f}",
                f"{lat_x:.2f} x",
                f"{cpu:.0f}",
                f"{cpu_x:.2f} x",
                f"{rps:.0f}",
                f"{rps_x:.2f} x",
                f"{ccpu:.0f}",
                f"{ccpu_x:.2f} x",
            ]
        )
    table(
        f"Overhead vs raw aiohttp: TLS on loopback, the user's own aiohttp session, budgets of "
        f"limit 1e9 at real periods; median of {args.ratio_rounds} interleaved rounds "
        f"({args.ratio_seq} sequential gets, {args.ratio_conc} from {args.concurrency} tasks)",
        [
            "client",
            "seq latency us",
            "vs raw",
            "seq CPU us/req",
            "vs raw",
            f"{args.concurrency} tasks req/s",
            "raw time / its time",
            "CPU us/req",
            "vs raw",
        ],
        rows,
    )


#: What ``own_cost`` answers every get with: an endpoint, and the headers the API sends.
CANNED_ID = "19f06b6a-3ace-4315-b086-499a0e521b76"
CANNED_BODY = json.dumps(
    {
        "endpoint": {
            "id": CANNED_ID,
            "origin": "static.nyc3.digitaloceanspaces.com",
            "endpoint": "static.nyc3.cdn.digitaloceanspaces.com",
            "created_at": "2018-07-19T15:04:16Z",
            "ttl": 3600,
        }
    }
).encode()


async def own_cost(args: Any) -> None:
    """The SDK's own CPU per get, the exchange answered in process: no socket, TLS or server,
    so the figure hardly moves with the machine's load (the wall-time ratios above do)."""
    headers = {
        "ratelimit-limit": "5000",
        "ratelimit-remaining": "4999",
        "ratelimit-reset": str(int(time.time()) + 3600),
        "date": email.utils.formatdate(usegmt=True),
        "x-request-id": "0f3c2a",
        "content-type": "application/json",
    }

    async def answered(*_: Any) -> tuple[int, bytes, dict[str, str]]:
        return 200, CANNED_BODY, headers

    async def parse_only() -> Any:  # the floor: what any client does with the body
        return json.loads(CANNED_BODY)["endpoint"]

    exchange = Session._exchange
    Session._exchange = answered  # type: ignore[method-assign]
    try:
        async with aiohttp.ClientSession() as http:  # never used: nothing goes out
            made = {
                "cdn_async, hooks and telemetry off": CDNClient(
                    "x" * 64, limits=UNCAPPED, session=http
                ),
                "cdn_async, a no-op event hook": CDNClient(
                    "x" * 64, limits=UNCAPPED, session=http, event_hooks=[lambda event: None]
                ),
                "cdn_async, no-op budget store (session layer only)": CDNClient(
                    "x" * 64, limits=UNCAPPED, session=http, budget_store=NoBudgets()
                ),
            }
            otel = _otel()
            if otel is not None:
                made["cdn_async, OpenTelemetry (SDK, no exporter)"] = CDNClient(
                    "x" * 64, limits=UNCAPPED, session=http, telemetry=otel
                )
            gets: dict[str, Callable[[], Awaitable[Any]]] = {"json.loads of the body": parse_only}
            for name, cdn in made.items():
                gets[name] = functools.partial(cdn.endpoints.get, CANNED_ID)
            cpu: dict[str, list[float]] = {n: [] for n in gets}
            for order in rotations(list(gets), args.own_rounds):
                for name in order:
                    get = gets[name]
                    for _ in range(args.own_n // 10):  # warm
                        await get()
                    t0 = time.process_time()
                    for _ in range(args.own_n):
                        await get()
                    cpu[name].append((time.process_time() - t0) / args.own_n * 1e6)
            for cdn in made.values():
                await cdn.close()
    finally:
        Session._exchange = exchange  # type: ignore[method-assign]
    table(
        f"The SDK's own CPU per get(), the exchange answered in process: median of "
        f"{args.own_rounds} interleaved rounds of {args.own_n}",
        ["client", "CPU us per get"],
        [[n, f"{statistics.median(v):.1f}"] for n, v in cpu.items()],
    )


def _otel() -> Any:
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider

        from cdn_async.otel import OpenTelemetry
    except ImportError:
        return None
    return OpenTelemetry(tracer_provider=TracerProvider(), meter_provider=MeterProvider())


# -- report ----------------------------------------------------------------------------------


def x(a: float, b: float) -> str:
    return f"{a / b:.2f} x"


async def bench(url: str, token: str, ids: list[str], ctx: ssl.SSLContext, args: Any) -> None:
    clients = Clients(url, token, ctx, args.ca_file)
    await clients.open()
    try:
        gets: dict[str, Get] = {"raw aiohttp": clients.raw_get, "cdn_async": clients.cdn_get}
        lists: dict[str, Callable[[], Awaitable[list[Any]]]] = {
            "raw aiohttp": clients.raw_list,
            "cdn_async": clients.cdn_list,
        }
        if clients.pydo is not None:
            gets["pydo.aio"] = clients.pydo_get
            lists["pydo.aio"] = clients.pydo_list
        # Diagnostics: where cdn_async's cost goes.
        gets[CDN_UNCAPPED] = clients.cdn_uncapped_get
        gets[CDN_NOBUDGET] = clients.cdn_nobudget_get
        gets[CDN_HOOKED] = clients.cdn_hooked_get
        if clients.cdn_otel is not None:
            gets[CDN_OTEL] = clients.cdn_otel_get
        names = list(gets)
        # Warm-up: connections, imports, caches.
        for get in gets.values():
            for i in range(args.warmup):
                await get(ids[i])
            await concurrent(get, ids, args.concurrency * 2, args.concurrency)
        if clients.pydo_verify is not None:
            await clients.pydo_verify_get(ids[0])

        # 0. the overhead ratios (issue 24)
        await overhead(clients, ids, args)
        if args.ratios:
            return

        # 1. sequential get
        seq: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        for r, order in enumerate(rotations(names, args.rounds)):
            for name in order:
                seq[name].append(await sequential(gets[name], ids, args.seq, r * args.seq))
        seq_best = {n: (min(v[0] for v in seq[n]), min(v[1] for v in seq[n])) for n in names}
        rows = []
        base = seq_best["raw aiohttp"]
        for n in names:
            lat, cpu = seq_best[n]
            rows.append([n, f"{lat:.0f}", x(lat, base[0]), f"{cpu:.0f}", x(cpu, base[1])])
        if clients.pydo_verify is not None:
            samples = [
                await sequential(clients.pydo_verify_get, ids, args.seq_slow, r * args.seq_slow)
                for r in range(max(2, args.rounds // 2))
            ]
            lat, cpu = min(s[0] for s in samples), min(s[1] for s in samples)
            rows.append(
                [
                    "pydo.aio, connection_verify=ca.pem (new TLS connection per request)",
                    f"{lat:.0f}",
                    x(lat, base[0]),
                    f"{cpu:.0f}",
                    x(cpu, base[1]),
                ]
            )
        table(
            f"Sequential get(): median per request, best of {args.rounds} rounds of {args.seq}",
            ["client", "latency us", "vs raw", "client CPU us/req", "vs raw"],
            rows,
        )
        if "pydo.aio" in seq_best:
            print(
                f"\ncdn_async vs pydo.aio: {seq_best['pydo.aio'][0] / seq_best['cdn_async'][0]:.1f} x "
                f"faster (latency), {seq_best['pydo.aio'][1] / seq_best['cdn_async'][1]:.1f} x "
                "less client CPU"
            )

        # 2. concurrent get
        conc: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        for order in rotations(names, args.rounds):
            for name in order:
                conc[name].append(await concurrent(gets[name], ids, args.conc, args.concurrency))
        conc_best = {n: (max(v[0] for v in conc[n]), min(v[1] for v in conc[n])) for n in names}
        base = conc_best["raw aiohttp"]
        rows = []
        for n in names:
            rps, cpu = conc_best[n]
            rows.append([n, f"{rps:.0f}", x(base[0], rps), f"{cpu:.0f}", x(cpu, base[1])])
        table(
            f"{args.concurrency} concurrent tasks doing get(): best of {args.rounds} rounds of "
            f"{args.conc} requests",
            [
                "client",
                "requests/s",
                "raw time / its time (cost ratio)",
                "client CPU us/req",
                "vs raw",
            ],
            rows,
        )

        # 3. list() over 2,000 endpoints
        lst: dict[str, list[tuple[float, float]]] = {n: [] for n in lists}
        for order in rotations(list(lists), args.rounds):
            for name in order:
                lst[name].append(await listing(lists[name], len(ids)))
        rows = []
        base_l = (min(v[0] for v in lst["raw aiohttp"]), min(v[1] for v in lst["raw aiohttp"]))
        for n in lists:
            wall, cpu = min(v[0] for v in lst[n]), min(v[1] for v in lst[n])
            rows.append(
                [
                    n,
                    f"{wall:.1f}",
                    x(wall, base_l[0]),
                    f"{cpu:.1f}",
                    f"{cpu * 1000 / len(ids):.1f}",
                    x(cpu, base_l[1]),
                ]
            )
        table(
            f"list() of {len(ids)} endpoints ({math.ceil(len(ids) / 200)} pages of 200): "
            f"best of {args.rounds}",
            ["client", "wall ms", "vs raw", "client CPU ms", "CPU us/endpoint", "vs raw"],
            rows,
        )
        dicts = await clients.raw_list()
        s = structuring(dicts, args.rounds * 3)
        table(
            f"Structuring one endpoint ({len(ids)} parsed dicts, best of {args.rounds * 3})",
            ["step", "us per endpoint"],
            [[k, f"{v:.2f}"] for k, v in s.items()],
        )
    finally:
        await clients.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and requests")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument(
        "--ratios", action="store_true", help="only the overhead ratios table (about 60 s)"
    )
    args = parser.parse_args()
    args.rounds = 3 if args.quick else 7
    args.seq = 300 if args.quick else 1000
    args.seq_slow = 30 if args.quick else 100
    args.conc = 1000 if args.quick else 3000
    args.warmup = 50 if args.quick else 200
    # Many short rounds: the clients take turns often, so a burst of load from elsewhere on
    # the machine falls on all of them alike, and the median drops the rounds it spoiled.
    args.ratio_rounds = 11 if args.quick else 31
    args.ratio_seq, args.ratio_conc = 100, 500
    args.own_rounds, args.own_n = 7, 2000
    args.concurrency, endpoints = CONCURRENCY, N_ENDPOINTS
    if args.smoke:
        args.rounds, args.seq, args.seq_slow, args.conc, args.warmup = 1, 20, 2, 40, 5
        args.ratio_rounds, args.ratio_seq, args.ratio_conc = 1, 10, 20
        args.own_rounds, args.own_n = 1, 20
        args.concurrency, endpoints = 10, 400
    print(
        f"# cdn_async per-request overhead\n\n{machine(f'aiohttp {aiohttp.__version__}, OpenSSL {ssl.OPENSSL_VERSION.split()[1]}')}"
    )
    print(f"pydo {'missing' if pydo is None else 'installed'}; server in a separate process")
    with tempfile.TemporaryDirectory(prefix="cdn-async-bench-") as tmp:
        cert, key = make_cert(tmp)
        args.ca_file = cert
        ctx = ssl.create_default_context(cafile=cert)
        mpctx = mp.get_context("spawn")
        parent, child = mpctx.Pipe()
        proc = mpctx.Process(target=serve, args=(child, cert, key, endpoints), daemon=True)
        proc.start()
        try:
            url, token, ids = parent.recv()
            asyncio.run(bench(url, token, ids, ctx, args))
            asyncio.run(own_cost(args))
            parent.send("stats")
            print(f"\nServer answers by status: {parent.recv()}")
        finally:
            with contextlib.suppress(OSError):
                parent.send("stop")
            proc.join(5)
            if proc.is_alive():
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
