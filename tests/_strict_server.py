"""A strict sliding-window server, simulated in virtual time, for several clients on one token.

It answers the way DigitalOcean's API (and ``cdn_async.testing``) does: each request is stamped
when it arrives, after an uplink delay; it is counted if the last ``period`` seconds hold fewer
than ``limit`` stamps, else refused with a 429 that counts nothing. Every answer carries
``ratelimit-limit``, ``ratelimit-remaining`` (the room left at the stamp; 0 on a 429),
``ratelimit-reset`` (the epoch second, rounded up, when the oldest counted request expires) and
``Date``; the answer reaches the client after a downlink delay. Nothing of the client is
simulated: ``install`` replaces only the HTTP exchange of ``Session``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import pytest

from cdn_async._pool import Wire
from cdn_async._session import Session

ENDPOINT = json.dumps(
    {
        "endpoint": {
            "id": "6e7a3d8a-6f3e-4a57-9a1b-2b8f9f6f0b11",
            "origin": "static.nyc3.digitaloceanspaces.com",
            "endpoint": "static.nyc3.cdn.digitaloceanspaces.com",
            "ttl": 3600,
            "created_at": "2026-01-01T00:00:00Z",
        }
    }
).encode()
REFUSED = b'{"id": "too_many_requests", "message": "API rate limit exceeded."}'

#: The wall clock at loop time 0 (any epoch second works; a whole one keeps resets exact).
EPOCH = 1_800_000_000.0


class StrictServer:
    """One token's cdn budget, counted as an exact sliding window of stamps."""

    def __init__(
        self,
        limit: int,
        period: float,
        rng: random.Random,
        latency: tuple[float, float],
        *,
        files: tuple[int, float] | None = None,
    ) -> None:
        self.limit = limit
        self.period = period
        self.rng = rng
        self.latency = latency  # each way: uniform in [low, high]
        self.loop = asyncio.get_running_loop()
        self.window: deque[float] = deque()
        # The purge file budget (limit, period), which no header describes, as on the API.
        self.files = files
        self.file_window: deque[tuple[float, int]] = deque()
        self.file_stamps: list[tuple[float, int]] = []  # counted purges: (stamp, paths)
        self.purge_answers: list[int] = []  # statuses of purge requests, in stamp order
        self.purge_trace: list[tuple[float, int, int, int]] = []
        self.stamps: list[tuple[float, int]] = []  # counted ones, for max_in_window
        self.answers: list[int] = []  # statuses, in stamp order
        self.trace: list[tuple[float, object, int, int]] = []  # stamp, who, status, remaining

    def wall(self) -> float:
        return EPOCH + self.loop.time()

    def _delay(self) -> float:
        return self.rng.uniform(*self.latency)

    def _files_fit(self, files: int, now: float) -> bool:
        if self.files is None or files == 0:
            return True
        limit, period = self.files
        while self.file_window and self.file_window[0][0] + period <= now:
            self.file_window.popleft()
        return sum(n for _, n in self.file_window) + files <= limit

    def _stamp(self, who: object = None, files: int = 0) -> tuple[int, dict[str, str]]:
        now = self.loop.time()
        while self.window and self.window[0] + self.period <= now:
            self.window.popleft()
        refused = len(self.window) >= self.limit or not self._files_fit(files, now)
        if not refused:
            self.window.append(now)
            self.stamps.append((now, 1))
            if files:
                self.file_window.append((now, files))
                self.file_stamps.append((now, files))
        if files:
            self.purge_answers.append(429 if refused else 200)
            self.purge_trace.append((now, id(who) % 1000, files, 429 if refused else 200))
        self.answers.append(429 if refused else 200)
        self.trace.append((now, who, 429 if refused else 200, self.limit - len(self.window)))
        wall = self.wall()
        reset = math.ceil(wall + (self.window[0] + self.period - now)) if self.window else wall
        return (429 if refused else 200), {
            "ratelimit-limit": str(self.limit),
            "ratelimit-remaining": "0" if refused else str(self.limit - len(self.window)),
            "ratelimit-reset": str(math.ceil(reset)),
            "date": email.utils.formatdate(wall, usegmt=True),
        }

    async def exchange(
        self, wire: Wire, who: object = None, files: int = 0
    ) -> tuple[int, bytes, Mapping[str, str]]:
        wire.written = True
        await asyncio.sleep(self._delay())
        status, headers = self._stamp(who, files)
        await asyncio.sleep(self._delay())
        if status != 200:
            return status, REFUSED, headers
        return (204, b"", headers) if files else (200, ENDPOINT, headers)


#: What answers an exchange instead of the network: (session, url, wire, json body) -> the
#: answer.
Handler = Callable[[Session, str, Wire, Any], Awaitable[tuple[int, bytes, Mapping[str, str]]]]


def route(mp: pytest.MonkeyPatch, handler: Handler) -> None:
    """Replace the HTTP exchange of every ``Session`` with ``handler``."""

    async def exchange(
        self: Session,
        http: aiohttp.ClientSession,
        method: str,
        url: str,
        json: Any,
        params: Mapping[str, str | int] | None,
        wire: Wire,
    ) -> tuple[int, bytes, Mapping[str, str]]:
        return await handler(self, url, wire, json)

    mp.setattr(Session, "_exchange", exchange)


def install(mp: pytest.MonkeyPatch, server: StrictServer) -> None:
    """Route every ``Session`` exchange to ``server`` (each client's pool tells them apart);
    a purge's paths count against the server's file budget."""

    def files(json: Any) -> int:
        return len(json["files"]) if isinstance(json, dict) and "files" in json else 0

    route(mp, lambda session, url, wire, json: server.exchange(wire, session._pool, files(json)))
