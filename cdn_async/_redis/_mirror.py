"""The restart mirror: what this process put into Redis, kept here as well.

Its leases in flight, its released leases until they expire, its give-backs not yet written,
its last sync hold and pause per key, and per key a ``WindowLedger`` of its own units with
those holds and pauses (the rules of the in-memory store). It re-seeds Redis after a restart
or an outage (``seeds``), feeds the heartbeat (``heartbeat_members``), and admits while Redis
is unreachable with ``fallback="memory"`` (``ledger``). It never calls Redis.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from .._ledger import WindowLedger
from .._limits import BudgetState, Claim
from ._lease import RedisLease
from ._scripts import Seed, member


class Local(WindowLedger):
    """This process's own units on one key, with the holds and pauses it learned."""

    __slots__ = ("claim",)

    def __init__(self, claim: Claim) -> None:
        super().__init__(claim.limit, claim.period)
        self.claim = claim


class Mirror:
    """What this process holds in Redis, and its own ledgers (module docstring)."""

    def __init__(self) -> None:
        self.inflight: dict[str, RedisLease] = {}
        self.released: deque[tuple[float, float, RedisLease]] = deque()  # (at, frees, lease)
        self.holds: dict[str, tuple[Claim, int, float]] = {}  # key -> (claim, used, until)
        self.pauses: dict[str, tuple[Claim, float]] = {}  # key -> (claim, until)
        self.give_backs: dict[str, RedisLease] = {}  # given back, not yet written to Redis
        self.local: dict[str, Local] = {}

    def ledger(self, c: Claim) -> Local:
        """The ledger of ``c``'s key (limit and period follow the latest claim)."""
        led = self.local.get(c.key)
        if led is None:
            led = self.local[c.key] = Local(c)
        elif led.limit != c.limit or led.period != c.period:
            led.limit, led.period, led.claim = c.limit, c.period, c
        return led

    def admitted(self, lease: RedisLease) -> None:
        for c, u in lease.parts:
            self.ledger(c).take(u)
        self.inflight[lease.id] = lease

    def release(self, lease: RedisLease, now: float) -> None:
        self.inflight.pop(lease.id, None)
        for c, u in lease.parts:
            self.ledger(c).release(u, now)
        self.released.append((now, now + max(c.period for c, _ in lease.parts), lease))

    def give_back(self, lease: RedisLease) -> None:
        self.inflight.pop(lease.id, None)
        for c, u in lease.parts:
            self.ledger(c).give_back(u)

    def sync(self, claim: Claim, remaining: int, reset_after: float, now: float) -> None:
        """Server headers (``reset_after`` already capped at the period): a live hold is
        raised, never lowered."""
        self.ledger(claim).sync(remaining, reset_after, now)
        used = claim.limit - min(max(remaining, 0), claim.limit)
        if reset_after > 0 and used > 0:
            old = self.holds.get(claim.key)
            if old is not None and old[2] > now:
                self.holds[claim.key] = (claim, max(used, old[1]), max(now + reset_after, old[2]))
            else:
                self.holds[claim.key] = (claim, used, now + reset_after)

    def pause(self, claim: Claim, resume_after: float, now: float) -> None:
        """A 429 (``resume_after`` already capped at the period): extends, never shortens."""
        self.ledger(claim).pause(resume_after, now)
        old = self.pauses.get(claim.key)
        if old is None or old[1] < now + resume_after:
            self.pauses[claim.key] = (claim, now + resume_after)

    def paused(
        self, parts: Iterable[tuple[Claim, int]], max_wait: float, now: float
    ) -> tuple[Claim, float] | None:
        """The first key paused for longer than ``max_wait``, with how long."""
        for c, _ in parts:
            led = self.local.get(c.key)
            if led is not None and led.paused_until - now > max_wait:
                return c, led.paused_until - now
        return None

    def fit_delay(self, parts: Iterable[tuple[Claim, int]], now: float) -> float:
        """How long until every key fits by this process's own count (inf: an answer)."""
        delay = 0.0
        for c, u in parts:
            delay = max(delay, self.ledger(c).fit_delay(u, now))
        return delay

    def prune(self, now: float) -> None:
        """Forget what has expired, and the idle ledgers (a new one is the same)."""
        released = self.released
        # Entries are in release order; frees-times are close to monotonic, and a lingering
        # entry only makes a re-seed count a little more (the safe side).
        while released and released[0][1] <= now:
            released.popleft()
        for key in [k for k, v in self.holds.items() if v[2] <= now]:
            del self.holds[key]
        for key in [k for k, v in self.pauses.items() if v[1] <= now]:
            del self.pauses[key]
        for key in [k for k, v in self.local.items() if v.is_idle(now)]:
            del self.local[key]

    def empty(self) -> bool:
        return not (self.inflight or self.released or self.holds or self.pauses or self.give_backs)

    def seeds(self, now: float) -> list[Seed]:
        """What a re-seed writes, per key (call ``prune`` first)."""
        per_key: dict[str, Seed] = {}

        def seed(c: Claim) -> Seed:
            s = per_key.get(c.key)
            if s is None:
                s = per_key[c.key] = Seed(c)
            return s

        for lease in self.inflight.values():
            for c, u in lease.parts:
                seed(c).inflight.append(member(lease.id, u))
        for at, _, lease in self.released:
            for c, u in lease.parts:
                left = at + c.period - now
                if left > 0:
                    seed(c).released.append((member(lease.id, u), left))
        for lease in self.give_backs.values():
            for c, u in lease.parts:
                seed(c).given.append(member(lease.id, u))
        for c, used, until in self.holds.values():
            s = seed(c)
            s.used, s.hold = used, until - now
        for c, until in self.pauses.values():
            seed(c).pause = until - now
        return list(per_key.values())

    def heartbeat_members(self) -> list[tuple[Claim, list[str]]]:
        """Per key, the members of this process's requests in flight."""
        per_key: dict[str, tuple[Claim, list[str]]] = {}
        for lease in list(self.inflight.values()):
            for c, u in lease.parts:
                per_key.setdefault(c.key, (c, []))[1].append(member(lease.id, u))
        return list(per_key.values())

    def snapshot(self, now: float, waiters: dict[str, int]) -> dict[str, BudgetState]:
        out: dict[str, BudgetState] = {}
        for key, led in self.local.items():
            used = led.used(now)
            out[key] = BudgetState(
                key=key,
                limit=led.limit,
                used=used,
                remaining=max(0, led.limit - used),
                next_free_in=led.next_free_in(now),
                waiters=waiters.get(key, 0),
                paused_for=led.paused_for(now),
            )
        return out
