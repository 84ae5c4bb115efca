"""A throwaway redis-server for the Redis benchmarks, and their worker processes.

``RedisServer`` starts one redis-server on a free loopback port in its own temporary
directory, with no persistence (``--save "" --appendonly no``): a restart forgets everything,
which is what the restart benchmarks want. ``stall``/``resume`` SIGSTOP and SIGCONT it.

``run_workers`` starts OS processes that each run ``python -m benchmarks._redis_server
'<json config>'`` (see ``work``): one ``CDNClient`` with many concurrent tasks against a fake
server, budgets in Redis, in a SQLite file or in memory, and returns their JSON results.

(``tests/redis_server.py`` is the test suite's own copy, with a Redis Cluster besides; the
benchmarks import nothing from ``tests/``.)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["RedisServer", "find_redis_server", "run_workers", "work"]

#: The repository root: the workers run there so ``benchmarks`` imports as a package.
ROOT = Path(__file__).resolve().parent.parent


def find_redis_server() -> str | None:
    """The path of ``redis-server``, or None when it is not installed."""
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ping(port: int, timeout: float) -> bool:
    """Whether 127.0.0.1:``port`` answers PING (RESP by hand, no client library)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        return s.recv(64).startswith(b"+PONG")


class RedisServer:
    """One redis-server process on 127.0.0.1, in its own temporary directory.

    Args:
        binary: The redis-server executable.
        port: The port; default a free one. ``restart`` keeps it.
    """

    def __init__(self, binary: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="cdn-async-bench-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING.

        Raises:
            RuntimeError: It exited or did not answer within ``timeout`` s.
        """
        # fmt: off
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", self._dir.name, "--save", "", "--appendonly", "no",
            "--protected-mode", "yes", "--loglevel", "warning",
        ]
        # fmt: on
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            try:
                if ping(self.port, timeout=0.2):
                    return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        """Kill the server (no save) and wait for it to exit."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a stalled server must still die
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        """Stop and start again on the same port: every key is gone."""
        self.stop()
        self.start()

    def stall(self) -> None:
        """SIGSTOP the server: connections are accepted by the kernel, nothing answers."""
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a stalled server."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self._dir.cleanup()


# -- worker processes: many concurrent requests against a fake CDN server -------------------


async def run_workers(cfg: dict[str, Any], processes: int) -> list[dict[str, Any]]:
    """Start ``processes`` workers with config ``cfg`` (see ``work``) and their results."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks._redis_server",
            json.dumps(cfg),
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        for _ in range(processes)
    ]
    results = []
    for p in procs:
        out, _ = await p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"a worker process exited with {p.returncode}")
        results.append(json.loads(out))
    return results


async def work(cfg: dict[str, Any]) -> dict[str, Any]:
    """One worker: ``cfg["tasks"]`` tasks each doing ``cfg["requests"]`` gets through one
    ``CDNClient`` whose budgets live in Redis (``cfg["store"] == "redis"``), in a SQLite file
    (``"sqlite"``, at ``cfg["path"]``) or in memory. Reports its CPU time besides its counts."""
    from cdn_async import BudgetStore, CDNClient, MemoryBudgetStore, RateLimits, SQLiteBudgetStore
    from cdn_async.redis import RedisBudgetStore

    store: BudgetStore
    if cfg["store"] == "redis":
        store = RedisBudgetStore(
            str(cfg["redis_url"]),
            token_id=str(cfg["token_id"]),
            namespace=str(cfg.get("namespace", "cdn-async")),
            heartbeat_interval=float(cfg.get("heartbeat", 0.05)),
            recovery_grace=float(cfg.get("grace", 0.3)),
            restart_hold=bool(cfg.get("restart_hold", True)),
            fallback="memory" if cfg.get("fallback") == "memory" else "error",
            unavailable_timeout=10.0,
        )
    elif cfg["store"] == "sqlite":
        store = SQLiteBudgetStore(str(cfg["path"]))
    else:
        store = MemoryBudgetStore()
    ids = list(cfg["ids"])
    ok = failed = 0
    errors: list[str] = []
    limits = RateLimits.documented().scaled(float(cfg["time_scale"]))
    async with CDNClient(
        str(cfg["token"]),
        base_url=str(cfg["url"]),
        limits=limits,
        budget_store=store,
        max_retries=int(cfg.get("max_retries", 3)),
    ) as cdn:

        async def task(n: int) -> None:
            nonlocal ok, failed
            for i in range(int(cfg["requests"])):
                try:
                    await cdn.endpoints.get(ids[(n + i) % len(ids)])
                    ok += 1
                except Exception as exc:
                    failed += 1
                    errors.append(f"{type(exc).__name__}: {exc}")

        started, cpu = time.monotonic(), time.process_time()
        await asyncio.gather(*(task(n) for n in range(int(cfg["tasks"]))))
        elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
    await store.aclose()  # a store passed in is the caller's to close (its heartbeat too)
    return {"ok": ok, "failed": failed, "errors": errors[:5], "elapsed": elapsed, "cpu": cpu}


if __name__ == "__main__":
    # python -m benchmarks._redis_server '<json config>': one worker; prints its JSON result.
    print(json.dumps(asyncio.run(work(json.loads(sys.argv[1])))), flush=True)
