"""A discrete-event simulator of an app file: the ``sim`` backend.

It models what the local backend really runs:

- each logic replica is a single-threaded asyncio process: one CPU *segment* at a time, FCFS over
  segments, and it never blocks while waiting for downstream calls. A visit to an endpoint is a
  start segment (callee RPC overhead + the endpoint's own work), then per downstream call one
  response segment (the caller's RPC overhead) when the answer arrives;
- a tier's CPU allocation is a CFS quota shared by its replicas: ``cpu * 100 ms`` of CPU per 100 ms
  period; a segment that finds the bucket empty waits for the next period (throttling tails),
  and one that empties it runs on until the kernel's next tick (``OVERRUN_S``, a debt the next
  period repays); up to ``CARRY_S`` of unused quota survives a period boundary.
  Exact for one replica; with several, each segment draws its quota from the shared bucket when it
  starts (an approximation of replicas draining it side by side);
- with ``run_queues=True`` (and the host model) the bucket is the kernel's two levels instead: a
  pool refilled to the quota each period, from which the tier's run queue on each host core
  takes slices (``SLICE_S``) as it runs; an empty slice is noticed a tick late (``OVERRUN_S``, a
  debt the next slice repays), and with no slice to take the tier is throttled. A sleeping
  process's run queue keeps ``RQ_KEEP_S`` and hands the rest back; that runtime is stranded while
  the process wakes on another core (its previous one busy), so tiers at a few hundredths of a
  core throttle more often than one bucket says;
- storage tiers (redis / memcached) are single FCFS servers with a per-operation service time,
  under the same quota bucket;
- a calibrated ``idle_cpu`` per process (span flushes, stats, a server's timers) is spread
  evenly: it is reported in ``cpu_used`` and taken off the quota bucket;
- the host's cores (``host_cores``, by default the calibrated machine's core count) are shared by
  every tier: a segment whose replica is ready waits in one FIFO run queue until one of the
  cores is free (an M/G/c view of the kernel's run queue; segments are far shorter than a CFS
  slice). A throttled segment gives its core back while it waits for its next period;
- every call (and the load generator's request to the entry tier) takes ``rpc.delay_ms`` of
  wall time that costs no tier CPU: loopback network, wake-ups, the client library's queues;
- with ``rpc.entry_ms`` set, the load generator's request instead carries the client's share
  of its latency (mean ``rpc.entry_ms``, a gamma with CV ``rpc.entry_cv``), added when it
  completes: what the load generator measures beyond the entry tier's span — its HTTP client
  and the entry tier's HTTP server before and after the handler (it delays no tier);
- call groups run in sequence, the calls of a group in parallel (fan-out / join). A call to a
  storage tier with ``client = "blocking"`` is synchronous (pymemcache inside the worker's event
  loop): the calling replica does nothing else until the answer is back, and in a group such
  calls run one after another before the group's asynchronous calls are sent;
- ``enqueue`` edges are an ``rpush`` on the queue's redis tier, one after another; consumer
  replicas pull one message at a time from a FIFO; ``wait = "pipeline"`` classes complete when
  their last stage finishes.

Arrivals come from :meth:`LoadSpec.arrival_times` and :func:`assign_classes`, the schedule the
real load generator sends. Service times default to the app file (``cpu_ms``/``cv``, storage
``op_cpu_ms``) plus :data:`DEFAULT_RPC`, or come from a calibration file (see ``calibrate.py``).

Not modelled: CPU outside the tiers (the load generator, the kernel's network stack) competing
for the host's cores, CPU per request that grows when a tier is throttled (seen on the local
backend), and the entry worker of a ``wait = "pipeline"`` class holding its connection while the
pipeline runs.

The engine is a hand-written heap of ``(time, seq, kind, replica)`` tuples over integer endpoint
ids with precomputed call plans, service times drawn from numpy in blocks; see
``benchmarks/sim_speed.py`` for its speed.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from heapq import heappop, heappush
from pathlib import Path
from typing import Any

import numpy as np

from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.microservices.calibration import (
    DEFAULT_RPC,
    SHIPPED,
    check_calibration,
    load_calibration,
    shipped_path,
)
from leanstack.microservices.load import LoadSpec, assign_classes
from leanstack.microservices.observation import (
    Allocation,
    ClassStats,
    Observation,
    Span,
    TierStats,
    percentiles_ms,
)

PERIOD_S = 0.1
"""CFS period of every tier's quota bucket (the kernel default, 100 ms)."""

OVERRUN_S = 0.002
"""How long a segment runs on after its tier's quota bucket is empty: the kernel checks the
bucket at scheduler ticks (4 ms at the usual HZ=250), so half a tick on average."""

CARRY_S = 0.001
"""Quota a tier keeps across a period boundary: since Linux 5.4 a run queue keeps up to
``min_cfs_rq_runtime`` (1 ms) of its local slice when the period refills the pool."""

SLICE_S = 0.005
"""With ``run_queues``: runtime a tier's run queue on one core takes from the pool at a time
(the kernel's ``sched_cfs_bandwidth_slice_us``, 5 ms by default)."""

RQ_KEEP_S = 0.001
"""With ``run_queues``: runtime a run queue keeps when its process sleeps (the kernel's
``min_cfs_rq_runtime``, 1 ms); the rest goes back to the pool. It does not expire at the
period's end (since Linux 5.4)."""

QUEUE_OP = "rpush"
"""The storage operation an ``enqueue`` edge performs on the queue's redis tier."""

REPLICA_START_S = 0.5
"""Simulated time a new replica takes before it accepts work (a Python worker's start-up)."""

TIMEOUT_S = 10.0
"""Requests slower than the load generator's timeout count as errors, as on the real backend."""

MEMORY_BYTES = {"logic": 40 << 20, "redis": 8 << 20, "memcached": 4 << 20}
"""Constant memory model per replica (resident set of an idle worker or server)."""


_BLOCK = 2048  # service-time draws per refill
_START, _RESP = 0, 1  # segment actions
_SEG, _UP, _CORE, _CALL, _HOLD = 0, 1, 2, 3, 4  # heap events: segment end, replica up, core
# freed, call arrives, a visit's injected delay is over
# frame fields: one visit to one endpoint
(_F_EP, _F_PARENT, _F_GROUP, _F_PENDING, _F_REQ, _F_T0, _F_REP, _F_CPU, _F_SPAN, _F_MSG,
 _F_ISSUED, _F_WAIT, _F_LAST) = range(13)
# _F_ISSUED: when the outstanding call group was issued (-1: none); _F_WAIT: seconds spent
# waiting on finished groups; _F_LAST: when the latest answer to this visit's calls arrived.
# request fields
_R_CLASS, _R_T0, _R_OUT, _R_ID = range(4)


@dataclass(frozen=True)
class TierFault:
    """An injected fault's effect on one tier (for fault-injection campaigns): service times
    times ``slowdown`` (a CPU hog or memory pressure sharing the tier's cores), the CPU quota
    times ``capacity`` (a quota squeeze), ``delay_s`` of wall time before each visit's work (a
    slow dependency inside the worker) and ``memory_bytes`` more resident memory. The default
    is no fault."""

    slowdown: float = 1.0
    capacity: float = 1.0
    delay_s: float = 0.0
    memory_bytes: int = 0


class _Replica:
    """One worker process (or the single server of a storage tier)."""

    __slots__ = ("tier", "queue", "busy", "seg", "active", "blocked", "core", "last_core")

    def __init__(self, tier: _Tier, active: bool) -> None:
        self.tier = tier
        self.queue: deque = deque()
        self.busy = False  # running a segment, waiting for a core, or blocked on a sync call
        self.seg: tuple = ()
        self.active = active
        self.blocked = False  # waiting for a synchronous (memcached) answer
        self.core = -1  # the host core its running segment holds until it ends (-1: none)
        self.last_core = 0  # the core it ran on last: where its tier's runtime for it sits


class _Tier:
    """A service: its replicas, its CFS quota bucket and its per-interval counters."""

    __slots__ = ("name", "kind", "cpu", "unlimited", "quota", "period_end",
                 "q_left", "carry", "local", "thr_mark", "thr_periods", "thr_s", "busy_s",
                 "busy_next", "starting",
                 "active", "rr", "lat", "own_lat", "inflight", "inflight_area", "inflight_t",
                 "fifo", "free", "queue_fed", "phase", "idle", "fault")

    def __init__(self, name: str, kind: str, queue_fed: bool) -> None:
        self.name, self.kind, self.queue_fed = name, kind, queue_fed
        self.cpu, self.unlimited, self.quota = 1.0, True, PERIOD_S
        self.period_end, self.q_left, self.thr_mark = PERIOD_S, PERIOD_S, -1.0
        self.carry = CARRY_S  # quota the bucket keeps across a period (with run queues: none)
        self.local = [0.0]  # with run queues: the runtime each host core's run queue holds
        self.phase = PERIOD_S
        self.idle = 0.0  # cores each process burns whatever the load (from the calibration)
        self.thr_periods, self.thr_s, self.busy_s, self.busy_next = 0, 0.0, 0.0, 0.0
        self.starting: list[_Replica] = []
        self.active: list[_Replica] = []
        self.rr = 0
        self.lat: list[float] = []
        self.own_lat: list[float] = []  # latency minus waiting on calls, plus queue wait
        self.inflight, self.inflight_area, self.inflight_t = 0, 0.0, 0.0
        self.fifo: deque = deque()
        self.free: list[_Replica] = []
        self.fault = TierFault()

    def set_cpu(self, cpu: float, replicas: int) -> None:
        """New quota, less what its processes burn idle; a tier whose replicas cannot exceed it
        never throttles (fast path)."""
        self.cpu = cpu
        cpu *= self.fault.capacity
        self.quota = max(cpu - self.idle * replicas, 0.1 * cpu) * PERIOD_S
        self.unlimited = cpu >= replicas
        self.q_left = min(self.q_left, self.quota + self.carry)

    def reserve(self, now: float, work: float) -> float:
        """Run ``work`` CPU-seconds from ``now`` against the quota bucket; return the end time.

        A segment runs at one core while the bucket has quota. The kernel notices an empty
        bucket only at its next scheduler tick, so a segment that empties it runs on for
        OVERRUN_S more (half a tick on average); that debt comes out of the next period's quota.
        Once the bucket is empty the tier is throttled until a period refills it (up to the
        quota plus CARRY_S). Replicas of one
        tier draw on the same bucket (each reserving its segment's quota when it starts).
        """
        period_end = self.period_end
        left = self.q_left
        if now >= period_end:
            n = int((now - period_end) / PERIOD_S) + 1
            period_end += n * PERIOD_S
            left = min(left + n * self.quota, self.quota + CARRY_S)
        if work <= left and now + work <= period_end:
            self.q_left = left - work
            self.period_end = period_end
            return now + work
        t = now
        while True:
            if left > 1e-12:
                run = min(work, left + OVERRUN_S, period_end - t)
                t += run
                work -= run
                left -= run
                if work <= 1e-12:
                    break
            t = self._throttled_until(t, period_end)  # the bucket is empty
            period_end += PERIOD_S
            left = min(left + self.quota, self.quota + CARRY_S)
        self.q_left = left
        self.period_end = period_end
        return t

    def _throttled_until(self, t: float, period_end: float) -> float:
        """The tier is throttled from ``t`` to ``period_end`` (counted once per period); returns
        when it may run again."""
        if t < period_end and self.thr_mark != period_end:
            self.thr_mark = period_end
            self.thr_periods += 1
            self.thr_s += period_end - t
        return period_end

    def _take_slice(self, local: float) -> float:
        """A run queue holding ``local`` runtime takes a slice from the pool (up to SLICE_S
        beyond its debt); returns what it holds then."""
        take = min(self.q_left, SLICE_S - local)
        self.q_left -= take
        return local + take

    def _refill(self, now: float) -> None:
        """With run queues: start the period ``now`` falls in, the pool (``q_left``) refilled
        up to the quota."""
        if now >= self.period_end:
            n = int((now - self.period_end) / PERIOD_S) + 1
            self.period_end += n * PERIOD_S
            self.q_left = min(self.q_left + n * self.quota, self.quota)

    def reserve_on_core(self, now: float, work: float, core: int) -> float:
        """With run queues: run ``work`` CPU-seconds from ``now`` on host core ``core``; return
        the end time.

        The segment runs at one core while the tier's run queue there holds runtime, taking a
        slice from the pool whenever it runs out. The kernel notices an empty slice only at its
        next scheduler tick, so the segment runs on for OVERRUN_S more (half a tick on average),
        a debt the next slice repays. With no runtime on the core and none in the pool, the tier
        is throttled until a period refills the pool. Replicas of one tier on one core share its
        run queue (each reserving its segment's runtime when it starts).
        """
        self._refill(now)
        local = self.local[core]
        if work <= local and now + work <= self.period_end:
            self.local[core] = local - work
            return now + work
        t, period_end = now, self.period_end
        while True:
            if local <= 1e-12 and self.q_left > 0.0:
                local = self._take_slice(local)
            if local > 1e-12:
                run = min(work, local + OVERRUN_S, period_end - t)
                t += run
                work -= run
                local -= run
                if work <= 1e-12:
                    break
                if t < period_end and self.q_left > 0.0:
                    continue
            t = self._throttled_until(t, period_end)  # no runtime left
            period_end += PERIOD_S
            self.q_left = min(self.q_left + self.quota, self.quota)
        self.local[core] = local
        self.period_end = period_end
        return t

    def sleep(self, now: float, core: int) -> None:
        """With run queues: a replica's process sleeps on ``core``; the run queue there settles
        its debt from the pool and hands back all its runtime but RQ_KEEP_S."""
        self._refill(now)
        local = self.local[core]
        if local < 0.0:
            local = self._take_slice(local)
        if local > RQ_KEEP_S:
            self.q_left += local - RQ_KEEP_S
            local = RQ_KEEP_S
        self.local[core] = local


class SimBackend:
    """The simulator backend: same app files, load schedule and Observations as ``local``."""

    name = "sim"

    def __init__(self, interval_s: float = 1.0, seed: int = 0,
                 calibration: str | Path | dict | None = None, record_spans: bool = False,
                 host_cores: float | None = None, run_queues: bool = False) -> None:
        """``host_cores``: cores shared by all tiers; ``None`` takes the calibration's
        ``host_cores`` (unlimited without one), ``math.inf`` means unlimited. ``run_queues``:
        model CFS bandwidth per host core (slices, runtime stranded on a core the process left)
        instead of one bucket per tier; it needs the host model."""
        if not (interval_s > 0 and math.isfinite(interval_s)):
            raise LeanstackError(f"interval_s must be above 0, got {interval_s}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise LeanstackError(f"--seed must be a whole number >= 0, got {seed}")
        if host_cores is not None and not host_cores > 0:
            raise LeanstackError(f"host_cores must be above 0 (or None / math.inf for no host "
                                 f"limit), got {host_cores}")
        self.interval_s = float(interval_s)
        self.host_cores = host_cores
        self.seed = seed
        self.record_spans = record_spans
        self.run_queues = run_queues
        self._calibration = calibration
        self._app: AppSpec | None = None
        self._started = False

    # --- Backend protocol ------------------------------------------------------------------

    def deploy(self, app: AppSpec, allocation: Allocation) -> None:
        """Build the engine for ``app`` and apply ``allocation`` (no processes are started)."""
        model = _service_model(app, self._calibration)
        self._app = app
        self._compile(app, model)
        cores = self.host_cores if self.host_cores is not None else model["host_cores"]
        self._host = cores is not None and math.isfinite(cores)
        if self.run_queues and not self._host:
            raise LeanstackError("run_queues needs the host model — give host_cores, or a "
                                 "calibration that records the machine's cores")
        self._rq = self.run_queues
        n_cores = math.ceil(cores) if self._host else 1
        self._core_busy = [False] * n_cores
        self._cores_free = n_cores if self._host else 0
        self._speed = cores / n_cores if self._host else 1.0  # per core, <= 1
        self._run_queue: deque = deque()  # (replica, segment) waiting for a host core
        self._heap: list[tuple] = []
        self._seq = 0
        self.now = 0.0
        self._t_end = self.interval_s
        self._interval = 0
        self._spans: list[Span] = []
        self._span_seq = 0
        for tier in self._tiers:  # replicas present at deploy are ready at once
            ta = allocation.tiers.get(tier.name)
            n = ta.replicas if ta is not None else app.services[tier.name].replicas
            tier.active = [_Replica(tier, True) for _ in range(max(n, 1))]
            tier.local = [0.0] * n_cores
            tier.carry = 0.0 if self._rq else CARRY_S
            tier.free = list(tier.active) if tier.queue_fed else []
        phases = np.random.default_rng([self.seed, 1]).uniform(0.0, PERIOD_S, len(self._tiers))
        for tier, phase in zip(self._tiers, phases, strict=True):
            tier.phase = tier.period_end = float(phase) or PERIOD_S
        self.set_allocation(allocation)

    def start(self, load: LoadSpec) -> None:
        """Schedule the load's arrivals; simulated time 0 is the first possible send."""
        app = self._need_app()
        times = load.arrival_times()
        names = assign_classes(app.mix(), len(times), seed=load.seed)
        index = {n: i for i, n in enumerate(self._class_names)}
        self._arr_t = times.tolist()
        self._arr_np = times
        self._arr_c = [index[n] for n in names]
        self._ai = 0
        self._started = True

    def set_allocation(self, allocation: Allocation) -> None:
        """Apply CPU quotas now; new replicas join after REPLICA_START_S, removed ones drain."""
        self._need_app()
        for name, ta in allocation.tiers.items():
            tier = self._tier_by_name.get(name)
            if tier is None:
                raise LeanstackError(f"allocation names unknown tier '{name}' — use tiers of "
                                     f"app '{self._app.name}'")
            if not ta.cpu > 0 or ta.replicas < 1:
                raise LeanstackError(f"tier '{name}': cpu must be above 0 and replicas at least "
                                     f"1, got cpu={ta.cpu}, replicas={ta.replicas}")
            if tier.kind != "logic" and ta.replicas != 1:
                raise LeanstackError(f"tier '{name}' is a {tier.kind} server: keep replicas = 1")
            tier.set_cpu(ta.cpu, ta.replicas)
            self._resize(tier, ta.replicas)

    def observe(self) -> Observation:
        """Advance simulated time by one interval and report it."""
        if not self._started:
            raise LeanstackError("observe() before start() — deploy the app and start the load")
        t0 = self._interval * self.interval_s
        t1 = t0 + self.interval_s
        self._run_until(t1)
        self._interval += 1
        return self._collect(t0, t1)

    @property
    def period_phases(self) -> dict[str, float]:
        """Per tier: when (s) its first CFS period ends. Each cgroup's period timer runs at its
        own phase, so work a throttled caller releases at its period start lands at a random
        point of its callees' periods. Empty before ``deploy``."""
        return {t.name: t.phase for t in self._tiers} if self._app else {}

    def set_fault(self, tier_name: str, fault: TierFault | None) -> None:
        """Apply ``fault`` to tier ``tier_name`` from now on (``None`` clears it)."""
        self._need_app()
        tier = self._tier_by_name.get(tier_name)
        if tier is None:
            raise LeanstackError(f"no tier '{tier_name}' in app '{self._app.name}' — pick one "
                                 f"of {', '.join(self._tier_by_name)}")
        fault = fault or TierFault()
        if not (fault.slowdown > 0 and fault.capacity > 0 and fault.delay_s >= 0):
            raise LeanstackError(f"fault on '{tier_name}' needs slowdown > 0, capacity > 0 and "
                                 f"delay_s >= 0, got {fault}")
        tier.fault = fault
        tier.set_cpu(tier.cpu, len(tier.active) + len(tier.starting))

    def set_edge_delay(self, caller: str, callee: str, delay_s: float) -> None:
        """Add ``delay_s`` of wall time to every call from tier ``caller`` to tier ``callee``
        from now on (a slow network link; 0 clears it). The callee's own latency is unchanged;
        the caller waits longer for its answers."""
        self._need_app()
        for name in (caller, callee):
            if name not in self._tier_by_name:
                raise LeanstackError(f"no tier '{name}' in app '{self._app.name}' — pick one "
                                     f"of {', '.join(self._tier_by_name)}")
        if not (delay_s >= 0 and math.isfinite(delay_s)):
            raise LeanstackError(f"edge delay {caller} -> {callee} must be >= 0 s, got "
                                 f"{delay_s}")
        key = (self._tier_by_name[caller], self._tier_by_name[callee])
        if delay_s > 0:
            self._edge_delay[key] = delay_s
        else:
            self._edge_delay.pop(key, None)

    def spans(self, since_ns: int = 0) -> list[Span]:
        """Recorded spans (``record_spans=True``) that ended at or after ``since_ns``."""
        if not self._app:
            return []
        return [s for s in self._spans if s.end_ns >= since_ns]

    def close(self) -> None:
        """Drop the engine state; idempotent (the simulator owns no processes)."""
        self._started = False
        self._heap = []
        self._spans = []

    # --- set-up ---------------------------------------------------------------------------

    def _need_app(self) -> AppSpec:
        if self._app is None:
            raise LeanstackError("the simulator has no app — call deploy(app, allocation) first")
        return self._app

    def _compile(self, app: AppSpec, model: dict[str, Any]) -> None:
        """Turn the app into integer endpoint ids, call plans and service-time samplers."""
        rpc = model["rpc"]
        self._tiers = [_Tier(s.name, s.kind, s.queue is not None) for s in app.services.values()]
        for tier, svc in zip(self._tiers, app.services.values(), strict=True):
            tier.idle = model["idle_cpu"].get(tier.name, 0.0)
            tier.set_cpu(svc.max_cpu, svc.replicas)
        self._tier_by_name = {t.name: t for t in self._tiers}
        ids: dict[str, int] = {}
        self._ep_name: list[str] = []
        self._ep_tier: list[_Tier] = []
        self._ep_dist: list[tuple[str, float, float]] = []
        self._ep_fixed: list[float] = []  # CPU added to the start segment (callee overhead)
        self._ep_resp: list[float] = []  # caller CPU to take this endpoint's answer
        deficit: list[float] = []  # calibrated CPU per visit below zero in the start segment
        self._ep_logic: list[bool] = []
        self._ep_deliver: list[int] = []  # consumer endpoint a queue push delivers to, or -1
        self._ep_sync: list[bool] = []  # a call that blocks its caller (blocking client)

        def add(service: str, name: str, deliver: int = -1) -> int:
            svc = app.services[service]
            key = f"{service}.{name}" if deliver < 0 else f"{service}.{name}>{deliver}"
            if key in ids:
                return ids[key]
            ids[key] = len(self._ep_name)
            self._ep_name.append(f"{service}.{name}")
            self._ep_tier.append(self._tier_by_name[service])
            if svc.is_storage:
                self._ep_dist.append(model["storage"][f"{service}.{name}"])
                self._ep_fixed.append(0.0)
                self._ep_resp.append(rpc["storage_caller_ms"] / 1e3)
                deficit.append(0.0)
            else:
                self._ep_dist.append(model["endpoints"][f"{service}.{name}"])
                fixed = rpc["storage_caller_ms"] if svc.queue else rpc["callee_ms"]
                fixed += model["extra_ms"].get(service, 0.0)
                self._ep_fixed.append(max(fixed, 0.0) / 1e3)
                self._ep_resp.append(rpc["caller_ms"] / 1e3)
                deficit.append(max(-fixed, 0.0) / 1e3)
            self._ep_logic.append(not svc.is_storage)
            self._ep_sync.append(svc.blocks_caller)
            self._ep_deliver.append(deliver)
            return ids[key]

        for s in app.services.values():
            for op in _ops(app, s.name):
                add(s.name, op)
            for e in s.endpoints:
                add(s.name, e)
        self._ep_groups: list[tuple[tuple[int, ...], ...]] = [()] * len(self._ep_name)
        for s in app.services.values():
            for e in s.endpoints.values():
                groups = [g for group in e.groups for g in self._split_sync(
                    [ids[str(c)] for c in group])]
                groups += [(add(app.services[c.service].queue, QUEUE_OP, ids[str(c)]),)
                           for c in e.enqueue]  # one push after another, as the workers do
                self._ep_groups[ids[f"{s.name}.{e.name}"]] = tuple(groups)
        self._ep_groups += [()] * (len(self._ep_name) - len(self._ep_groups))
        # A tier whose calibrated extra CPU per visit is below minus the callee overhead takes
        # the rest off the answers it handles, so that its CPU per visit stays the calibrated one.
        self._ep_resp_scale = [1.0] * len(self._ep_name)  # per caller endpoint
        for ep, cut in enumerate(deficit):
            answers = sum(self._ep_resp[c] for group in self._ep_groups[ep] for c in group)
            if cut > 0 and answers > 0:
                self._ep_resp_scale[ep] = max(answers - cut, 0.0) / answers
        self._delay = max(float(rpc.get("delay_ms", 0.0)), 0.0) / 1e3
        self._entry = (max(float(rpc.get("entry_ms", 0.0)), 0.0) / 1e3,
                       max(float(rpc.get("entry_cv", 0.0)), 0.0))
        self._entry_draws: list[float] = []
        self._edge_delay: dict[tuple[_Tier, _Tier], float] = {}  # injected, per call edge
        self._ep_queue_fed = [t.queue_fed for t in self._ep_tier]
        self._class_names = list(app.classes)
        self._class_entry = [ids[str(c.entry)] for c in app.classes.values()]
        self._class_pipeline = [c.wait == "pipeline" for c in app.classes.values()]
        self._class_lat: list[list[float]] = [[] for _ in self._class_names]
        self._class_err = [0] * len(self._class_names)
        seeds = np.random.SeedSequence(self.seed).spawn(len(self._ep_name) + 1)
        self._rngs = [np.random.default_rng(s) for s in seeds[:-1]]
        self._entry_rng = np.random.default_rng(seeds[-1])  # the client's share of latency
        self._draws: list[list[float]] = [[] for _ in self._ep_name]

    def _split_sync(self, group: list[int]) -> list[tuple[int, ...]]:
        """A call group as the worker runs it: each synchronous call alone, in order (it
        finishes before the next one starts), then the asynchronous calls side by side."""
        sync = [(ep,) for ep in group if self._ep_sync[ep]]
        rest = tuple(ep for ep in group if not self._ep_sync[ep])
        return sync + [rest] if rest else sync

    def _refill(self, ep: int) -> list[float]:
        """A block of service-time draws (seconds) for endpoint ``ep``."""
        kind, mean_ms, cv = self._ep_dist[ep]
        draws = _draw_block(self._rngs[ep], kind, mean_ms / 1e3, cv)
        self._draws[ep] = draws
        return draws

    def _refill_entry(self) -> list[float]:
        """A block of the client's share of request latency (seconds), gamma-distributed."""
        mean, cv = self._entry
        self._entry_draws = _draw_block(self._entry_rng, "gamma", mean, cv)
        return self._entry_draws

    def _resize(self, tier: _Tier, n: int) -> None:
        """Grow (new replicas join after REPLICA_START_S) or shrink (removed ones drain) a tier.

        A removed replica takes no new work; segments it already holds still run and count.
        """
        starting = tier.starting
        while starting and len(tier.active) + len(starting) > n:
            starting.pop()  # its start-up event finds it gone and does nothing
        while len(tier.active) > n:
            rep = tier.active.pop()
            rep.active = False
            if rep in tier.free:
                tier.free.remove(rep)
        while len(tier.active) + len(starting) < n:
            rep = _Replica(tier, False)
            starting.append(rep)
            self._seq += 1
            heappush(self._heap, (self.now + REPLICA_START_S, self._seq, _UP, rep))

    # --- the engine -----------------------------------------------------------------------

    def _run_until(self, t_end: float) -> None:
        """Process arrivals and events before simulated time ``t_end``."""
        self._t_end = t_end
        heap = self._heap
        arr_t, arr_c = self._arr_t, self._arr_c
        n = len(arr_t)
        ai = self._ai
        visit, seg_done = self._visit, self._seg_done
        entries = self._class_entry
        inf = math.inf
        while True:
            ta = arr_t[ai] if ai < n else inf
            if heap and heap[0][0] <= ta:
                if heap[0][0] >= t_end:
                    break
                t, _, kind, rep = heappop(heap)
                self.now = t
                if kind == _SEG:
                    seg_done(rep, t)
                elif kind == _CALL:
                    visit(*rep, t)
                elif kind == _CORE:
                    self._core_freed(rep, t)
                elif kind == _HOLD:
                    self._held(*rep, t)
                else:
                    self._replica_up(rep, t)
            else:
                if ta >= t_end:
                    break
                self.now = ta
                cid = arr_c[ai]
                if self._delay and not self._entry[0]:  # else the client's share has it
                    self._seq += 1
                    heappush(heap, (ta + self._delay, self._seq, _CALL,
                                    (entries[cid], None, [cid, ta, 1, ai])))
                else:
                    visit(entries[cid], None, [cid, ta, 1, ai], ta)
                ai += 1
        self._ai = ai
        self.now = t_end

    def _visit(self, ep: int, parent: list | None, req: list, now: float) -> None:
        """A request reaches endpoint ``ep``: queue its start segment on a replica."""
        tier = self._ep_tier[ep]
        active = tier.active
        if len(active) == 1:
            rep = active[0]
        else:
            tier.rr = i = (tier.rr + 1) % len(active)
            rep = active[i]
        self._begin(rep, ep, parent, req, None, now)

    def _begin(self, rep: _Replica, ep: int, parent: list | None, req: list,
               msg: tuple | None, now: float) -> None:
        """Open a visit to ``ep`` on replica ``rep``: draw its work, count it in flight and
        run (or queue) its start segment. ``msg`` is the queue message of a consumer visit."""
        tier = rep.tier
        draws = self._draws[ep] or self._refill(ep)
        work = draws.pop() * tier.fault.slowdown
        tier.inflight_area += tier.inflight * (now - tier.inflight_t)
        tier.inflight_t = now
        tier.inflight += 1
        frame = [ep, parent, 0, 0, req, now, rep, work, self._new_span_id(), msg, -1.0, 0.0, now]
        seg = (work + self._ep_fixed[ep] * tier.fault.slowdown, frame, _START)
        if tier.fault.delay_s > 0:  # an injected sleep before the work (it holds no CPU)
            self._seq += 1
            heappush(self._heap, (now + tier.fault.delay_s, self._seq, _HOLD, (rep, seg)))
            return
        self._held(rep, seg, now)

    def _held(self, rep: _Replica, seg: tuple, now: float) -> None:
        """Run (or queue) a visit's start segment on its replica."""
        if rep.busy:
            rep.queue.append(seg)
        else:
            rep.busy = True
            self._start(rep, seg, now)

    def _start(self, rep: _Replica, seg: tuple, now: float) -> None:
        """Run one CPU segment on an idle replica (once a host core is free); its end goes on
        the heap."""
        tier = rep.tier
        cost = seg[0]
        if self._host:
            if not self._cores_free:
                self._run_queue.append((rep, seg))
                return
            busy = self._core_busy
            core = rep.last_core if not busy[rep.last_core] else busy.index(False)
            busy[core] = True
            self._cores_free -= 1
            rep.last_core = core
            run = cost / self._speed
            end = (now + run if tier.unlimited else tier.reserve_on_core(now, run, core)
                   if self._rq else tier.reserve(now, run))
            if end <= now + run + 1e-12:
                rep.core = core
            else:  # throttled on the way: the core is free while it waits
                self._seq += 1
                heappush(self._heap, (now + run, self._seq, _CORE, core))
        else:
            end = now + cost if tier.unlimited else tier.reserve(now, cost)
        spill = end - self._t_end  # CPU that falls into the next interval
        if spill > 0:
            spill = min(spill, cost)
            tier.busy_next += spill
            tier.busy_s += cost - spill
        else:
            tier.busy_s += cost
        rep.seg = seg
        self._seq += 1
        heappush(self._heap, (end, self._seq, _SEG, rep))

    def _core_freed(self, core: int, now: float) -> None:
        """Host core ``core`` is free: the longest-waiting ready segment takes it."""
        self._core_busy[core] = False
        self._cores_free += 1
        if self._run_queue:
            rep, seg = self._run_queue.popleft()
            self._start(rep, seg, now)

    def _seg_done(self, rep: _Replica, now: float) -> None:
        """A segment ended: continue its visit, then start the replica's next segment."""
        if rep.core >= 0:
            core, rep.core = rep.core, -1
            self._core_freed(core, now)
        _, frame, action = rep.seg
        groups = self._ep_groups[frame[_F_EP]]
        if action == _START:
            if groups:
                self._issue(frame, groups[0], now)
            else:
                self._finish(frame, now)
        else:
            frame[_F_PENDING] -= 1
            if frame[_F_PENDING] == 0:
                g = frame[_F_GROUP] + 1
                if g < len(groups):
                    frame[_F_GROUP] = g
                    self._issue(frame, groups[g], now)
                else:
                    self._finish(frame, now)
        if rep.blocked:  # it stays busy until the synchronous answer is back
            if self._rq and not rep.tier.unlimited:
                rep.tier.sleep(now, rep.last_core)
            return
        if rep.queue:
            self._start(rep, rep.queue.popleft(), now)
        else:
            rep.busy = False
            if self._rq and not rep.tier.unlimited:
                rep.tier.sleep(now, rep.last_core)

    def _issue(self, frame: list, group: tuple[int, ...], now: float) -> None:
        _end_wait(frame)
        frame[_F_ISSUED] = now
        if self._ep_sync[group[0]]:  # a synchronous call is always alone in its group
            frame[_F_REP].blocked = True
        frame[_F_PENDING] = len(group)
        req = frame[_F_REQ]
        if self._edge_delay:  # an injected slow link on some edges: each call on its own
            caller = frame[_F_REP].tier
            for ep in group:
                at = now + self._delay + self._edge_delay.get((caller, self._ep_tier[ep]), 0.0)
                self._seq += 1
                heappush(self._heap, (at, self._seq, _CALL, (ep, frame, req)))
            return
        if self._delay:
            at = now + self._delay
            for ep in group:
                self._seq += 1
                heappush(self._heap, (at, self._seq, _CALL, (ep, frame, req)))
            return
        visit = self._visit
        for ep in group:
            visit(ep, frame, req, now)

    def _finish(self, frame: list, now: float) -> None:
        """A visit ended: answer the caller, deliver a queued message, or complete a request."""
        ep = frame[_F_EP]
        tier = self._ep_tier[ep]
        tier.inflight_area += tier.inflight * (now - tier.inflight_t)
        tier.inflight_t = now
        tier.inflight -= 1
        tier.lat.append(now - frame[_F_T0])
        _end_wait(frame)
        msg = frame[_F_MSG]
        queued = frame[_F_T0] - msg[2] if msg is not None else 0.0
        tier.own_lat.append(now - frame[_F_T0] - frame[_F_WAIT] + queued)
        if self.record_spans:
            self._record_span(frame, now)
        parent = frame[_F_PARENT]
        req = frame[_F_REQ]
        if parent is not None:
            parent[_F_LAST] = now
            deliver = self._ep_deliver[ep]
            if deliver >= 0:
                req[_R_OUT] += 1
                self._deliver(deliver, (deliver, req, now, parent[_F_SPAN]))
            rep = parent[_F_REP]
            seg = (self._ep_resp[ep] * self._ep_resp_scale[parent[_F_EP]]
                   * rep.tier.fault.slowdown, parent, _RESP)
            if rep.blocked and self._ep_sync[ep]:  # the answer it was blocked on
                rep.blocked = False
                self._start(rep, seg, now)
            elif rep.busy:
                rep.queue.append(seg)
            else:
                rep.busy = True
                self._start(rep, seg, now)
            return
        req[_R_OUT] -= 1
        if self._ep_queue_fed[ep]:
            self._consumer_free(frame[_F_REP], now)
        elif not self._class_pipeline[req[_R_CLASS]]:
            self._complete(req, now)
            return
        if req[_R_OUT] == 0 and self._class_pipeline[req[_R_CLASS]]:
            self._complete(req, now)

    def _complete(self, req: list, now: float) -> None:
        latency = now - req[_R_T0]
        if self._entry[0] > 0:
            latency += (self._entry_draws or self._refill_entry()).pop()
        cid = req[_R_CLASS]
        if latency > TIMEOUT_S:
            self._class_err[cid] += 1
        else:
            self._class_lat[cid].append(latency)

    def _deliver(self, ep: int, msg: tuple) -> None:
        """A message ``(endpoint, request, enqueued at, producer span)`` lands in the FIFO of a
        queue-fed tier; a free consumer takes it."""
        tier = self._ep_tier[ep]
        if tier.free:
            self._consume(tier.free.pop(), msg, msg[2])
        else:
            tier.fifo.append(msg)

    def _consume(self, rep: _Replica, msg: tuple, now: float) -> None:
        """A consumer replica starts the visit for one message (it holds no other)."""
        self._begin(rep, msg[0], None, msg[1], msg, now)

    def _consumer_free(self, rep: _Replica, now: float) -> None:
        tier = rep.tier
        if not rep.active:
            return
        if tier.fifo:
            self._consume(rep, tier.fifo.popleft(), now)
        else:
            tier.free.append(rep)

    def _replica_up(self, rep: _Replica, now: float) -> None:
        tier = rep.tier
        if rep not in tier.starting:
            return
        tier.starting.remove(rep)
        rep.active = True
        tier.active.append(rep)
        if tier.queue_fed:
            self._consumer_free(rep, now)

    def _new_span_id(self) -> int:
        if not self.record_spans:
            return 0
        self._span_seq += 1
        return self._span_seq

    def _record_span(self, frame: list, now: float) -> None:
        ep = frame[_F_EP]
        req = frame[_F_REQ]
        parent = frame[_F_PARENT]
        attrs: dict[str, Any] = {"leanstack.class": self._class_names[req[_R_CLASS]]}
        if self._ep_logic[ep]:
            attrs["leanstack.cpu_ms"] = frame[_F_CPU] * 1e3
        msg = frame[_F_MSG]
        if msg is not None:  # a consumer: its parent is the producer, as in the workers' traces
            attrs["leanstack.queue_ms"] = (frame[_F_T0] - msg[2]) * 1e3
            parent_id = msg[3]
        else:
            parent_id = parent[_F_SPAN] if parent is not None else 0
        service, name = self._ep_name[ep].split(".", 1)
        self._spans.append(Span(
            trace_id=f"{req[_R_ID] + 1:032x}", span_id=f"{frame[_F_SPAN]:016x}",
            parent_span_id=f"{parent_id:016x}" if parent_id else "",
            service=service, name=name, start_ns=round(frame[_F_T0] * 1e9),
            end_ns=round(now * 1e9), attributes=attrs))

    # --- reporting ------------------------------------------------------------------------

    def _collect(self, t0: float, t1: float) -> Observation:
        """Turn the interval's counters into an Observation and reset them."""
        app = self._need_app()
        dt = t1 - t0
        classes = {}
        for i, name in enumerate(self._class_names):
            lat = self._class_lat[i]
            sla = app.classes[name].sla
            classes[name] = ClassStats(
                completed=len(lat), errors=self._class_err[i], throughput_rps=len(lat) / dt,
                latency_ms=_percentiles_ms(lat), sla_ms=sla.ms, sla_key=sla.key)
            self._class_lat[i] = []
            self._class_err[i] = 0
        tiers = {}
        for tier in self._tiers:
            tier.inflight_area += tier.inflight * (t1 - tier.inflight_t)
            tier.inflight_t = t1
            n_active = len(tier.active)
            tiers[tier.name] = TierStats(
                cpu_limit=tier.cpu, cpu_used=tier.busy_s / dt + tier.idle * max(n_active, 1),
                throttled_periods=tier.thr_periods,
                throttled_s=tier.thr_s, memory_bytes=MEMORY_BYTES[tier.kind] * max(n_active, 1)
                + tier.fault.memory_bytes,
                inflight=tier.inflight_area / dt, replicas=n_active, rps=len(tier.lat) / dt,
                latency_ms=_percentiles_ms(tier.lat),
                own_latency_ms=_percentiles_ms(tier.own_lat))
            tier.busy_s, tier.busy_next = tier.busy_next, 0.0
            tier.thr_s = tier.inflight_area = 0.0
            tier.thr_periods = 0
            tier.lat = []
            tier.own_lat = []
        offered = np.count_nonzero((self._arr_np >= t0) & (self._arr_np < t1)) / dt
        return Observation(t=t1, interval_s=dt, classes=classes, tiers=tiers,
                           offered_rps=float(offered), cfs_period_ms=PERIOD_S * 1000)


def _end_wait(frame: list) -> None:
    """Count the time from issuing the outstanding call group to its last answer as waiting."""
    if frame[_F_ISSUED] >= 0:
        frame[_F_WAIT] += frame[_F_LAST] - frame[_F_ISSUED]
        frame[_F_ISSUED] = -1.0


def _percentiles_ms(latencies_s: list[float]) -> dict[str, float]:
    return percentiles_ms(np.asarray(latencies_s) * 1e3)


def _ops(app: AppSpec, service: str) -> list[str]:
    """Storage operations called on ``service`` anywhere in the app."""
    ops = {c.endpoint for s in app.services.values() for e in s.endpoints.values()
           for c in e.calls if c.service == service}
    return sorted(ops)


def _draw_block(rng: np.random.Generator, kind: str, mean: float, cv: float) -> list[float]:
    """``_BLOCK`` draws of a ``kind`` distribution (gamma, lognormal or constant) with ``mean``
    and coefficient of variation ``cv`` (constant when ``cv`` is 0)."""
    if cv <= 0 or kind == "constant":
        return [mean] * _BLOCK
    if kind == "lognormal":
        sigma2 = math.log1p(cv * cv)
        return rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2), _BLOCK).tolist()
    shape = 1.0 / (cv * cv)
    return rng.gamma(shape, mean / shape, _BLOCK).tolist()


def _service_model(app: AppSpec, calibration: str | Path | dict | None) -> dict[str, Any]:
    """Per-endpoint and per-storage-op distributions ``(kind, mean_ms, cv)``, RPC overheads,
    per-tier extra CPU per visit and idle CPU per process, and the calibrated host's cores
    (``None`` without one).

    Defaults come from the app file; a calibration (a dict, a file from ``calibrate``, or
    ``"shipped"`` for the app's shipped one) overrides every entry it has.
    """
    endpoints = {f"{s.name}.{e.name}": ("gamma", e.cpu_ms, e.cv)
                 for s in app.services.values() for e in s.endpoints.values()}
    storage = {}
    for s in app.services.values():
        if s.is_storage:
            for op in (*_ops(app, s.name), QUEUE_OP):
                storage[f"{s.name}.{op}"] = ("gamma", s.op_cpu_ms, 0.5)
    rpc = dict(DEFAULT_RPC)
    extra_ms: dict[str, float] = {}
    idle_cpu: dict[str, float] = {}
    host_cores = None
    if calibration is not None:
        if isinstance(calibration, dict):
            check_calibration(calibration)
            calib = calibration
        else:
            calib = load_calibration(shipped_path(app.name) if calibration == SHIPPED
                                     else calibration)
        if calib.get("app") != app.name:
            raise LeanstackError(f"calibration is for app '{calib.get('app')}', not "
                                 f"'{app.name}' — calibrate from spans of this app")
        rpc.update(calib.get("rpc", {}))
        for table, target in (("endpoints", endpoints), ("storage", storage)):
            for key, d in calib.get(table, {}).items():
                if key in target:
                    target[key] = (d["dist"], d["mean_ms"], d["cv"])
        extra_ms = {t: d.get("extra_ms", 0.0) for t, d in calib.get("tiers", {}).items()}
        idle_cpu = {t: d.get("idle_cpu", 0.0) for t, d in calib.get("tiers", {}).items()}
        host_cores = calib.get("host_cores")
    return {"endpoints": endpoints, "storage": storage, "rpc": rpc, "extra_ms": extra_ms,
            "idle_cpu": idle_cpu, "host_cores": host_cores}
