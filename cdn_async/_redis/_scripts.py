"""The Lua operations: where their sources live, one encoder and one reply decoder each.

Each operation is ``lua/common.lua`` (the key layout, the header arguments, the epoch, and
the helpers that expire, read and touch a key) followed by ``lua/<operation>.lua``, whose
own arguments are named at its top. The encoders below are the only places that build
argument lists, in the order those files read them; the decoders the only places that read
replies. Every call passes the same four header arguments first (``Header``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from .._limits import Claim, RateLimits
from ._connection import lua, ms, text

#: The operations, one ``lua/<name>.lua`` each.
OPERATIONS = ("acquire", "release", "sync", "pause", "heartbeat", "restore")

# Hold flags cached per claim set; cleared past this many (endpoint-scoped keys vary).
_FLAG_CACHE = 1024


def sources() -> dict[str, str]:
    """Every operation's script: the common helpers, then the operation."""
    package = __name__.rpartition(".")[0]
    return {op: lua(package, op, common="common") for op in OPERATIONS}


def token_id_for(token: str) -> str:
    """A stable, non-reversible id for an API token, to name its budgets in Redis.

    Several tokens can share one Redis; each token's windows live under its own id. The id is
    a truncated SHA-256, so the token itself never reaches Redis.

    Args:
        token: The API token.

    Returns:
        16 hex digits.
    """
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def member(lease_id: str, units: int) -> str:
    """A lease's entry in a key's sorted sets."""
    return f"{lease_id}:{units}"


def keys(prefix: str, claims: Sequence[Claim]) -> list[str]:
    """KEYS of a call: the epoch hash, the tombstones, then per key its in-flight set,
    released set, meta hash and gone set (``lua/common.lua``)."""
    out = [f"{prefix}:epoch", f"{prefix}:x"]
    for c in claims:
        k = c.key
        out.extend((f"{prefix}:f:{k}", f"{prefix}:r:{k}", f"{prefix}:m:{k}", f"{prefix}:g:{k}"))
    return out


# -- replies ----------------------------------------------------------------------------------


class _Reply(Protocol):
    @property
    def epoch(self) -> str: ...


R = TypeVar("R", bound=_Reply)


class AcquireReply(NamedTuple):
    """``lua/acquire.lua``'s reply, in seconds."""

    admitted: bool
    wait: float  # how long until the units could fit (0 with ``unknown``: poll)
    epoch: str
    paused: float  # the longest 429 pause among the keys
    paused_index: int  # 1-based index of that key in the call's claims; 0: none
    unknown: bool  # only an answer can free the slot
    lost: float  # the restart hold still to run


class Done(NamedTuple):
    """The reply of every other operation."""

    epoch: str


def _decode_acquire(res: list[Any]) -> AcquireReply:
    return AcquireReply(
        admitted=int(res[0]) == 1,
        wait=float(text(res[1])) / 1000.0,
        epoch=text(res[2]),
        paused=float(text(res[3])) / 1000.0,
        paused_index=int(res[4]),
        unknown=int(res[5]) == 1,
        lost=float(text(res[6])) / 1000.0,
    )


def _decode_done(res: list[Any]) -> Done:
    return Done(text(res[0]))


# -- calls --------------------------------------------------------------------------------------


class Header(NamedTuple):
    """The arguments every operation takes first (``lua/common.lua``)."""

    new_epoch: str  # the epoch id to create if Redis has none
    grace_ms: str  # recovery grace of a new epoch
    marker_ms: str  # TTL of the epoch marker
    inflight_ms: str  # in-flight timeout


@dataclass(frozen=True, slots=True)
class Call(Generic[R]):
    """One script call: the operation, the claims whose keys it touches, its own arguments
    (after the header) and how to read its reply."""

    op: str
    claims: tuple[Claim, ...]
    args: list[str]
    decode: Callable[[list[Any]], R] = field(repr=False)

    def argv(self, header: Header) -> list[str]:
        return [*header, *self.args]


def acquire(
    lease_id: str, parts: Sequence[tuple[Claim, int]], flags: Sequence[str]
) -> Call[AcquireReply]:
    """Take every key's units at once (``flags``: ``RestartHolds.flags(parts)``)."""
    args = [lease_id]
    for (c, u), flag in zip(parts, flags, strict=True):
        args.extend((str(c.limit), ms(c.period), str(u), flag))
    return Call("acquire", tuple(c for c, _ in parts), args, _decode_acquire)


def release(
    lease_id: str, parts: Sequence[tuple[Claim, int]], *, give_back: bool, age: float = 0.0
) -> Call[Done]:
    """Release the lease (its units free a period after the answer, which arrived ``age`` s
    before this call is sent), or give it back (at once)."""
    args = [lease_id, "1" if give_back else "0", ms(max(age, 0.0))]
    for c, u in parts:
        args.extend((ms(c.period), str(u)))
    return Call("release", tuple(c for c, _ in parts), args, _decode_done)


def sync(claim: Claim, remaining: int, reset_after: float, age: float | None) -> Call[Done]:
    """The server's headers for one key, from an answer to a request admitted ``age`` s
    before this call is sent (None: unknown)."""
    since = "-1" if age is None else ms(min(max(age, 0.0), claim.period))
    args = [str(claim.limit), str(remaining), ms(max(reset_after, 0.0)), ms(claim.period), since]
    return Call("sync", (claim,), args, _decode_done)


def pause(claim: Claim, resume_after: float) -> Call[Done]:
    """A 429 on one key."""
    return Call("pause", (claim,), [ms(resume_after), ms(claim.period)], _decode_done)


def heartbeat(per_key: Sequence[tuple[Claim, Sequence[str]]]) -> Call[Done]:
    """Move the deadlines of these in-flight members forward, per key."""
    args: list[str] = []
    for c, members in per_key:
        args.extend((ms(c.period), str(len(members)), *members))
    return Call("heartbeat", tuple(c for c, _ in per_key), args, _decode_done)


@dataclass(slots=True)
class Seed:
    """What this process re-seeds for one key after a restart or an outage."""

    claim: Claim
    inflight: list[str] = field(default_factory=list)  # members
    released: list[tuple[str, float]] = field(default_factory=list)  # (member, s left)
    given: list[str] = field(default_factory=list)  # members given back
    used: int = 0  # what the server counted (its last sync hold)
    hold: float = 0.0  # s left of that hold
    pause: float = 0.0  # s left of the 429 pause


def restore(seeds: Sequence[Seed]) -> Call[Done]:
    """Re-seed Redis with this process's mirror (idempotent)."""
    args: list[str] = []
    for s in seeds:
        args.extend(
            (
                ms(s.claim.period),
                str(s.used),
                ms(max(s.hold, 0.0)),
                ms(max(s.pause, 0.0)),
                str(len(s.inflight)),
                str(len(s.released)),
                str(len(s.given)),
            )
        )
        args.extend(s.inflight)
        for m, left in s.released:
            args.extend((m, ms(left)))
        args.extend(s.given)
    return Call("restore", tuple(s.claim for s in seeds), args, _decode_done)


class RestartHolds:
    """Which keys of a request ``acquire`` holds while Redis's history may be lost (the
    package docstring, "Restarts")."""

    def __init__(self, limits: RateLimits, hold: bool):
        # Budgets every request claims once, one window for the whole token.
        self._universal = frozenset(
            b.name for b in limits.budgets if b.unit == "request" and b.scope == "token"
        )
        self._per_request = frozenset(b.name for b in limits.budgets if b.unit == "request")
        self._hold = hold
        self._flags: dict[tuple[tuple[Claim, int], ...], tuple[str, ...]] = {}

    def flags(self, parts: tuple[tuple[Claim, int], ...]) -> tuple[str, ...]:
        """Per key of a request: '1' if it is held while its history may be lost, '0' if
        another budget of the request bounds it."""
        flags = self._flags.get(parts)
        if flags is not None:
            return flags
        out = []
        for a, _ in parts:
            held = self._hold
            if held and a.budget in self._per_request:
                for b, _ in parts:
                    if b.key == a.key or b.key != b.budget or b.budget not in self._universal:
                        continue
                    # Requests B lets through in any window of A's period (closed windows).
                    most = b.limit * (math.floor(a.period / b.period * (1 + 1e-9)) + 1)
                    if most <= a.limit:
                        held = False
                        break
            out.append("1" if held else "0")
        flags = tuple(out)
        if len(self._flags) >= _FLAG_CACHE:
            self._flags.clear()
        self._flags[parts] = flags
        return flags
