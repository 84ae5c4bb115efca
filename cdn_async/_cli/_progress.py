"""The progress display of long commands: a live bar on a terminal, a heartbeat line at a
steady pace in logs (CI runners kill jobs that stay silent for 10 minutes), or nothing.

``progress_display`` picks the display once; the commands then call the same methods either
way, so no command carries a ``live`` flag.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

from ._output import err, stderr_console

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from .. import BudgetState, CDNClient

#: How often the progress bar reads the budgets to say which one it waits for.
_POLL_INTERVAL = 0.2
#: Seconds between two heartbeat lines without a terminal: often enough for CI runners that
#: kill a job silent for 10 minutes, rare enough to read (pip and docker print as often).
DEFAULT_HEARTBEAT = 30.0


class Display(Protocol):
    """A progress display: ``async with`` it around the work."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def announce(self, total: int, line: str, *, requests: int = 0, seconds: float = 0.0) -> None:
        """Count to ``total`` paths in ``requests`` requests (``seconds`` at the budgets'
        pace, from the plan); a display without a bar prints ``line`` (on stderr) instead,
        when it is not empty."""

    def update(self, done: int, requests: int, failed: int = 0) -> None:
        """Show ``done`` paths finished (``failed`` of them failed) and ``requests`` sent."""


def progress_display(
    cdn: CDNClient,
    *,
    description: str,
    no_progress: bool,
    total: int = 0,
    heartbeat: float = DEFAULT_HEARTBEAT,
) -> Display:
    """A live bar when stderr is a terminal; otherwise a heartbeat line every ``heartbeat``
    seconds (none when it is 0). ``--no-progress`` shows neither (the caller still prints a
    summary).

    Args:
        cdn: The client whose budgets the bar shows.
        description: The bar's label.
        no_progress: ``--no-progress`` was given.
        total: Paths to count to (``announce`` may set it later).
        heartbeat: Seconds between two progress lines when stderr is not a terminal.
    """
    if no_progress:
        return NullProgress()
    if sys.stderr.isatty():
        return LiveProgress(cdn, total, description=description)
    if heartbeat > 0:
        return HeartbeatProgress(heartbeat, description=description)
    return NullProgress()


class NullProgress:
    """The display that shows nothing but the announcement line."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pass

    def announce(self, total: int, line: str, *, requests: int = 0, seconds: float = 0.0) -> None:
        """Print ``line`` on stderr (there is no bar to show ``total``)."""
        if line:
            err(line)

    def update(self, done: int, requests: int, failed: int = 0) -> None:
        """Nothing to show."""


def duration_text(seconds: float) -> str:
    """``45 s``, ``2 min 10 s``, ``1 h 05 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class HeartbeatProgress:
    """Without a terminal: a progress line on stderr every ``interval`` seconds of the event
    loop's clock (paths done, requests, elapsed, the rest's estimate from the plan).

    Args:
        interval: Seconds between two lines (> 0).
        description: The lines' label.
        write: Where a line goes (stderr by default).
    """

    def __init__(
        self, interval: float, *, description: str, write: Callable[[str], None] = err
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        self._interval = interval
        self._description = description
        self._write = write
        self._total = self._done = self._failed = self._requests = 0
        self._planned_requests = 0
        self._planned_seconds = 0.0
        self._started = 0.0
        self._ticker: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        self._started = loop.time()
        self._ticker = loop.create_task(self._tick())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)

    def announce(self, total: int, line: str, *, requests: int = 0, seconds: float = 0.0) -> None:
        """Print ``line``; count to ``total`` paths in ``requests`` requests (``seconds``)."""
        self._total, self._planned_requests, self._planned_seconds = total, requests, seconds
        if line:
            self._write(line)

    def update(self, done: int, requests: int, failed: int = 0) -> None:
        """Keep the counts for the next line."""
        self._done, self._requests, self._failed = done, requests, failed

    def line(self) -> str:
        """The progress line now."""
        elapsed = asyncio.get_running_loop().time() - self._started
        text = (
            f"{self._description}: {self._done} of {self._total} paths done"
            f" ({self._failed} failed), {self._requests}"
        )
        if self._planned_requests:
            text += f" of {self._planned_requests}"
        text += f" requests, {duration_text(elapsed)} elapsed"
        if self._planned_requests:
            # The plan's pace: its requests spread evenly over its seconds.
            step = self._planned_seconds / max(1, self._planned_requests - 1)
            left = max(0, self._planned_requests - self._requests) * step
            text += f", about {duration_text(left)} left at the budgets' pace"
        return text

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self._write(self.line())


def budget_wait_text(budgets: dict[str, BudgetState]) -> str:
    """Say which budget requests are queued on and when it frees, or "" when none waits.

    Args:
        budgets: ``CDNClient.budget_snapshot().budgets``.

    Returns:
        For example ``"budget purge_files: 0.4 s"`` (its next unit frees in 0.4 s).
    """
    # A key whose next unit frees within a poll is not worth showing: it is about to send.
    waiting = [
        s
        for s in budgets.values()
        if s.waiters > 0 and (s.paused_for > 0 or s.next_free_in >= 0.05)
    ]
    if not waiting:
        return ""
    state = max(waiting, key=lambda s: max(s.paused_for, s.next_free_in))
    if state.paused_for > 0:
        return f"paused (429) {state.key}: {state.paused_for:.1f} s"
    if math.isinf(state.next_free_in):
        return f"budget {state.key}: in flight"
    return f"budget {state.key}: {state.next_free_in:.1f} s"


class LiveProgress:
    """A live progress bar on stderr: paths done of total, requests, and budget waits.

    Args:
        cdn: The client whose budgets are shown.
        total: Paths to purge.
        description: The bar's label.
    """

    def __init__(self, cdn: CDNClient, total: int, *, description: str) -> None:
        self._cdn = cdn
        self._progress: Progress | None = None
        self._task_id: TaskID | None = None
        self._poller: asyncio.Task[None] | None = None
        self._total = total
        self._description = description

    async def __aenter__(self) -> Self:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.table import Column

        # The counts never shrink; on a narrow terminal the budget note is cut instead.
        fixed = Column(no_wrap=True)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", table_column=fixed),
            BarColumn(bar_width=12),
            TextColumn(
                "{task.completed}/{task.total} paths, {task.fields[requests]} req",
                table_column=Column(no_wrap=True),
            ),
            TimeElapsedColumn(),
            TextColumn(
                "[yellow]{task.fields[waiting]}",
                table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1),
            ),
            console=stderr_console(),
        )
        self._task_id = self._progress.add_task(
            self._description, total=self._total, requests=0, waiting=""
        )
        self._progress.start()
        self._poller = asyncio.get_running_loop().create_task(self._poll())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        if self._progress is not None and self._task_id is not None:
            self._progress.update(self._task_id, waiting="")
            self._progress.stop()

    def announce(self, total: int, line: str, *, requests: int = 0, seconds: float = 0.0) -> None:
        """Count to ``total`` paths (the bar says the rest)."""
        self._total = total
        if self._progress is not None and self._task_id is not None:
            self._progress.update(self._task_id, total=total)

    def update(self, done: int, requests: int, failed: int = 0) -> None:
        """Show ``done`` paths finished (purged or failed) and ``requests`` sent."""
        if self._progress is not None and self._task_id is not None:
            self._progress.update(self._task_id, completed=done, requests=requests)

    async def _poll(self) -> None:
        assert self._progress is not None and self._task_id is not None
        while True:
            text = budget_wait_text(self._cdn.budget_snapshot().budgets)
            self._progress.update(self._task_id, waiting=text)
            await asyncio.sleep(_POLL_INTERVAL)
