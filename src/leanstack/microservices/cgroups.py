"""cgroup v1 CPU limits and accounting for the tiers of a local run, with stale-run cleanup.

This machine mounts ``cpu``, ``cpuacct`` and ``memory`` as separate v1 hierarchies, so every tier
gets ``leanstack/<run-id>/<tier>`` in each of them and each process is added to all three. The CPU
limit is the CFS quota over a period (``quota = cores * period``; 100 ms unless the run sets
another, at least 1 ms of quota per period), changeable live. Where the kernel has
``cpu.cfs_burst_us`` (Linux 5.14+), a run may let each tier bank unused quota for bursts: a
fraction of its quota, up to one whole quota. Each
tier weighs like one ordinary process in the CFS (cpu.shares), so tiers compete with the rest of
the machine as the processes they are.

Every run writes a small state file (its runner PID and that PID's start time) in a runtime
directory outside the repository, and the temporary directory the run keeps its logs in, if any.
:func:`cleanup_stale_runs` — called at every start — kills the processes of runs whose runner is
gone and removes their cgroups and temporary directories. Child processes also get
``PR_SET_PDEATHSIG`` (see :func:`die_with_parent`) so they die with the runner even on SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISDIR, S_IWGRP, S_IWOTH

from leanstack.atomic import write_json
from leanstack.errors import LeanstackError

CGROUP_ROOT = Path("/sys/fs/cgroup")
HIERARCHIES = ("cpu", "cpuacct", "memory")
PARENT = "leanstack"
PERIOD_US = 100_000
PERIOD_RANGE_US = (1_000, 1_000_000)  # what the kernel accepts for cpu.cfs_period_us
MIN_QUOTA_US = 1_000
PROCESS_WEIGHT = 1024  # cpu.shares of an ordinary process
MAX_WEIGHT = 262_144
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class CgroupSample:
    """Cumulative counters of one tier's cgroups at one instant."""

    t: float  # time.monotonic() when read
    cpu_ns: int  # cpuacct.usage
    nr_periods: int
    nr_throttled: int
    throttled_ns: int
    memory_bytes: int  # memory.usage_in_bytes


RUN_ID_RE = re.compile(r"[0-9]+-[0-9a-f]{8}")
"""The run ids :class:`RunCgroups` creates (``<runner pid>-<8 hex digits>``); clean-up touches
nothing else."""


def runtime_dir(bases: tuple[Path, ...] | None = None) -> Path:
    """Where run state files live: /run/leanstack when writable, else the system temp dir.

    A candidate is used only when it is a real directory owned by this user and writable by
    nobody else: state files there decide what clean-up kills.
    """
    bases = bases or (Path("/run"), Path(tempfile.gettempdir()))
    for base in bases:
        d = base / "leanstack"
        try:
            d.mkdir(mode=0o755, exist_ok=True)
        except OSError:
            continue
        if owned_private(d) and os.access(d, os.W_OK):
            return d
    raise LeanstackError("no private writable runtime directory for run state — make /run "
                         f"writable, or remove {bases[-1] / 'leanstack'} if another user owns it")


def owned_private(d: Path) -> bool:
    """True when ``d`` is a directory (not a link) of this user that nobody else can write."""
    try:
        st = d.lstat()
    except OSError:
        return False
    return (S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            and not st.st_mode & (S_IWGRP | S_IWOTH))


def check_run_id(run_id: str) -> str:
    """``run_id`` when it has the format :class:`RunCgroups` creates, else a one-line error."""
    if not RUN_ID_RE.fullmatch(run_id):
        raise LeanstackError(f"'{run_id}' is not a leanstack run id (PID-8 hex digits) — "
                             "pass the id a run printed")
    return run_id


def check_available(root: Path = CGROUP_ROOT) -> None:
    """Raise a one-line LeanstackError unless the v1 cpu, cpuacct and memory hierarchies are
    mounted and writable here."""
    for h in HIERARCHIES:
        d = root / h
        if not (d / "cgroup.procs").exists():
            raise LeanstackError(f"cgroup v1 hierarchy '{h}' is not mounted at {d} — the local "
                                 "backend needs cgroup v1 cpu, cpuacct and memory (or use the "
                                 "sim backend)")
        if not os.access(d, os.W_OK):
            raise LeanstackError(f"cgroup hierarchy {d} is not writable — run as root (the local "
                                 "backend sets real CPU quotas) or use the sim backend")


def check_cfs(period_us: int, burst: float, root: Path | None = CGROUP_ROOT) -> None:
    """Raise a one-line LeanstackError unless the CFS period and burst fraction are usable
    (and, with ``root``, the kernel there has the burst setting when one is asked for)."""
    lo, hi = PERIOD_RANGE_US
    if not lo <= period_us <= hi:
        raise LeanstackError(f"CFS period {period_us / 1000:g} ms is outside the kernel's "
                             f"{lo // 1000}-{hi // 1000} ms range — pick one inside it")
    if not 0 <= burst <= 1:
        raise LeanstackError(f"CFS burst must be a fraction of the quota in [0, 1], got {burst}")
    if burst > 0 and root is not None and not (root / "cpu" / "cpu.cfs_burst_us").exists():
        raise LeanstackError("this kernel has no cpu.cfs_burst_us (it needs Linux 5.14+) — "
                             "drop the CFS burst option")


def die_with_parent(cgroup_procs: list[Path] | None = None) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGKILL when its parent dies and joins the given cgroups
    before exec, so it runs under its tier's limits from its first instruction."""
    parent = os.getpid()
    paths = [str(p) for p in cgroup_procs or []]

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
        for p in paths:
            with open(p, "w") as f:
                f.write(str(os.getpid()))

    return preexec


class RunCgroups:
    """The cgroups of one run: ``leanstack/<run-id>/<tier>`` in each hierarchy."""

    def __init__(self, run_id: str | None = None, root: Path = CGROUP_ROOT,
                 state_dir: Path | None = None, period_us: int = PERIOD_US,
                 burst: float = 0.0) -> None:
        check_available(root)
        check_cfs(period_us, burst, root)
        self.period_us, self.burst = int(period_us), float(burst)
        self.root = root
        self.run_id = check_run_id(run_id or f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.state_dir = state_dir or runtime_dir()
        self.tiers: list[str] = []
        self.scratch_dir: Path | None = None
        self._write_state()

    @property
    def state_file(self) -> Path:
        return self.state_dir / f"{self.run_id}.json"

    def path(self, hierarchy: str, tier: str) -> Path:
        return self.root / hierarchy / PARENT / self.run_id / tier

    def procs_files(self, tier: str) -> list[Path]:
        """The tier's ``cgroup.procs`` in every hierarchy (for :func:`die_with_parent`)."""
        return [self.path(h, tier) / "cgroup.procs" for h in HIERARCHIES]

    def create(self, tier: str, cores: float, weight: int = PROCESS_WEIGHT) -> None:
        """Create the tier's cgroups with a CPU limit of ``cores`` and a CFS ``weight``
        (cpu.shares; the default weighs the tier like one ordinary process)."""
        for h in HIERARCHIES:
            try:
                self.path(h, tier).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise LeanstackError(f"cannot create cgroup {self.path(h, tier)} ({e.strerror}) "
                                     "— run as root with cgroup v1 mounted read-write") from None
        if tier not in self.tiers:
            self.tiers.append(tier)
        self.set_cpu(tier, cores)
        _write(self.path("cpu", tier) / "cpu.shares", weight)
        _rebalance_weights(self.root)

    def set_cpu(self, tier: str, cores: float) -> None:
        """Set the tier's CFS quota to ``cores`` (takes effect at once)."""
        if not cores > 0:
            raise LeanstackError(f"CPU for tier '{tier}' must be above 0 cores, got {cores}")
        quota = max(MIN_QUOTA_US, round(cores * self.period_us))
        d = self.path("cpu", tier)
        if self.burst > 0:  # the kernel refuses a burst above the quota: lower it first
            _write(d / "cpu.cfs_burst_us", 0)
        _write(d / "cpu.cfs_period_us", self.period_us)
        _write(d / "cpu.cfs_quota_us", quota)
        if self.burst > 0:
            _write(d / "cpu.cfs_burst_us", int(self.burst * quota))

    def cpu_limit(self, tier: str) -> float:
        """The tier's current limit in cores (quota / period)."""
        d = self.path("cpu", tier)
        return int(_read(d / "cpu.cfs_quota_us")) / int(_read(d / "cpu.cfs_period_us"))

    def add(self, tier: str, pid: int) -> None:
        """Move a running process into the tier's cgroups."""
        for p in self.procs_files(tier):
            _write(p, pid)

    def pids(self, tier: str) -> list[int]:
        return _pids(self.path("cpu", tier))

    def sample(self, tier: str) -> CgroupSample:
        """Read the tier's cumulative CPU, throttling and memory counters."""
        cpu_stat = _read(self.path("cpu", tier) / "cpu.stat")
        stat = dict(line.split() for line in cpu_stat.splitlines())
        return CgroupSample(
            t=time.monotonic(),
            cpu_ns=int(_read(self.path("cpuacct", tier) / "cpuacct.usage")),
            nr_periods=int(stat.get("nr_periods", 0)),
            nr_throttled=int(stat.get("nr_throttled", 0)),
            throttled_ns=int(stat.get("throttled_time", 0)),
            memory_bytes=int(_read(self.path("memory", tier) / "memory.usage_in_bytes")),
        )

    def remove(self) -> None:
        """Kill whatever still runs in the run's cgroups, remove them and the state file."""
        _remove_run(self.root, self.run_id)
        self.state_file.unlink(missing_ok=True)
        for h in HIERARCHIES:  # the shared parent goes too once no other run is under it
            with contextlib.suppress(OSError):
                (self.root / h / PARENT).rmdir()
        _rebalance_weights(self.root)

    def own_scratch_dir(self, path: Path) -> None:
        """Record ``path`` (a ``leanstack-*`` directory in the system temp dir) as the run's
        own, so that clean-up removes it if the runner dies without removing it itself."""
        if not _is_scratch_dir(path):
            raise LeanstackError(f"{path} is not a leanstack-* directory of the system temp dir "
                                 "— only such a directory can be left to clean-up")
        self.scratch_dir = path
        self._write_state()

    def _write_state(self) -> None:
        state = {"run_id": self.run_id, "runner_pid": os.getpid(),
                 "runner_start": _start_time(os.getpid())}
        if self.scratch_dir is not None:
            state["scratch_dir"] = str(self.scratch_dir)
        write_json(self.state_file, state)


def _is_scratch_dir(path: Path) -> bool:
    """A directory of ours that clean-up may delete: ``leanstack-*`` right inside the system
    temp dir, a real directory (not a link) owned by this user."""
    path = Path(path)
    try:
        st = path.lstat()
    except OSError:
        return False
    return (path.parent == Path(tempfile.gettempdir()) and path.name.startswith("leanstack-")
            and S_ISDIR(st.st_mode) and st.st_uid == os.geteuid())


def cleanup_stale_runs(root: Path = CGROUP_ROOT, state_dir: Path | None = None) -> list[str]:
    """Remove the processes, cgroups and temporary directories of runs whose runner process is
    gone; return their ids.

    A run without a state file (its runner crashed before writing it) counts as stale when the
    runner PID that begins its id is not alive.
    """
    state_dir = state_dir or runtime_dir()
    live: set[str] = set()
    stale: set[str] = set()
    scratch: list[Path] = []
    for f in state_dir.glob("*.json"):
        if not RUN_ID_RE.fullmatch(f.stem):
            continue  # not a state file of ours: never derive a cgroup path from it
        try:
            st = json.loads(f.read_text())
        except (OSError, ValueError):
            st = {}
        try:
            alive = _start_time(int(st["runner_pid"])) == st["runner_start"]
        except (OSError, ValueError, KeyError, TypeError):
            alive = False
        (live if alive else stale).add(f.stem)
        if not alive and isinstance(st, dict) and isinstance(st.get("scratch_dir"), str):
            scratch.append(Path(st["scratch_dir"]))
    for h in HIERARCHIES:
        parent = root / h / PARENT
        if parent.is_dir():
            for d in parent.iterdir():
                if (RUN_ID_RE.fullmatch(d.name) and d.is_dir() and not d.is_symlink()
                        and d.name not in live and not _pid_alive(d.name.split("-")[0])):
                    stale.add(d.name)
    for run_id in sorted(stale):
        _remove_run(root, run_id)
    for d in scratch:
        if _is_scratch_dir(d):
            shutil.rmtree(d, ignore_errors=True)
    for run_id in sorted(stale):
        (state_dir / f"{run_id}.json").unlink(missing_ok=True)
    if stale:
        _rebalance_weights(root)
    return sorted(stale)


def _remove_run(root: Path, run_id: str) -> None:
    dirs = [root / h / PARENT / check_run_id(run_id) for h in HIERARCHIES]
    tiers = [t for d in dirs if d.is_dir() for t in d.iterdir() if t.is_dir()]
    deadline = time.monotonic() + 5.0
    while True:
        pids = {pid for t in tiers for pid in _pids(t)}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not pids or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    for d in dirs:
        for t in (t for t in (d.iterdir() if d.is_dir() else ()) if t.is_dir()):
            _rmdir(t, deadline)
        _rmdir(d, deadline)


def _rebalance_weights(root: Path) -> None:
    """Weigh each run's cgroup, and the shared parent, as the sum of the tiers below them.

    Without this, every tier of every run would share the CFS weight of one process against
    the rest of the machine (cgroup v1 weighs a group like one task of its parent): a tier is
    meant to compete for CPU like the process it is, not as a fraction of one.
    """
    parent = root / "cpu" / PARENT
    total = 0
    for run in (d for d in parent.iterdir() if d.is_dir()) if parent.is_dir() else ():
        with contextlib.suppress(OSError, ValueError, LeanstackError):  # a run being removed
            weight = sum(int(_read(t / "cpu.shares")) for t in run.iterdir() if t.is_dir())
            _write(run / "cpu.shares", min(MAX_WEIGHT, max(2, weight)))
            total += weight
    if parent.is_dir():
        with contextlib.suppress(OSError, LeanstackError):
            _write(parent / "cpu.shares", min(MAX_WEIGHT, max(PROCESS_WEIGHT, total)))


def _rmdir(d: Path, deadline: float) -> None:
    while d.exists():
        try:
            d.rmdir()
        except FileNotFoundError:
            return
        except OSError as e:  # EBUSY while an exiting task is still attached
            if time.monotonic() > deadline:
                raise LeanstackError(f"cannot remove cgroup {d} ({e.strerror}) — kill the "
                                     "processes listed in its cgroup.procs and rmdir it") from None
            time.sleep(0.02)


def _pids(d: Path) -> list[int]:
    try:
        return [int(x) for x in _read(d / "cgroup.procs").split()]
    except FileNotFoundError:
        return []


def _pid_alive(pid: str) -> bool:
    return pid.isdigit() and Path(f"/proc/{pid}").exists()


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (guards against PID reuse)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _read(p: Path) -> str:
    return p.read_text()


def _write(p: Path, value: int | str) -> None:
    try:
        p.write_text(str(value))
    except OSError as e:
        raise LeanstackError(f"cannot write {value} to {p} ({e.strerror}) — check that cgroups "
                             "are writable (run as root)") from None

