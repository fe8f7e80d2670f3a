"""Where a result was produced: the Python version, the core count, installed package versions,
and for a benchmark also the command as typed and the time; a host-speed probe to record beside
runs whose numbers depend on how fast the machine is at that moment."""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """The installed version of each distribution in ``names``; ``None`` for one not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def runtime_environment(packages: Iterable[str]) -> dict[str, Any]:
    """``{"python", "cpu_count", "packages": {name: version}}`` for the running interpreter."""
    return {"python": platform.python_version(), "cpu_count": os.cpu_count(),
            "packages": package_versions(packages)}


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed (default: ``sys.argv``), without this machine's install path for
    the program itself: ``python benchmarks/x.py --quick`` for a script (its path as typed
    when relative), ``leanstack kv eval ...`` for the console script (by name, also when it
    was called as ``.venv/bin/leanstack``)."""
    argv = sys.argv if argv is None else argv
    if not argv:
        return ""
    prog = argv[0]
    if os.path.isabs(prog) or not prog.endswith(".py"):
        prog = Path(prog).name
    prefix = ["python"] if prog.endswith(".py") else []
    return shlex.join([*prefix, prog, *argv[1:]])


def benchmark_record(packages: Iterable[str], **conditions: Any) -> dict[str, Any]:
    """A benchmark result's ``environment`` (``runtime_environment`` plus ``conditions``, such as
    a thread count), ``command`` (``command_line``) and ``timestamp`` (UTC) entries."""
    return {"environment": {**runtime_environment(packages), **conditions},
            "command": command_line(),
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds")}


PROBE_LOOPS = 200_000  # iterations of the host-speed probe's loop (~20 ms on one core here)


def host_probe_ms(repeats: int = 5, loops: int = PROBE_LOOPS) -> dict[str, float]:
    """How long a fixed pure-Python loop takes now, ``repeats`` times: ``{"min", "median"}``
    milliseconds. The minimum follows the core's speed, the median also what competes for it;
    recorded beside a run, it tells a slower machine from a worse result."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        total = 0
        for i in range(loops):
            total += i
        times.append((time.perf_counter() - t0) * 1e3)
    return {"min": round(min(times), 2), "median": round(statistics.median(times), 2)}
