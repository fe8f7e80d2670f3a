"""Real faults on the local backend, inside the target tier's own cgroups.

- ``cpu_hog`` / ``noisy_neighbour``: ``stress-ng --cpu`` at ``severity`` x 100% load, started in
  the tier's cpu/cpuacct/memory cgroups, so it competes for the tier's CFS quota;
- ``memory_pressure``: ``stress-ng --vm`` touching ``severity`` x 512 MiB in the tier's memory
  cgroup (resident memory grows; page faults and reclaim take the tier's CPU);
- ``quota_squeeze``: the tier's CFS quota cut to ``1 - severity`` of what the controller gave;
- ``slow_downstream``: every worker of the tier waits ``severity`` x 100 ms before each
  request's work (the worker's ``POST /fault`` admin hook).

Every stress-ng process joins the tier's cgroups before it executes and gets
``PR_SET_PDEATHSIG``: it dies with the runner even on SIGKILL, and the backend's clean-up kills
everything left in the run's cgroups (also of an earlier run that was killed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import urllib.request
from typing import Any

from leanstack.errors import LeanstackError
from leanstack.microservices.cgroups import die_with_parent
from leanstack.seer.faults import MEMORY_GROWTH_BYTES, Fault

STEPS = 4
"""A ramping stress-ng fault is restarted at most this many times (quarter steps of severity)."""


def stress_ng() -> str:
    path = shutil.which("stress-ng")
    if path is None:
        raise LeanstackError("stress-ng is not installed — run scripts/system-deps.sh (or "
                             "apt-get install stress-ng)")
    return path


class LocalFaults:
    """Applies faults to a deployed :class:`~leanstack.microservices.local.LocalBackend`."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.procs: dict[str, subprocess.Popen] = {}  # fault key -> its stress-ng
        self.levels: dict[str, float] = {}
        self.squeeze: dict[str, float] = {}  # tier -> share of its quota left
        self.delay_ms: dict[str, float] = {}

    def apply(self, fault: Fault, strength: float) -> None:
        """Bring ``fault`` to ``strength`` (0 removes it)."""
        key = f"{fault.kind}:{fault.tier}"
        s = fault.level(strength)
        if fault.kind in ("cpu_hog", "noisy_neighbour", "memory_pressure"):
            level = round(strength * STEPS) / STEPS
            if self.levels.get(key) == level:
                return
            self.levels[key] = level
            self._stop(key)
            if level > 0:
                self._start(key, fault, fault.level(level))
        elif fault.kind == "quota_squeeze":
            self.squeeze[fault.tier] = 1.0 - s
            self.reapply()
        else:
            self.delay_ms[fault.tier] = 100.0 * s
            self._post_delay(fault.tier, 100.0 * s)

    def reapply(self) -> None:
        """Re-impose squeezes and delays after the controller changed the allocation (new
        workers, new quotas)."""
        cg = self.backend.cgroups
        for tier, share in self.squeeze.items():
            alloc = self.backend.allocation.tiers[tier].cpu
            cg.set_cpu(tier, max(alloc * share, 0.01))
        for tier, ms in self.delay_ms.items():
            self._post_delay(tier, ms)

    def stop_all(self) -> None:
        """Stop every stress-ng and lift squeezes and delays (the tiers may be gone already)."""
        for key in list(self.procs):
            self._stop(key)
        self.levels.clear()
        with contextlib.suppress(Exception):
            for tier in list(self.squeeze):
                self.squeeze[tier] = 1.0
            self.reapply()
            for tier in list(self.delay_ms):
                self._post_delay(tier, 0.0)
        self.squeeze.clear()
        self.delay_ms.clear()

    def _start(self, key: str, fault: Fault, severity: float) -> None:
        if fault.kind == "memory_pressure":
            mib = max(16, int(MEMORY_GROWTH_BYTES * severity) >> 20)
            args = ["--vm", "1", "--vm-bytes", f"{mib}M", "--vm-keep"]
        else:
            args = ["--cpu", "1", "--cpu-load", str(max(1, min(100, round(100 * severity))))]
        cmd = [stress_ng(), *args, "--timeout", f"{int(fault.duration_s) + 5}s", "--quiet"]
        self.procs[key] = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent(self.backend.cgroups.procs_files(fault.tier)),
            start_new_session=True)

    def _stop(self, key: str) -> None:
        proc = self.procs.pop(key, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # stress-ng forks its stressors
        proc.wait(timeout=5)

    def _post_delay(self, tier: str, ms: float) -> None:
        for w in self.backend.tiers[tier].workers:
            req = urllib.request.Request(
                f"http://127.0.0.1:{w.admin_port}/fault?delay_ms={ms:.3f}", method="POST")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(req, timeout=2).read()
