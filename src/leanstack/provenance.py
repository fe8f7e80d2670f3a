"""Where a result was produced: the Python version, the core count, installed package versions,
and for a benchmark also the command as typed and the time; a host-speed probe to record beside
runs whose numbers depend on how fast the machine is at that moment."""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import threading
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


class HostProbeSampler:
    """The host-speed probe sampled all through a run, on a daemon thread, inside a ``with``
    block: every ``every_s`` seconds the minimum of three loops a tenth of the probe's length,
    scaled to the probe's (so readings compare with :func:`host_probe_ms`'s ``min``). About
    0.5% of one core. ``samples`` holds ``[seconds since the block began, ms]`` pairs; a
    machine whose speed moves within a run shows it here, where readings before and after miss
    it."""

    def __init__(self, every_s: float = 1.0, loops: int = PROBE_LOOPS // 10) -> None:
        if not every_s > 0 or loops < 1:
            raise ValueError(f"every_s must be above 0 and loops at least 1, got {every_s}, "
                             f"{loops}")
        self.every_s, self.loops = every_s, loops
        self.samples: list[list[float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def __enter__(self) -> HostProbeSampler:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._sample, name="host-probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self) -> None:
        scale = PROBE_LOOPS / self.loops
        while not self._stop.is_set():
            reading = host_probe_ms(repeats=3, loops=self.loops)["min"] * scale
            self.samples.append([round(time.monotonic() - self._t0, 2), round(reading, 2)])
            self._stop.wait(self.every_s)

    def record(self) -> dict[str, Any]:
        """What a result keeps of the sampling: :meth:`summary` and the ``samples``."""
        return {**self.summary(), "samples": self.samples}

    def summary(self) -> dict[str, float | int]:
        """``{"n", "min", "median", "max"}`` of the readings (ms); ``{"n": 0}`` without any."""
        ms = [m for _, m in self.samples]
        if not ms:
            return {"n": 0}
        return {"n": len(ms), "min": min(ms), "median": round(statistics.median(ms), 2),
                "max": max(ms)}
