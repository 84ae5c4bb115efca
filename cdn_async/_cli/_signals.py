"""``Stop``: SIGINT, SIGTERM and SIGHUP as one stop request to the running command.

CI systems stop a job with SIGTERM (GitLab, Kubernetes, docker), a closed terminal sends
SIGHUP, a person presses Ctrl-C: all three cancel the command's task, so a purge reports
what it did whichever came. A second signal cancels again: a purge then stops waiting for
the batch on the wire. A signal the parent set to be ignored (``nohup`` ignores SIGHUP, a
shell's background job SIGINT) stays ignored; SIGTERM is always taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

#: The signals that stop a command, and whether an inherited "ignore" is kept.
_SIGNALS = (
    (signal.SIGINT, True),
    (signal.SIGTERM, False),
    (signal.SIGHUP, True),
)


class Stop:
    """Which signal stopped the command, if one did."""

    def __init__(self) -> None:
        #: The first stop signal received, or None.
        self.signal: signal.Signals | None = None
        #: Stop signals received so far.
        self.count = 0

    @property
    def exit_code(self) -> int | None:
        """128 + the first signal's number, as a shell reports it (130, 143, 129), or None."""
        return 128 + int(self.signal) if self.signal is not None else None

    @property
    def name(self) -> str:
        """The first signal's name (``"SIGTERM"``), or ``""``."""
        return self.signal.name if self.signal is not None else ""

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Cancel the current task on each stop signal while inside (call it in the task)."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        taken: list[signal.Signals] = []
        for sig, keep_ignored in _SIGNALS:
            if keep_ignored and signal.getsignal(sig) == signal.SIG_IGN:
                continue
            try:
                loop.add_signal_handler(sig, self._received, sig, task)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                continue
            taken.append(sig)
        try:
            yield
        finally:
            for sig in taken:
                loop.remove_signal_handler(sig)

    def _received(self, sig: signal.Signals, task: asyncio.Task[object]) -> None:
        self.count += 1
        if self.signal is None:
            self.signal = sig
        task.cancel()
