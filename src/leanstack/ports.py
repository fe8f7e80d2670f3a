"""Free TCP ports for the servers a run starts, chosen below the kernel's ephemeral range.

A port the kernel hands out for ``bind(port 0)`` comes from the ephemeral range, the range every
outgoing connection also takes its source port from. Between choosing such a port and the
server binding it, a client connection of a tier that is already running can take it, and the
server fails with "address already in use". Ports below the ephemeral range are never given to
outgoing connections, so a port chosen there stays free unless another server takes it.
"""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import Collection
from pathlib import Path

from leanstack.errors import LeanstackError

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL_LOW = 32768
"""Linux's default start of the ephemeral range, used when the range cannot be read."""
LOWEST_PORT = 10000
"""Servers get ports from here up to the ephemeral range (below: well-known services)."""


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range."""
    try:
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_EPHEMERAL_LOW


def free_ports(n: int, host: str = "127.0.0.1", candidates: range | None = None,
               exclude: Collection[int] = ()) -> list[int]:
    """``n`` distinct ports that nothing listens on or connects from now, below the ephemeral
    range (``candidates`` overrides the range; the kernel's choice when it is too small).
    ``exclude``: ports already promised to servers that have not bound them yet."""
    pool = candidates if candidates is not None else range(LOWEST_PORT, ephemeral_low())
    if len(pool) < 4 * n:
        return _kernel_ports(n, host)
    taken: list[socket.socket] = []
    try:
        start = random.randrange(len(pool))  # scan the pool once, from a random place
        for i in range(len(pool)):
            if len(taken) == n:
                break
            port = pool[(start + i) % len(pool)]
            if port in exclude:
                continue
            s = socket.socket()
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            taken.append(s)
        if len(taken) < n:
            raise LeanstackError(f"only {len(taken)} of {n} TCP ports in {pool.start}-"
                                 f"{pool.stop - 1} are free on {host} — stop what holds them")
        return [s.getsockname()[1] for s in taken]
    finally:
        for s in taken:
            s.close()


def _kernel_ports(n: int, host: str) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
