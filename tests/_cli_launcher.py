"""Real ``cdn-async`` processes for the CLI tests, forked from one launcher that has imported
the command once (a fresh interpreter costs a third of a second of CPU to import it; a fork,
milliseconds).

The launcher (``python -m tests._cli_launcher FD``) reads requests on a Unix socket: each
carries the command's arguments and environment and, as passed file descriptors, its stdin,
stdout, stderr and a socket on which the launcher writes the child's pid, then its exit
status. The child is a real process of its own (its own signals, exit code and pipes), as
``cdn-async`` run from a shell is; it only skips the imports. The launcher exits, killing
its children, when the test process closes its end of the socket (or dies).

In the test process, ``spawn`` returns a ``Child`` with the parts of
``asyncio.subprocess.Process`` the tests use.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: What a command may import lazily, imported once in the launcher.
_PRELOAD = (
    "aiohttp",
    "click",
    "redis.asyncio",
    "rich.console",
    "rich.live",
    "rich.progress",
    "rich.table",
    "cdn_async._cli._app",
    "cdn_async._cli._commands",
    "cdn_async.redis",
    "cdn_async.testing",
)


# -- the launcher process ---------------------------------------------------------------------


def _child(request: dict[str, Any], stdio: list[int]) -> None:
    """In the forked child: take the given stdio, environment and signals, run the command,
    exit with its status. Never returns."""
    code = 1
    try:
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        # As a shell's job would have it: Ctrl-C raises KeyboardInterrupt, unless the test
        # starts the command with SIGINT ignored (a background job's inheritance).
        ignore = request.get("sigint") == "ignore"
        signal.signal(signal.SIGINT, signal.SIG_IGN if ignore else signal.default_int_handler)
        if request.get("recovery_grace") is not None:
            from cdn_async._cli import _app

            _app.redis_recovery_grace = request["recovery_grace"]
        if request.get("module"):
            import runpy

            sys.argv = [request["module"], *request["argv"]]
            try:
                runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        else:
            from cdn_async._cli import main

            sys.argv = ["cdn-async", *request["argv"]]
            code = main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # a crash is the test's to see, on the child's stderr
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _serve(control: socket.socket) -> None:
    """Fork a child per request until the test process hangs up; then kill the children."""
    import importlib

    for name in _PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the test run is pytest's
    statuses: dict[int, socket.socket] = {}
    try:
        while True:
            readable, _, _ = select.select([control, wake_r], [], [])
            if wake_r in readable:
                os.read(wake_r, 512)
                _reap(statuses)
            if control in readable:
                try:
                    data, fds, _, _ = socket.recv_fds(control, 1 << 20, 4)
                except ConnectionResetError:
                    data = b""
                if not data:
                    return
                request = json.loads(data)
                status = socket.socket(fileno=fds[0])
                pid = os.fork()
                if pid == 0:
                    control.close()
                    for sock in (status, *statuses.values()):
                        sock.close()
                    _child(request, fds[1:])
                for fd in fds[1:]:
                    os.close(fd)
                status.sendall(f"{pid}\n".encode())
                statuses[pid] = status
                _reap(statuses)
    finally:
        for pid in statuses:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _reap(statuses: dict[int, socket.socket]) -> None:
    """Report every child that exited: its status as asyncio's ``returncode`` says it (minus
    the signal's number when a signal ended it)."""
    while statuses:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock = statuses.pop(pid, None)
        if sock is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):
            sock.sendall(f"{code}\n".encode())
        sock.close()


# -- the test process -------------------------------------------------------------------------


class Child:
    """A command forked by the launcher: the parts of ``asyncio.subprocess.Process`` the tests
    use (``pid``, ``returncode``, ``stdout``/``stderr`` streams, ``send_signal``, ``kill``,
    ``wait``, ``communicate``)."""

    def __init__(
        self,
        pid: int,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
        status: asyncio.StreamReader,
        status_writer: asyncio.StreamWriter,
    ) -> None:
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None
        # Signals go through a pidfd: the launcher reaps the child, so its pid could be
        # another process's by the time a test signals it; the pidfd stays this child's.
        # (None: it has exited and been reaped already.)
        self._pidfd: int | None = None
        with contextlib.suppress(ProcessLookupError):
            self._pidfd = os.pidfd_open(pid)
        self._exit = asyncio.ensure_future(self._exited(status, status_writer))

    async def _exited(self, status: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        try:
            line = await status.readline()
        finally:
            writer.close()
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        self.returncode = int(line) if line else -signal.SIGKILL
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self._pidfd is not None:
            signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    async def communicate(self) -> tuple[bytes, bytes]:
        out, err, _ = await asyncio.gather(self.stdout.read(), self.stderr.read(), self.wait())
        return out, err


class Launcher:
    """The test process's end: one launcher for the whole run, started on first use."""

    def __init__(self) -> None:
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests._cli_launcher", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        atexit.register(self.close)

    def close(self) -> None:
        self._control.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    async def spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        *,
        stdin: str | None = None,
        sigint: str = "default",
        module: str | None = None,
        recovery_grace: float | None = None,
    ) -> Child:
        """Fork ``cdn-async ARGV`` (or ``python -m MODULE ARGV``) with this environment, the
        text ``stdin`` on its standard input (else an empty one), SIGINT's default handler (or
        ignored with ``sigint="ignore"``), and ``recovery_grace`` (if given) for its
        ``RedisBudgetStore`` instead of the store's 3 s."""
        loop = asyncio.get_running_loop()
        with tempfile.TemporaryFile() as source:
            source.write((stdin or "").encode())
            source.seek(0)
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            request: dict[str, Any] = {
                "argv": argv,
                "env": env,
                "cwd": os.getcwd(),
                "sigint": sigint,
                "recovery_grace": recovery_grace,
            }
            if module is not None:
                request["module"] = module
            try:
                socket.send_fds(
                    self._control,
                    [json.dumps(request).encode()],
                    [theirs.fileno(), source.fileno(), out_w, err_w],
                )
            finally:
                theirs.close()
                os.close(out_w)
                os.close(err_w)
        status, status_writer = await asyncio.open_unix_connection(sock=ours)
        stdout = await _reader(loop, out_r)
        stderr = await _reader(loop, err_r)
        line = await status.readline()
        if not line:
            raise RuntimeError(f"the CLI launcher did not fork (exit status {self._proc.poll()})")
        return Child(int(line), stdout, stderr, status, status_writer)


async def _reader(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=1 << 22, loop=loop)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(fd, "rb", 0)
    )
    return reader


_launcher: Launcher | None = None


def launcher() -> Launcher:
    """The run's launcher (started on first use)."""
    global _launcher
    if _launcher is None:
        _launcher = Launcher()
    return _launcher


if __name__ == "__main__":
    _serve(socket.socket(fileno=int(sys.argv[1])))
