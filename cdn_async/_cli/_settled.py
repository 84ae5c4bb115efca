"""``Settled``: what a purge command has heard of its call, batch by batch, and its report
when a stop signal cuts it short."""

from __future__ import annotations

from collections.abc import Collection

from .. import PurgeProgress, PurgeReport
from ..errors import CDNError
from ._output import NOT_CONFIRMED, NOT_SENT


class Settled:
    """What ``on_batch`` has delivered of one purge call: its report if it is stopped.

    Args:
        endpoint_id: The endpoint purged.
        paths: The call's paths, normalised, once each (those sent and those a wildcard
            covers).
    """

    def __init__(self, endpoint_id: str, paths: list[str]) -> None:
        self.endpoint_id = endpoint_id
        self.paths = paths
        self.confirmed: list[str] = []
        self.failed: dict[str, CDNError] = {}
        self.batches = 0

    @property
    def done(self) -> int:
        """Paths with an outcome so far."""
        return len(self.confirmed) + len(self.failed)

    def add(self, progress: PurgeProgress) -> None:
        """Take in one settled batch."""
        self.confirmed.extend(progress.confirmed)
        self.failed.update(progress.failed)
        self.batches += 1

    def confirm_late(self, sent: Collection[str]) -> None:
        """Take in paths confirmed by batches that settled after the call stopped (a call
        that ended hears no more ``on_batch``; the batch on the wire still completes)."""
        done = set(self.confirmed)
        wildcards = [w[:-1] for w in sent if w.endswith("*")]
        for path in self.paths:
            if path in done or path in self.failed:
                continue
            if path in sent or any(path.startswith(w) for w in wildcards):
                self.confirmed.append(path)

    def open_paths(self) -> list[str]:
        """Paths with no outcome yet."""
        done = set(self.confirmed)
        return [p for p in self.paths if p not in done and p not in self.failed]

    def report(self, queued: Collection[str] = (), *, unsent: bool = False) -> PurgeReport:
        """The report so far: paths with no outcome that are not ``queued`` fail as not
        confirmed (as not sent, when ``unsent`` says none of them was). ``requests`` counts
        the batches settled."""
        failed = dict(self.failed)
        why = NOT_SENT if unsent else NOT_CONFIRMED
        for path in self.open_paths():
            if path not in queued:
                failed[path] = CDNError(why)
        return PurgeReport(self.endpoint_id, tuple(self.confirmed), failed, self.batches, 0.0)
