"""What the fake's edge holds for one endpoint, and what each purge covered of it."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping

import attrs


@attrs.frozen
class PurgeRecord:
    """One purge the fake applied (``server.purges``).

    Args:
        endpoint_id: The endpoint purged.
        files: The request's ``files``, as sent.
        covered: Each of ``files`` -> the cached paths it purged (a wildcard ``dir/*`` every
            cached path under ``dir/``, ``*`` everything; an exact path itself, if cached).
        at: When the request arrived (the server's clock: the event loop's by default).
    """

    endpoint_id: str
    files: tuple[str, ...]
    covered: Mapping[str, tuple[str, ...]]
    at: float

    @property
    def purged(self) -> frozenset[str]:
        """Every cached path this purge removed."""
        return frozenset(p for paths in self.covered.values() for p in paths)


class EdgeCache:
    """The paths cached for one endpoint (``server.cache``): a purge removes what it covers.

    Kept sorted, so a wildcard's paths are one range (``bisect``), not a scan of the cache.
    """

    def __init__(self) -> None:
        self._live: set[str] = set()
        self._sorted: list[str] = []

    def add(self, paths: Iterable[str]) -> None:
        """Cache ``paths`` (a leading ``/`` dropped, as the API does)."""
        self._live.update(p.lstrip("/") for p in paths)
        self._sorted = sorted(self._live)

    @property
    def paths(self) -> frozenset[str]:
        return frozenset(self._live)

    def purge(self, files: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """Remove what each of ``files`` covers; returns each file -> the paths it removed."""
        out: dict[str, tuple[str, ...]] = {}
        live, ordered = self._live, self._sorted
        for file in files:
            path = file.lstrip("/")
            if path == "*":
                hit = [p for p in ordered if p in live]
            elif path.endswith("/*"):
                prefix = path[:-1]  # "dir/": every path starting with it, one sorted range
                lo = bisect_left(ordered, prefix)
                hi = bisect_left(ordered, prefix[:-1] + "0")  # "0" follows "/"
                hit = [p for p in ordered[lo:hi] if p in live]
            else:
                hit = [path] if path in live else []
            live.difference_update(hit)
            out[file] = tuple(hit)
        return out
