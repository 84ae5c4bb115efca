"""``SQLiteLease``: what ``SQLiteBudgetStore.acquire`` hands out."""

from __future__ import annotations

from .._limits import Claim
from ._file import Part


class SQLiteLease:
    """One admitted request's rows in the budget file; give it to ``release`` (or
    ``give_back``).

    Attributes:
        id: The lease's id in the file (unique across processes).
        claims: The claims the request was admitted with.
    """

    __slots__ = ("_ended", "_parts", "_store", "admitted_at", "claims", "id")

    def __init__(
        self,
        lease_id: str,
        claims: tuple[Claim, ...],
        parts: tuple[Part, ...],
        store: object,
        admitted_at: float,
    ) -> None:
        self.id = lease_id
        #: The store's clock when the file admitted it: the server stamps it no earlier.
        self.admitted_at = admitted_at
        self.claims = claims
        self._parts = parts  # merged per key, sorted by key
        self._store = store  # the store that issued it (compared by identity only)
        self._ended = False

    def issued_by(self, store: object) -> bool:
        """Whether ``store`` handed out this lease."""
        return self._store is store

    def end(self) -> tuple[Part, ...] | None:
        """The units the lease holds, by key, the first time; None once it was released or
        given back (so each is done once)."""
        if self._ended:
            return None
        self._ended = True
        return self._parts

    @property
    def released(self) -> bool:
        """True once the lease was released (or given back)."""
        return self._ended

    def __repr__(self) -> str:
        keys = ", ".join(f"{p.key}={p.units}" for p in self._parts)
        return f"<SQLiteLease {keys}{' released' if self._ended else ''}>"
