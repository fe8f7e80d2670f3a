"""Storage tiers as real servers: ``redis-server`` (no persistence) and ``memcached -t 1`` on
loopback ports, with a readiness check and a counter of operations served (the tier's rps)."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis
from pymemcache.client.base import Client as MemcacheClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from leanstack.errors import LeanstackError

HOST = "127.0.0.1"
BINARIES = {"redis": "redis-server", "memcached": "memcached"}
REDIS_ADMIN = {"info", "client", "hello", "ping", "command", "config"}


def server_command(kind: str, port: int, run_dir: Path) -> list[str]:
    """The command line that runs one storage server of ``kind`` on ``port``."""
    binary = shutil.which(BINARIES[kind])
    if binary is None:
        raise LeanstackError(f"'{BINARIES[kind]}' is not installed — install the Debian package "
                             f"{'redis-server' if kind == 'redis' else 'memcached'}")
    if kind == "redis":
        return [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                "--protected-mode", "no", "--daemonize", "no", "--dir", str(run_dir),
                "--databases", "1", "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru",
                "--loglevel", "warning"]
    cmd = [binary, "-t", "1", "-p", str(port), "-l", HOST, "-U", "0", "-m", "64", "-c", "4096"]
    if os.geteuid() == 0:
        cmd += ["-u", getpass.getuser()]  # memcached refuses to run as root without -u
    return cmd


class StorageServer:
    """One redis or memcached server process for a storage tier."""

    def __init__(self, name: str, kind: str, port: int, run_dir: Path) -> None:
        if kind not in BINARIES:
            raise LeanstackError(f"storage tier '{name}' has kind {kind!r} — use redis or "
                                 "memcached")
        self.name, self.kind, self.port, self.run_dir = name, kind, port, run_dir
        self.proc: subprocess.Popen | None = None
        self._redis: redis.Redis | None = None

    def start(self, preexec_fn: Callable[[], None] | None = None) -> None:
        """Launch the server process (returns at once; see :meth:`wait_ready`)."""
        log = open(self.run_dir / f"{self.name}.log", "ab")  # noqa: SIM115 - owned by the child
        with log:
            self.proc = subprocess.Popen(server_command(self.kind, self.port, self.run_dir),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         preexec_fn=preexec_fn, close_fds=True)

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Block until the server answers, or raise a one-line error with its log's last line."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            try:
                self.ops_served()
                return
            except (OSError, redis.RedisError):
                time.sleep(0.02)
        raise LeanstackError(f"storage tier '{self.name}' ({self.kind}) did not start on port "
                             f"{self.port}: {self._last_log_line()} — see "
                             f"{self.run_dir / (self.name + '.log')}")

    def ops_served(self) -> int:
        """Cumulative data operations the server has handled (not stats or connection set-up)."""
        if self.kind == "redis":
            if self._redis is None:
                self._redis = redis.Redis(HOST, self.port, socket_timeout=1.0,
                                          socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0))
            stats = self._redis.info("commandstats")
            return sum(int(v["calls"]) for k, v in stats.items()
                       if k.removeprefix("cmdstat_").split("|")[0] not in REDIS_ADMIN)
        c = MemcacheClient((HOST, self.port), timeout=2.0, connect_timeout=2.0)
        try:
            st = c.stats()
        finally:
            c.close()
        return sum(int(st.get(k, 0)) for k in (b"cmd_get", b"cmd_set", b"cmd_touch"))

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL) and reap it."""
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def _last_log_line(self) -> str:
        p = self.run_dir / f"{self.name}.log"
        lines = p.read_text(errors="replace").strip().splitlines() if p.exists() else []
        return lines[-1] if lines else "no output"
