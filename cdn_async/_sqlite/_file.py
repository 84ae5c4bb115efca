"""``BudgetFile``: every SQL statement of ``SQLiteBudgetStore``, one short write transaction
per operation (the package docstring has the design and the argument).

Tables (``SCHEMA``): ``units``, one row per (lease, key): its units, ``released`` (0 in flight,
1 answered, 2 expired) and ``until`` (in flight: the heartbeat deadline after which a silent
holder counts as answered; released: when the units leave every window, one period after the
answer; expired rows are kept one more period, for ``sync``); ``keys``, one row per budget
key: its latest limit and period, the running sums ``f`` (in flight) and ``r`` (released,
unexpired) of its rows, the sync hold and the 429 pause.

Nothing here awaits: a transaction starts (``BEGIN IMMEDIATE``, which fails at once with
``Busy`` if another connection writes) and commits within one call, and every time in it is
read from the clock after the write lock is held, so rows are stamped in commit order.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from .._ledger import WindowLedger
from ..errors import BudgetFileError

#: Written to ``meta``; a file of another version is refused rather than misread.
SCHEMA_VERSION = "1"

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS units ("
    " lease TEXT NOT NULL, key TEXT NOT NULL, units INTEGER NOT NULL,"
    " released INTEGER NOT NULL, until REAL NOT NULL, PRIMARY KEY (lease, key)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS units_by_key ON units (key, released, until)",
    "CREATE TABLE IF NOT EXISTS keys ("
    " key TEXT PRIMARY KEY, lim INTEGER NOT NULL, period REAL NOT NULL,"
    " f INTEGER NOT NULL DEFAULT 0, r INTEGER NOT NULL DEFAULT 0,"
    " hold INTEGER NOT NULL DEFAULT 0, hold_until REAL NOT NULL DEFAULT 0,"
    " paused_until REAL NOT NULL DEFAULT 0) WITHOUT ROWID",
)

# SQLITE_BUSY and SQLITE_LOCKED (primary codes): another connection holds the lock.
_BUSY_CODES = (5, 6)
#: Commits of one connection between checkpoints it runs in a thread (a checkpoint copies the
#: WAL into the file and syncs it: milliseconds the event loop must not wait for).
CHECKPOINT_EVERY = 500
# SQLite's own checkpoint, run inside a commit, only if the WAL grows past this many pages.
_BACKSTOP_PAGES = 10_000


class Busy(Exception):
    """Internal: another connection holds the file's write lock; try again shortly."""


class Part(NamedTuple):
    """One key of an operation: its name, limit, period and the units the lease takes."""

    key: str
    limit: int
    period: float
    units: int


class AcquireReply(NamedTuple):
    """What one acquire transaction found, in the store's clock seconds."""

    admitted: bool
    wait: float  # until the units could fit (with ``unknown``: a lower bound)
    unknown: bool  # only an answer can free the room: poll
    paused: float  # the longest 429 pause among the keys
    paused_index: int  # index of that key in the parts; -1: none
    at: float  # the clock in the transaction (admitted: the lease's admission)


class KeyRow(NamedTuple):
    """A key's state for ``snapshot``."""

    key: str
    limit: int
    used: int
    next_free_in: float
    paused_for: float


class _State(NamedTuple):
    f: int
    r: int
    hold: int  # 0 once the hold has ended
    hold_until: float
    paused_until: float


def busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` means "another connection holds the lock" (not "the file is bad")."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _BUSY_CODES
    return "locked" in str(exc)


class BudgetFile:
    """One connection to the budget file, and the transactions on it.

    Args:
        path: The file (created if missing; its directory must exist and be writable).
        inflight_timeout: Seconds a lease may go without a heartbeat before it counts as
            answered at its deadline.
        open_timeout: How long opening may wait for another connection's lock (it blocks:
            opening happens once, when the store is made).

    Raises:
        BudgetFileError: The file cannot be opened, created or written, is not a budget file
            of this version, or fails SQLite's integrity check.
    """

    def __init__(self, path: str, *, inflight_timeout: float, open_timeout: float) -> None:
        self.path = path
        self._inflight = inflight_timeout
        self._pid = os.getpid()
        self._db = self._open(open_timeout)
        self.commits = 0  # by this connection; see CHECKPOINT_EVERY

    # -- opening --------------------------------------------------------------------------------

    def _open(self, open_timeout: float) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path, timeout=open_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self.error(exc, "cannot open") from None
        try:
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise self.error(None, f"failed SQLite's integrity check ({check})")
            # Switching to WAL needs the file to itself, and SQLite reports a lock met there at
            # once, without waiting (another process opening the new file at the same time):
            # tried again until open_timeout, as the statements around it wait.
            deadline = time.monotonic() + open_timeout
            while True:
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if not busy(exc) or time.monotonic() >= deadline:
                        raise
                    time.sleep(0.005)
            # WAL commits without fsync; a power loss may lose the last ones, a reboot the
            # package docstring covers. A crashed process loses nothing committed.
            db.execute("PRAGMA synchronous=NORMAL")
            # A checkpoint syncs the file: done off the loop (``checkpoint``), every
            # ``CHECKPOINT_EVERY`` commits; the automatic one only as a backstop.
            db.execute(f"PRAGMA wal_autocheckpoint={_BACKSTOP_PAGES}")
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in SCHEMA:
                    db.execute(statement)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
                (version,) = db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            if version != SCHEMA_VERSION:
                raise self.error(None, f"was written by another version (schema {version})")
            # From now on a locked file is the caller's business: never block the loop.
            db.execute("PRAGMA busy_timeout=0")
        except BudgetFileError:
            db.close()
            raise
        except sqlite3.Error as exc:
            db.close()
            raise self.error(exc, "cannot use") from None
        return db

    def error(self, exc: sqlite3.Error | None, what: str) -> BudgetFileError:
        """A ``BudgetFileError`` naming the file, what failed and what to do."""
        cause = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
        if exc is not None and busy(exc):
            advice = "another program holds its lock; end it, or use another path"
        elif exc is not None and isinstance(exc, sqlite3.OperationalError):
            advice = "check that its directory exists and is writable, on a local filesystem"
        else:
            advice = (
                "if no process uses it, delete it (with its -wal and -shm files), "
                "or use another path"
            )
        return BudgetFileError(
            f"budget file {self.path!r} {what}{cause}: {advice}; nothing was admitted",
            path=self.path,
        )

    def checkpoint(self) -> None:
        """Copy the WAL into the file, as far as no reader needs it (blocking: run it in a
        thread). On a connection of its own, so the loop's connection stays free."""
        try:
            with contextlib.closing(sqlite3.connect(self.path, timeout=0)) as db:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass  # busy or unreadable: the next one, or the backstop, does it

    def close(self) -> None:
        if os.getpid() == self._pid:
            self._db.close()

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, made again in a child process: a connection must not cross a
        fork (the parent's is left alone, not closed)."""
        if os.getpid() != self._pid:
            _ABANDONED.append(self._db)
            self._pid = os.getpid()
            self._db = self._open(0.0)
        return self._db

    # -- the transaction --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self, clock: Callable[[], float]) -> Iterator[float]:
        """One write transaction; yields the clock read once the write lock is held.

        Raises:
            Busy: Another connection writes (nothing was done).
            BudgetFileError: The file is unreadable or corrupt (rolled back).
        """
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            if busy(exc):
                raise Busy from None
            raise self.error(exc, "cannot be written") from None
        try:
            yield clock()
            db.execute("COMMIT")
            self.commits += 1
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                if busy(exc):
                    raise Busy from None
                raise self.error(exc, "cannot be used") from None
            raise

    def _state(self, key: str, limit: int, period: float, now: float) -> _State:
        """Expire the key's rows at ``now`` and return its sums, hold and pause (the key is
        created if new; its limit and period follow the latest caller)."""
        db = self._db
        row = db.execute(
            "SELECT lim, period, f, r, hold, hold_until, paused_until FROM keys WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            db.execute("INSERT INTO keys (key, lim, period) VALUES (?, ?, ?)", (key, limit, period))
            return _State(0, 0, 0, 0.0, 0.0)
        lim, per, f, r, hold, hold_until, paused_until = row
        f0, r0 = f, r
        dead, gone = self._expire(key, period, now)
        f, r = f - dead, r + dead - gone
        cap = self._cap(key, period, now)
        hold_until = min(hold_until, cap)
        paused_until = min(paused_until, cap)
        if hold_until <= now:
            hold, hold_until = 0, 0.0
        if (f, r, lim, per) != (f0, r0, limit, period) or row[5:] != (hold_until, paused_until):
            db.execute(
                "UPDATE keys SET lim = ?, period = ?, f = ?, r = ?, hold = ?, hold_until = ?,"
                " paused_until = ? WHERE key = ?",
                (limit, period, f, r, hold, hold_until, paused_until, key),
            )
        return _State(f, r, hold, hold_until, paused_until)

    def _expire(self, key: str, period: float, now: float) -> tuple[int, int]:
        """Expire the key's unit rows at ``now``: returns the units of leases that died in
        flight (now released) and of releases that left the windows."""
        db = self._db
        # A lease past its heartbeat deadline: its process died or stalled. It counts as
        # answered at the deadline, so it leaves the windows a period after that.
        (dead,) = db.execute(
            "SELECT COALESCE(SUM(units), 0) FROM units"
            " WHERE key = ? AND released = 0 AND until <= ?",
            (key, now),
        ).fetchone()
        if dead:
            db.execute(
                "UPDATE units SET released = 1, until = until + ?"
                " WHERE key = ? AND released = 0 AND until <= ?",
                (period, key, now),
            )
        (gone,) = db.execute(
            "SELECT COALESCE(SUM(units), 0) FROM units"
            " WHERE key = ? AND released = 1 AND until <= ?",
            (key, now),
        ).fetchone()
        if gone:
            db.execute(
                "UPDATE units SET released = 2 WHERE key = ? AND released = 1 AND until <= ?",
                (key, now),
            )
        db.execute(
            "DELETE FROM units WHERE key = ? AND released = 2 AND until <= ?", (key, now - period)
        )
        return int(dead), int(gone)

    def _cap(self, key: str, period: float, now: float) -> float:
        """Cap the key's stored times; returns the cap of releases, holds and pauses.

        No stored time lies further ahead than a writer could have put it: a period for
        releases, holds and pauses, the in-flight timeout for deadlines. Anything beyond was
        written under another clock (before a reboot): cap it for good.
        """
        cap = now + period
        self._db.execute(
            "UPDATE units SET until = ? WHERE key = ? AND released = 1 AND until > ?",
            (cap, key, cap),
        )
        deadline = now + self._inflight
        self._db.execute(
            "UPDATE units SET until = ? WHERE key = ? AND released = 0 AND until > ?",
            (deadline, key, deadline),
        )
        return cap

    # -- operations ---------------------------------------------------------------------------------

    def acquire(
        self, lease: str, parts: Sequence[Part], clock: Callable[[], float]
    ) -> AcquireReply:
        """Take every part's units at once, or say how long until they could fit."""
        with self._write(clock) as now:
            wait, unknown, pmax, pidx = 0.0, False, 0.0, -1
            db = self._db
            for i, (key, limit, period, units) in enumerate(parts):
                s = self._state(key, limit, period, now)
                if s.paused_until > now:
                    wait = max(wait, s.paused_until - now)
                    if s.paused_until - now > pmax:
                        pmax, pidx = s.paused_until - now, i
                excess = s.f + s.r + s.hold + units - limit
                if excess <= 0:
                    continue
                if s.f + units > limit:
                    unknown = True  # in flight: only answers can make room
                    continue
                # Released units and the hold free in expiry order: walk them until enough.
                at: float | None = None
                hold = s.hold
                for until, u in db.execute(
                    "SELECT until, units FROM units WHERE key = ? AND released = 1"
                    " ORDER BY until LIMIT ?",
                    (key, excess),
                ):
                    if hold and s.hold_until <= until:
                        excess -= hold
                        hold = 0
                        if excess <= 0:
                            at = s.hold_until
                            break
                    excess -= u
                    if excess <= 0:
                        at = until
                        break
                if at is None:
                    at = s.hold_until  # the hold ends last (the rows add up to r)
                wait = max(wait, at - now)
            if wait > 0 or unknown:
                return AcquireReply(False, wait, unknown, pmax, pidx, now)
            deadline = now + self._inflight
            for key, _, _, units in parts:
                db.execute(
                    "INSERT INTO units VALUES (?, ?, ?, 0, ?)", (lease, key, units, deadline)
                )
                db.execute("UPDATE keys SET f = f + ? WHERE key = ?", (units, key))
            return AcquireReply(True, 0.0, False, 0.0, -1, now)

    def finish(
        self,
        lease: str,
        parts: Sequence[Part],
        clock: Callable[[], float],
        *,
        answered_at: float | None,
    ) -> None:
        """Release a lease (``answered_at``: its units leave the windows a period after it)
        or, with None, give it back (its units are uncounted at once)."""
        with self._write(clock) as now:
            db = self._db
            for key, limit, period, units in parts:
                self._state(key, limit, period, now)
                row = db.execute(
                    "SELECT released, until FROM units WHERE lease = ? AND key = ?", (lease, key)
                ).fetchone()
                state, old = row if row is not None else (2, now)
                counted = {0: "f", 1: "r"}.get(state)  # the sum the row is in, if any
                if answered_at is None:
                    if row is not None:
                        db.execute("DELETE FROM units WHERE lease = ? AND key = ?", (lease, key))
                    if counted is not None:
                        db.execute(
                            f"UPDATE keys SET {counted} = {counted} - ? WHERE key = ?",
                            (units, key),
                        )
                    continue
                # A row already released (counted as answered at its dead deadline) keeps the
                # later expiry; one expired or gone that is answered only now counts again.
                until = min(answered_at + period, now + period)
                if state == 1:
                    until = max(until, old)
                elif until <= now:
                    continue
                if row is None:
                    db.execute(
                        "INSERT INTO units VALUES (?, ?, ?, 1, ?)", (lease, key, units, until)
                    )
                else:
                    db.execute(
                        "UPDATE units SET released = 1, until = ? WHERE lease = ? AND key = ?",
                        (until, lease, key),
                    )
                if counted != "r":
                    db.execute(
                        "UPDATE keys SET r = r + ? WHERE key = ?"
                        if counted is None
                        else "UPDATE keys SET f = f - ?, r = r + ? WHERE key = ?",
                        (units, key) if counted is None else (units, units, key),
                    )

    def heartbeat(self, leases: Sequence[str], clock: Callable[[], float]) -> None:
        """Push the deadlines of this process's leases in flight forward; drop idle keys."""
        with self._write(clock) as now:
            db = self._db
            db.executemany(
                "UPDATE units SET until = ? WHERE lease = ? AND released = 0",
                [(now + self._inflight, lease) for lease in leases],
            )
            for key, limit, period in db.execute("SELECT key, lim, period FROM keys").fetchall():
                self._state(key, limit, period, now)
            db.execute(
                "DELETE FROM keys WHERE f = 0 AND r = 0 AND hold = 0 AND paused_until <= ?"
                " AND NOT EXISTS (SELECT 1 FROM units WHERE units.key = keys.key)",
                (now,),
            )

    def sync(
        self,
        part: Part,
        remaining: int,
        reset_after: float,
        since: float | None,
        clock: Callable[[], float],
    ) -> None:
        """Server headers: hold what the server counts beyond the file's units (others')
        until ``reset_after`` s from now, at most a period; a live hold is raised, never
        lowered. ``since``: when the answered request was admitted (the server stamped it
        later), so units that left the file since then may still have been in the count."""
        key, limit, period, _ = part
        with self._write(clock) as now:
            s = self._state(key, limit, period, now)
            reset = min(reset_after, period)
            expired = 0
            if since is not None:
                (expired,) = self._db.execute(
                    "SELECT COALESCE(SUM(units), 0) FROM units"
                    " WHERE key = ? AND released = 2 AND until > ?",
                    (key, since),
                ).fetchone()
            phantom = (limit - min(max(remaining, 0), limit)) - (s.f + s.r + expired)
            if phantom <= 0 or reset <= 0:
                return
            hold, until = phantom, now + reset
            if s.hold:
                hold, until = max(s.hold, phantom), max(s.hold_until, until)
            self._db.execute(
                "UPDATE keys SET hold = ?, hold_until = ? WHERE key = ?", (hold, until, key)
            )

    def pause(self, part: Part, resume_after: float, clock: Callable[[], float]) -> None:
        """A 429: admit nothing on the key for ``resume_after`` s, at most a period (extends
        a pause, never shortens it)."""
        key, limit, period, _ = part
        with self._write(clock) as now:
            s = self._state(key, limit, period, now)
            until = now + min(resume_after, period)
            if until > s.paused_until:
                self._db.execute("UPDATE keys SET paused_until = ? WHERE key = ?", (until, key))

    def snapshot(self, now: float) -> list[KeyRow]:
        """Every key's state at ``now`` (a read: it writes nothing, and waits for no lock)."""
        try:
            return self._snapshot(now)
        except sqlite3.Error as exc:
            if busy(exc):
                raise Busy from None
            raise self.error(exc, "cannot be read") from None

    def ledger(self, key: str, now: float) -> WindowLedger | None:
        """One key's units at ``now`` as a ``WindowLedger`` (a read, for estimates: in flight,
        released with their expiries, the hold and the pause); None if the file has no such
        key."""
        try:
            return self._ledger(key, now)
        except sqlite3.Error as exc:
            if busy(exc):
                raise Busy from None
            raise self.error(exc, "cannot be read") from None

    def _ledger(self, key: str, now: float) -> WindowLedger | None:
        with contextlib.closing(self.db.cursor()) as cur:
            cur.execute("BEGIN")
            try:
                row = cur.execute(
                    "SELECT lim, period, hold, hold_until, paused_until FROM keys WHERE key = ?",
                    (key,),
                ).fetchone()
                if row is None:
                    return None
                units = cur.execute(
                    "SELECT units, released, until FROM units WHERE key = ? AND until > ?"
                    " ORDER BY until",
                    (key, now),
                ).fetchall()
            finally:
                cur.execute("COMMIT")
        limit, period, hold, hold_until, paused_until = row
        led = WindowLedger(limit, period)
        for n, released, until in units:
            if released:
                led.unexpired += n
                led.expiries.extend((min(until, now + period), n))
            else:
                led.in_flight += n
        if hold and hold_until > now:
            led.held, led.hold_until = hold, min(hold_until, now + period)
        led.paused_until = min(paused_until, now + period)
        return led

    def _snapshot(self, now: float) -> list[KeyRow]:
        db = self.db
        out: list[KeyRow] = []
        with contextlib.closing(db.cursor()) as cur:
            cur.execute("BEGIN")
            try:
                rows = cur.execute(
                    "SELECT key, lim, period, hold, hold_until, paused_until FROM keys"
                ).fetchall()
                for key, limit, period, hold, hold_until, paused_until in rows:
                    (f,) = cur.execute(
                        "SELECT COALESCE(SUM(units), 0) FROM units"
                        " WHERE key = ? AND released = 0 AND until > ?",
                        (key, now),
                    ).fetchone()
                    r, first = cur.execute(
                        "SELECT COALESCE(SUM(units), 0), MIN(until) FROM units"
                        " WHERE key = ? AND released = 1 AND until > ?",
                        (key, now),
                    ).fetchone()
                    held = hold if min(hold_until, now + period) > now else 0
                    used = f + r + held
                    paused_for = max(0.0, min(paused_until, now + period) - now)
                    if used < limit:
                        free_in = 0.0
                    elif first is not None:
                        free_in = min(first, now + period) - now
                    else:
                        free_in = float("inf")
                    out.append(KeyRow(key, limit, used, free_in, paused_for))
            finally:
                cur.execute("COMMIT")
        return out


# Connections inherited across a fork: never closed (closing would touch the parent's locks),
# never collected.
_ABANDONED: list[sqlite3.Connection] = []
