"""``SQLiteBudgetStore``: the exact budget windows of ``_budgets.py``, shared by the processes
of one host through one SQLite file (standard library only).

Modules: ``_store.py`` (the store: the local acquire queue, locked-file retries, the
heartbeat, writes kept while the file is locked), ``_file.py`` (``BudgetFile``: the tables and
every transaction), ``_lease.py``. docs/design.md, "One host: a SQLite file", argues why no
window holds more than its limit.

The model is the Redis store's (``cdn_async._redis``): per key, units in flight with a
heartbeat deadline, units released until one period after their answer, a sync hold and a
429 pause, both at most a period; an acquire takes every key at once or nothing. The clock is
the host's monotonic clock, read inside each transaction once the write lock is held.
"""

from ._file import SCHEMA_VERSION
from ._lease import SQLiteLease
from ._store import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_INFLIGHT_TIMEOUT,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_MAX_POLL_INTERVAL,
    SQLiteBudgetStore,
)

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_INFLIGHT_TIMEOUT",
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_MAX_POLL_INTERVAL",
    "SCHEMA_VERSION",
    "SQLiteBudgetStore",
    "SQLiteLease",
]
