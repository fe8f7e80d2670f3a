"""The local backend: every tier is real OS processes on this machine under cgroup v1 CPU limits.

Storage tiers are ``redis-server`` / ``memcached`` processes; logic tiers are
:mod:`~leanstack.microservices.worker` processes (``replicas`` of them sharing one port). Each
tier has its own cgroups (:mod:`~leanstack.microservices.cgroups`) whose CFS quota is the tier's
CPU allocation. Load comes from :class:`~leanstack.microservices.loadgen.LoadGenerator`, a
separate process outside every tier cgroup.

Each :meth:`LocalBackend.observe` waits for the load generator's next interval, then reads per
tier the cgroup CPU / throttling / memory deltas, in-flight and served counts from the workers'
stats endpoints (operations served from the storage servers) and tier latency from the spans the
workers wrote in the run dir.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from leanstack.atomic import write_bytes, write_json
from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.microservices.cgroups import (
    CgroupSample,
    RunCgroups,
    check_available,
    check_cfs,
    cleanup_stale_runs,
    die_with_parent,
)
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.observation import (
    Allocation,
    ClassStats,
    Observation,
    Span,
    TierStats,
    own_latencies_ms,
    percentiles_ms,
)
from leanstack.microservices.storage import StorageServer
from leanstack.ports import free_ports

HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
# a Python exception line in a worker's log, e.g. "ConnectionRefusedError: [Errno 111] ..."
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b")
STOP_TIMEOUT_S = 5.0


@dataclass
class _WorkerProc:
    """One worker process of a logic tier and its last stats reading."""

    proc: subprocess.Popen
    admin_port: int
    last: dict = field(default_factory=dict)


@dataclass
class _Tier:
    name: str
    kind: str
    port: int
    workers: list[_WorkerProc] = field(default_factory=list)
    stopping: list[_WorkerProc] = field(default_factory=list)
    server: StorageServer | None = None
    last_ops: int = 0
    last_cg: CgroupSample | None = None


class LocalBackend:
    """Runs an app as real processes under real CPU quotas (see the module docstring).

    Needs root (writable cgroup v1). Drive it from one long-lived thread: child processes get
    PR_SET_PDEATHSIG, which fires when the thread that started them exits. Spans written in the
    last ~0.1 s of an interval (the workers' flush period) count in the next interval's tier
    latency.
    """

    name = "local"

    def __init__(self, interval_s: float = 1.0, run_dir: Path | None = None,
                 cfs_period_ms: float = 100.0, cfs_burst: float = 0.0) -> None:
        """``cfs_period_ms``: the CFS period of every tier's quota (a limit is at least 1 ms of
        quota per period); ``cfs_burst``: the fraction of its quota a tier may bank for
        bursts (``cpu.cfs_burst_us``, Linux 5.14+; 0 = none)."""
        if not interval_s > 0:
            raise LeanstackError(f"interval must be above 0 seconds, got {interval_s}")
        self.cfs_period_us = round(float(cfs_period_ms) * 1000)
        self.cfs_burst = float(cfs_burst)
        check_cfs(self.cfs_period_us, self.cfs_burst, root=None)  # the kernel: at deploy
        self.interval_s = float(interval_s)
        self._given_run_dir = Path(run_dir) if run_dir is not None else None
        self.run_dir: Path | None = None
        self._keep_run_dir = False  # set once an error message names a log inside it
        self.app: AppSpec | None = None
        self.allocation: Allocation | None = None
        self.cgroups: RunCgroups | None = None
        self.tiers: dict[str, _Tier] = {}
        self._loadgen = None
        self._t0 = 0.0
        self._index = 0
        self._span_offsets: dict[Path, int] = {}
        self._last_spans: list[Span] = []  # the previous batch, for children read early
        self._closed = False
        self._old_sigterm = None

    # --- Backend protocol ---------------------------------------------------------------------

    def deploy(self, app: AppSpec, allocation: Allocation) -> None:
        """Start storage servers (each answering before the next), then the logic tiers'
        workers callees-first, each process in its tier's cgroups; return when all are ready."""
        if self.app is not None:
            raise LeanstackError("this LocalBackend is already deployed — create a new one")
        check_allocation(app, allocation)
        check_available()
        cleanup_stale_runs()
        self.cgroups = RunCgroups(period_us=self.cfs_period_us, burst=self.cfs_burst)
        self.app, self.allocation = app, allocation
        atexit.register(self.close)
        self._install_sigterm()
        try:
            self.run_dir = self._make_run_dir()
            ports = free_ports(len(app.services), HOST)
            self.tiers = {n: _Tier(n, s.kind, p) for (n, s), p in zip(app.services.items(), ports,
                                                                        strict=True)}
            write_bytes(self.run_dir / "ports.json",
                          json.dumps({n: t.port for n, t in self.tiers.items()}).encode())
            write_json(self.run_dir / "app.json", app.to_data())
            for name in deploy_order(app):
                self.cgroups.create(name, allocation.tiers[name].cpu)
            for name in deploy_order(app):
                tier = self.tiers[name]
                if app.services[name].is_storage:
                    tier.server = StorageServer(name, tier.kind, tier.port, self.run_dir)
                    tier.server.start(self._preexec(name))
                    tier.server.wait_ready()
                else:
                    for _ in range(allocation.tiers[name].replicas):
                        tier.workers.append(self._start_worker(tier))
            for tier in self.tiers.values():
                for w in tier.workers:
                    self._wait_worker_ready(tier, w)
        except BaseException:
            self.close()
            raise
        self._t0 = time.monotonic()
        self._baseline()

    def start(self, load: LoadSpec) -> None:
        """Start the open-loop load generator on the classes' entry URLs (a second call
        replaces the running load; its intervals count from zero again)."""
        app = self._deployed()
        from leanstack.microservices.loadgen import LoadGenerator

        if self._loadgen is not None:
            self._loadgen.stop()
        self._loadgen = LoadGenerator(self.urls(), load, app.mix(),
                                      {n: c.sla for n, c in app.classes.items()},
                                      interval_s=self.interval_s)
        self._baseline()
        self._loadgen.start()
        self._t0 = time.monotonic()
        self._index = 0

    def set_allocation(self, allocation: Allocation) -> None:
        """New CPU quotas at once; replicas added (they join when listening) or stopped."""
        app = self._deployed()
        check_allocation(app, allocation)
        for name, ta in allocation.tiers.items():
            self.cgroups.set_cpu(name, ta.cpu)
            tier = self.tiers[name]
            if app.services[name].is_storage:
                continue
            while len(tier.workers) < ta.replicas:
                tier.workers.append(self._start_worker(tier))
            while len(tier.workers) > ta.replicas:
                w = tier.workers.pop()
                w.proc.terminate()
                tier.stopping.append(w)
        self.allocation = allocation

    def observe(self) -> Observation:
        """Wait for the interval to end; return per-class and per-tier statistics for it."""
        app = self._deployed()
        if self._loadgen is not None:
            report = self._loadgen.next_interval(timeout_s=5 * self.interval_s + 10.0)
            t_end, offered, classes = report.t_end, report.offered_rps, report.classes
        else:
            t_end = (self._index + 1) * self.interval_s
            time.sleep(max(0.0, self._t0 + t_end - time.monotonic()))
            offered = 0.0
            classes = {n: ClassStats(sla_ms=c.sla.ms, sla_key=c.sla.key)
                       for n, c in app.classes.items()}
        self._index += 1
        self._check_alive()
        by_tier = self._new_spans()
        batch = [sp for group in by_tier.values() for sp in group]
        own = own_latencies_ms(batch, self._last_spans)
        self._last_spans = batch
        tiers = {name: self._tier_stats(tier, by_tier.get(name, []), own.get(name, []))
                 for name, tier in self.tiers.items()}
        return Observation(t=t_end, interval_s=self.interval_s, classes=classes, tiers=tiers,
                           offered_rps=offered, cfs_period_ms=self.cfs_period_us / 1000)

    def spans(self, since_ns: int = 0) -> list[Span]:
        """Every span the workers wrote that ended at or after ``since_ns``, by end time."""
        if self.run_dir is None:
            return []
        out = []
        for path in sorted(self.run_dir.glob("spans-*.jsonl")):
            with open(path, "rb") as f:
                for line in f:
                    if line.endswith(b"\n"):
                        s = Span.from_otlp(line)
                        if s.end_ns >= since_ns:
                            out.append(s)
        return sorted(out, key=lambda s: s.end_ns)

    def close(self) -> None:
        """Stop load and every process, remove the cgroups (idempotent; also runs at exit)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        if self._loadgen is not None:
            with contextlib.suppress(Exception):
                self._loadgen.stop()
        workers = [w for t in self.tiers.values() for w in (*t.workers, *t.stopping)]
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                w.proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for w in workers:
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
        for t in self.tiers.values():
            if t.server is not None:
                t.server.stop()
        if self.cgroups is not None:
            self.cgroups.remove()
        if self.run_dir is not None and self._given_run_dir is None and not self._keep_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        self._restore_sigterm()

    # --- helpers for users and tests ----------------------------------------------------------

    def urls(self) -> dict[str, str]:
        """Request class -> the URL of its entry endpoint."""
        app = self._deployed()
        return {n: f"http://{HOST}:{self.tiers[c.entry.service].port}/{c.entry.endpoint}"
                for n, c in app.classes.items()}

    def pids(self) -> dict[str, list[int]]:
        """Tier -> PIDs of its running processes."""
        out = {}
        for name, t in self.tiers.items():
            if t.server is not None and t.server.proc is not None:
                out[name] = [t.server.proc.pid]
            else:
                out[name] = [w.proc.pid for w in t.workers]
        return out

    # --- internals ----------------------------------------------------------------------------

    def _deployed(self) -> AppSpec:
        if self.app is None or self._closed:
            raise LeanstackError("the local backend is not deployed (or already closed) — call "
                                 "deploy(app, allocation) first")
        return self.app

    def _make_run_dir(self) -> Path:
        if self._given_run_dir is None:
            d = Path(tempfile.mkdtemp(prefix="leanstack-local-"))
            self.cgroups.own_scratch_dir(d)  # if the runner dies before close, the next start
            # removes it
            return d
        d = self._given_run_dir
        d.mkdir(parents=True, exist_ok=True)
        if d.is_symlink() or d.stat().st_uid != os.geteuid():
            raise LeanstackError(f"run dir {d} belongs to another user (or is a link) — workers "
                                 "read their app and ports from it; give a directory of yours")
        for old in d.glob("spans-*.jsonl"):
            old.unlink()
        return d

    def _preexec(self, tier: str):
        return die_with_parent(self.cgroups.procs_files(tier))

    def _start_worker(self, tier: _Tier) -> _WorkerProc:
        # not a port promised to a server of this run that may not have bound it yet
        promised = {t.port for t in self.tiers.values()} | {
            w.admin_port for t in self.tiers.values() for w in t.workers}
        admin = free_ports(1, HOST, exclude=promised)[0]
        cmd = [sys.executable, "-m", "leanstack.microservices.worker",
               "--app", str(self.run_dir / "app.json"), "--service", tier.name,
               "--port", str(tier.port), "--admin-port", str(admin),
               "--run-dir", str(self.run_dir)]
        log = open(self.run_dir / f"{tier.name}.log", "ab")  # noqa: SIM115 - owned by the child
        with log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    preexec_fn=self._preexec(tier.name), close_fds=True,
                                    start_new_session=True)
        return _WorkerProc(proc, admin)

    def _wait_worker_ready(self, tier: _Tier, w: _WorkerProc) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if w.proc.poll() is not None:
                raise LeanstackError(f"tier '{tier.name}' exited with code {w.proc.returncode} "
                                     f"before it was ready: {self._log_tail(tier.name)}")
            try:
                w.last = _get_json(w.admin_port, "/stats")
                return
            except OSError:
                time.sleep(0.05)
        raise LeanstackError(
            f"tier '{tier.name}' did not answer within {READY_TIMEOUT_S:.0f} s (load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: an overloaded machine starts "
            f"workers slowly; retry when it is quieter): {self._log_tail(tier.name)}")

    def _log_tail(self, tier: str) -> str:
        """The last error a tier's processes logged (else their last line), and where the
        whole log is; that log then outlives close(), since an error message names it."""
        self._keep_run_dir = True
        log = self.run_dir / f"{tier}.log"
        lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
        errors = [ln for ln in lines if _ERROR_LINE.match(ln)]
        last = errors[-1] if errors else lines[-1] if lines else "no output"
        return f"{last} — see {log}"

    def _check_alive(self) -> None:
        """Raise a one-line error when a tier process died on its own (the run is broken)."""
        for t in self.tiers.values():
            procs = [w.proc for w in t.workers]
            if t.server is not None and t.server.proc is not None:
                procs.append(t.server.proc)
            for p in procs:
                if p.poll() is not None:
                    raise LeanstackError(f"tier '{t.name}' process {p.pid} exited with code "
                                         f"{p.returncode}: {self._log_tail(t.name)}")

    def _baseline(self) -> None:
        """Take the counters' current values as the start of the next interval."""
        self._new_spans()
        for name, t in self.tiers.items():
            t.last_cg = self.cgroups.sample(name)
            if t.server is not None:
                t.last_ops = t.server.ops_served()
            for w in t.workers:
                with contextlib.suppress(OSError, ValueError):
                    w.last = _get_json(w.admin_port, "/stats")

    def _tier_stats(self, tier: _Tier, spans: list[Span], own_ms: list[float]) -> TierStats:
        cg = self.cgroups.sample(tier.name)
        prev = tier.last_cg or cg
        dt = max(cg.t - prev.t, 1e-9)
        tier.last_cg = cg
        st = TierStats(
            cpu_limit=self.cgroups.cpu_limit(tier.name),
            cpu_used=(cg.cpu_ns - prev.cpu_ns) / 1e9 / dt,
            throttled_periods=cg.nr_throttled - prev.nr_throttled,
            throttled_s=(cg.throttled_ns - prev.throttled_ns) / 1e9,
            memory_bytes=cg.memory_bytes,
            replicas=max(1, len(tier.workers)),
            latency_ms=percentiles_ms([s.duration_ms for s in spans]),
            own_latency_ms=percentiles_ms(own_ms),
        )
        if tier.server is not None:
            ops = tier.server.ops_served()
            st.rps = (ops - tier.last_ops) / dt
            tier.last_ops = ops
            st.inflight = sum(s.duration_ms for s in spans) / 1e3 / dt  # Little's law
        else:
            served = integral = 0.0
            for w in tier.workers:
                with contextlib.suppress(OSError, ValueError):
                    now = _get_json(w.admin_port, "/stats")
                    served += now["served"] - w.last.get("served", 0)
                    integral += now["inflight_integral_s"] - w.last.get("inflight_integral_s", 0)
                    w.last = now
            st.rps = served / dt
            st.inflight = integral / dt
            tier.stopping = [w for w in tier.stopping if w.proc.poll() is None]
        return st

    def _new_spans(self) -> dict[str, list[Span]]:
        """Spans written since the last call, grouped by the tier they measure."""
        out: dict[str, list[Span]] = {}
        if self.run_dir is None:
            return out
        for path in self.run_dir.glob("spans-*.jsonl"):
            offset = self._span_offsets.get(path, 0)
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
            end = data.rfind(b"\n") + 1  # a line being written is read next time
            self._span_offsets[path] = offset + end
            for line in data[:end].splitlines():
                s = Span.from_otlp(line)
                out.setdefault(s.service, []).append(s)
        return out

    def _install_sigterm(self) -> None:
        """Turn SIGTERM into SystemExit so ``finally`` blocks and the atexit close run."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._old_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None


def check_allocation(app: AppSpec, allocation: Allocation) -> None:
    """Raise a one-line LeanstackError unless ``allocation`` fits ``app``'s tiers."""
    missing = [n for n in app.services if n not in allocation.tiers]
    if missing:
        raise LeanstackError(f"allocation has no entry for tier(s) {', '.join(missing)} — give "
                             "every tier of the app a TierAllocation")
    unknown = [n for n in allocation.tiers if n not in app.services]
    if unknown:
        raise LeanstackError(f"allocation names unknown tier(s) {', '.join(unknown)} — use "
                             f"tiers of {app.name}")
    for n, ta in allocation.tiers.items():
        if not ta.cpu >= 0.01:
            raise LeanstackError(f"tier '{n}' cpu {ta.cpu} is below the 0.01-core minimum "
                                 "(1 ms per 100 ms CFS period) — raise it")
        if not isinstance(ta.replicas, int) or ta.replicas < 1:
            raise LeanstackError(f"tier '{n}' replicas {ta.replicas!r} — use a whole number >= 1")
        if app.services[n].is_storage and ta.replicas != 1:
            raise LeanstackError(f"storage tier '{n}' runs one server, got replicas "
                                 f"{ta.replicas} — set replicas=1 and scale its cpu instead")


def deploy_order(app: AppSpec) -> list[str]:
    """Tiers callees-first: storage, then logic tiers after everything they call or feed."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        svc = app.services[name]
        deps = [c.service for e in svc.endpoints.values() for c in (*e.calls, *e.enqueue)]
        for d in ([svc.queue] if svc.queue else []) + deps:
            visit(d)
        order.append(name)

    for name in sorted(app.services, key=lambda n: not app.services[n].is_storage):
        visit(name)
    return order


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)



def _get_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=2.0) as resp:
        return json.loads(resp.read())
