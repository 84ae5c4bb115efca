"""``RedisLease``: what ``RedisBudgetStore.acquire`` hands out."""

from __future__ import annotations

from .._limits import Claim


class RedisLease:
    """What ``RedisBudgetStore.acquire`` hands out; give it back to ``release``.

    Attributes:
        id: The lease's id in Redis (unique across processes).
        claims: The claims the request was admitted with.
        parts: What it holds: (first claim of the key, merged units), sorted by key.
    """

    __slots__ = ("_ended", "_store", "admitted_at", "claims", "id", "parts", "released_at")

    def __init__(
        self,
        lease_id: str,
        claims: tuple[Claim, ...],
        parts: tuple[tuple[Claim, int], ...],
        store: object,
    ) -> None:
        self.id = lease_id
        self.claims = claims
        # Kept after the lease ends: the store's mirror remembers a released lease until its
        # units expire, and writes a release to Redis after the fact.
        self.parts = parts
        self._store = store  # the store that issued it (compared by identity only)
        self._ended = False
        #: When the store admitted it (its clock; None: not yet).
        self.admitted_at: float | None = None
        #: When ``release`` was called (the store's clock): the answer had arrived by then.
        self.released_at: float | None = None

    def issued_by(self, store: object) -> bool:
        """Whether ``store`` handed out this lease."""
        return self._store is store

    def end(self) -> tuple[tuple[Claim, int], ...] | None:
        """The units the lease holds, by key, the first time; None once it was released or
        given back (so each is done once)."""
        if self._ended:
            return None
        self._ended = True
        return self.parts

    @property
    def released(self) -> bool:
        """True once the lease was released (or given back)."""
        return self._ended

    def __repr__(self) -> str:
        keys = ", ".join(f"{c.key}={u}" for c, u in self.parts)
        return f"<RedisLease {keys}{' released' if self._ended else ''}>"
