"""Attempts that get no answer, against a simulated strict server, in virtual time.

The real request loop (``Session.request``) runs with its HTTP exchange replaced by a
simulation: each attempt spends a while connecting (nothing written: the server can never see
it), then is on the wire; the server stamps it after a random uplink delay and answers (or
drops the connection) after a random downlink delay. Callers are cancelled, time out on the
client's ``timeout`` or under ``asyncio.timeout``, at any moment; the server stamps whatever
was written, answered or not, exactly as a server behind a slow uplink does. Whatever
happens, no window the server counts may ever hold more than the limit.

Times are on a grid of 1/8 s so sums are exact and the window check has no rounding slack.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdn_async import Budget, CDNClient, RateLimits
from cdn_async._pool import Wire
from cdn_async._session import Session
from cdn_async.errors import CDNError

from ._strict_server import Handler, route
from ._support import BASE, TOKEN, max_in_window

GRID = 0.125
LIMIT, PERIOD = 3, 2.0

ticks = st.integers(min_value=0, max_value=24).map(lambda n: n * GRID)  # 0 .. 3 s

attempt = st.fixed_dictionaries(
    {
        "connect": ticks,  # before anything is written
        "uplink": ticks,  # written -> stamped by the server
        "downlink": ticks,  # stamped -> answer (or the server's close) reaches us
        "drop": st.booleans(),  # the server closes the connection instead of answering
    }
)

caller = st.fixed_dictionaries(
    {
        "arrival": st.integers(0, 48).map(lambda n: n * GRID),
        "stop": st.sampled_from(["none", "cancel", "asyncio_timeout", "client_timeout"]),
        "after": st.integers(1, 40).map(lambda n: n * GRID),
        "retries": st.integers(0, 2),
        "attempts": st.lists(attempt, min_size=3, max_size=3),
    }
)

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class StrictServer:
    """Stamps each written request after its uplink delay, whatever the client does meanwhile."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, int]] = []
        self.loop = asyncio.get_running_loop()

    def stamp(self) -> None:
        self.stamps.append((self.loop.time(), 1))


def simulated_exchange(server: StrictServer, plans: dict[str, list[dict[str, Any]]]) -> Handler:
    async def exchange(
        session: Session, url: str, wire: Wire, json: Any
    ) -> tuple[int, bytes, Mapping[str, str]]:
        plan = plans[url].pop(0)
        await asyncio.sleep(plan["connect"])  # cancelled here: nothing was ever written
        wire.written = True
        # The bytes are on their way: the server stamps them after the uplink delay even if
        # this task is cancelled or the caller long gone.
        server.loop.call_later(plan["uplink"], server.stamp)
        await asyncio.sleep(plan["uplink"] + plan["downlink"])
        if plan["drop"]:
            raise aiohttp.ServerDisconnectedError()
        return 200, b"{}", {}

    return exchange


@pytest.mark.looptime
@SETTINGS
@given(callers=st.lists(caller, min_size=1, max_size=12))
async def test_no_window_ever_holds_more_than_the_limit_whatever_callers_stop_waiting(
    callers: list[dict[str, Any]],
) -> None:
    loop = asyncio.get_running_loop()
    server = StrictServer()
    plans = {f"{BASE}/r/{i}": [dict(a) for a in c["attempts"]] for i, c in enumerate(callers)}
    limits = RateLimits((Budget("cdn", LIMIT, PERIOD),))
    client = CDNClient(TOKEN, base_url=BASE, limits=limits, timeout=None)
    client._session._pool.get()  # make the (traced) pool, as the first request would
    outcomes: list[str] = []

    async def one(i: int, c: dict[str, Any]) -> None:
        await asyncio.sleep(c["arrival"])
        timeout = c["after"] if c["stop"] == "client_timeout" else None
        session = client.with_options(timeout=timeout, max_retries=c["retries"])._session
        try:
            if c["stop"] == "asyncio_timeout":
                async with asyncio.timeout(c["after"]):
                    await session.request("GET", f"/r/{i}")
            else:
                await session.request("GET", f"/r/{i}")
            outcomes.append("ok")
        except (CDNError, TimeoutError):
            outcomes.append("error")

    with pytest.MonkeyPatch.context() as mp:
        route(mp, simulated_exchange(server, plans))
        tasks = [asyncio.create_task(one(i, c)) for i, c in enumerate(callers)]
        for task, c in zip(tasks, callers, strict=True):
            if c["stop"] == "cancel":
                loop.call_later(c["arrival"] + c["after"], task.cancel)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.sleep(20.0)  # every detached exchange ends; every stamp is in
        await client.close()

    assert max_in_window(server.stamps, PERIOD) <= LIMIT, sorted(server.stamps)
    # Nothing leaks: once every exchange has ended, every unit frees within a period.
    assert client._session._pool.detached == set()
