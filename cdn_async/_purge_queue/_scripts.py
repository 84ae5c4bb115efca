"""``QueueScripts``: the queue's steps in Redis, one Lua script each (``lua/<name>.lua``), with
typed arguments and typed replies. This is the only module that knows the queue's key layout
and reads a script's reply; the package docstring names the keys."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import attrs

from .._redis._connection import Connection, lua, text, ttl_ms

#: The scripts, one ``lua/<name>.lua`` each.
NAMES = ("submit", "take", "seal", "complete", "giveback", "lease", "poll")


class Held(NamedTuple):
    """The endpoint's lease is held (by another drainer, or by this one over a batch that
    may be on the wire), for ``ttl`` s more (0: unknown)."""

    ttl: float


class Slot(NamedTuple):
    """The lease, to send the first ``size`` pending paths once the budgets admit the request
    (``QueueScripts.seal`` fixes them then); ``high``: the first of them is urgent."""

    size: int
    high: bool


class Idle(NamedTuple):
    """Nothing pending or in flight (the lease was released)."""


@attrs.frozen
class Batch:
    """A fixed batch in flight under this drainer's lease."""

    batch_id: str
    #: It holds a path submitted at priority "high": it waits at that priority.
    high: bool
    #: It was in flight under a lease that expired: it may have been sent already.
    resend: bool
    paths: list[str]
    #: Each waiting ticket -> the entries (sequence numbers) of the batch it waits on.
    seqs: dict[str, list[str]]


def _batch(raw: list[Any]) -> Batch:
    """``{1, batch id, high, resend, path, "seq tickets", ...}``."""
    paths: list[str] = []
    seqs: dict[str, list[str]] = {}
    for i in range(4, len(raw), 2):
        paths.append(text(raw[i]))
        seq, *tickets = text(raw[i + 1]).split()
        for ticket in tickets:
            seqs.setdefault(ticket, []).append(seq)
    return Batch(text(raw[1]), text(raw[2]) == "1", text(raw[3]) == "1", paths, seqs)


def _taken(raw: list[Any]) -> Held | Slot | Batch | Idle:
    kind = int(raw[0])
    if kind == 0:
        return Held(max(int(raw[1]), 0) / 1000)
    if kind == 1:
        return _batch(raw)
    if kind == 2:
        return Slot(int(raw[1]), text(raw[2]) == "1")
    return Idle()


def _sealed(raw: list[Any]) -> Batch | None:
    return _batch(raw) if int(raw[0]) == 1 else None


def _seqs(raw: list[Any]) -> list[int] | None:
    if raw and text(raw[0]) == "lost":
        return None
    return [int(text(seq)) for seq in raw]


def _entries(raw: list[Any]) -> list[list[str] | None]:
    return [None if entries is None else [text(e) for e in entries] for entries in raw]


def _done(raw: Any) -> bool:
    return bool(int(raw))


class QueueScripts:
    """The queue's keys under ``prefix`` and every step on them, over one ``Connection``.

    Args:
        conn: The client (closed by ``aclose``).
        prefix: ``{<namespace>:<token id>}:pq``.
        lease_ttl: Seconds an endpoint's lease lasts without renewal.
        result_ttl: Seconds a submission's results are kept after their last write.
    """

    def __init__(self, conn: Connection, prefix: str, lease_ttl: float, result_ttl: float):
        self._conn = conn
        self._prefix = prefix
        self._lease_ms = ttl_ms(lease_ttl)
        self._result_ms = ttl_ms(result_ttl)

    @property
    def call_timeout(self) -> float:
        """The longest one call may take."""
        return self._conn.call_timeout

    @staticmethod
    def sources() -> dict[str, str]:
        """Every script's source, for the ``Connection``."""
        package = __name__.rpartition(".")[0]
        return {name: lua(package, name) for name in NAMES}

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self._prefix}:{kind}:{name}" if name else f"{self._prefix}:{kind}"

    # -- submitting and waiting --------------------------------------------------------------

    async def submit(
        self, cdn_id: str, ticket_id: str, targets: Sequence[str], *, first: bool, high: bool
    ) -> list[int] | None:
        """Queue one chunk of a ticket's paths (``first``: the ticket's first chunk creates
        its results list). Returns each path's entry, or None when the results list of an
        earlier chunk is gone (Redis lost its data)."""
        keys = [
            self._key("p", cdn_id),
            self._key("w", cdn_id),
            self._key("e"),
            self._key("n"),
            self._key("r", ticket_id),
        ]
        args = [cdn_id, ticket_id, self._result_ms, "1" if first else "0", "1" if high else "0"]
        return await self._conn.script("submit", keys, [*args, *targets], _seqs)

    async def poll(self, parts: Sequence[tuple[str, int]]) -> list[list[str] | None]:
        """Per ``(ticket id, offset)``: the results from that offset on (None: the list is
        gone); each read keeps its list alive."""
        keys = [self._key("r", ticket_id) for ticket_id, _ in parts]
        args = [self._result_ms, *(str(offset) for _, offset in parts)]
        return await self._conn.script("poll", keys, args, _entries)

    # -- draining ------------------------------------------------------------------------------

    async def take(self, cdn_id: str, token: str, size: int) -> Held | Slot | Batch | Idle:
        """Take the endpoint's lease and its batch in flight, or a slot for ``size`` paths."""
        keys = [
            self._key("l", cdn_id),
            self._key("p", cdn_id),
            self._key("w", cdn_id),
            self._key("f", cdn_id),
            self._key("e"),
            self._key("n"),
        ]
        return await self._conn.script(
            "take", keys, [cdn_id, token, self._lease_ms, str(size)], _taken
        )

    async def seal(self, cdn_id: str, token: str, size: int) -> Batch | None:
        """Fix a slot's batch (the first ``size`` pending paths); None when the lease was
        lost or nothing is pending any more."""
        keys = [
            self._key("l", cdn_id),
            self._key("p", cdn_id),
            self._key("w", cdn_id),
            self._key("f", cdn_id),
            self._key("n"),
        ]
        return await self._conn.script("seal", keys, [token, str(size)], _sealed)

    async def complete(self, cdn_id: str, token: str, batch: Batch, outcome: str) -> bool:
        """Record a batch's outcome (JSON) for its tickets; False if it was no longer in
        flight."""
        keys = [self._key("f", cdn_id), self._key("l", cdn_id), self._key("p", cdn_id)]
        keys.append(self._key("e"))
        keys.extend(self._key("r", t) for t in batch.seqs)
        args = [batch.batch_id, token, outcome, self._result_ms, self._lease_ms, cdn_id]
        return await self._conn.script("complete", keys, [*args, *batch.seqs], _done)

    async def give_back(self, cdn_id: str, token: str, batch_id: str) -> None:
        """Release the lease, its batch marked unsent (``batch_id`` "": whichever)."""
        keys = [self._key("l", cdn_id), self._key("f", cdn_id)]
        await self._conn.script("giveback", keys, [token, batch_id], _done)

    async def renew(self, cdn_id: str, token: str) -> bool:
        """Renew the lease to a full ``lease_ttl``; False if it is no longer ours."""
        keys = [self._key("l", cdn_id)]
        return await self._conn.script("lease", keys, [token, self._lease_ms], _done)

    # -- reads -----------------------------------------------------------------------------------

    async def endpoints(self) -> list[str]:
        """Endpoints with paths pending or in flight."""
        members = await self._conn.command(lambda r: r.smembers(self._key("e")))
        return [text(m) for m in members]

    async def pending(self, cdn_id: str) -> int:
        """Paths of an endpoint pending or in flight."""
        queued = await self._conn.command(lambda r: r.zcard(self._key("p", cdn_id)))
        flying = await self._conn.command(lambda r: r.hlen(self._key("f", cdn_id)))
        return int(queued) + max(0, int(flying) - 1)  # the in-flight hash's "" field

    async def standing(
        self, cdn_id: str, members: Iterable[str], *, in_flight: bool = True
    ) -> set[str]:
        """Which of ``members`` are pending or (with ``in_flight``) in flight."""
        chunk = list(members)
        pending = await self._conn.command(lambda r: r.zmscore(self._key("p", cdn_id), chunk))
        if not in_flight:
            return {m for m, score in zip(chunk, pending, strict=True) if score is not None}
        flying = await self._conn.command(lambda r: r.hmget(self._key("f", cdn_id), chunk))
        return {
            m
            for m, score, batch in zip(chunk, pending, flying, strict=True)
            if score is not None or batch is not None
        }

    async def aclose(self) -> None:
        """Close the connection (its client, if it made it)."""
        await self._conn.aclose()
