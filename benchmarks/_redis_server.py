"""Throwaway redis-servers on free loopback ports, and worker processes, for the tests and the
benchmarks (one module: the tests import it from here; the benchmarks import nothing from
``tests/``).

No persistence (``--save "" --appendonly no``): a restart forgets everything, which is what
the restart tests and benchmarks want. ``RedisServer`` is one server (``stall``/``resume``
SIGSTOP and SIGCONT it); ``RedisClusterServers`` is a 3-master Redis Cluster made with
``redis-cli --cluster create``.

``run_workers`` starts OS processes that each run ``python -m benchmarks._redis_server
'<json config>'`` (see ``work``): one ``CDNClient`` with many concurrent tasks against a fake
server, budgets in Redis, in a SQLite file or in memory. With ``"forks": n`` in the config
one launcher forks ``n`` workers instead (the SDK imported once, not once per process), each
printing its JSON result on a line of its own; ``fork_workers`` keeps such a launcher up for
every call of a test run.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "RedisClusterServers",
    "RedisServer",
    "find_redis_cli",
    "find_redis_server",
    "free_port",
    "key_slot",
    "run_workers",
    "work",
]

#: The repository root: the workers run there so ``benchmarks`` imports as a package.
ROOT = Path(__file__).resolve().parent.parent


def find_redis_server() -> str | None:
    """The path of ``redis-server``, or None when it is not installed."""
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )


def find_redis_cli() -> str | None:
    """The path of ``redis-cli``, or None when it is not installed."""
    return shutil.which("redis-cli") or (
        "/usr/bin/redis-cli" if os.path.exists("/usr/bin/redis-cli") else None
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, below the ephemeral range (32768 and up on
    Linux): a server restarted on it cannot find it taken by another process's outgoing
    connection meanwhile. Cluster nodes take 20000-29999 (``free_cluster_port``)."""
    for _ in range(200):
        port = random.randrange(10000, 20000)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port for a Redis server")


def command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """Send one command to 127.0.0.1:``port`` (RESP, no client library) and return the raw
    reply; for waiting on servers, not for the code under test."""
    payload = f"*{len(args)}\r\n".encode()
    for a in args:
        data = a.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        reply = s.recv(65536)
        if reply.startswith(b"$"):
            size = int(reply[1 : reply.index(b"\r\n")])
            while len(reply) < size + len(str(size)) + 5:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        return reply


def free_cluster_port() -> int:
    """A port free on 127.0.0.1 whose cluster bus port (``port + 10000``) is free too."""
    for _ in range(200):
        port = random.randrange(20000, 30000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key: str) -> int:
    """The Redis Cluster hash slot of ``key`` (hash tags honoured)."""
    data = key.encode()
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return _crc16(data) % 16384


class RedisServer:
    """One redis-server process on 127.0.0.1, in its own temporary directory.

    Args:
        binary: The redis-server executable.
        port: The port; default a free one. ``restart`` keeps it.
        extra: More command-line options (cluster mode, for instance).

    Attributes:
        started_at: ``time.monotonic()`` just before the last start (the loop clock of the
            default asyncio loop): Redis started no earlier than this.
    """

    def __init__(self, binary: str, port: int | None = None, extra: Sequence[str] = ()) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.extra = tuple(extra)
        self.started_at = 0.0
        self._dir = tempfile.TemporaryDirectory(prefix="cdn-async-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        """The server's process id (it must be running)."""
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it accepts connections.

        Raises:
            RuntimeError: It exited or did not answer within ``timeout`` s.
        """
        self.started_at = time.monotonic()
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
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            try:
                if command(self.port, "PING", timeout=0.2).startswith(b"+PONG"):
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
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a stalled server."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self._dir.cleanup()


class RedisClusterServers:
    """A Redis Cluster of 3 masters (no replicas) on free loopback ports.

    Each node runs ``redis-server --cluster-enabled yes --cluster-config-file nodes-P.conf``
    without persistence, in its own directory; ``redis-cli --cluster create`` assigns the
    slots. A node restarted with ``restart_node`` keeps its config file, so it comes back
    owning the same slots, with no data.

    Args:
        binary: The redis-server executable.
        cli: The redis-cli executable.
    """

    def __init__(self, binary: str, cli: str) -> None:
        self.cli = cli
        ports: list[int] = []
        while len(ports) < 3:
            port = free_cluster_port()
            if all(abs(port - p) not in (0, 10000) for p in ports):
                ports.append(port)
        self.nodes = [RedisServer(binary, port) for port in ports]
        for node in self.nodes:
            node.extra = (
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{node.port}.conf",
                "--cluster-node-timeout",
                "1000",
            )

    def start(self, timeout: float = 20.0) -> None:
        """Start the nodes, create the cluster and wait until every node says it is ok."""
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
        )
        self.wait_ok(timeout)

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Wait until every node reports ``cluster_state:ok`` and knows every slot's owner.

        Raises:
            RuntimeError: Not within ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(
                    b"cluster_state:ok" in command(n.port, "CLUSTER", "INFO")
                    and b"cluster_slots_ok:16384" in command(n.port, "CLUSTER", "INFO")
                    for n in self.nodes
                ):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def owner(self, key: str) -> RedisServer:
        """The node that serves ``key``'s slot (the nodes keep the slots they were given)."""
        slot = key_slot(key)
        for node in self.nodes:
            reply = command(node.port, "CLUSTER", "MYID")
            myid = reply.split(b"\r\n")[1].decode()
            for line in command(node.port, "CLUSTER", "NODES").decode().splitlines():
                fields = line.split()
                if not fields or fields[0] != myid:
                    continue
                for part in fields[8:]:
                    lo, _, hi = part.partition("-")
                    if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                        return node
        raise RuntimeError(f"no node owns slot {slot}")

    def other(self, key: str) -> RedisServer:
        """A node that does not serve ``key``'s slot."""
        owner = self.owner(key)
        return next(n for n in self.nodes if n is not owner)

    def restart_node(self, node: RedisServer, down: float = 0.0) -> None:
        """Kill ``node``, wait ``down`` s, start it again (same slots, no data) and wait until
        the cluster is ok."""
        node.stop()
        time.sleep(down)
        node.start()
        self.wait_ok()

    def close(self) -> None:
        """Stop every node and remove their directories."""
        for node in self.nodes:
            node.close()


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


async def fork_workers(cfg: dict[str, Any], processes: int) -> list[dict[str, Any]]:
    """Like ``run_workers``, but the ``processes`` workers are forked from one launcher that
    stays up for later calls (the tests' way): the SDK is imported once per test run, not
    once per process or per call."""
    return await asyncio.to_thread(_launch, {**cfg, "forks": processes})


_launcher: subprocess.Popen[bytes] | None = None
_launcher_lock = threading.Lock()


def _stop_launcher(launcher: subprocess.Popen[bytes]) -> None:
    """At exit: end the launcher's input (it exits), and wait for it."""
    for pipe in (launcher.stdin, launcher.stdout):
        if pipe is not None:
            pipe.close()
    try:
        launcher.wait(timeout=10)
    except subprocess.TimeoutExpired:
        launcher.kill()
        launcher.wait()


def _launch(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One request to the launcher (started on first use; it exits when this process ends
    its input, at exit): its workers' results."""
    global _launcher
    with _launcher_lock:
        if _launcher is None or _launcher.poll() is not None:
            _launcher = subprocess.Popen(
                [sys.executable, "-m", "benchmarks._redis_server", "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=ROOT,
            )
            atexit.register(_stop_launcher, _launcher)
        assert _launcher.stdin is not None and _launcher.stdout is not None
        _launcher.stdin.write(json.dumps(cfg).encode() + b"\n")
        _launcher.stdin.flush()
        results = []
        while (line := _launcher.stdout.readline()) and not line.startswith(b"done "):
            results.append(json.loads(line))
    if not line:
        raise RuntimeError("the worker launcher exited")
    if line != b"done 0\n":
        raise RuntimeError(f"a forked worker failed ({line.decode().strip()})")
    if len(results) != cfg["forks"]:
        raise RuntimeError(f"{len(results)} of {cfg['forks']} workers reported")
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
            _restart_hold=bool(cfg.get("restart_hold", True)),
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


def _fork_workers(cfg: dict[str, Any]) -> int:
    """``cfg["forks"]`` worker processes forked from this one (the SDK imported once, not once
    per process); each prints its JSON result on a line of its own. The exit status: 0 if
    every worker exited 0."""
    import aiohttp  # noqa: F401 (imported before the fork: the children share it)

    import cdn_async.redis  # noqa: F401

    children = []
    for _ in range(int(cfg["forks"])):
        pid = os.fork()
        if pid == 0:
            try:
                line = json.dumps(asyncio.run(work(cfg))) + "\n"
                os.write(1, line.encode())  # one write: lines of several workers never mix
            finally:
                os._exit(0)
        children.append(pid)
    return int(max(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in children))


def _serve() -> None:
    """The launcher: for each config line on stdin, fork its workers (their results go to
    stdout, a line each), wait for them, then write ``done <status>``."""
    for line in sys.stdin:
        status = _fork_workers(json.loads(line))
        os.write(1, f"done {status}\n".encode())


if __name__ == "__main__":
    # python -m benchmarks._redis_server '<json config>': run one worker (or, with "forks",
    # that many forked ones), print each JSON result on a line. With --serve: the launcher
    # of fork_workers.
    if sys.argv[1] == "--serve":
        _serve()
        sys.exit(0)
    config = json.loads(sys.argv[1])
    if "forks" in config:
        sys.exit(_fork_workers(config))
    print(json.dumps(asyncio.run(work(config))), flush=True)
