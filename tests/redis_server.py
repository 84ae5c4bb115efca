"""Start and stop a throwaway redis-server on a free loopback port (for tests and benchmarks).

No persistence (``--save "" --appendonly no``): a restart forgets everything, which is what
the restart tests want. Used by ``tests/test_redis.py`` and ``benchmarks/bench_redis.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

__all__ = ["RedisServer", "find_redis_server", "free_port"]


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


class RedisServer:
    """One redis-server process on 127.0.0.1, in its own temporary directory.

    Args:
        binary: The redis-server executable.
        port: The port; default a free one. ``restart`` keeps it.
    """

    def __init__(self, binary: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="cdn-async-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it accepts connections.

        Raises:
            RuntimeError: It exited or did not answer within ``timeout`` s.
        """
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self._dir.name,
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
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
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        """Stop and start again on the same port: every key is gone."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self._dir.cleanup()


# -- a worker process: many concurrent requests against a fake CDN server -------------------


async def _work(cfg: dict[str, object]) -> dict[str, object]:
    import asyncio

    from cdn_async import CDNClient, RateLimits
    from cdn_async._budgets import MemoryBudgetStore
    from cdn_async._limits import BudgetStore
    from cdn_async.redis import RedisBudgetStore

    store: BudgetStore
    if cfg["store"] == "redis":
        store = RedisBudgetStore(
            str(cfg["redis_url"]),
            token_id=str(cfg["token_id"]),
            namespace=str(cfg.get("namespace", "cdn-async")),
            heartbeat_interval=float(cfg.get("heartbeat", 0.05)),  # type: ignore[arg-type]
            recovery_grace=float(cfg.get("grace", 0.3)),  # type: ignore[arg-type]
            unavailable_timeout=10.0,
        )
    else:
        store = MemoryBudgetStore()
    ids = list(cfg["ids"])  # type: ignore[call-overload]
    ok = failed = 0
    errors: list[str] = []
    limits = RateLimits.documented().scaled(float(cfg["time_scale"]))  # type: ignore[arg-type]
    async with CDNClient(
        str(cfg["token"]),
        base_url=str(cfg["url"]),
        limits=limits,
        budget_store=store,
        max_retries=int(cfg.get("max_retries", 3)),  # type: ignore[call-overload]
    ) as cdn:

        async def task(n: int) -> None:
            nonlocal ok, failed
            for i in range(int(cfg["requests"])):  # type: ignore[call-overload]
                try:
                    await cdn.endpoints.get(ids[(n + i) % len(ids)])
                    ok += 1
                except Exception as exc:
                    failed += 1
                    errors.append(f"{type(exc).__name__}: {exc}")

        started = time.monotonic()
        await asyncio.gather(*(task(n) for n in range(int(cfg["tasks"]))))  # type: ignore[call-overload]
        elapsed = time.monotonic() - started
    return {"ok": ok, "failed": failed, "errors": errors[:5], "elapsed": elapsed}


if __name__ == "__main__":
    # python tests/redis_server.py '<json config>': run one worker, print its JSON result.
    import asyncio
    import json
    import sys

    print(json.dumps(asyncio.run(_work(json.loads(sys.argv[1])))), flush=True)
