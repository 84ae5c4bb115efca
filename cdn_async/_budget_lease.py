"""What ``MemoryBudgetStore.acquire`` hands out: the units a request holds until its answer."""

from __future__ import annotations

from ._budget_key import BudgetKey
from ._limits import Claim

__all__ = ["BudgetLease"]


class BudgetLease:
    """What ``MemoryBudgetStore.acquire`` hands out; give it back to ``release``.

    Attributes:
        claims: The claims the request was admitted with.
        waited_on: The budget the request waited for last (None if it did not wait).
    """

    __slots__ = ("_parts", "_store", "claims", "waited_on")

    def __init__(
        self,
        claims: tuple[Claim, ...],
        parts: list[tuple[BudgetKey, int]],
        store: object,
        waited_on: str | None = None,
    ) -> None:
        self.claims = claims
        #: The budget whose room admitted the request last, when it had to wait (else None).
        self.waited_on = waited_on
        self._parts: list[tuple[BudgetKey, int]] | None = parts
        self._store = store  # the store that issued it (compared by identity only)

    def issued_by(self, store: object) -> bool:
        """Whether ``store`` handed out this lease."""
        return self._store is store

    def end(self) -> list[tuple[BudgetKey, int]] | None:
        """The units the lease holds, by key, the first time; None once it was released or
        given back (so each is done once)."""
        parts, self._parts = self._parts, None
        return parts

    @property
    def released(self) -> bool:
        """True once the lease was released (or given back)."""
        return self._parts is None

    def __repr__(self) -> str:
        keys = ", ".join(f"{c.key}={c.units}" for c in self.claims)
        return f"<BudgetLease {keys}{' released' if self._parts is None else ''}>"
