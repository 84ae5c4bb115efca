"""``RedisLease``, and the claims of one request merged per key."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._limits import Claim

if TYPE_CHECKING:
    from ._store import RedisBudgetStore


class RedisLease:
    """What ``RedisBudgetStore.acquire`` hands out; give it back to ``release``.

    Attributes:
        claims: The claims the request was admitted with.
    """

    __slots__ = ("_parts", "_store", "admitted_at", "claims", "id", "released", "released_at")

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
        #: When the store admitted it (its clock; None: not yet).
        self.admitted_at: float | None = None
        #: When ``release`` was called (the store's clock): the answer had arrived by then.
        self.released_at: float | None = None

    def __repr__(self) -> str:
        keys = ", ".join(f"{c.key}={u}" for c, u in self._parts)
        return f"<RedisLease {keys}{' released' if self.released else ''}>"
