"""``RedisLease``, and the claims of one request merged per key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._limits import Claim
from ..errors import ValidationError

if TYPE_CHECKING:
    from ._store import RedisBudgetStore


class RedisLease:
    """What ``RedisBudgetStore.acquire`` hands out; give it back to ``release``.

    Attributes:
        claims: The claims the request was admitted with.
    """

    __slots__ = ("_parts", "_store", "claims", "id", "released")

    def __init__(
        self,
        lease_id: str,
        claims: tuple[Claim, ...],
        parts: tuple[tuple[Claim, int], ...],
        store: RedisBudgetStore,
    ) -> None:
        self.id = lease_id
        self.claims = claims
        self._parts = parts  # (first claim of the key, merged units), sorted by key
        self._store = store
        self.released = False  # released or given back

    def __repr__(self) -> str:
        keys = ", ".join(f"{c.key}={u}" for c, u in self._parts)
        return f"<RedisLease {keys}{' released' if self.released else ''}>"


def merge(claims: Sequence[Claim]) -> tuple[tuple[Claim, int], ...]:
    """One (claim, units) per key, sorted by key; validates as ``MemoryBudgetStore`` does."""
    merged: dict[str, list[Any]] = {}
    for c in claims:
        if c.units < 1 or c.units > c.limit:
            raise ValidationError(
                f"claim on {c.key!r} takes {c.units} units; it must be 1..{c.limit}"
            )
        entry = merged.get(c.key)
        if entry is None:
            merged[c.key] = [c, c.units]
        else:
            entry[1] += c.units
            if entry[1] > c.limit:
                raise ValidationError(f"claims on {c.key!r} take {entry[1]} units; limit {c.limit}")
    return tuple((c, u) for _, (c, u) in sorted(merged.items()))
