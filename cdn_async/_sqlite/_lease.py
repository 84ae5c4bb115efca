"""``SQLiteLease``: what ``SQLiteBudgetStore.acquire`` hands out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._limits import Claim
from ._file import Part

if TYPE_CHECKING:
    from ._store import SQLiteBudgetStore


class SQLiteLease:
    """One admitted request's rows in the budget file; give it to ``release`` (or
    ``give_back``).

    Attributes:
        id: The lease's id in the file (unique across processes).
        claims: The claims the request was admitted with.
    """

    __slots__ = ("_parts", "_store", "admitted_at", "claims", "id", "released")

    def __init__(
        self,
        lease_id: str,
        claims: tuple[Claim, ...],
        parts: tuple[Part, ...],
        store: SQLiteBudgetStore,
        admitted_at: float,
    ) -> None:
        self.id = lease_id
        #: The store's clock when the file admitted it: the server stamps it no earlier.
        self.admitted_at = admitted_at
        self.claims = claims
        self._parts = parts  # merged per key, sorted by key
        self._store = store
        self.released = False  # released or given back

    def __repr__(self) -> str:
        keys = ", ".join(f"{p.key}={p.units}" for p in self._parts)
        return f"<SQLiteLease {keys}{' released' if self.released else ''}>"
