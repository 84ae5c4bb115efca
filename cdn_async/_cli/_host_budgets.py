"""The budgets every ``cdn-async`` command shares with the other commands on this host.

Without ``--redis``, each command keeps its budgets in one SQLite file per user and token
(``SQLiteBudgetStore``), so parallel jobs on one machine (a CI matrix, a shell loop) stay
within the budgets together. ``--no-share-budgets`` (``CDN_ASYNC_SHARE_BUDGETS=0``) keeps
them in the process; a directory that cannot be made or written falls back to that, with a
warning.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from .._logs import logger
from .._sqlite import SQLiteBudgetStore

SHARE_ENV = "CDN_ASYNC_SHARE_BUDGETS"


def budget_dir() -> Path:
    """This user's directory for budget files: ``$XDG_RUNTIME_DIR/cdn-async`` (a per-user
    tmpfs, emptied at reboot) when set, else the user's cache directory."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "cdn-async"
    cache = os.environ.get("XDG_CACHE_HOME")
    if cache:
        return Path(cache) / "cdn-async"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "cdn-async"
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "cdn-async"
    return Path.home() / ".cache" / "cdn-async"


def budget_file(token: str) -> Path:
    """The token's budget file: named by the token's id (the id ``cdn_async.redis.token_id_for``
    gives, computed here without redis-py), never by the token."""
    token_id = hashlib.sha256(token.encode()).hexdigest()[:16]
    return budget_dir() / f"budgets-{token_id}.sqlite3"


def host_store(token: str) -> SQLiteBudgetStore | None:
    """A store on the token's budget file, or None (budgets in this process) when its
    directory cannot be made or written, with a warning saying so.

    Raises:
        BudgetFileError: The file is there but unusable (corrupt, or locked for long): the
            message says how to fix it; nothing is sent.
    """
    path = budget_file(token)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        writable = os.access(path.parent, os.W_OK | os.X_OK)
    except OSError as exc:
        writable, reason = False, f"{type(exc).__name__}: {exc.strerror or exc}"
    else:
        reason = "not writable"
    if not writable:
        logger.warning(
            "cannot use %s (%s): rate budgets kept in this process only, not shared with "
            "other cdn-async commands on this host (parallel jobs may draw 429s); set "
            "XDG_RUNTIME_DIR to a writable directory, or use --redis",
            path.parent,
            reason,
        )
        return None
    return SQLiteBudgetStore(path)
