"""The purged files per window a client allows itself, beside clients it cannot see.

No header describes the file budget (50 paths / 20 s per token): clients on one token that
share no store learn of each other on it only through 429s, and a refused purge is counted by
nobody. A client that sends its whole share again the moment its own units free keeps that
room: its request reaches the server a round trip after the server freed it, before a client
that was refused can know when that was. Shares are therefore sticky, and ``FileShare`` makes
room for jobs that start beside it before anyone holds the whole budget (docs/design.md,
"Budgets", 9):

- The share is the whole budget until the client draws a refusal or, with ``polite`` (the
  CLI's purges, ``CDNClient(polite_purges=True)``), first has more than a window's worth to
  send (a bulk purge). Then it drops (to a quarter for a bulk purge), tries twice that a
  quarter period later, and doubles at once after each accepted trial: a lone bulk purge fills
  its first window a quarter period late; up to four jobs starting together share the budget.
- A trial is a request of its own above the share, so a refused one costs a 429 and no room.
  After one, trials wait ``TRIAL_GAP`` periods, twice that after each further refused one (up
  to ``MAX_TRIAL_GAP``).
- A refused request within the share means the room was taken: the share halves, and the
  client sends nothing more on the budget for a period, two after a second refusal in a row;
  its next accepted request tries to grow at once (whoever took the room may be gone).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from typing import Literal

#: Periods between trials after the first refusal; it doubles after each refused trial.
TRIAL_GAP = 4
#: The longest wait, in periods, between trials.
MAX_TRIAL_GAP = 8
#: The longest wait, in periods, before sending again after refusals in a row.
MAX_QUIET = 2
#: The shortest sleep: a time a float rounding short of "now" must not spin the loop.
_MIN_SLEEP = 0.001
#: Our files freeing within a this-many-th of a period join the request about to be cut.
_MERGE_WITHIN = 20

#: How a request that ``FileShare.reserve`` let through ended (see ``FileShare.settle``).
Outcome = Literal["accepted", "refused", "unsent", "counted"]


class FileShare:
    """One client's ceiling on its own purged files in any window of a file budget.

    Args:
        capacity: The budget's capacity (its limit less the reserve).
        period: The budget's window, in seconds.
        clock: The event loop's clock.
        polite: Start bulk purges at a quarter of the budget (``CDNClient(polite_purges=)``);
            else the share drops only after a refusal.
    """

    def __init__(
        self, capacity: int, period: float, clock: Callable[[], float], *, polite: bool = False
    ) -> None:
        self.capacity = capacity
        self.period = period
        self._clock = clock
        self._polite = polite
        #: Files per window known to fit beside whoever else spends the budget: the whole
        #: budget until a purge needs more than one window, or a refusal says otherwise.
        self.share = capacity
        self._engaged = False
        self._trials_refused = 0  # in a row
        self._next_trial = math.inf
        self._quiet_until = float("-inf")  # after refusals of requests within the share
        self._refused_in_a_row = 0
        self._used: deque[tuple[float, int]] = deque()  # (frees at, files), in that order
        self._in_flight = 0
        self._left = 0  # paths the last cut left pending
        self._answered: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"<FileShare {self.share}/{self.capacity} per {self.period:g} s>"

    def _own(self, now: float) -> int:
        used = self._used
        while used and used[0][0] <= now:
            used.popleft()
        return self._in_flight + sum(n for _, n in used)

    def _ceiling(self, now: float) -> int:
        if now >= self._next_trial and self.share < self.capacity:
            return min(self.capacity, 2 * self.share)
        return self.share

    def batch_size(self, pending: int) -> int:
        """How many of ``pending`` paths the next purge request should carry: what fits now,
        at most the ceiling (the share, or twice it on trial).

        With ``polite``, the first time more than a window's worth is pending (a bulk purge,
        which is what collides with other jobs), the share drops to a quarter of the budget
        and grows by trial from a quarter period on; purges that fit in one window go whole.
        """
        now = self._clock()
        if self._polite and not self._engaged and pending > self.capacity:
            self._engage(now, max(1, self.capacity // 4))
        ceiling = self._ceiling(now)
        room = ceiling - self._own(now)
        # What fits now when that is worth a request (``room``); else a whole ceiling's
        # worth, which ``reserve`` then waits for.
        size = room if 2 * room >= ceiling or (ceiling > self.share and room > 0) else ceiling
        size = pending if pending <= room else min(pending, size)
        self._left = pending - size  # what the next request will carry, as far as known
        return max(1, size)

    def _engage(self, now: float, share: int) -> None:
        self._engaged = True
        self.share = min(self.share, share)
        self._next_trial = now + self.period / 4

    async def room(self) -> None:
        """Wait until a request cut by ``batch_size`` would carry at least half the ceiling
        (a window freeing in small pieces must not be spent in small requests: every purge
        also costs one of the 5 cdn requests per 10 s)."""
        while True:
            now = self._clock()
            ceiling = self._ceiling(now)
            own = self._own(now)
            room = ceiling - own
            growing = ceiling > self.share  # a trial: send what fits, however little
            # Room worth a request: half the ceiling, or all the rest of the purge.
            worth = 2 * room >= ceiling or (room > 0 and (growing or self._left <= room))
            if now >= self._quiet_until and (own == 0 or worth):
                # More of ours about to free joins this request: the window's pieces merge
                # instead of repeating as small requests period after period.
                soon = self._used[0][0] - now if self._used and own < ceiling else None
                if soon is None or soon > self.period / _MERGE_WITHIN:
                    return
                await asyncio.sleep(max(soon, _MIN_SLEEP))
                continue
            await self._sleep(now, ceiling, own + (ceiling + 1) // 2 - ceiling)

    async def reserve(self, files: int) -> bool:
        """Wait until ``files`` more of ours fit under the ceiling, then count them in flight.

        A request larger than the ceiling goes once nothing of ours is in the window.

        Returns:
            Whether it is a trial: it takes our files in the window above the share.
        """
        while True:
            now = self._clock()
            ceiling = self._ceiling(now)
            own = self._own(now)
            if now >= self._quiet_until and (own == 0 or own + files <= ceiling):
                self._in_flight += files
                return own + files > self.share
            await self._sleep(now, ceiling, own + files - ceiling)

    async def _sleep(self, now: float, ceiling: int, excess: int) -> None:
        """Until the quiet time ends, ``excess`` of our files expire, a trial is due, or an
        answer arrives (only an answer frees what is in flight)."""
        if now < self._quiet_until:
            waits = [self._quiet_until - now]
        else:
            waits = [self._next_trial - now] if ceiling < self.capacity else []
            for frees_at, n in self._used:
                excess -= n
                if excess <= 0:
                    waits.append(frees_at - now)
                    break
        if self._answered is None:
            self._answered = asyncio.Event()
        try:
            async with asyncio.timeout(max(min(waits), _MIN_SLEEP) if waits else None):
                await self._answered.wait()
        except TimeoutError:
            pass

    def settle(self, files: int, trial: bool, outcome: Outcome) -> None:
        """A request of ``files`` that ``reserve`` let through has ended.

        Args:
            files: What it carried.
            trial: What ``reserve`` returned for it.
            outcome: ``"accepted"`` (a 2xx), ``"refused"`` (a 429: counted by nobody),
                ``"unsent"`` (never written), or ``"counted"`` (any other end: the server
                may have counted it, so it counts for a period, and says nothing of room).
        """
        now = self._clock()
        self._in_flight -= files
        if outcome in ("accepted", "counted"):
            self._used.append((now + self.period, files))
        if outcome == "accepted":
            if trial:  # the window held all of ours: that is the share now, and try again
                self.share = min(self.capacity, max(self.share, self._own(now)))
                self._trials_refused = 0
                self._next_trial = now
            elif self._refused_in_a_row:
                # Room again after being squeezed out: whoever took it may be gone.
                self._next_trial = now
            self._refused_in_a_row = 0
        elif outcome == "refused":
            if trial:
                self._trials_refused += 1
            else:  # the room was taken
                self._engaged = True
                self.share = max(1, min(self.share, files) // 2)
                self._refused_in_a_row += 1
                quiet = min(2 ** (self._refused_in_a_row - 1), MAX_QUIET)
                self._quiet_until = now + quiet * self.period
            gap = TRIAL_GAP * 2 ** max(0, self._trials_refused - 1)
            self._next_trial = now + min(gap, MAX_TRIAL_GAP) * self.period
        if self._answered is not None:
            self._answered.set()
            self._answered = None


def polite_start(capacity: int, period: float, paths: int) -> tuple[int, float]:
    """What a polite client's first bulk purge of ``paths`` costs over one that starts at the
    whole budget, alone on its token: the extra requests of its first window (a quarter, then
    a doubling trial each) and the quarter period it starts late. Nothing for one window."""
    if paths <= capacity:
        return 0, 0.0
    extra, share = 0, max(1, capacity // 4)
    while share < capacity:
        share, extra = min(capacity, 2 * share), extra + 1
    return extra, period / 4
